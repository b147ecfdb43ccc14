//! The hook's decision on each kind of `CREATE DATABASE` (src/hook.rs):
//! branch, hand to core, or fail with core's error. Host-side tests, since
//! CREATE DATABASE cannot run inside the transaction of a `#[pg_test]`.
//! They run concurrently, so each names its own databases.

use super::{session, sql_error};
use postgres::Client;
use std::os::unix::fs::MetadataExt;

/// Database `name`, made fresh, holding table `t` with 100 rows.
fn template(name: &str) {
    let mut c = session("pgrx_tests");
    c.simple_query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    c.simple_query(&format!("CREATE DATABASE {name}")).unwrap();
    session(name)
        .simple_query("CREATE TABLE t AS SELECT generate_series(1, 100) AS i")
        .unwrap();
}

/// The rows of table `t` in database `db`.
fn rows(db: &str) -> i64 {
    session(db)
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0)
}

/// What `last_branch()` says in session `c`: (template, method).
fn last_branch(c: &mut Client) -> Option<(String, String)> {
    c.query_opt("SELECT template, method FROM pgbranch.last_branch()", &[])
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

fn drop_databases(c: &mut Client, names: &[&str]) {
    for name in names {
        c.simple_query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
    }
}

fn fails(c: &mut Client, sql: &str) -> (String, String) {
    sql_error(&c.simple_query(sql).expect_err(sql))
}

/// A plain CREATE DATABASE ... TEMPLATE is a branch, made while a session
/// is connected to the template (which core refuses), with its rows.
#[test]
fn hook_branches_a_template_in_use() {
    template("hook_live_src");
    let mut busy = session("hook_live_src");
    busy.simple_query("BEGIN; SELECT count(*) FROM t").unwrap();
    let mut c = session("pgrx_tests");
    c.simple_query("CREATE DATABASE hook_live TEMPLATE hook_live_src")
        .unwrap();
    let (template, method) = last_branch(&mut c).expect("a branch");
    assert_eq!(template, "hook_live_src");
    assert!(
        ["snapshot", "reflink"].contains(&method.as_str()),
        "{method}"
    );
    assert_eq!(rows("hook_live"), 100);
    busy.simple_query("COMMIT").unwrap();
    drop_databases(&mut c, &["hook_live", "hook_live_src"]);
}

/// STRATEGY = SNAPSHOT asks for a branch, and gets one where it can be made.
#[test]
fn hook_strategy_snapshot_branches() {
    template("hook_snap_src");
    let mut c = session("pgrx_tests");
    c.simple_query("CREATE DATABASE hook_snap TEMPLATE hook_snap_src STRATEGY = SNAPSHOT")
        .unwrap();
    assert_eq!(
        last_branch(&mut c).map(|b| b.0).as_deref(),
        Some("hook_snap_src")
    );
    assert_eq!(rows("hook_snap"), 100);
    drop_databases(&mut c, &["hook_snap", "hook_snap_src"]);
}

/// STRATEGY WAL_LOG and FILE_COPY are core's, exactly: no branch, and
/// core's refusal while the template is in use.
#[test]
fn hook_core_strategies_go_to_core() {
    template("hook_core_src");
    let mut c = session("pgrx_tests");
    for (db, strategy) in [
        ("hook_core_wal", "WAL_LOG"),
        ("hook_core_copy", "FILE_COPY"),
    ] {
        c.simple_query(&format!(
            "CREATE DATABASE {db} TEMPLATE hook_core_src STRATEGY = {strategy}"
        ))
        .unwrap();
        assert_eq!(last_branch(&mut c), None, "{strategy}");
        assert_eq!(rows(db), 100, "{strategy}");
    }
    let _busy = session("hook_core_src");
    let (code, message) = fails(
        &mut c,
        "CREATE DATABASE hook_core_busy TEMPLATE hook_core_src STRATEGY = WAL_LOG",
    );
    assert_eq!(code, "55006");
    assert_eq!(
        message,
        "source database \"hook_core_src\" is being accessed by other users"
    );
    drop(_busy);
    drop_databases(
        &mut c,
        &[
            "hook_core_wal",
            "hook_core_copy",
            "hook_core_busy",
            "hook_core_src",
        ],
    );
}

/// With pg_branch.enabled off, every statement is core's; SNAPSHOT, which
/// core does not know, says why it cannot be honoured.
#[test]
fn hook_disabled_is_core() {
    template("hook_off_src");
    let mut c = session("pgrx_tests");
    c.simple_query("SET pg_branch.enabled = off").unwrap();
    c.simple_query("CREATE DATABASE hook_off TEMPLATE hook_off_src")
        .unwrap();
    assert_eq!(last_branch(&mut c), None);
    assert_eq!(rows("hook_off"), 100);
    let (code, message) = fails(
        &mut c,
        "CREATE DATABASE hook_off_snap TEMPLATE hook_off_src STRATEGY = SNAPSHOT",
    );
    assert_eq!(code, "0A000");
    assert_eq!(
        message,
        "cannot create a database with STRATEGY SNAPSHOT while pg_branch.enabled is off"
    );
    drop_databases(&mut c, &["hook_off", "hook_off_snap", "hook_off_src"]);
}

/// Into a tablespace on tmpfs, which cannot clone files: SNAPSHOT fails
/// (0A000) leaving nothing behind; without a strategy the statement is
/// core's copy, after a NOTICE.
#[test]
fn hook_no_clone_possible() {
    template("hook_tmpfs_src");
    let mut c = session("pgrx_tests");
    let data: String = c
        .query_one("SELECT current_setting('data_directory')", &[])
        .unwrap()
        .get(0);
    let owner = std::fs::metadata(&data).unwrap();
    let location = format!("/dev/shm/pg_branch_pgrx_{}", std::process::id());
    let _ = std::fs::remove_dir_all(&location);
    std::fs::create_dir(&location).unwrap();
    std::os::unix::fs::chown(&location, Some(owner.uid()), Some(owner.gid())).unwrap();
    c.simple_query("DROP TABLESPACE IF EXISTS hook_tmpfs")
        .unwrap();
    c.simple_query(&format!(
        "CREATE TABLESPACE hook_tmpfs LOCATION '{location}'"
    ))
    .unwrap();

    let (code, message) = fails(
        &mut c,
        "CREATE DATABASE hook_tmpfs TEMPLATE hook_tmpfs_src TABLESPACE hook_tmpfs STRATEGY = SNAPSHOT",
    );
    assert_eq!(code, "0A000");
    assert_eq!(
        message,
        "cannot create database with STRATEGY SNAPSHOT from template \"hook_tmpfs_src\""
    );
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'hook_tmpfs'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let in_tablespace: Vec<_> = walk(std::path::Path::new(&location))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(in_tablespace.is_empty(), "{in_tablespace:?}");

    c.simple_query("CREATE DATABASE hook_tmpfs TEMPLATE hook_tmpfs_src TABLESPACE hook_tmpfs")
        .unwrap();
    assert_eq!(last_branch(&mut c), None);
    assert_eq!(rows("hook_tmpfs"), 100);

    drop_databases(&mut c, &["hook_tmpfs", "hook_tmpfs_src"]);
    c.simple_query("DROP TABLESPACE hook_tmpfs").unwrap();
    std::fs::remove_dir_all(&location).unwrap();
}

/// Every file under `dir`, and the directories on the way.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// The checks core makes before it copies anything come first, with
/// core's SQLSTATEs and words.
#[test]
fn hook_core_checks_come_first() {
    let mut c = session("pgrx_tests");
    let mut tx = c.transaction().unwrap();
    let (code, message) = sql_error(
        &tx.simple_query("CREATE DATABASE hook_in_tx TEMPLATE template1")
            .expect_err("in a transaction block"),
    );
    assert_eq!(code, "25001");
    assert_eq!(
        message,
        "CREATE DATABASE cannot run inside a transaction block"
    );
    drop(tx);

    let (code, message) = fails(&mut c, "CREATE DATABASE hook_nope TEMPLATE hook_no_such_db");
    assert_eq!(code, "3D000");
    assert_eq!(
        message,
        "template database \"hook_no_such_db\" does not exist"
    );

    let (code, message) = fails(&mut c, "CREATE DATABASE hook_bogus STRATEGY = bogus");
    assert_eq!(code, "22023");
    assert_eq!(message, "invalid create database strategy \"bogus\"");
}
