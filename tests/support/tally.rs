//! Counts for the reliability suite's closing summary (`tests/reliability.sh`): a test that
//! has checked `passed` of `total` cases of one kind records them in a file of its own under
//! the target folder's `tmp/reliability/`. The summary adds the files up, so every figure it
//! prints comes from a test that ran to its end in the same run.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;

/// Where the counts go: `CARGO_TARGET_TMPDIR/reliability`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reliability")
}

/// Record that the test `test` checked `passed` of `total` cases of `kind` (such as
/// `fail points`), and print the same line for `--nocapture`.
pub fn record(kind: &str, test: &str, passed: usize, total: usize) {
    let d = dir();
    fs::create_dir_all(&d).unwrap();
    let file = format!("{}--{test}", kind.replace(' ', "-"));
    fs::write(d.join(file), format!("{kind}\t{passed}\t{total}\n")).unwrap();
    println!("reliability: {kind}: {test} {passed}/{total}");
}
