//! How much of a directory's data its files hold alone, and how much they
//! share with other files (a template, other branches, snapshots): the
//! extents FIEMAP reports, each flagged shared or not. Works wherever
//! FIEMAP does (btrfs, XFS, ext4, ...); only copy-on-write filesystems
//! ever share. [`referenced_bytes`] counts what several directories use
//! together, each shared extent once. [`Extents`] compares two files:
//! which of one's bytes are no longer the other's.

use std::fs::{self, File};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The data of the regular files directly in a directory (a database
/// directory has no subdirectories), by extent. Data kept inline in the
/// filesystem's metadata (btrfs' small files, such as `PG_VERSION`) has no
/// extent and is not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub files: u64,
    /// Bytes of data extents that no other file references.
    pub exclusive_bytes: u64,
    /// Bytes of data extents that at least one other file references too.
    pub shared_bytes: u64,
}

/// [`Usage`] of the files in `dir`. A file that vanishes meanwhile (a
/// dropped relation) is not counted. Dirty data is written out first
/// (`FIEMAP_FLAG_SYNC`), so what was just written is counted where it
/// will live.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let mut total = Usage::default();
    files(dir, |f| {
        total.files += 1;
        data_extents(f, |e| {
            if e.flags & FIEMAP_EXTENT_SHARED != 0 {
                total.shared_bytes += e.length;
            } else {
                total.exclusive_bytes += e.length;
            }
        })
    })?;
    Ok(total)
}

/// linux/fiemap.h
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

const EXTENTS_PER_CALL: usize = 128;

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; EXTENTS_PER_CALL],
}

const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FIEMAP_EXTENT_LAST: u32 = 0x1;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// `_IOWR('f', 11, struct fiemap)`: the size is that of the header only.
const FS_IOC_FIEMAP: libc::Ioctl = libc::_IOWR::<[u64; 4]>(b'f' as u32, 11);

nix::ioctl_readwrite_bad!(
    /// Map the extents of the file open as `fd` from `data.start` on.
    ///
    /// # Safety
    ///
    /// `fd` must be open, and `data` must point to a `Fiemap` whose
    /// `extent_count` is at most the length of its `extents`.
    fiemap,
    FS_IOC_FIEMAP,
    Fiemap
);

/// Call `visit` with each data extent of `file`, in order. Extents kept
/// inline in metadata are skipped (see [`Usage`]).
fn data_extents(file: &File, mut visit: impl FnMut(&FiemapExtent)) -> io::Result<()> {
    let mut start = 0u64;
    let mut flags = FIEMAP_FLAG_SYNC;
    loop {
        let mut map = Fiemap {
            start,
            length: u64::MAX - start,
            flags,
            mapped_extents: 0,
            extent_count: EXTENTS_PER_CALL as u32,
            reserved: 0,
            extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: the descriptor is open; `map` is a writable fiemap with
        // room for the `extent_count` extents the kernel may fill in.
        unsafe { fiemap(file.as_raw_fd(), &mut map) }?;
        let mapped = &map.extents[..map.mapped_extents as usize];
        for e in mapped {
            // Kept in the filesystem's metadata (btrfs, a few hundred bytes
            // at most): no data extent to own or share.
            if e.flags & FIEMAP_EXTENT_DATA_INLINE == 0 {
                visit(e);
            }
        }
        match mapped.last() {
            Some(e) if e.flags & FIEMAP_EXTENT_LAST == 0 => start = e.logical + e.length,
            _ => return Ok(()),
        }
        // The first call wrote the file out; the rest only read the map.
        flags = 0;
    }
}

/// Open each regular file directly in `dir` (skipping any that vanish,
/// such as a relation dropped meanwhile, and all of them if `dir` does)
/// and hand it to `each`.
fn files(dir: &Path, mut each: impl FnMut(&File) -> io::Result<()>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Dropped meanwhile: nothing left to count.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        match File::open(entry.path()) {
            Ok(f) => each(&f)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The bytes of disk that the files in all of `dirs` reference together,
/// each shared extent counted once: the union of their extents' physical
/// ranges. This is what they cost the filesystem as a whole, where the
/// per-directory [`usage`] counts shared bytes once per directory. (On
/// btrfs an extent stays allocated whole until nothing references any of
/// it, so the filesystem may hold a little more than is referenced.)
pub fn referenced_bytes<P: AsRef<Path>>(dirs: &[P]) -> io::Result<u64> {
    let mut ranges = Vec::new();
    for dir in dirs {
        files(dir.as_ref(), |f| {
            data_extents(f, |e| ranges.push((e.physical, e.physical + e.length)))
        })?;
    }
    Ok(merge(&mut ranges).iter().map(|(from, to)| to - from).sum())
}

/// Sort `ranges` and return them with overlapping ones merged: their union.
fn merge(ranges: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(from, to) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

/// Where the data of some files (the segments of one relation fork) lies
/// on the device: the physical ranges of their data extents.
///
/// Three kinds of extent are not plain ranges. An unwritten one
/// (preallocated, as PostgreSQL 16+ extends relations with `fallocate`)
/// reads as zeros and holds no data: it is left out, and a clone, which
/// does not share it (XFS makes a hole of it), compares equal. An encoded
/// one (btrfs compression) is reported at the start of its extent on disk
/// with its length in the file, so its range says nothing about overlap:
/// it counts as shared only with an extent reported identically (same
/// place in the file, same start, same length), which a snapshot or
/// reflink keeps; one split by a later write counts as not shared, which
/// overstates by at most the rest of that extent (128 KiB). One not yet
/// placed (delayed allocation, unknown) counts as not shared.
#[derive(Debug, Default, Clone)]
pub struct Extents {
    /// (start, end) of each plain extent, sorted.
    ranges: Vec<(u64, u64)>,
    /// The same, overlapping ones merged.
    merged: Vec<(u64, u64)>,
    /// (place in the file, start, length) of each encoded extent, sorted.
    encoded: Vec<(u64, u64, u64)>,
    /// Bytes of extents with no place on the device yet.
    unplaced: u64,
    /// Bytes of data, each extent counted as often as the files hold it.
    pub bytes: u64,
}

impl Extents {
    /// The extents of `paths` up to each file's end; a file that does not
    /// exist (or vanishes meanwhile) has none. What lies past the end is
    /// left out: XFS preallocates there for a file that grows, and a clone
    /// of it does not share that. Dirty data is written out first, as in
    /// [`usage`].
    pub fn of_files<P: AsRef<Path>>(paths: &[P]) -> io::Result<Extents> {
        let mut out = Extents::default();
        let mut ranges = Vec::new();
        for (segment, path) in paths.iter().enumerate() {
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let size = file.metadata()?.len();
            data_extents(&file, |e| {
                let length = e.length.min(size.saturating_sub(e.logical));
                if length == 0 || e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 {
                    return;
                }
                out.bytes += length;
                if e.flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC) != 0 {
                    out.unplaced += length;
                } else if e.flags & FIEMAP_EXTENT_ENCODED != 0 {
                    // Segments are 1 GB apart in the relation: key by the
                    // path's position too, so equal offsets of two segments
                    // stay apart.
                    let place = ((segment as u64) << 40) | e.logical;
                    out.encoded.push((place, e.physical, length));
                } else {
                    ranges.push((e.physical, e.physical + length));
                }
            })?;
        }
        out.encoded.sort_unstable();
        out.merged = merge(&mut ranges);
        out.ranges = ranges;
        Ok(out)
    }

    /// The bytes of these extents that lie outside every extent of
    /// `other`: data these files no longer share with those (or never
    /// did).
    pub fn bytes_not_in(&self, other: &Extents) -> u64 {
        let mut outside = 0;
        // Both sorted: one pass over `other` for all of ours.
        let mut first = 0;
        for &(from, to) in &self.ranges {
            while first < other.merged.len() && other.merged[first].1 <= from {
                first += 1;
            }
            let mut at = from;
            for &(o_from, o_to) in &other.merged[first..] {
                if o_from >= to {
                    break;
                }
                outside += o_from.saturating_sub(at);
                at = at.max(o_to);
                if at >= to {
                    break;
                }
            }
            outside += to.saturating_sub(at);
        }
        let encoded: u64 = self
            .encoded
            .iter()
            .filter(|e| other.encoded.binary_search(e).is_err())
            .map(|e| e.2)
            .sum();
        outside + encoded + self.unplaced
    }
}

#[cfg(test)]
mod tests {
    use super::{merge, Extents};

    impl Extents {
        fn from_ranges(mut ranges: Vec<(u64, u64)>) -> Extents {
            let merged = merge(&mut ranges);
            Extents {
                bytes: ranges.iter().map(|(a, b)| b - a).sum(),
                ranges,
                merged,
                ..Extents::default()
            }
        }
    }

    #[test]
    fn bytes_not_in_subtracts_physical_ranges() {
        let e = |r: &[(u64, u64)]| Extents::from_ranges(r.to_vec());
        let branch = e(&[(0, 100), (200, 300), (1000, 1100)]);
        assert_eq!(branch.bytes, 300);
        assert_eq!(branch.bytes_not_in(&branch), 0);
        assert_eq!(branch.bytes_not_in(&e(&[])), 300);
        assert_eq!(e(&[]).bytes_not_in(&branch), 0);
        // The parent rewrote the middle of the first and all of the last.
        let parent = e(&[(0, 40), (60, 100), (200, 300), (5000, 5100)]);
        assert_eq!(branch.bytes_not_in(&parent), 20 + 100);
        assert_eq!(parent.bytes_not_in(&branch), 100);
        // Overlapping ranges on the other side count once.
        let other = e(&[(0, 50), (25, 75), (70, 80), (250, 2000)]);
        assert_eq!(branch.bytes_not_in(&other), 20 + 50);
        // A range of ours spanning several of theirs, and a gap at its end.
        let one = e(&[(0, 1000)]);
        assert_eq!(
            one.bytes_not_in(&e(&[(100, 200), (300, 400), (900, 950)])),
            750
        );
    }

    #[test]
    fn encoded_extents_match_only_as_reported_and_unplaced_never() {
        let mut branch = Extents::from_ranges(vec![(0, 100)]);
        branch.encoded = vec![(0, 5000, 4096), (4096, 5000, 8192)];
        branch.unplaced = 10;
        let mut parent = Extents::from_ranges(vec![(0, 100), (4000, 9000)]);
        parent.encoded = vec![(0, 5000, 4096)];
        // The second encoded extent is not the parent's (split by a write),
        // though its start lies inside a plain range of the parent's.
        assert_eq!(branch.bytes_not_in(&parent), 8192 + 10);
        assert_eq!(parent.bytes_not_in(&branch), 5000);
    }

    #[test]
    fn fiemap_request_number_is_linuxs() {
        // FS_IOC_FIEMAP in linux/fs.h on x86_64 and aarch64.
        assert_eq!(super::FS_IOC_FIEMAP, 0xC020_660B);
        assert_eq!(std::mem::size_of::<super::FiemapExtent>(), 56);
    }
}
