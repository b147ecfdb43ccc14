//! The `cargo pgrx test` suite: one server that pgrx-tests starts with
//! pg_branch preloaded (`crate::pg_test`) and its data directory where
//! `CARGO_PGRX_TEST_PGDATA` points (scripts/test.sh puts it on the btrfs
//! loop mount, so branches are real snapshots and reflinks).
//!
//! Two kinds of test, by where the statement can run:
//! - `#[pg_test]` functions run inside a backend, in a transaction that is
//!   rolled back: the SQL API ([`api`]), the settings ([`gucs`]) and the
//!   option parser, called directly on parsed statements ([`options`]).
//! - `CREATE DATABASE` cannot run in a transaction, so the hook's decisions
//!   ([`hook`]) are host-side `#[test]`s that talk to the same server
//!   through sessions of their own ([`session`]).
//!
//! Everything that needs more than one server (crashes, standbys, backups,
//! other filesystems, concurrent writers) is in the pytest suites (tests/).

mod api;
mod gucs;
#[cfg(test)]
mod hook;
mod options;

/// A session on the test server, connected to database `db`, outside any
/// test's transaction. Starts the server first if no test has yet.
#[cfg(test)]
pub fn session(db: &str) -> postgres::Client {
    pgrx_tests::run_test(
        "pg_branch_is_preloaded",
        None,
        crate::pg_test::postgresql_conf_options(),
    )
    .expect("the test server did not start");
    let (mut harness, _) = pgrx_tests::client().expect("no session on the test server");
    if db == pgrx_tests::get_pg_dbname() {
        return harness;
    }
    let port: String = harness
        .query_one("SELECT current_setting('port')", &[])
        .expect("SHOW port")
        .get(0);
    postgres::Config::new()
        .host("localhost")
        .port(port.parse().expect("a port number"))
        .user(&pgrx_tests::get_pg_user())
        .dbname(db)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to database {db}: {e}"))
}

/// The SQLSTATE and message of a failed statement.
#[cfg(test)]
pub fn sql_error(e: &postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
        None => ("<no SQLSTATE>".to_owned(), e.to_string()),
    }
}
