//! What makes a fork a server of its own rather than a second copy of its
//! source: its port, and nothing that would tie it to the source or to the
//! source's standbys and archive. Written into the fork's
//! `postgresql.auto.conf`, which is read after `postgresql.conf`, so each
//! line overrides the source's setting.

use crate::failure::Failure;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Append the fork's own settings to its postgresql.auto.conf.
pub fn write_auto_conf(data: &Path, port: u16, source: &Path) -> Result<(), Failure> {
    let path = data.join("postgresql.auto.conf");
    let text = format!(
        "# Added by pg_branch fork of {}:\n\
         port = {port}\n\
         # not a standby of the source, and not its archiver\n\
         primary_conninfo = ''\n\
         primary_slot_name = ''\n\
         restore_command = ''\n\
         archive_mode = 'off'\n\
         # no standby of the fork confirms its commits\n\
         synchronous_standby_names = ''\n",
        source.display()
    );
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(Failure::io("open file", &path))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(Failure::io("write file", &path))
}

/// `backup_label`, as `pg_backup_stop` returned it: the new server starts
/// by replaying WAL from its checkpoint, to consistency.
pub fn write_backup_label(data: &Path, label: &str) -> Result<(), Failure> {
    let path = data.join("backup_label");
    let mut f = File::create(&path).map_err(Failure::io("create file", &path))?;
    f.write_all(label.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(Failure::io("write file", &path))
}

/// `standby.signal` if asked for; a fork has none otherwise (and
/// recovery.signal never: it would end recovery on a new timeline).
pub fn write_standby_signal(data: &Path) -> Result<(), Failure> {
    let path = data.join("standby.signal");
    File::create(&path)
        .and_then(|f| f.sync_all())
        .map_err(Failure::io("create file", &path))
}

/// Where the source keeps its configuration files outside its data
/// directory (Debian's /etc/postgresql/<version>/<cluster>), the fork gets
/// copies of them in its own, so that `pg_ctl -D <fork>` finds them. In the
/// copy of postgresql.conf the lines that point at the source's files are
/// commented out, and relative `include` paths are made absolute (they
/// were relative to the source's configuration directory).
pub fn copy_outside_config(data: &Path, files: &[(&Path, &str)]) -> Result<(), Failure> {
    for (from, name) in files {
        let to = data.join(name);
        if to.exists() || !from.is_file() {
            continue;
        }
        let text = fs::read_to_string(from).map_err(Failure::io("read file", from))?;
        let text = if *name == "postgresql.conf" {
            rewrite_conf(&text, from.parent().unwrap_or(Path::new("/")))
        } else {
            text
        };
        fs::write(&to, text)
            .and_then(|_| File::open(&to)?.sync_all())
            .map_err(Failure::io("write file", &to))?;
    }
    Ok(())
}

fn rewrite_conf(text: &str, dir: &Path) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let key = trimmed
            .split(|c: char| c == '=' || c.is_whitespace())
            .next()
            .unwrap_or("");
        match key {
            "data_directory" | "hba_file" | "ident_file" | "external_pid_file" => {
                out.push_str("#pg_branch fork: ");
                out.push_str(line);
            }
            "include" | "include_if_exists" | "include_dir" => {
                let value = trimmed[key.len()..]
                    .trim_start()
                    .trim_start_matches('=')
                    .trim();
                match value.strip_prefix('\'').and_then(|v| v.split('\'').next()) {
                    Some(p) if !p.starts_with('/') => {
                        let abs: PathBuf = dir.join(p);
                        out.push_str(&format!("{key} = '{}'", abs.display()));
                    }
                    _ => out.push_str(line),
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rewrite_conf;
    use std::path::Path;

    #[test]
    fn a_copied_conf_points_at_nothing_of_the_source() {
        let conf =
            "data_directory = '/var/lib/postgresql/15/main'\nhba_file = '/etc/x/pg_hba.conf'\n\
                    include_dir = 'conf.d'\ninclude '/abs.conf'\nport = 5432\n";
        let out = rewrite_conf(conf, Path::new("/etc/postgresql/15/main"));
        assert_eq!(
            out,
            "#pg_branch fork: data_directory = '/var/lib/postgresql/15/main'\n\
             #pg_branch fork: hba_file = '/etc/x/pg_hba.conf'\n\
             include_dir = '/etc/postgresql/15/main/conf.d'\ninclude '/abs.conf'\nport = 5432\n"
        );
    }
}
