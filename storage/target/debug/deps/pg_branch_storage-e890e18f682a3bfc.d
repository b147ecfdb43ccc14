/work/main/storage/target/debug/deps/pg_branch_storage-e890e18f682a3bfc.d: src/lib.rs src/btrfs.rs src/reflink.rs

/work/main/storage/target/debug/deps/libpg_branch_storage-e890e18f682a3bfc.rlib: src/lib.rs src/btrfs.rs src/reflink.rs

/work/main/storage/target/debug/deps/libpg_branch_storage-e890e18f682a3bfc.rmeta: src/lib.rs src/btrfs.rs src/reflink.rs

src/lib.rs:
src/btrfs.rs:
src/reflink.rs:
