//! Storage tests on real filesystems. `scripts/test.sh` loop-mounts two
//! btrfs, an XFS (reflink=1) and an ext4 image and names them in
//! `PG_BRANCH_TEST_BTRFS`, `PG_BRANCH_TEST_BTRFS2`, `PG_BRANCH_TEST_XFS` and
//! `PG_BRANCH_TEST_EXT4`.
//! A test whose filesystem is not named fails: a silently skipped storage
//! test would prove nothing.

use pg_branch_storage::{
    can_reflink_in, clone_dir, convert_to_subvolume, is_subvolume, mount_options, probe,
    referenced_bytes, remove_dir, usage, Converted, Method, Usage,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

fn mount(var: &str) -> PathBuf {
    let dir = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the storage tests through scripts/test.sh, which mounts the filesystems")
    });
    PathBuf::from(dir)
}

/// A fresh, empty scratch directory on the filesystem named by `var`.
fn scratch(var: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = mount(var).join(format!(
        "storage-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A database-like directory: PG_VERSION, a 4 MiB "relation" with two
/// segments, a fork, and a temporary relation.
fn make_template(dir: &Path) {
    fs::create_dir(dir).unwrap();
    fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
    let data: Vec<u8> = (0..4 << 20).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.join("16384"), &data).unwrap();
    fs::write(dir.join("16384.1"), &data[..8192]).unwrap();
    fs::write(dir.join("16384_fsm"), &data[..24576]).unwrap();
    fs::write(dir.join("t3_16390"), b"temp").unwrap();
    Command::new("sync").status().unwrap();
}

/// `root/1`, a plain template directory, and `root/2`, a subvolume cloned
/// from it (as pg_branch makes the first branch of a plain directory).
fn subvolume_template(root: &Path) -> (PathBuf, PathBuf) {
    let plain = root.join("1");
    make_template(&plain);
    let src = root.join("2");
    clone_dir(&plain, &src, Method::Reflink).unwrap();
    (plain, src)
}

fn assert_same_except_temp(src: &Path, dst: &Path) {
    let mut names: Vec<_> = fs::read_dir(dst)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["16384", "16384.1", "16384_fsm", "PG_VERSION"]);
    for n in &names {
        assert_eq!(
            fs::read(src.join(n)).unwrap(),
            fs::read(dst.join(n)).unwrap(),
            "{n}"
        );
    }
}

/// Every extent of `file` is shared with another file (FIEMAP's
/// FIEMAP_EXTENT_SHARED flag, as printed by filefrag).
fn all_extents_shared(file: &Path) -> bool {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<_> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(':'))
        .collect();
    assert!(
        !extents.is_empty(),
        "no extents reported for {}:\n{text}",
        file.display()
    );
    extents.iter().all(|l| l.contains("shared"))
}

#[test]
fn btrfs_plain_directory_is_reflinked_into_a_new_subvolume() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let src = root.join("1");
    make_template(&src);
    assert!(!is_subvolume(&src).unwrap());

    assert_eq!(probe(&src, &root).unwrap(), Ok(Method::Reflink));
    let dst = root.join("2");
    let done = clone_dir(&src, &dst, Method::Reflink).unwrap();
    assert_eq!(
        (done.method, done.files, done.skipped_temp_files),
        (Method::Reflink, 4, 1)
    );
    assert!(
        is_subvolume(&dst).unwrap(),
        "a reflinked clone on btrfs must be a subvolume"
    );
    assert_same_except_temp(&src, &dst);
    assert!(all_extents_shared(&dst.join("16384")));

    remove_dir(&dst).unwrap();
    assert!(!dst.exists());
    remove_dir(&dst).unwrap(); // idempotent
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn btrfs_subvolume_is_snapshotted_and_temp_files_dropped() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let (plain, src) = subvolume_template(&root);
    fs::write(src.join("t7_16400"), b"temp in a subvolume").unwrap();

    assert_eq!(probe(&src, &root).unwrap(), Ok(Method::Snapshot));
    let dst = root.join("3");
    let done = clone_dir(&src, &dst, Method::Snapshot).unwrap();
    assert_eq!(
        (done.method, done.skipped_temp_files),
        (Method::Snapshot, 1)
    );
    assert!(is_subvolume(&dst).unwrap());
    assert!(
        src.join("t7_16400").exists(),
        "the template keeps its own files"
    );
    assert_same_except_temp(&plain, &dst);
    assert!(all_extents_shared(&dst.join("16384")));

    // The branch diverges without touching its template.
    fs::write(dst.join("16384"), b"changed").unwrap();
    assert_eq!(
        fs::read(src.join("16384")).unwrap(),
        fs::read(plain.join("16384")).unwrap()
    );

    for d in [&dst, &src] {
        remove_dir(d).unwrap();
        assert!(!d.exists());
    }
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn snapshot_into_an_existing_name_fails_and_leaves_it_alone() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let (plain, src) = subvolume_template(&root);
    let dst = root.join("3");
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("keep"), b"x").unwrap();
    let err = clone_dir(&src, &dst, Method::Snapshot).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    assert_eq!(fs::read(dst.join("keep")).unwrap(), b"x");
    let err = clone_dir(&plain, &dst, Method::Reflink).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn xfs_with_reflink_clones_file_by_file() {
    let root = scratch("PG_BRANCH_TEST_XFS");
    let src = root.join("1");
    make_template(&src);
    assert_eq!(probe(&src, &root).unwrap(), Ok(Method::Reflink));
    let dst = root.join("2");
    let done = clone_dir(&src, &dst, Method::Reflink).unwrap();
    assert_eq!((done.files, done.skipped_temp_files), (4, 1));
    assert!(!is_subvolume(&dst).unwrap());
    assert_same_except_temp(&src, &dst);
    assert!(all_extents_shared(&dst.join("16384")));
    remove_dir(&dst).unwrap();
    assert!(!dst.exists());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn ext4_cannot_clone_and_probing_leaves_nothing() {
    let root = scratch("PG_BRANCH_TEST_EXT4");
    let src = root.join("1");
    make_template(&src);
    let why = probe(&src, &root).unwrap().unwrap_err();
    assert!(
        why.reason.contains("ext4") && why.reason.contains("cannot clone"),
        "{why}"
    );
    let left: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["1"]);
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn different_filesystems_cannot_share_extents() {
    let btrfs = scratch("PG_BRANCH_TEST_BTRFS");
    let xfs = scratch("PG_BRANCH_TEST_XFS");
    let src = btrfs.join("1");
    make_template(&src);
    let why = probe(&src, &xfs).unwrap().unwrap_err();
    assert!(why.reason.contains("different filesystems"), "{why}");
    fs::remove_dir_all(&btrfs).unwrap();
    fs::remove_dir_all(&xfs).unwrap();
}

/// `chattr +C` on `path`, which must be empty: an empty directory, whose
/// new files then inherit No_COW, or an empty file.
fn chattr_nocow(path: &Path) {
    let ok = Command::new("chattr").arg("+C").arg(path).status().unwrap();
    assert!(ok.success());
}

fn nocow_dir(dir: &Path) {
    fs::create_dir(dir).unwrap();
    chattr_nocow(dir);
}

/// A file with the No_COW attribute holding `data` (btrfs only sets it on
/// empty files, so it is set before the data is written).
fn nocow_file(file: &Path, data: &[u8]) {
    fs::write(file, b"").unwrap();
    chattr_nocow(file);
    fs::write(file, data).unwrap();
}

#[test]
fn btrfs_nocow_files_cannot_be_reflinked_and_say_so() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let src = root.join("1");
    nocow_dir(&src);
    fs::write(src.join("PG_VERSION"), "15\n").unwrap();
    fs::write(src.join("16384"), vec![7u8; 1 << 20]).unwrap();
    let why = probe(&src, &root).unwrap().unwrap_err();
    assert!(
        why.reason.contains("No_COW") && why.reason.contains("PG_VERSION"),
        "{why}"
    );
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        1,
        "probing leaves nothing behind"
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn btrfs_one_nocow_file_among_others_is_named() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let src = root.join("1");
    make_template(&src);
    let nocow = src.join("16400");
    nocow_file(&nocow, &[1u8; 8192]);
    let why = probe(&src, &root).unwrap().unwrap_err();
    assert!(
        why.reason.contains("16400") && why.reason.contains("No_COW"),
        "{why}"
    );
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn btrfs_subvolume_with_nocow_files_is_still_snapshotted() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let (_, src) = subvolume_template(&root);
    let nocow = src.join("16400");
    nocow_file(&nocow, &[1u8; 8192]);
    assert_eq!(probe(&src, &root).unwrap(), Ok(Method::Snapshot));
    let dst = root.join("3");
    clone_dir(&src, &dst, Method::Snapshot).unwrap();
    assert_eq!(fs::read(dst.join("16400")).unwrap(), vec![1u8; 8192]);
    for d in [&dst, &src] {
        remove_dir(d).unwrap();
    }
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_subvolume_on_another_btrfs_filesystem_is_not_snapshotted() {
    let a = scratch("PG_BRANCH_TEST_BTRFS");
    let b = scratch("PG_BRANCH_TEST_BTRFS2");
    let (_, src) = subvolume_template(&a);
    let why = probe(&src, &b).unwrap().unwrap_err();
    assert!(why.reason.contains("different filesystems"), "{why}");
    remove_dir(&src).unwrap();
    fs::remove_dir_all(&a).unwrap();
    fs::remove_dir_all(&b).unwrap();
}

#[test]
fn btrfs_plain_directory_is_converted_in_place_to_a_subvolume() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let dir = root.join("1");
    make_template(&dir);
    let before = root.join("before");
    fs::create_dir(&before).unwrap();
    for f in ["PG_VERSION", "16384", "16384.1", "16384_fsm"] {
        fs::copy(dir.join(f), before.join(f)).unwrap();
    }
    // What a crash in the middle of an earlier conversion leaves.
    let stale = root.join("1.pg_branch_convert");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join("junk"), b"x").unwrap();

    match convert_to_subvolume(&dir).unwrap() {
        Converted::Converted { files, left_behind } => {
            assert_eq!(files, 4);
            assert!(left_behind.is_none(), "{left_behind:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(is_subvolume(&dir).unwrap());
    assert_same_except_temp(&before, &dir);
    assert!(!stale.exists(), "the stale temporary directory is gone");
    // Its branches are now snapshots; converting again does nothing.
    assert_eq!(probe(&dir, &root).unwrap(), Ok(Method::Snapshot));
    assert!(matches!(
        convert_to_subvolume(&dir).unwrap(),
        Converted::AlreadySubvolume
    ));
    remove_dir(&dir).unwrap();
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn only_btrfs_directories_can_become_subvolumes() {
    for var in ["PG_BRANCH_TEST_XFS", "PG_BRANCH_TEST_EXT4"] {
        let root = scratch(var);
        let dir = root.join("1");
        make_template(&dir);
        let err = convert_to_subvolume(&dir).unwrap_err();
        assert!(err.to_string().contains("only btrfs"), "{err}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 5, "left untouched");
        fs::remove_dir_all(&root).unwrap();
    }
}

#[test]
fn reflink_support_of_a_directory_is_diagnosed() {
    for var in ["PG_BRANCH_TEST_BTRFS", "PG_BRANCH_TEST_XFS"] {
        let root = scratch(var);
        assert_eq!(can_reflink_in(&root).unwrap(), Ok(()), "{var}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "nothing left");
        fs::remove_dir_all(&root).unwrap();
    }
    let root = scratch("PG_BRANCH_TEST_EXT4");
    let why = can_reflink_in(&root).unwrap().unwrap_err();
    assert!(why.reason.contains("ext4"), "{why}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn mount_options_are_those_of_the_innermost_mount() {
    let root = scratch("PG_BRANCH_TEST_XFS");
    let (mountpoint, options) = mount_options(&root).unwrap();
    assert_eq!(mountpoint, mount("PG_BRANCH_TEST_XFS"));
    assert!(options.split(',').any(|o| o == "rw"), "{options}");
    fs::remove_dir_all(&root).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A cluster made with `initdb -g` has directories 0750 and files 0640
/// (pg_dir_create_mode, pg_file_create_mode), so that a backup tool in the
/// group can read it. A reflinked branch (into a subvolume on btrfs, a plain
/// directory on XFS) and a converted directory keep those modes; they used
/// to come out 0700 and 0600 whatever the template's.
#[test]
fn clones_and_conversions_keep_the_group_modes_of_initdb_g() {
    for var in ["PG_BRANCH_TEST_BTRFS", "PG_BRANCH_TEST_XFS"] {
        let root = scratch(var);
        let src = root.join("1");
        make_template(&src);
        chmod(&src, 0o750);
        for f in ["PG_VERSION", "16384", "16384.1", "16384_fsm"] {
            chmod(&src.join(f), 0o640);
        }
        let dst = root.join("2");
        clone_dir(&src, &dst, Method::Reflink).unwrap();
        assert_eq!(mode(&dst), 0o750, "{var}: directory");
        for f in ["PG_VERSION", "16384", "16384.1", "16384_fsm"] {
            assert_eq!(mode(&dst.join(f)), 0o640, "{var}: {f}");
        }
        if var == "PG_BRANCH_TEST_BTRFS" {
            assert!(matches!(
                convert_to_subvolume(&src).unwrap(),
                Converted::Converted { .. }
            ));
            assert_eq!(mode(&src), 0o750, "converted directory");
            assert_eq!(mode(&src.join("16384")), 0o640, "converted file");
            remove_dir(&src).unwrap();
        }
        remove_dir(&dst).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}

/// What a conversion interrupted after its swap leaves (the old plain
/// directory under `<dir>.pg_branch_convert`, next to the subvolume) is
/// removed by `remove_convert_leftover`, which the server calls before it
/// looks at whether the directory is a subvolume already.
#[test]
fn the_leftover_of_a_conversion_interrupted_after_its_swap_is_removed() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let dir = root.join("1");
    make_template(&dir);
    assert!(matches!(
        convert_to_subvolume(&dir).unwrap(),
        Converted::Converted { .. }
    ));
    let leftover = root.join("1.pg_branch_convert");
    make_template(&leftover);
    assert!(pg_branch_storage::remove_convert_leftover(&dir).unwrap());
    assert!(!leftover.exists());
    assert!(
        !pg_branch_storage::remove_convert_leftover(&dir).unwrap(),
        "nothing left to remove"
    );
    assert!(is_subvolume(&dir).unwrap());
    remove_dir(&dir).unwrap();
    fs::remove_dir_all(&root).unwrap();
}

/// A replayed branch's record mark is an extended attribute of its
/// directory: set, read back and replaced on every filesystem we test;
/// a directory without one has none; a snapshot carries its source's
/// (which redo then replaces with its own record's).
#[test]
fn record_marks_are_kept_on_the_directory_itself() {
    use pg_branch_storage::{record_mark, set_record_mark};
    for var in [
        "PG_BRANCH_TEST_BTRFS",
        "PG_BRANCH_TEST_XFS",
        "PG_BRANCH_TEST_EXT4",
    ] {
        let root = scratch(var);
        let dir = root.join("1");
        make_template(&dir);
        assert_eq!(record_mark(&dir).unwrap(), None, "{var}");
        set_record_mark(&dir, "1/3000028").unwrap();
        assert_eq!(
            record_mark(&dir).unwrap().as_deref(),
            Some("1/3000028"),
            "{var}"
        );
        set_record_mark(&dir, "2/4000A10").unwrap();
        assert_eq!(
            record_mark(&dir).unwrap().as_deref(),
            Some("2/4000A10"),
            "{var}"
        );
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            5,
            "{var}: no file added"
        );
        fs::remove_dir_all(&root).unwrap();
    }
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let (plain, src) = subvolume_template(&root);
    set_record_mark(&src, "1/10").unwrap();
    let dst = root.join("3");
    clone_dir(&src, &dst, Method::Snapshot).unwrap();
    assert_eq!(record_mark(&dst).unwrap().as_deref(), Some("1/10"));
    for d in [&dst, &src] {
        remove_dir(d).unwrap();
    }
    fs::remove_dir_all(&plain).unwrap();
    fs::remove_dir_all(&root).unwrap();
}

/// Overwrite 64 KiB of `file` at 1 MiB, in place, and make it durable.
fn overwrite_64k(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&[0xa5; 64 << 10]).unwrap();
    f.sync_all().unwrap();
}

/// btrfs' own count of the bytes in `dir` that no other file shares
/// (`btrfs filesystem du`'s "Exclusive" column).
fn btrfs_du_exclusive(dir: &Path) -> u64 {
    let out = Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .last()
        .expect("btrfs filesystem du prints a total");
    last.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The template's data: 4 MiB + 8 KiB + 24 KiB + the small files.
fn template_bytes(u: &Usage) -> u64 {
    u.exclusive_bytes + u.shared_bytes
}

#[test]
fn btrfs_usage_of_a_snapshot_and_what_it_wrote() {
    let root = scratch("PG_BRANCH_TEST_BTRFS");
    let (_plain, src) = subvolume_template(&root);
    let branch = root.join("3");
    clone_dir(&src, &branch, Method::Snapshot).unwrap();
    let fresh = usage(&branch).unwrap();
    // All of it shared with the template, none its own.
    assert_eq!(fresh.files, 4, "{fresh:?}");
    assert_eq!(fresh.exclusive_bytes, 0, "{fresh:?}");
    assert!(fresh.shared_bytes >= 4 << 20, "{fresh:?}");
    assert_eq!(btrfs_du_exclusive(&branch), 0);

    overwrite_64k(&branch.join("16384"));
    let after = usage(&branch).unwrap();
    assert_eq!(after.exclusive_bytes, 64 << 10, "{after:?}");
    assert_eq!(template_bytes(&after), template_bytes(&fresh), "{after:?}");
    assert_eq!(after.exclusive_bytes, btrfs_du_exclusive(&branch));
    // btrfs shares whole extents: the template's 4 MiB extent is still
    // referenced by the branch (all but the 64 KiB it rewrote), so the
    // template has nothing of its own yet, as btrfs itself counts it.
    assert_eq!(
        usage(&src).unwrap().exclusive_bytes,
        btrfs_du_exclusive(&src)
    );
    // Together they reference the template's data once, plus the 64 KiB.
    assert_eq!(
        referenced_bytes(&[&src, &branch]).unwrap(),
        template_bytes(&fresh) + (64 << 10)
    );
    assert_eq!(
        referenced_bytes(&[&branch]).unwrap(),
        template_bytes(&after)
    );
}

#[test]
fn xfs_usage_of_a_reflinked_copy_and_what_it_wrote() {
    let root = scratch("PG_BRANCH_TEST_XFS");
    let src = root.join("1");
    make_template(&src);
    let branch = root.join("2");
    clone_dir(&src, &branch, Method::Reflink).unwrap();
    let fresh = usage(&branch).unwrap();
    assert_eq!(fresh.exclusive_bytes, 0, "{fresh:?}");
    assert!(fresh.shared_bytes >= 4 << 20, "{fresh:?}");
    // The template's temporary file, which no branch copies, is its own.
    let template_own = usage(&src).unwrap().exclusive_bytes;

    overwrite_64k(&branch.join("16384"));
    let after = usage(&branch).unwrap();
    assert_eq!(after.exclusive_bytes, 64 << 10, "{after:?}");
    assert_eq!(template_bytes(&after), template_bytes(&fresh), "{after:?}");
    // XFS counts references per block: the template's old 64 KiB are now
    // its alone.
    assert_eq!(
        usage(&src).unwrap().exclusive_bytes,
        template_own + (64 << 10)
    );
    // Together: the template's data once (its temporary file included),
    // plus the branch's 64 KiB.
    assert_eq!(
        referenced_bytes(&[&src, &branch]).unwrap(),
        template_bytes(&fresh) + template_own + (64 << 10)
    );
}

#[test]
fn ext4_usage_is_all_exclusive() {
    let root = scratch("PG_BRANCH_TEST_EXT4");
    let dir = root.join("1");
    make_template(&dir);
    let u = usage(&dir).unwrap();
    assert_eq!(u.files, 5, "{u:?}");
    assert_eq!(u.shared_bytes, 0, "{u:?}");
    assert!(u.exclusive_bytes >= (4 << 20) + 8192 + 24576, "{u:?}");
}
