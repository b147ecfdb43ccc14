-- pg_branch 0.2.0 -> 0.3.0
\echo Use "ALTER EXTENSION pg_branch UPDATE TO '0.3.0'" to load this file. \quit

-- New: the registry of branches. The records are written by CREATE DATABASE
-- into pg_shseclabel (src/registry.rs); branches made before 0.3.0 have
-- none and show as databases without a parent.

-- last_branch() gains record_ms, the time the registry record took: its
-- result type changes, so it is made again (it was and stays PUBLIC).
DROP FUNCTION last_branch();
CREATE FUNCTION last_branch() RETURNS TABLE (
	"datname" TEXT,
	"template" TEXT,
	"method" TEXT,
	"relations" bigint,
	"sync_ms" double precision,
	"fence_wait_ms" double precision,
	"fence_ms" double precision,
	"fence_up_at" timestamp with time zone,
	"fence_down_at" timestamp with time zone,
	"clone_ms" double precision,
	"record_ms" double precision,
	"wal_logged_pages" bigint,
	"wal_log_ms" double precision,
	"checkpoint_ms" double precision,
	"total_ms" double precision
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'last_branch_wrapper';
COMMENT ON FUNCTION last_branch() IS
  'What this session''s last branch took, step by step';

-- set_expiry() and clear_expiry() (src/api.rs), everyone's: they check
-- ownership of the branch themselves.
CREATE FUNCTION set_expiry("branch" text, "expires_in" interval)
RETURNS timestamp with time zone
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_expiry_wrapper';

CREATE FUNCTION clear_expiry("branch" text) RETURNS void
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'clear_expiry_wrapper';

COMMENT ON FUNCTION set_expiry(text, interval) IS
  'Make a branch expire after an interval from now (the expiry worker drops it then)';
COMMENT ON FUNCTION clear_expiry(text) IS
  'Make a branch never expire';

-- diverged() (src/diverged.rs): as branch_size(), it shows file layout,
-- so it is the superuser's and pg_read_server_files'.
CREATE FUNCTION diverged("branch" text) RETURNS TABLE (
	"relation" TEXT,
	"kind" TEXT,
	"fork" TEXT,
	"status" TEXT,
	"branch_bytes" bigint,
	"parent_bytes" bigint,
	"diverged_bytes" bigint
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'diverged_wrapper';
REVOKE ALL ON FUNCTION diverged(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION diverged(text) TO pg_read_server_files;
COMMENT ON FUNCTION diverged(text) IS
  'The relations of a branch that differ from its parent''s, with the bytes that no longer share extents';

-- branch_record() (src/api.rs), everyone's, as the view is: the view
-- reads each record through it.
CREATE FUNCTION branch_record("db" oid, "label" text) RETURNS jsonb
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'branch_record_wrapper';
COMMENT ON FUNCTION branch_record(oid, text) IS
  'A branch''s registry record as pgbranch.branches shows it (for the view)';

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

-- reset() (src/reset.rs), everyone's: it checks ownership of the branch
-- and the right to copy the source itself, as DROP and CREATE DATABASE do.
CREATE FUNCTION reset("branch" text, "source" text DEFAULT NULL, "force" bool DEFAULT false)
RETURNS void
VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'reset_wrapper';
COMMENT ON FUNCTION reset(text, text, boolean) IS
  'Replace a branch''s contents with a fresh branch of its parent (or of another database), in place';
