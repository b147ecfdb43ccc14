-- pg_branch 0.1.0 -> 0.2.0
\echo Use "ALTER EXTENSION pg_branch UPDATE TO '0.2.0'" to load this file. \quit

-- database_storage() reads the catalogs through SPI and probes filesystems:
-- PARALLEL RESTRICTED, not SAFE.
ALTER FUNCTION database_storage() PARALLEL RESTRICTED;

-- last_branch() was PUBLIC, but its schema was not: any role but the
-- superuser got "permission denied for schema pgbranch".
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-- Every function is described (0.1.0 described database_storage() only).
COMMENT ON FUNCTION last_branch() IS
  'What this session''s last branch took, step by step';
COMMENT ON FUNCTION orphans() IS
  'Database directories that no database owns (left by a crash)';
COMMENT ON FUNCTION remove_orphans() IS
  'Remove the directories orphans() lists, WAL-logged';
COMMENT ON FUNCTION convert_to_subvolume(text) IS
  'Make a database''s directories btrfs subvolumes, so that its branches are snapshots';
COMMENT ON FUNCTION convert_all_to_subvolumes() IS
  'convert_to_subvolume() for every database but the current one';
COMMENT ON FUNCTION doctor() IS
  'Check the set-up: one row per check, with what to do about it';
COMMENT ON FUNCTION wal_needs_pg_branch() IS
  'Who would still need pg_branch to replay this server''s WAL';

-- New: branch_size(), a database's bytes on disk, its own and shared
-- (src/api.rs; privileges as in sql/api.sql).
CREATE FUNCTION branch_size("database" text) RETURNS TABLE (
	"tablespace" text,
	"path" text,
	"files" bigint,
	"exclusive_bytes" bigint,
	"shared_bytes" bigint
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'branch_size_wrapper';
REVOKE ALL ON FUNCTION branch_size(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION branch_size(text) TO pg_read_server_files;
COMMENT ON FUNCTION branch_size(text) IS
  'A database''s bytes on disk: its own (exclusive) and shared with other files';

-- New: cluster_size(), what all databases take on disk together.
CREATE FUNCTION cluster_size() RETURNS TABLE (
	"databases" bigint,
	"files" bigint,
	"database_bytes" bigint,
	"disk_bytes" bigint
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'cluster_size_wrapper';
REVOKE ALL ON FUNCTION cluster_size() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cluster_size() TO pg_read_server_files;
COMMENT ON FUNCTION cluster_size() IS
  'What all databases take on disk together, each shared extent once';
