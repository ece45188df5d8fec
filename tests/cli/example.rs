//! The example host bundled in the repository is what the builder makes (run with
//! GPT_BLESS=1 to rewrite it after changing the builder).

use crate::support::hosts::rocketlake;
use crate::support::tree::snapshot;
use std::path::Path;

pub const EXAMPLE: &str = "examples/hosts/rocketlake-rtx2060";

#[test]
fn bundled_example_host_matches_the_builder() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE);
    if std::env::var_os("GPT_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&committed);
        std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir.path())
            .arg(&committed)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let strip_owner = |v: Vec<(String, String)>| -> Vec<(String, String)> {
        // Owners differ between a checkout and a temp tree; modes and contents must not.
        v.into_iter()
            .map(|(p, w)| match w.split_once(' ') {
                Some((mode, rest)) if !w.starts_with("->") && !w.starts_with("<dir") => (
                    p,
                    format!("{mode} {}", rest.split_once(' ').map(|x| x.1).unwrap_or("")),
                ),
                _ => (p, w),
            })
            .collect()
    };
    assert_eq!(
        strip_owner(snapshot(&committed)),
        strip_owner(snapshot(dir.path())),
        "examples/ is stale: run GPT_BLESS=1 cargo test --test cli bundled_example"
    );
}
