-- The hand-written part of the SQL API (src/api.rs defines the functions).
-- Who may call what: every function that shows paths or changes the
-- server is the superuser's; last_branch(), which shows a session only its
-- own last statement, is everyone's, and so are set_expiry() and
-- clear_expiry(), which check ownership of the branch, and the schema
-- (which holds nothing else a role could use without a grant).
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
REVOKE ALL ON FUNCTION database_storage() FROM PUBLIC;
REVOKE ALL ON FUNCTION orphans() FROM PUBLIC;
REVOKE ALL ON FUNCTION remove_orphans() FROM PUBLIC;
REVOKE ALL ON FUNCTION convert_to_subvolume(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION convert_all_to_subvolumes() FROM PUBLIC;
REVOKE ALL ON FUNCTION doctor() FROM PUBLIC;
REVOKE ALL ON FUNCTION wal_needs_pg_branch() FROM PUBLIC;
-- Extent maps reveal paths and file layout, as reading the files would.
REVOKE ALL ON FUNCTION branch_size(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION branch_size(text) TO pg_read_server_files;
REVOKE ALL ON FUNCTION cluster_size() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cluster_size() TO pg_read_server_files;
REVOKE ALL ON FUNCTION diverged(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION diverged(text) TO pg_read_server_files;

COMMENT ON FUNCTION database_storage() IS
  'Where each database directory lives and how pg_branch would branch it';
COMMENT ON FUNCTION branch_size(text) IS
  'A database''s bytes on disk: its own (exclusive) and shared with other files';
COMMENT ON FUNCTION cluster_size() IS
  'What all databases take on disk together, each shared extent once';
COMMENT ON FUNCTION diverged(text) IS
  'The relations of a branch that differ from its parent''s, with the bytes that no longer share extents';
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
COMMENT ON FUNCTION set_expiry(text, interval) IS
  'Make a branch expire after an interval from now (the expiry worker drops it then)';
COMMENT ON FUNCTION clear_expiry(text) IS
  'Make a branch never expire';
COMMENT ON FUNCTION reset(text, text, boolean) IS
  'Replace a branch''s contents with a fresh branch of its parent (or of another database), in place';
