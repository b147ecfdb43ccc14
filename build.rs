//! Compiles pg_branch's C files against the server headers of the
//! PostgreSQL version being built: src/hook.c, the ProcessUtility entry
//! point, and src/drops.c, which tracks recently dropped databases.
//!
//! The pg_config is the one cargo-pgrx names in PGRX_PG_CONFIG_PATH (as
//! pgrx-pg-sys's own build does); without it (plain `cargo build` or
//! `cargo clippy`), the one ~/.pgrx/config.toml lists for the enabled pgNN
//! feature, the same lookup pgrx-pg-sys makes.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/hook.c");
    println!("cargo:rerun-if-changed=src/drops.c");
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PGRX_HOME");

    let pg_config = pg_config();
    let out = Command::new(&pg_config)
        .arg("--includedir-server")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_config.display()));
    assert!(
        out.status.success(),
        "{} --includedir-server failed",
        pg_config.display()
    );
    let include = String::from_utf8(out.stdout).expect("UTF-8 path");
    let include = include.trim();

    cc::Build::new()
        .file("src/hook.c")
        .file("src/drops.c")
        .include(include)
        .flag_if_supported("-fvisibility=hidden")
        .flag_if_supported("-Werror=implicit-function-declaration")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .flag_if_supported("-Wno-sign-compare")
        .compile("pg_branch_hook");
}

/// The major version whose cargo feature is enabled (pg15 … pg18).
fn feature_version() -> &'static str {
    let enabled: Vec<&str> = ["15", "16", "17", "18"]
        .into_iter()
        .filter(|v| std::env::var_os(format!("CARGO_FEATURE_PG{v}")).is_some())
        .collect();
    match enabled.as_slice() {
        [v] => v,
        _ => panic!("enable exactly one of the features pg15, pg16, pg17, pg18"),
    }
}

fn pg_config() -> PathBuf {
    if let Some(p) = std::env::var_os("PGRX_PG_CONFIG_PATH") {
        return PathBuf::from(p);
    }
    let version = feature_version();
    let home = std::env::var_os("PGRX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgrx")))
        .expect("HOME or PGRX_HOME");
    let config = home.join("config.toml");
    println!("cargo:rerun-if-changed={}", config.display());
    let text = std::fs::read_to_string(&config).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run cargo pgrx init)",
            config.display()
        )
    });
    // A line `pgNN = "/path/to/pg_config"` of the [configs] table.
    let key = format!("pg{version}");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| PathBuf::from(v.trim().trim_matches('"')))
        .unwrap_or_else(|| panic!("{} names no pg_config for {key}", config.display()))
}
