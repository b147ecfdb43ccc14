//! The SQL API of `CREATE EXTENSION pg_branch` (src/api.rs), as a client
//! sees it: labels, privileges and the rows of each function.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: pgrx::IntoDatum + pgrx::FromDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_else(|| panic!("{sql}: NULL"))
    }

    /// Volatility and parallel labels. Every function reads state that
    /// changes under it (the filesystem, the catalogs, this session), so all
    /// are VOLATILE. `last_branch()` and `database_storage()` only read, but
    /// from this backend's memory and through SPI: PARALLEL RESTRICTED. The
    /// others write or take locks: PARALLEL UNSAFE.
    #[pg_test]
    fn api_function_labels() {
        let labels: String = one(
            "SELECT string_agg(proname || ':' || provolatile::text || proparallel::text, ' ' ORDER BY proname)
               FROM pg_proc WHERE pronamespace = 'pgbranch'::regnamespace",
        );
        assert_eq!(
            labels,
            "branch_record:vr branch_size:vu clear_expiry:vu cluster_size:vu convert_all_to_subvolumes:vu \
             convert_to_subvolume:vu database_storage:vr diverged:vu doctor:vu last_branch:vr orphans:vu \
             remove_orphans:vu reset:vu set_expiry:vu wal_needs_pg_branch:vu"
        );
    }

    /// Executable by PUBLIC: `last_branch()`, which shows a session its own
    /// statement, `branch_record()`, which the `branches` view reads the
    /// registry through, and the expiry functions and `reset()`, which
    /// check ownership of the branch themselves as DROP DATABASE does; the
    /// rest show paths or change the server.
    #[pg_test]
    fn api_privileges() {
        Spi::run("CREATE ROLE branch_api_nobody").unwrap();
        let executable: String = one(
            "SELECT string_agg(proname, ' ' ORDER BY proname) FROM pg_proc
              WHERE pronamespace = 'pgbranch'::regnamespace
                AND has_function_privilege('branch_api_nobody', oid, 'EXECUTE')",
        );
        assert_eq!(
            executable,
            "branch_record clear_expiry last_branch reset set_expiry"
        );
        // Reading extent maps is for those who may read server files.
        let readers: bool = one("SELECT has_function_privilege('pg_read_server_files',
                                           'pgbranch.branch_size(text)', 'EXECUTE')
                                    AND has_function_privilege('pg_read_server_files',
                                           'pgbranch.diverged(text)', 'EXECUTE')");
        assert!(readers);
    }

    /// The registry is readable wherever pg_database is: by any role.
    #[pg_test]
    fn api_branches_view_is_everyones() {
        Spi::run("CREATE ROLE branch_api_reader").unwrap();
        let readable: bool =
            one("SELECT has_table_privilege('branch_api_reader', 'pgbranch.branches', 'SELECT')");
        assert!(readable);
        Spi::run("SET ROLE branch_api_reader").unwrap();
        let roots: i64 =
            one("SELECT count(*) FROM pgbranch.branches WHERE name = 'postgres' AND depth = 0");
        assert_eq!(roots, 1);
    }

    /// A role with no grant of its own reads its last branch (0.1.0 refused
    /// it: the schema was not PUBLIC) and nothing else.
    #[pg_test]
    fn api_last_branch_is_everyones() {
        Spi::run("CREATE ROLE branch_api_anyone").unwrap();
        Spi::run("SET ROLE branch_api_anyone").unwrap();
        let rows: i64 = one("SELECT count(*) FROM pgbranch.last_branch()");
        assert_eq!(rows, 0);
    }

    #[pg_test(error = "permission denied for function doctor")]
    fn api_doctor_is_not_everyones() {
        Spi::run("CREATE ROLE branch_api_someone").unwrap();
        Spi::run("SET ROLE branch_api_someone").unwrap();
        Spi::run("SELECT * FROM pgbranch.doctor()").unwrap();
    }

    /// Every function carries a comment (`\df+` and `\dx+` show them).
    #[pg_test]
    fn api_functions_are_described() {
        let missing: i64 = one("SELECT count(*) FROM pg_proc
              WHERE pronamespace = 'pgbranch'::regnamespace
                AND obj_description(oid, 'pg_proc') IS NULL");
        assert_eq!(missing, 0);
    }

    /// The test server is preloaded and on btrfs: doctor() finds nothing
    /// wrong, and names the checks a user looks for first.
    #[pg_test]
    fn api_doctor_finds_nothing_wrong() {
        let errors: String = one(
            "SELECT coalesce(string_agg(item || ': ' || detail, '; '), '')
               FROM pgbranch.doctor() WHERE status NOT IN ('ok', 'info', 'warning')",
        );
        assert_eq!(errors, "");
        for item in [
            "shared_preload_libraries",
            "pg_branch.enabled",
            "orphaned directories",
            "registry",
        ] {
            let status: String = one(&format!(
                "SELECT status FROM pgbranch.doctor() WHERE item = '{item}'"
            ));
            assert_eq!(status, "ok", "{item}");
        }
    }

    /// doctor() only reads: it assigns its transaction no XID (pgrx's
    /// `Spi::get_one()` did, so doctor() failed on every standby).
    #[pg_test]
    fn api_doctor_assigns_no_xid() {
        // Read-only queries throughout: `one()` would assign an XID itself.
        let assigned = |sql: &str| {
            Spi::connect(|c| c.select(sql, None, &[])?.first().get_one::<bool>())
                .unwrap()
                .unwrap()
        };
        let xid = "SELECT pg_current_xact_id_if_assigned() IS NOT NULL";
        assert!(!assigned(xid), "the test's own transaction has an XID");
        assert!(!assigned(&format!(
            "SELECT count(*) >= 0 AND ({xid}) FROM pgbranch.doctor()"
        )));
    }

    /// doctor() says so when a session turns branching off.
    #[pg_test]
    fn api_doctor_warns_when_disabled() {
        Spi::run("SET pg_branch.enabled = off").unwrap();
        let status: String =
            one("SELECT status FROM pgbranch.doctor() WHERE item = 'pg_branch.enabled'");
        assert_eq!(status, "warning");
    }

    /// This database's directory: on btrfs, branchable, at base/<oid>
    /// (relative to the data directory, as core names it).
    #[pg_test]
    fn api_database_storage_of_this_database() {
        let row: String = one(
            "SELECT concat_ws(' ', tablespace, filesystem, branch_method, coalesce(detail, '-'),
                              path LIKE '%base/' || (SELECT oid FROM pg_database
                                                       WHERE datname = current_database()))
               FROM pgbranch.database_storage() WHERE datname = current_database()",
        );
        let method = row.split(' ').nth(2).unwrap_or("");
        assert!(
            row.starts_with("pg_default btrfs ") && row.ends_with(" - t"),
            "{row}"
        );
        assert!(["snapshot", "reflink"].contains(&method), "{row}");
    }

    /// Before this session branches, last_branch() has no row.
    #[pg_test]
    fn api_last_branch_is_empty_in_a_new_session() {
        let rows: i64 = one("SELECT count(*) FROM pgbranch.last_branch()");
        assert_eq!(rows, 0);
    }

    /// No crash has left a directory behind on this server.
    #[pg_test]
    fn api_no_orphans() {
        let rows: i64 = one("SELECT count(*) FROM pgbranch.orphans()");
        assert_eq!(rows, 0);
    }

    /// One row for crash recovery and one for base backups, whether or not
    /// a branch was made.
    #[pg_test]
    fn api_wal_needs_pg_branch_rows() {
        let replayers: String = one(
            "SELECT string_agg(replayer, ', ' ORDER BY replayer) FROM pgbranch.wal_needs_pg_branch()
              WHERE replayer NOT LIKE 'standby %'",
        );
        assert_eq!(replayers, "base backups and archived WAL, crash recovery");
    }
}

/// Statements that must run at top level, outside the transaction of a
/// `#[pg_test]`.
#[cfg(test)]
mod sessions {
    use crate::pg_tests::{session, sql_error};

    /// btrfs' own count of the bytes in `dir` that no other file shares.
    fn btrfs_du_exclusive(dir: &str) -> i64 {
        let out = std::process::Command::new("btrfs")
            .args(["filesystem", "du", "-s", "--raw", dir])
            .output()
            .expect("btrfs filesystem du");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let total = text.lines().last().unwrap_or_default().to_owned();
        total
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("btrfs filesystem du {dir}: {text}"))
    }

    /// branch_size() of a fresh branch: all shared; after a table of
    /// its own is written, its exclusive bytes are what btrfs counts.
    #[test]
    fn api_branch_size_counts_what_a_branch_wrote() {
        let mut c = session("pgrx_tests");
        c.simple_query("DROP DATABASE IF EXISTS api_size WITH (FORCE)")
            .unwrap();
        c.simple_query("CREATE DATABASE api_size").unwrap();
        let size = |c: &mut postgres::Client| -> (String, i64, i64) {
            c.simple_query("CHECKPOINT").unwrap();
            let r = c
                .query_one(
                    "SELECT current_setting('data_directory') || '/' || path,
                            exclusive_bytes, shared_bytes
                       FROM pgbranch.branch_size('api_size')",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        let (dir, exclusive, shared) = size(&mut c);
        assert!(
            shared > 1 << 20,
            "a fresh branch shares its template's files: {shared}"
        );
        assert_eq!(exclusive, btrfs_du_exclusive(&dir));

        session("api_size")
            .simple_query(
                "CREATE TABLE t AS SELECT repeat('x', 500) AS v FROM generate_series(1, 20000)",
            )
            .unwrap();
        let (dir, exclusive_after, _) = size(&mut c);
        assert!(
            exclusive_after >= exclusive + (8 << 20),
            "{exclusive} -> {exclusive_after}"
        );
        assert_eq!(exclusive_after, btrfs_du_exclusive(&dir));

        let e = c
            .simple_query("SELECT * FROM pgbranch.branch_size('api_no_such_db')")
            .expect_err("no such database");
        assert_eq!(
            sql_error(&e),
            (
                "3D000".to_owned(),
                "database \"api_no_such_db\" does not exist".to_owned()
            )
        );
        c.simple_query("DROP DATABASE api_size WITH (FORCE)")
            .unwrap();
    }

    /// The superuser-only functions refuse other roles with core's
    /// SQLSTATE, even once EXECUTE is granted.
    #[test]
    fn api_superuser_only_even_when_granted() {
        let mut c = session("pgrx_tests");
        c.batch_execute(
            "DROP ROLE IF EXISTS branch_api_granted;
             CREATE ROLE branch_api_granted;
             GRANT USAGE ON SCHEMA pgbranch TO branch_api_granted;
             GRANT EXECUTE ON FUNCTION pgbranch.remove_orphans(),
                   pgbranch.convert_to_subvolume(text),
                   pgbranch.convert_all_to_subvolumes() TO branch_api_granted;
             SET ROLE branch_api_granted",
        )
        .unwrap();
        for (call, what) in [
            ("remove_orphans()", "remove orphaned database directories"),
            (
                "convert_to_subvolume('pgrx_tests')",
                "convert database directories",
            ),
            (
                "convert_all_to_subvolumes()",
                "convert database directories",
            ),
        ] {
            let e = c
                .simple_query(&format!("SELECT * FROM pgbranch.{call}"))
                .expect_err(call);
            assert_eq!(
                sql_error(&e),
                ("42501".to_owned(), format!("must be superuser to {what}")),
                "{call}"
            );
        }
        c.batch_execute(
            "RESET ROLE;
             DROP OWNED BY branch_api_granted;
             DROP ROLE branch_api_granted",
        )
        .unwrap();
    }
}
