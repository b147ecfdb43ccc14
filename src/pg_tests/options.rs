//! The `CREATE DATABASE` option parser (src/options.rs), called directly on
//! statements that core's raw parser produced.

#[pgrx::pg_schema]
mod tests {
    use crate::options::{peek, requested_strategy, CreatedbOptions, Strategy};
    use pgrx::prelude::*;
    use pgrx::PgList;
    use std::ffi::CString;

    /// The `CreatedbStmt` of `sql`, allocated in the test's memory context.
    fn parse(sql: &str) -> *mut pg_sys::CreatedbStmt {
        let sql = CString::new(sql).unwrap();
        // SAFETY: raw_parser copies the text into nodes in
        // CurrentMemoryContext, which lives until the test ends.
        let list =
            unsafe { pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT) };
        // SAFETY: a list of RawStmt, as raw_parser returns.
        let raw = unsafe { PgList::<pg_sys::RawStmt>::from_pg(list) }
            .get_ptr(0)
            .expect("one statement");
        // SAFETY: raw points into that list, and its stmt is a Node.
        let (node, is_createdb) = unsafe {
            (
                (*raw).stmt,
                pgrx::is_a((*raw).stmt, pg_sys::NodeTag::T_CreatedbStmt),
            )
        };
        assert!(is_createdb, "not a CREATE DATABASE");
        node.cast()
    }

    fn strategy(sql: &str) -> Strategy {
        // SAFETY: a CreatedbStmt from parse().
        unsafe { requested_strategy(parse(sql)) }
    }

    fn options(sql: &str) -> CreatedbOptions {
        let stmt = parse(sql);
        // SAFETY: a fresh ParseState over a CreatedbStmt from parse(),
        // inside the test's transaction.
        unsafe {
            let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
            CreatedbOptions::parse(pstate, stmt)
        }
    }

    /// The hook's first question: which strategy, case-insensitively;
    /// unknown names stay ours so that the error names SNAPSHOT.
    #[pg_test]
    fn options_requested_strategy() {
        assert_eq!(strategy("CREATE DATABASE d"), Strategy::Default);
        assert_eq!(
            strategy("CREATE DATABASE d STRATEGY = wal_log"),
            Strategy::Core
        );
        assert_eq!(
            strategy("CREATE DATABASE d STRATEGY FILE_COPY"),
            Strategy::Core
        );
        assert_eq!(
            strategy("CREATE DATABASE d STRATEGY = 'Snapshot'"),
            Strategy::Snapshot
        );
        assert_eq!(
            strategy("CREATE DATABASE d STRATEGY = bogus"),
            Strategy::Default
        );
    }

    /// peek() reads one option as core's defGetString would, quoting kept.
    #[pg_test]
    fn options_peek() {
        let stmt = parse(r#"CREATE DATABASE d TEMPLATE "Mixed Case" TABLESPACE = ts1"#);
        // SAFETY: a CreatedbStmt from parse().
        let (template, tablespace, owner) = unsafe {
            (
                peek(stmt, "template"),
                peek(stmt, "tablespace"),
                peek(stmt, "owner"),
            )
        };
        assert_eq!(template.as_deref(), Some(c"Mixed Case"));
        assert_eq!(tablespace.as_deref(), Some(c"ts1"));
        assert_eq!(owner, None);
    }

    /// Every option a statement gives lands in its field.
    #[pg_test]
    fn options_parse_fields() {
        let o = options(
            "CREATE DATABASE d OWNER = alice TEMPLATE = t ENCODING = 'UTF8' \
             IS_TEMPLATE = true ALLOW_CONNECTIONS = false CONNECTION LIMIT = 7 \
             TABLESPACE = ts STRATEGY = snapshot OID = 40000",
        );
        assert_eq!(o.owner.as_deref(), Some(c"alice"));
        assert_eq!(o.template.as_deref(), Some(c"t"));
        assert_eq!(o.encoding, pg_sys::pg_enc::PG_UTF8 as i32);
        assert!(o.is_template);
        assert!(!o.allow_connections);
        assert_eq!(o.connection_limit, 7);
        assert_eq!(o.tablespace.as_deref(), Some(c"ts"));
        assert_eq!(o.strategy.as_deref(), Some("snapshot"));
        assert_eq!(o.oid, pg_sys::Oid::from(40000));
    }

    /// What a statement leaves out takes core's defaults.
    #[pg_test]
    fn options_parse_defaults() {
        let o = options("CREATE DATABASE d");
        assert_eq!(o.owner, None);
        assert_eq!(o.template, None);
        assert_eq!(o.encoding, -1);
        assert!(!o.is_template);
        assert!(o.allow_connections);
        assert_eq!(o.connection_limit, pg_sys::DATCONNLIMIT_UNLIMITED);
        assert_eq!(o.oid, pg_sys::InvalidOid);
        assert_eq!(o.strategy, None);
    }

    #[pg_test(error = "conflicting or redundant options")]
    fn options_repeated_option() {
        options("CREATE DATABASE d OWNER = a OWNER = b");
    }

    #[pg_test(error = "option \"bogus\" not recognized")]
    fn options_unknown_option() {
        options("CREATE DATABASE d BOGUS = 1");
    }

    #[pg_test(error = "invalid connection limit: -2")]
    fn options_connection_limit_below_unlimited() {
        options("CREATE DATABASE d CONNECTION LIMIT = -2");
    }

    #[pg_test(error = "OIDs less than 16384 are reserved for system objects")]
    fn options_system_oid() {
        options("CREATE DATABASE d OID = 100");
    }

    #[pg_test(error = "klingon is not a valid encoding name")]
    fn options_unknown_encoding() {
        options("CREATE DATABASE d ENCODING = klingon");
    }

    #[pg_test(error = "unrecognized locale provider: klingon")]
    fn options_unknown_locale_provider() {
        options("CREATE DATABASE d LOCALE_PROVIDER = klingon");
    }
}
