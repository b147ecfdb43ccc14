//! The command line, in the style of pg_basebackup's: long options with
//! `=` or a separate value, and the short forms pg_basebackup users know
//! (`-d` connection string, `-D` directory, `-p` port, `-T` mapping).

use std::path::PathBuf;

pub const USAGE: &str = "\
pg_branch fork makes a copy-on-write copy of a running PostgreSQL cluster.

Usage:
  pg_branch fork --source-dsn=CONNSTR --target=DIR --port=PORT [OPTION]...

Options:
  -d, --source-dsn=CONNSTR   the server to fork (key=value or URI; a local
                             socket, as a superuser or a role with REPLICATION
                             that may run pg_backup_start)
  -D, --target=DIR           the fork's data directory (made; must not exist,
                             or be empty), on the source's filesystem
  -p, --port=PORT            the fork's port
  -T, --tablespace-mapping=OLDDIR=NEWDIR
                             put the tablespace at OLDDIR into NEWDIR (default:
                             DIR.tblspc/<tablespace OID>)
      --start                start the fork (pg_ctl start -w), log in DIR/log
      --standby              write standby.signal: the fork starts as a standby
                             (with no primary_conninfo until you set one)
      --new-system-identifier
                             give the fork a system identifier of its own
      --bindir=DIR           where pg_ctl is (default: the source's BINDIR)
  -v, --verbose              show the time each step takes
  -V, --version              show the version, then exit
  -h, --help                 show this help, then exit
";

#[derive(Debug, Default)]
pub struct Options {
    pub source_dsn: String,
    pub target: PathBuf,
    pub port: u16,
    pub mappings: Vec<(PathBuf, PathBuf)>,
    pub start: bool,
    pub standby: bool,
    pub new_system_identifier: bool,
    pub bindir: Option<PathBuf>,
    pub verbose: bool,
}

#[derive(Debug)]
pub enum Command {
    Fork(Options),
    Help,
    Version,
}

/// Parse `args` (without the program name). Errors are one line, for
/// `pg_branch: error: …` followed by the `--help` hint.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("fork") => {}
        Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some("-V" | "--version") => return Ok(Command::Version),
        Some(other) => return Err(format!("unknown command \"{other}\"")),
        None => return Err("no command given".into()),
    }
    let mut o = Options::default();
    let (mut dsn, mut target, mut port) = (None, None, None);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("option \"{name}\" requires a value")),
            }
        };
        match name {
            "-d" | "--source-dsn" => dsn = Some(value(name)?),
            "-D" | "--target" => target = Some(PathBuf::from(value(name)?)),
            "-p" | "--port" => {
                let v = value(name)?;
                port = Some(match v.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return Err(format!("invalid port \"{v}\": must be 1-65535")),
                })
            }
            "-T" | "--tablespace-mapping" => {
                let v = value(name)?;
                let Some((old, new)) = v.split_once('=') else {
                    return Err(format!(
                        "invalid tablespace mapping \"{v}\": must be OLDDIR=NEWDIR"
                    ));
                };
                let (old, new) = (PathBuf::from(old), PathBuf::from(new));
                if !old.is_absolute() || !new.is_absolute() {
                    return Err(format!(
                        "invalid tablespace mapping \"{v}\": both directories must be absolute"
                    ));
                }
                o.mappings.push((old, new));
            }
            "--start" => o.start = true,
            "--standby" => o.standby = true,
            "--new-system-identifier" => o.new_system_identifier = true,
            "--bindir" => o.bindir = Some(PathBuf::from(value(name)?)),
            "-v" | "--verbose" => o.verbose = true,
            "-h" | "--help" => return Ok(Command::Help),
            _ => return Err(format!("unrecognized option \"{arg}\"")),
        }
        if inline.is_some() && !name.starts_with("--") {
            return Err(format!("unrecognized option \"{arg}\""));
        }
    }
    o.source_dsn = dsn.ok_or("--source-dsn is required")?;
    o.target = target.ok_or("--target is required")?;
    o.port = port.ok_or("--port is required")?;
    Ok(Command::Fork(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn both_spellings_of_a_value() {
        let Ok(Command::Fork(o)) = parse(&args(
            "fork -d port=5432 --target=/srv/f --port 5433 -T /a=/b --start --new-system-identifier",
        )) else {
            panic!()
        };
        assert_eq!(o.source_dsn, "port=5432");
        assert_eq!(o.target, PathBuf::from("/srv/f"));
        assert_eq!(o.port, 5433);
        assert_eq!(o.mappings, vec![(PathBuf::from("/a"), PathBuf::from("/b"))]);
        assert!(o.start && o.new_system_identifier && !o.standby);
    }

    #[test]
    fn bad_input_is_one_clear_line() {
        let e = |s| parse(&args(s)).unwrap_err();
        assert_eq!(e("fork -d x -D /t"), "--port is required");
        assert_eq!(
            e("fork -d x -D /t -p 0"),
            "invalid port \"0\": must be 1-65535"
        );
        assert_eq!(
            e("fork -d x -D /t -p 1 -T a"),
            "invalid tablespace mapping \"a\": must be OLDDIR=NEWDIR"
        );
        assert_eq!(
            e("fork -d x -D /t -p 1 -T a=/b"),
            "invalid tablespace mapping \"a=/b\": both directories must be absolute"
        );
        assert_eq!(
            e("fork --frobnicate"),
            "unrecognized option \"--frobnicate\""
        );
        assert_eq!(e("frob"), "unknown command \"frob\"");
    }
}
