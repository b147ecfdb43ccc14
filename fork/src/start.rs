//! `--start`: the fork started by `pg_ctl start -w`, as a user would, with
//! its log in `<fork>/log/pg_ctl.log`. It first replays the WAL from its
//! backup label's checkpoint to consistency; `-w` waits until it accepts
//! connections.

use crate::failure::Failure;
use std::path::Path;
use std::process::Command;

pub fn start(bindir: &Path, data: &Path) -> Result<(), Failure> {
    let log_dir = data.join("log");
    std::fs::create_dir_all(&log_dir).map_err(Failure::io("create directory", &log_dir))?;
    let log = log_dir.join("pg_ctl.log");
    let pg_ctl = bindir.join("pg_ctl");
    let out = Command::new(&pg_ctl)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "300", "start"])
        .output()
        .map_err(Failure::io("run", &pg_ctl))?;
    if !out.status.success() {
        let tail: Vec<String> = std::fs::read_to_string(&log)
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
