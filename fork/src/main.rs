//! `pg_branch`: the command-line side of pg_branch. One command so far,
//! `pg_branch fork` (fork.rs), run on the database host as the owner of
//! the data directory, like pg_basebackup and pg_ctl.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod args;
mod copy;
mod failure;
mod fork;
mod settings;
mod source;
mod start;
mod sysid;
mod target;
mod wal;

use args::Command;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match args::parse(&argv) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            0
        }
        Ok(Command::Version) => {
            println!("pg_branch {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::Fork(o)) => match fork::run(&o) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Err(msg) => {
            eprintln!("pg_branch: error: {msg}");
            eprintln!("pg_branch: hint: Try \"pg_branch --help\" for more information.");
            1
        }
    };
    std::process::exit(code);
}
