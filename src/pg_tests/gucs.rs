//! The `pg_branch.*` settings (src/gucs.rs).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn show(name: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT current_setting('{name}')"))
            .unwrap()
            .unwrap()
    }

    /// The server runs with the library preloaded and the defaults the
    /// README documents. (Also the test that starts the server for the
    /// host-side tests: see `pg_tests::session`.)
    #[pg_test]
    fn pg_branch_is_preloaded() {
        assert!(show("shared_preload_libraries").contains("pg_branch"));
        assert_eq!(show("pg_branch.enabled"), "on");
        assert_eq!(show("pg_branch.wal_record"), "pg_branch");
    }

    /// Any role may turn branching off for itself: it grants nothing.
    #[pg_test]
    fn gucs_enabled_is_user_settable() {
        Spi::run("CREATE ROLE branch_gucs_user").unwrap();
        Spi::run("SET ROLE branch_gucs_user").unwrap();
        Spi::run("SET pg_branch.enabled = off").unwrap();
        assert_eq!(show("pg_branch.enabled"), "off");
    }

    /// Which WAL record describes a branch decides what standbys must run:
    /// superuser only.
    #[pg_test(error = "permission denied to set parameter \"pg_branch.wal_record\"")]
    fn gucs_wal_record_is_superuser_only() {
        Spi::run("CREATE ROLE branch_gucs_other").unwrap();
        Spi::run("SET ROLE branch_gucs_other").unwrap();
        Spi::run("SET pg_branch.wal_record = core").unwrap();
    }

    #[pg_test]
    fn gucs_wal_record_accepts_core() {
        Spi::run("SET pg_branch.wal_record = core").unwrap();
        assert_eq!(show("pg_branch.wal_record"), "core");
    }

    #[pg_test(error = "invalid value for parameter \"pg_branch.wal_record\": \"fast\"")]
    fn gucs_wal_record_rejects_other_values() {
        Spi::run("SET pg_branch.wal_record = fast").unwrap();
    }

    /// The prefix is reserved: a typo is an error, not a new placeholder.
    #[pg_test(error = "invalid configuration parameter name \"pg_branch.enable\"")]
    fn gucs_prefix_is_reserved() {
        Spi::run("SET pg_branch.enable = off").unwrap();
    }
}
