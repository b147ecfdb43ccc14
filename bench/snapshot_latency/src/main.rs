//! Snapshot latency: our raw BTRFS_IOC_SNAP_CREATE_V2 (as storage/src/btrfs.rs
//! does it) against the btrfsutil crate, interleaved a, b, a, b on one btrfs.
//! Usage: snapshot_latency SCRATCH_DIR [N=200]   (root; SCRATCH_DIR on btrfs, new)
use std::{env, fs, io::Write, os::unix::io::AsRawFd, path::Path, time::Instant};

#[repr(C)]
struct VolArgsV2 { fd: i64, transid: u64, flags: u64, unused: [u64; 4], name: [u8; 4040] }
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
// _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2) on asm-generic (x86_64, aarch64).
const BTRFS_IOC_SNAP_CREATE_V2: u64 = 0x5000_9417;

fn raw_snapshot(src: &Path, parent: &Path, name: &str) -> std::io::Result<()> {
    let (src, parent) = (fs::File::open(src)?, fs::File::open(parent)?);
    let mut a = VolArgsV2 { fd: src.as_raw_fd() as i64, transid: 0, flags: 0, unused: [0; 4], name: [0; 4040] };
    a.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both descriptors are open; `a` is a valid, writable
    // btrfs_ioctl_vol_args_v2 for the duration of the call.
    if unsafe { libc::ioctl(parent.as_raw_fd(), BTRFS_IOC_SNAP_CREATE_V2 as _, &mut a) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn stats(label: &str, v: &mut Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).max(1) - 1];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    println!("{label:<10} n={} p50={:.2} p99={:.2} max={:.2} mean={:.2} min={:.2} ms",
             v.len(), q(0.50), q(0.99), v[v.len() - 1], mean, v[0]);
    q(0.50)
}

fn main() {
    let args: Vec<String> = env::args().collect();
    let dir = Path::new(args.get(1).expect("usage: snapshot_latency SCRATCH_DIR [N]"));
    let n: usize = args.get(2).map_or(200, |s| s.parse().unwrap());
    fs::create_dir(dir).expect("SCRATCH_DIR must not exist yet");
    let (src, snaps) = (dir.join("src"), dir.join("snaps"));
    fs::create_dir(&snaps).unwrap();
    btrfsutil::subvolume::Subvolume::create(src.as_path(), None).expect("create source subvolume");
    let block: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..1000 { fs::write(src.join(format!("f{i:04}")), &block).unwrap(); }
    let mut big = fs::File::create(src.join("big")).unwrap();
    for _ in 0..(100 << 20) / block.len() { big.write_all(&block).unwrap(); }
    drop(big);
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let lib_src = btrfsutil::subvolume::Subvolume::get(src.as_path()).unwrap();
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let t = Instant::now();
        raw_snapshot(&src, &snaps, &format!("raw{i:03}")).expect("raw ioctl snapshot");
        a.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        lib_src.snapshot(snaps.join(format!("lib{i:03}")).as_path(), None, None).expect("btrfsutil snapshot");
        b.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (pa, pb) = (stats("raw ioctl", &mut a), stats("btrfsutil", &mut b));
    println!("p50 ratio btrfsutil/raw = {:.3}", pb / pa);
}
