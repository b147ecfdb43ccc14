/work/main/storage/target/debug/libpg_branch_storage.rlib: /work/main/storage/src/btrfs.rs /work/main/storage/src/lib.rs /work/main/storage/src/reflink.rs
