//! Writes under `--root` cannot be raced onto the real host (issue 27, item 2): while another
//! user swaps a folder of the tree with a symlink to a folder outside it (`renameat2` with
//! `RENAME_EXCHANGE`, in a loop), `gpt full` and `gpt reset` run again and again, and nothing
//! outside the tree changes: not a byte, a mode or an owner.
//!
//! The swapper is this test binary itself, started again as `nobody` (through `setpriv`) to
//! run only [`swapper`]. (A folder another user can change on the way to the files the tree's
//! programs read, or to the programs, makes gpt refuse to run them; see tree_trust.rs. The
//! journal's folder and the lock's are raced here.)

use crate::support::gpt;
use crate::support::run;
use crate::support::transact::primed_host;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const SWAP_ENV: &str = "GPT_TEST_SWAP";

/// Started by [`race`] as another
/// user: swaps the two paths in `GPT_TEST_SWAP` (`A:B:MILLISECONDS`) until the time is up,
/// and prints how many swaps succeeded.
#[test]
#[ignore = "the swapper of the race test, started by it as another user"]
fn swapper() {
    let Ok(spec) = std::env::var(SWAP_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let until = Instant::now() + Duration::from_millis(parts[2].parse().unwrap());
    let mut swaps = 0u64;
    while Instant::now() < until {
        let flags = rustix::fs::RenameFlags::EXCHANGE;
        let cwd = rustix::fs::CWD;
        if rustix::fs::renameat_with(cwd, parts[0], cwd, parts[1], flags).is_ok() {
            swaps += 1;
        }
    }
    println!("swaps={swaps}");
}

/// Everything under `dir`: path, kind, mode, owner, and a file's bytes.
fn state(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let bytes = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            format!(
                "{} {:o} {}:{} {:?}",
                e.path().display(),
                m.mode(),
                m.uid(),
                m.gid(),
                String::from_utf8_lossy(&bytes)
            )
        })
        .collect()
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

/// The journal's folder: the tree is root's but for `/var`, which is nobody's; gpt's journal
/// goes to `/var/lib/gpt`, the folder swapped. gpt's runs go through (the tree's programs
/// are reached only through root's folders) and race the swaps in every write.
#[test]
fn another_user_swapping_var_lib_changes_nothing_outside_the_tree() {
    race("var/lib", "var", 2500);
}

/// The lock's folder: the tree itself is nobody's (gpt then refuses to run its programs,
/// after it took the lock in `/run`, which the swaps race: made, its mode and owner set, the
/// lock file opened, both removed again).
#[test]
fn another_user_swapping_run_changes_nothing_outside_the_tree() {
    race("run", "", 2000);
}

/// Swap `swapped` (a folder of the tree, made if missing) with a link to a folder outside,
/// as nobody, who owns `parent` (a folder of the tree), for `millis` while gpt full and gpt
/// reset run again and again; then nothing outside may have changed.
fn race(swapped: &str, parent: &str, millis: u64) {
    if !nix::unistd::geteuid().is_root() || which::which("setpriv").is_err() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let (dir, fakes) = primed_host();
    let t = dir.path();
    // A folder outside the tree, nobody's and private, with a secret in it.
    let outside = tempfile::tempdir().unwrap();
    let sentinel = outside.path().join("lib");
    std::fs::create_dir_all(sentinel.join("gpt")).unwrap();
    std::fs::write(sentinel.join("secret"), "only nobody reads this\n").unwrap();
    std::fs::write(sentinel.join("gpt/state.json"), "not gpt's\n").unwrap();
    for p in [&sentinel, &sentinel.join("gpt")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::set_permissions(
        sentinel.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    for p in [&sentinel, &sentinel.join("gpt"), &sentinel.join("secret")] {
        chown(p, NOBODY);
    }
    // The tree: root's but for `parent`; `parent/swap` is a link to the folder outside.
    std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(t.join(swapped)).unwrap();
    chown(&t.join(parent), NOBODY);
    let link = t.join(parent).join("swap");
    std::os::unix::fs::symlink(&sentinel, &link).unwrap();
    chown(&link, NOBODY);
    let before = state(outside.path());

    // The swapper: this binary, copied where nobody can run it, as nobody.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe: PathBuf = bin_dir.path().join("swapper");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let spec = format!("{}:{}:{millis}", t.join(swapped).display(), link.display());
    let swapper = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", "swap_race::swapper", "--ignored", "--nocapture"])
        .env(SWAP_ENV, &spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_millis(millis - 400);
    let (mut runs, mut applied) = (0, 0);
    while Instant::now() < deadline {
        for args in [
            &["full", "nvidia", "debian", "--yes", "--no-deps"][..],
            &["reset", "--yes"],
        ] {
            let (code, _, _) = run(gpt(t).env("PATH", fakes.path()).args(args));
            runs += 1;
            applied += usize::from(code == 0);
        }
    }
    let out = swapper.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let swaps: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("swaps="))
        .unwrap_or_else(|| panic!("the swapper did not run: {out}"))
        .parse()
        .unwrap();
    eprintln!("{swapped}: {runs} runs of gpt ({applied} went through) against {swaps} swaps");
    assert!(swaps > 100, "the swapper hardly swapped: {swaps}");
    assert!(runs >= 2, "only {runs} runs");
    let after = state(outside.path());
    let changed: Vec<String> = after
        .iter()
        .filter(|l| !before.contains(l))
        .map(|l| l.chars().take(160).collect())
        .collect();
    assert!(
        changed.is_empty() && after.len() == before.len(),
        "something outside the tree changed: {changed:#?}"
    );
}
