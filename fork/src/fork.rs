//! `pg_branch fork`: a consistent copy of a running cluster, every
//! database, its roles and settings, by PostgreSQL's backup protocol with
//! copy-on-write clones in place of the copy.
//!
//! A single snapshot of the data directory cannot do it: every database
//! that pg_branch made or converted is a nested btrfs subvolume, which a
//! snapshot shows as an empty directory, tablespaces are elsewhere, and
//! nothing stops the server's writes between two clones. The backup
//! protocol is made for exactly that: files copied over a span of time,
//! made consistent by replaying the WAL of that span from the backup
//! label's checkpoint. The steps, each with what a kill at that point
//! leaves (the source never holds anything of ours past our session):

use crate::args::Options;
use crate::copy::{self, Copied};
use crate::failure::Failure;
use crate::source::{format_lsn, Source};
use crate::target::{self, Target};
use crate::{settings, start, sysid, wal};
use pg_branch_storage::{probe, same_filesystem};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The steps' clock: with `--verbose`, each step's time on stderr.
struct Steps {
    verbose: bool,
    last: Instant,
}

impl Steps {
    fn lap(&mut self, what: &str) {
        if self.verbose {
            let ms = self.last.elapsed().as_secs_f64() * 1000.0;
            eprintln!("pg_branch: {what}: {ms:.1} ms");
        }
        self.last = Instant::now();
    }

    /// The end of a step, where the tests of interrupted forks stop it:
    /// with `PG_BRANCH_FORK_STOP_AT=<step>` the command stops itself
    /// (SIGSTOP) there, for the test to kill it with SIGKILL. Without the
    /// variable this only times the step.
    fn reached(&mut self, step: &str, what: &str) {
        self.lap(what);
        if std::env::var("PG_BRANCH_FORK_STOP_AT").is_ok_and(|s| s == step) {
            eprintln!("pg_branch: stopping at \"{step}\" (PG_BRANCH_FORK_STOP_AT)");
            // SAFETY: raise() has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
        self.last = Instant::now();
    }
}

/// "1 file", "2 files".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// A tablespace's source location and where the fork puts it.
struct Placed {
    oid: u32,
    location: PathBuf,
    dir: PathBuf,
    is_default: bool,
}

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(Failure::io("find the current directory", Path::new(".")))?;
    Ok(cwd.join(p))
}

/// Can blocks of `src` (a directory of the source) be shared with a new
/// directory `dst`? `sample` is a database directory under `src` to try a
/// clone from (none: an empty tablespace, where only the filesystem is
/// checked). The errors say which of the two reasons applies: another
/// filesystem, or one that cannot share blocks.
fn check_shareable(
    what: &str,
    src: &Path,
    sample: Option<&Path>,
    dst: &Path,
) -> Result<(), Failure> {
    // DIR.tblspc/<oid> is made with DIR.tblspc: look at DIR's parent then.
    let mut parent = dst.parent().unwrap_or(Path::new("/"));
    if !parent.exists() && parent.to_string_lossy().ends_with(".tblspc") {
        parent = parent.parent().unwrap_or(Path::new("/"));
    }
    if !parent.is_dir() {
        return Err(Failure::new(format!(
            "could not create directory \"{}\": No such file or directory",
            dst.display()
        )));
    }
    std::fs::metadata(src).map_err(Failure::io("stat", src))?;
    let same = same_filesystem(src, parent).map_err(Failure::io("stat", parent))?;
    if !same {
        return Err(Failure::new(format!(
            "\"{}\" is on another filesystem than {what} \"{}\"",
            dst.display(),
            src.display()
        ))
        .detail("A fork shares its blocks with the source, which is only possible within one filesystem.")
        .hint("Choose a directory on the same filesystem (for a tablespace: --tablespace-mapping), or use pg_basebackup for a copy."));
    }
    if let Some(sample) = sample {
        if let Err(why) = probe(sample, parent)? {
            return Err(Failure::new(format!("{what} \"{}\" is on a filesystem that cannot share blocks", src.display()))
                .detail(why.to_string())
                .hint("pg_branch fork needs btrfs, or XFS made with reflink=1; use pg_basebackup for a copy."));
        }
    }
    Ok(())
}

/// A database directory in tablespace `location` (for this major version),
/// to probe clones with.
fn tablespace_sample(location: &Path, major: u32) -> Option<PathBuf> {
    let prefix = format!("PG_{major}_");
    let version = std::fs::read_dir(location)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?
        .path();
    std::fs::read_dir(&version)
        .ok()?
        .flatten()
        .find(|e| {
            pg_branch_storage::database_dir_name(&e.file_name().to_string_lossy())
                .is_some_and(|(_, l)| !l)
        })
        .map(|e| e.path())
}

pub fn run(o: &Options) -> Result<(), Failure> {
    let started = Instant::now();
    let mut steps = Steps {
        verbose: o.verbose,
        last: started,
    };
    // SAFETY: geteuid() has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Err(Failure::new("cannot be run as root")
            .hint("Run it as the operating system user that owns the source's data directory (usually postgres)."));
    }
    let data = absolute(&o.target)?;

    // Step 1: ask the source what it is, and check all that can be checked
    // before anything is made: that its data directory is here, the target
    // directories, the filesystems, the tablespace mappings. A failure here
    // leaves nothing (an interrupted fork's leftovers are removed first).
    let mut source = Source::connect(&o.source_dsn)?;
    let control = source.data_dir.join("global/pg_control");
    match std::fs::read(&control) {
        Ok(c)
            if c.len() >= 8
                && u64::from_ne_bytes(c[0..8].try_into().unwrap()) == source.system_identifier => {}
        Ok(_) => return Err(Failure::new(format!(
            "\"{}\" is not the data directory of the server at --source-dsn",
            source.data_dir.display()
        ))
        .detail(
            "Its system identifier differs: the server runs on another host, or in a container.",
        )),
        Err(e) => {
            return Err(Failure::io("read file", &control)(e).hint(
                "Run pg_branch fork on the source's host, as the owner of its data directory.",
            ))
        }
    }
    if target::remove_leftovers(&data)? {
        eprintln!(
            "pg_branch: removed what an interrupted fork had left in \"{}\"",
            data.display()
        );
    }
    target::check_unused(&data)?;
    check_shareable(
        "the source's data directory",
        &source.data_dir,
        Some(&source.data_dir.join("base/1")),
        &data,
    )?;
    for (old, _) in &o.mappings {
        if !source.tablespaces.iter().any(|t| &t.location == old) {
            return Err(Failure::new(format!(
                "the source has no tablespace in \"{}\" (--tablespace-mapping)",
                old.display()
            )));
        }
    }
    let mut placed = Vec::new();
    for t in &source.tablespaces {
        let mapped = o
            .mappings
            .iter()
            .find(|(old, _)| old == &t.location)
            .map(|(_, new)| new.clone());
        let is_default = mapped.is_none();
        let dir = mapped.unwrap_or_else(|| Target::default_tablespace_dir(&data, t.oid));
        let what = format!("tablespace \"{}\"", t.name);
        check_shareable(
            &what,
            &t.location,
            tablespace_sample(&t.location, source.major).as_deref(),
            &dir,
        )?;
        target::check_unused(&dir)?;
        placed.push(Placed {
            oid: t.oid,
            location: t.location.clone(),
            dir,
            is_default,
        });
    }

    // Step 2: the fork's directories, with the marker that lists them. A
    // kill from here on leaves them, marked: the next run removes them. A
    // reported failure removes them (Target's Drop).
    let mut t = Target::create(&data)?;
    for p in &placed {
        t.create_tablespace_dir(&p.dir, p.is_default)?;
    }
    steps.reached(
        "created",
        "checked the source and the target, made the directories",
    );

    // Step 3: the backup starts: a temporary slot keeps the WAL, and an
    // immediate checkpoint is its redo point. A kill ends our session, and
    // with it the backup and the slot; the source is as it was.
    let start_lsn = source.start_backup()?;
    steps.reached("started", "pg_backup_start (its checkpoint)");

    // Step 4: the clones, while the source goes on writing. Database
    // directories are snapshots (or reflinks into new subvolumes),
    // everything else reflinks; pg_control last.
    let mut copied = Copied::default();
    let links: Vec<(u32, PathBuf)> = placed.iter().map(|p| (p.oid, p.dir.clone())).collect();
    copy::clone_data_dir(&source.data_dir, &data, &links, &mut copied)?;
    steps.reached("cloning", "cloned the data directory");
    for p in &placed {
        copy::clone_tablespace(&p.location, source.major, &p.dir, &mut copied)?;
    }
    copy::clone_control_file(&source.data_dir, &data)?;
    steps.reached("cloned", "cloned the tablespaces and pg_control");

    // Step 5: the backup stops; its label, and the WAL from its start to
    // its stop point, go into the fork. The session ends here.
    let stopped = source.stop_backup()?;
    steps.reached("stopped", "pg_backup_stop");
    let first = wal::start_segment(&stopped.label, source.segment_size)?;
    let segments = wal::clone_wal(
        &source.data_dir.join("pg_wal"),
        &data.join("pg_wal"),
        first,
        stopped.lsn,
        source.segment_size,
    )?;
    let Source {
        data_dir: source_dir,
        system_identifier,
        bindir,
        config_file,
        hba_file,
        ident_file,
        in_recovery,
        ..
    } = source;

    // Step 6: what makes the fork a server of its own: the backup label
    // (recovery starts there), its port and no ties to the source, its
    // configuration files if the source keeps them elsewhere, a standby
    // signal if asked, a system identifier of its own if asked. Then all
    // of it is made durable, and the marker goes.
    settings::write_backup_label(&data, &stopped.label)?;
    settings::copy_outside_config(
        &data,
        &[
            (config_file.as_path(), "postgresql.conf"),
            (hba_file.as_path(), "pg_hba.conf"),
            (ident_file.as_path(), "pg_ident.conf"),
        ],
    )?;
    settings::write_auto_conf(&data, o.port, &source_dir)?;
    if o.standby {
        settings::write_standby_signal(&data)?;
    }
    let new_id = o.new_system_identifier.then(sysid::new_identifier);
    if let Some(id) = new_id {
        sysid::set_system_identifier(&data, system_identifier, id)?;
    }
    let log = start::log_file(&data)?;
    steps.lap("cloned the WAL, wrote the settings");
    for dir in std::iter::once(&data).chain(placed.iter().map(|p| &p.dir)) {
        pg_branch_storage::presync(dir).map_err(Failure::io("sync the filesystem of", dir))?;
    }
    steps.reached("written", "synced the filesystems");
    t.finish()?;
    eprintln!(
        "pg_branch: forked {}\"{}\" into \"{}\" in {:.3} s: {} ({}), {}, {}; \
         consistent at {} (backup started at {}){}",
        if in_recovery { "the standby " } else { "" },
        source_dir.display(),
        data.display(),
        started.elapsed().as_secs_f64(),
        count(copied.databases, "database"),
        count(copied.snapshots, "snapshot"),
        count(copied.files, "file"),
        count(segments, "WAL segment"),
        format_lsn(stopped.lsn),
        format_lsn(start_lsn),
        new_id
            .map(|id| format!("; new system identifier {id}"))
            .unwrap_or_default()
    );

    // Step 7: start it, if asked. A fork that does not start is still a
    // complete data directory: the error says so and leaves it.
    let bindir = o.bindir.clone().unwrap_or(bindir);
    if o.start {
        start::start(&bindir, &data, &log)?;
    } else {
        eprintln!(
            "pg_branch: start it with: {} -D {} -l {} start",
            bindir.join("pg_ctl").display(),
            data.display(),
            log.display()
        );
    }
    Ok(())
}
