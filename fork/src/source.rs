//! The running server a fork is taken from: what it says about itself, and
//! the backup protocol on one session (`pg_backup_start` …
//! `pg_backup_stop`) with a temporary replication slot that keeps its WAL.
//!
//! Everything here only reads or asks the server: if this process dies,
//! the server ends the session, which aborts the backup and drops the slot
//! (both are tied to the session), and the source is as it was.

use crate::failure::Failure;
use postgres::config::Host;
use postgres::{Client, Config, NoTls};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    pub location: PathBuf,
}

pub struct Source {
    client: Client,
    pub data_dir: PathBuf,
    /// `server_version_num` / 10000.
    pub major: u32,
    pub in_recovery: bool,
    pub segment_size: u64,
    pub system_identifier: u64,
    pub tablespaces: Vec<Tablespace>,
    pub bindir: PathBuf,
    /// The configuration files, which may live outside the data directory
    /// (Debian keeps them in /etc/postgresql).
    pub config_file: PathBuf,
    pub hba_file: PathBuf,
    pub ident_file: PathBuf,
}

/// What `pg_backup_stop` returned.
pub struct Stopped {
    pub lsn: u64,
    pub label: String,
}

/// The connection defaults libpq would use where the string names none:
/// PGHOST/PGPORT/PGUSER, then the local socket directory and the OS user.
fn config_from(dsn: &str) -> Result<Config, Failure> {
    let mut c = Config::from_str(dsn)
        .map_err(|e| Failure::new(format!("invalid connection string: {e}")))?;
    if c.get_hosts().is_empty() {
        match std::env::var("PGHOST") {
            Ok(h) if h.starts_with('/') => c.host_path(h),
            Ok(h) => c.host(&h),
            Err(_) if Path::new("/run/postgresql").is_dir() => c.host_path("/run/postgresql"),
            Err(_) => c.host_path("/tmp"),
        };
    }
    if c.get_ports().is_empty() {
        let port = std::env::var("PGPORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432);
        c.port(port);
    }
    if c.get_user().is_none() {
        let user = std::env::var("PGUSER").unwrap_or_else(|_| os_user());
        c.user(&user);
    }
    if c.get_dbname().is_none() {
        c.dbname("postgres");
    }
    c.application_name("pg_branch fork");
    Ok(c)
}

fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; the
    // name is copied out before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return "postgres".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn describe(c: &Config) -> String {
    let host = match c.get_hosts().first() {
        Some(Host::Unix(p)) => p.display().to_string(),
        Some(Host::Tcp(h)) => h.clone(),
        None => String::new(),
    };
    format!(
        "host={host} port={}",
        c.get_ports().first().copied().unwrap_or(5432)
    )
}

impl Source {
    pub fn connect(dsn: &str) -> Result<Source, Failure> {
        let config = config_from(dsn)?;
        let mut client = config.connect(NoTls).map_err(|e| {
            Failure::sql("could not connect to the source server")(e)
                .detail(format!("Tried {}.", describe(&config)))
        })?;
        let q = "SELECT current_setting('data_directory'), current_setting('server_version_num')::int,
                        pg_is_in_recovery(),
                        (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                        (SELECT system_identifier FROM pg_control_system())::text,
                        current_setting('wal_level'),
                        current_setting('config_file'), current_setting('hba_file'), current_setting('ident_file')";
        let row = client
            .query_one(q, &[])
            .map_err(Failure::sql("could not read the source's settings"))?;
        let version: i32 = row.get(1);
        if version < 150000 {
            return Err(Failure::new(format!(
                "the source server is PostgreSQL {}; pg_branch fork needs 15 or later",
                version / 10000
            )));
        }
        if row.get::<_, String>(5) == "minimal" {
            return Err(Failure::new("the source server has wal_level = minimal")
                .detail("A fork is a base backup, which needs WAL of level replica or logical.")
                .hint("Set wal_level = replica and restart the source."));
        }
        let bindir = client
            .query_opt("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[])
            .ok()
            .flatten()
            .map(|r| PathBuf::from(r.get::<_, String>(0)))
            .unwrap_or_default();
        let tablespaces = client
            .query(
                "SELECT oid::int8, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace
                  WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
                &[],
            )
            .map_err(Failure::sql("could not list the source's tablespaces"))?
            .into_iter()
            .map(|r| Tablespace {
                oid: r.get::<_, i64>(0) as u32,
                name: r.get(1),
                location: PathBuf::from(r.get::<_, String>(2)),
            })
            .collect();
        Ok(Source {
            client,
            data_dir: PathBuf::from(row.get::<_, String>(0)),
            major: (version / 10000) as u32,
            in_recovery: row.get(2),
            segment_size: row.get::<_, i64>(3) as u64,
            system_identifier: row.get::<_, String>(4).parse().unwrap_or(0),
            tablespaces,
            bindir,
            config_file: PathBuf::from(row.get::<_, String>(6)),
            hba_file: PathBuf::from(row.get::<_, String>(7)),
            ident_file: PathBuf::from(row.get::<_, String>(8)),
        })
    }

    /// Start the backup: first a temporary physical slot that reserves WAL
    /// from the last checkpoint's redo point on (so no checkpoint or
    /// restartpoint during the copy removes a segment the fork needs), then
    /// `pg_backup_start` with an immediate checkpoint. Returns the start LSN.
    pub fn start_backup(&mut self) -> Result<u64, Failure> {
        let slot = format!("pg_branch_fork_{}", std::process::id());
        self.client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true, true)",
                &[&slot],
            )
            .map_err(|e| {
                Failure::sql("could not create a temporary replication slot on the source")(e).hint(
                    "The fork reserves the source's WAL with one; check max_replication_slots.",
                )
            })?;
        let row = self
            .client
            .query_one("SELECT pg_backup_start('pg_branch fork', true)::text", &[])
            .map_err(Failure::sql("pg_backup_start failed"))?;
        parse_lsn(row.get(0))
    }

    /// End the backup without waiting for the archive: the fork gets its
    /// WAL from the source's pg_wal, not from an archive.
    pub fn stop_backup(&mut self) -> Result<Stopped, Failure> {
        let row = self
            .client
            .query_one(
                "SELECT lsn::text, labelfile FROM pg_backup_stop(false)",
                &[],
            )
            .map_err(Failure::sql("pg_backup_stop failed"))?;
        Ok(Stopped {
            lsn: parse_lsn(row.get(0))?,
            label: row.get(1),
        })
    }
}

/// `X/Y` as a 64-bit WAL position.
pub fn parse_lsn(s: &str) -> Result<u64, Failure> {
    let bad = || Failure::new(format!("invalid WAL location \"{s}\""));
    let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok(hi << 32 | lo)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
