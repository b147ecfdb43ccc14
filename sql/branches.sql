-- pgbranch.branches: every database of the cluster with its lineage, from
-- pg_branch's registry (src/registry.rs: one security label of provider
-- pg_branch per branch, in the shared catalog pg_shseclabel) joined with
-- pg_database. A database that pg_branch did not make (older than
-- pg_branch, or copied by core) has no parent and is the root of its tree.
-- A branch whose parent was dropped is a root too, and says so. Each label
-- is read through branch_record(), which lays over it the facts of a reset
-- that a crash kept from committing (src/registry.rs).
CREATE VIEW branches AS
WITH RECURSIVE registry AS (
    SELECT l.objoid AS oid, branch_record(l.objoid, l.label) AS r
      FROM pg_catalog.pg_shseclabel l
     WHERE l.provider = 'pg_branch'
       AND l.classoid = 'pg_catalog.pg_database'::pg_catalog.regclass
), db AS (
    SELECT d.oid, d.datname, g.r,
           (g.r ->> 'parent_oid')::pg_catalog.oid AS parent_oid,
           p.datname AS parent
      FROM pg_catalog.pg_database d
      LEFT JOIN registry g ON g.oid = d.oid
      LEFT JOIN pg_catalog.pg_database p ON p.oid = (g.r ->> 'parent_oid')::pg_catalog.oid
), tree AS (
    SELECT oid, ARRAY[datname] AS path, ARRAY[oid] AS oids
      FROM db
     WHERE parent IS NULL
    UNION ALL
    SELECT c.oid, t.path || c.datname, t.oids || c.oid
      FROM tree t
      JOIN db c ON c.parent_oid = t.oid AND c.parent IS NOT NULL
     WHERE c.oid <> ALL (t.oids)
)
SELECT db.datname AS name,
       db.oid,
       db.r IS NOT NULL AS is_branch,
       db.parent,
       db.parent_oid,
       (db.r ->> 'parent_name')::pg_catalog.name AS parent_name_at_branch,
       CASE WHEN db.r IS NOT NULL THEN db.parent IS NOT NULL END AS parent_exists,
       pg_catalog.cardinality(tree.path) - 1 AS depth,
       tree.path,
       (db.r ->> 'created_at')::pg_catalog.timestamptz AS created_at,
       (db.r ->> 'created_by')::pg_catalog.name AS created_by,
       db.r ->> 'method' AS method,
       (db.r ->> 'lsn')::pg_catalog.pg_lsn AS branch_lsn,
       (db.r ->> 'expires_at')::pg_catalog.timestamptz AS expires_at,
       (db.r ->> 'reset_count')::pg_catalog.int4 AS reset_count,
       (db.r ->> 'reset_at')::pg_catalog.timestamptz AS reset_at
  FROM db
  LEFT JOIN tree ON tree.oid = db.oid
 ORDER BY created_at NULLS FIRST, db.oid;

-- Readable wherever pg_database is: by everyone.
GRANT SELECT ON branches TO PUBLIC;

COMMENT ON VIEW branches IS
  'Every database with its lineage: parent, depth, path from the root, how and when pg_branch made it, expiry';

COMMENT ON FUNCTION branch_record(oid, text) IS
  'A branch''s registry record as pgbranch.branches shows it (for the view)';
