/work/main/storage/target/debug/deps/pg_branch_storage-c9eb652278739756.d: src/lib.rs src/btrfs.rs src/reflink.rs

/work/main/storage/target/debug/deps/pg_branch_storage-c9eb652278739756: src/lib.rs src/btrfs.rs src/reflink.rs

src/lib.rs:
src/btrfs.rs:
src/reflink.rs:
