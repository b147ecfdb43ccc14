//! What names mean: the files of a database directory that are temporary
//! relations, and the entries of a tablespace directory that are databases
//! or the scratch directories pg_branch builds next to them.

use std::ffi::OsStr;

/// Suffix of the subvolume [`convert_to_subvolume`](crate::convert_to_subvolume) builds next to the
/// directory it converts; a crash can leave one behind, and the next
/// conversion removes it.
pub const CONVERT_SUFFIX: &str = "pg_branch_convert";

/// Suffix of the directory a replayed branch is built under before it is
/// renamed into place (the server's redo, `wal.rs`).
pub const REDO_SUFFIX: &str = "pg_branch_redo";

/// Suffix of the directory `pgbranch.reset()` clones the new contents of a
/// branch into before it swaps them in (src/reset.rs); after the swap the
/// old contents are under this name until they are removed.
pub const RESET_SUFFIX: &str = "pg_branch_reset";

/// What a name in a tablespace's database directory stands for: `<oid>`,
/// a database's directory, or `<oid>.pg_branch_convert` /
/// `<oid>.pg_branch_redo`, a scratch directory a crash left behind (then
/// the second field is true). The OID must be spelt as PostgreSQL writes
/// it (`%u`): decimal digits, no sign, no leading zero. `u32::from_str`
/// alone also takes `+16384` and `016384`, and such a directory would then
/// stand for database 16384.
pub fn database_dir_name(name: &str) -> Option<(u32, bool)> {
    let (digits, leftover) = match name.split_once('.') {
        Some((d, suffix)) if [CONVERT_SUFFIX, REDO_SUFFIX, RESET_SUFFIX].contains(&suffix) => {
            (d, true)
        }
        Some(_) => return None,
        None => (name, false),
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, leftover))
}

/// PostgreSQL's `looks_like_temp_rel_name()`: `t<digits>_<digits>`,
/// optionally followed by `_<fork>` and/or `.<segment>`.
pub fn looks_like_temp_rel_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let n = digits(rest);
    if n == 0 || !rest[n..].starts_with('_') {
        return false;
    }
    let rest = &rest[n + 1..];
    let n = digits(rest);
    if n == 0 {
        return false;
    }
    let mut rest = &rest[n..];
    if let Some(fork) = rest.strip_prefix('_') {
        let len = ["fsm", "vm", "init"]
            .iter()
            .find(|f| fork.starts_with(*f))
            .map(|f| f.len());
        match len {
            Some(len) => rest = &fork[len..],
            None => return false,
        }
    }
    if let Some(seg) = rest.strip_prefix('.') {
        let n = digits(seg);
        return n > 0 && n == seg.len();
    }
    rest.is_empty()
}

/// What a relation file's name says, as core's `relpath()` spells it:
/// `<filenode>`, then `_fsm`, `_vm` or `_init` for a fork other than the
/// main one, then `.<segment>` for a segment after the first. Returns the
/// filenode and the fork's name (`main`, `fsm`, `vm`, `init`); `None` for
/// anything else in a database directory (`PG_VERSION`, `pg_filenode.map`,
/// temporary relations, leftovers).
pub fn relation_file_name(name: &str) -> Option<(u32, &'static str)> {
    let plain =
        |s: &str| !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
    let name = match name.split_once('.') {
        Some((rel, seg)) if plain(seg) => rel,
        Some(_) => return None,
        None => name,
    };
    let (digits, fork) = match name.split_once('_') {
        Some((d, "fsm")) => (d, "fsm"),
        Some((d, "vm")) => (d, "vm"),
        Some((d, "init")) => (d, "init"),
        Some(_) => return None,
        None => (name, "main"),
    };
    if !plain(digits) {
        return None;
    }
    Some((digits.parse().ok()?, fork))
}

#[cfg(test)]
mod tests {
    #[test]
    fn relation_files_are_named_as_relpath_names_them() {
        use super::relation_file_name as f;
        assert_eq!(f("16385"), Some((16385, "main")));
        assert_eq!(f("16385.1"), Some((16385, "main")));
        assert_eq!(f("16385_fsm"), Some((16385, "fsm")));
        assert_eq!(f("16385_vm.12"), Some((16385, "vm")));
        assert_eq!(f("16385_init"), Some((16385, "init")));
        for other in [
            "PG_VERSION",
            "pg_filenode.map",
            "pg_internal.init",
            "t3_16385",
            "016385",
            "16385_foo",
            "16385.",
            "16385.01",
            "16385.x",
            "_fsm",
            "",
        ] {
            assert_eq!(f(other), None, "{other}");
        }
    }

    #[test]
    fn only_core_spellings_are_database_directories() {
        use super::database_dir_name;
        assert_eq!(database_dir_name("16384"), Some((16384, false)));
        assert_eq!(database_dir_name("4294967295"), Some((u32::MAX, false)));
        assert_eq!(
            database_dir_name("16384.pg_branch_convert"),
            Some((16384, true))
        );
        assert_eq!(
            database_dir_name("16384.pg_branch_redo"),
            Some((16384, true))
        );
        for name in [
            "+16384",
            "016384",
            "0",
            "",
            "1e4",
            "16384.tmp",
            "-1",
            "4294967296",
            " 1",
            ".pg_branch_redo",
            "+1.pg_branch_redo",
        ] {
            assert_eq!(database_dir_name(name), None, "{name:?}");
        }
    }

    use super::looks_like_temp_rel_name;
    use std::ffi::OsStr;

    #[test]
    fn temp_rel_names_match_postgres() {
        for yes in [
            "t3_16384",
            "t12_1",
            "t3_16384_fsm",
            "t3_16384_vm",
            "t3_16384_init",
            "t3_16384.1",
            "t3_16384_fsm.12",
        ] {
            assert!(looks_like_temp_rel_name(OsStr::new(yes)), "{yes}");
        }
        for no in [
            "16384",
            "t_16384",
            "t3_",
            "t3_x",
            "t3_16384_foo",
            "t3_16384.",
            "t3_16384.1x",
            "PG_VERSION",
            "pg_filenode.map",
            "tx3_1",
        ] {
            assert!(!looks_like_temp_rel_name(OsStr::new(no)), "{no}");
        }
    }
}
