//! `--start`: the fork started by `pg_ctl start -w`, as a user would, with
//! its log in `<fork>/log/pg_ctl.log`. It first replays the WAL from its
//! backup label's checkpoint to consistency; `-w` waits until it accepts
//! connections.

use crate::failure::Failure;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `<fork>/log/pg_ctl.log`, its directory made (before the fork is
/// synced, so that the command it prints without `--start` works too).
pub fn log_file(data: &Path) -> Result<PathBuf, Failure> {
    let log_dir = data.join("log");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&log_dir)
        .map_err(Failure::io("create directory", &log_dir))?;
    Ok(log_dir.join("pg_ctl.log"))
}

pub fn start(bindir: &Path, data: &Path, log: &Path) -> Result<(), Failure> {
    let pg_ctl = bindir.join("pg_ctl");
    let out = Command::new(&pg_ctl)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "300", "start"])
        .output()
        .map_err(Failure::io("run", &pg_ctl))?;
    if !out.status.success() {
        let tail: Vec<String> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(10)
            .map(String::from)
            .collect();
        return Err(
            Failure::new(format!("the fork in \"{}\" did not start", data.display()))
                .detail(format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ))
                .hint("The fork is complete; fix the cause and start it with pg_ctl."),
        );
    }
    eprintln!("pg_branch: the fork is running (log: {})", log.display());
    Ok(())
}
