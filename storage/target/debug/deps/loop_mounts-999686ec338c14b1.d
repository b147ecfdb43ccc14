/work/main/storage/target/debug/deps/loop_mounts-999686ec338c14b1.d: tests/loop_mounts.rs

/work/main/storage/target/debug/deps/loop_mounts-999686ec338c14b1: tests/loop_mounts.rs

tests/loop_mounts.rs:
