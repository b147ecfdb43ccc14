//! Where a fork goes, and what an interrupted one leaves.
//!
//! The fork's data directory is made first, with a marker file in it
//! (`pg_branch_fork.incomplete`) that lists every other directory the fork
//! makes (its tablespaces). The marker is rewritten, durably, before each
//! such directory is made, and removed last. So whatever kills this
//! process, what it made is either nothing or a target that carries the
//! marker; the next run with that target removes it and starts over, and
//! a failure that is reported removes it before exiting.

use crate::failure::Failure;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub const MARKER: &str = "pg_branch_fork.incomplete";

/// The directories of a fork being made.
pub struct Target {
    pub data: PathBuf,
    /// Tablespace directories made so far.
    made: Vec<PathBuf>,
    /// `<data>.tblspc`, if this fork made it (the default parent of its
    /// tablespaces).
    default_parent: Option<PathBuf>,
    /// The data directory existed (empty) before: it is emptied, not
    /// removed, on failure.
    existed: bool,
    pub done: bool,
}

/// A directory the fork may use: absent, or empty. An interrupted fork's
/// leftovers (the marker) are removed first.
pub fn check_unused(dir: &Path) -> Result<(), Failure> {
    match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::io("access directory", dir)(e)),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Failure::new(format!(
                "directory \"{}\" exists but is not empty",
                dir.display()
            ))
            .hint("Choose another directory, or remove it first.")),
        },
    }
}

/// Remove what an interrupted fork left at `data`, if it left anything.
/// Returns whether it did.
pub fn remove_leftovers(data: &Path) -> Result<bool, Failure> {
    let marker = data.join(MARKER);
    let Ok(listed) = fs::read_to_string(&marker) else {
        return Ok(false);
    };
    // The tablespaces first, then the data directory, the marker last of
    // all: a removal interrupted in turn is finished by the next run.
    // A line "+DIR" names a directory that existed, empty, before the fork:
    // it is emptied, not removed.
    for line in listed.lines().filter(|l| !l.is_empty()) {
        match line.strip_prefix('+') {
            Some(kept) => empty(Path::new(kept))?,
            None => pg_branch_storage::remove_dir(Path::new(line))
                .map_err(Failure::io("remove directory", Path::new(line)))?,
        }
    }
    for entry in fs::read_dir(data).map_err(Failure::io("read directory", data))? {
        let path = entry.map_err(Failure::io("read directory", data))?.path();
        if path != marker {
            remove_any(&path)?;
        }
    }
    fs::remove_file(&marker).map_err(Failure::io("remove file", &marker))?;
    pg_branch_storage::remove_dir(data).map_err(Failure::io("remove directory", data))?;
    Ok(true)
}

fn empty(dir: &Path) -> Result<(), Failure> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        remove_any(&entry.map_err(Failure::io("read directory", dir))?.path())?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), Failure> {
    let meta = fs::symlink_metadata(path).map_err(Failure::io("stat", path))?;
    if meta.is_dir() {
        pg_branch_storage::remove_dir(path).map_err(Failure::io("remove directory", path))
    } else {
        fs::remove_file(path).map_err(Failure::io("remove file", path))
    }
}

fn make_dir(dir: &Path) -> Result<bool, Failure> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            check_unused(dir)?;
            fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(Failure::io("change the permissions of", dir))?;
            Ok(true)
        }
        Err(e) => Err(Failure::io("create directory", dir)(e)),
    }
}

fn fsync_parent(path: &Path) -> Result<(), Failure> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(Failure::io("fsync", parent))
}

impl Target {
    /// Make the data directory (mode 0700, as initdb does) and its marker.
    pub fn create(data: &Path) -> Result<Target, Failure> {
        let existed = make_dir(data)?;
        let t = Target {
            data: data.to_path_buf(),
            made: Vec::new(),
            default_parent: None,
            existed,
            done: false,
        };
        t.write_marker()?;
        fsync_parent(data)?;
        Ok(t)
    }

    fn write_marker(&self) -> Result<(), Failure> {
        let marker = self.data.join(MARKER);
        let mut text = String::new();
        for d in self.made.iter().chain(self.default_parent.iter()) {
            text.push_str(&d.to_string_lossy());
            text.push('\n');
        }
        let tmp = self.data.join(format!("{MARKER}.tmp"));
        let mut f = File::create(&tmp).map_err(Failure::io("create file", &tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(Failure::io("write file", &tmp))?;
        fs::rename(&tmp, &marker).map_err(Failure::io("rename file", &tmp))?;
        fsync_parent(&marker)
    }

    /// The default directory of tablespace `oid`: `<data>.tblspc/<oid>`.
    pub fn default_tablespace_dir(data: &Path, oid: u32) -> PathBuf {
        let mut parent = data.as_os_str().to_owned();
        parent.push(".tblspc");
        PathBuf::from(parent).join(oid.to_string())
    }

    /// Make tablespace directory `dir` (listed in the marker first).
    pub fn create_tablespace_dir(&mut self, dir: &Path, is_default: bool) -> Result<(), Failure> {
        if is_default && self.default_parent.is_none() {
            let parent = dir
                .parent()
                .expect("a default tablespace directory has a parent")
                .to_path_buf();
            self.default_parent = Some(parent.clone());
            self.write_marker()?;
            make_dir(&parent)?;
        }
        // Listed before it is made; one that existed (empty) is the user's,
        // and only what goes into it is removed on failure.
        self.made.push(dir.to_path_buf());
        self.write_marker()?;
        if make_dir(dir)? {
            let mut kept = std::ffi::OsString::from("+");
            kept.push(dir);
            *self.made.last_mut().expect("just pushed") = PathBuf::from(kept);
            self.write_marker()?;
        }
        fsync_parent(dir)
    }

    /// The fork is complete: drop the marker, durably.
    pub fn finish(&mut self) -> Result<(), Failure> {
        let marker = self.data.join(MARKER);
        fs::remove_file(&marker).map_err(Failure::io("remove file", &marker))?;
        fsync_parent(&marker)?;
        self.done = true;
        Ok(())
    }

    /// Undo everything after a reported failure.
    fn remove(&self) -> Result<(), Failure> {
        remove_leftovers(&self.data)?;
        if self.existed {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&self.data)
                .map_err(Failure::io("create directory", &self.data))?;
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.remove() {
                eprintln!("{e}");
                eprintln!(
                    "pg_branch: hint: run the same command again to remove what is left in \"{}\"",
                    self.data.display()
                );
            }
        }
    }
}
