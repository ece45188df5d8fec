//! `gpt reset` through the real binary, on host trees with the fake commands on PATH. A
//! `gpt full` is simulated with the transaction itself (`support::transact::simulate_full`, the real planner).

use crate::support::fakes::Fakes;
use crate::support::hosts::DEBIAN_KVER;
use crate::support::transact::{etc, primed_host, simulate_full, snap};
use crate::support::tree::HostTree;
use crate::support::{gpt, plan_only, run};
use gpt::host::Host;
use gpt::txn::Lock;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn reset(root: &Path, fakes: &Fakes) -> assert_cmd::Command {
    let mut c = gpt(root);
    c.env("PATH", fakes.path()).arg("reset");
    c
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

fn full_then(root: &Path, fakes: &Fakes) {
    simulate_full(root, fakes, &[]).unwrap();
    fakes.reset_log();
}

#[test]
fn full_then_reset_gives_back_the_identical_tree() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let before = snap(root);
    full_then(root, &fakes);
    assert_ne!(snap(root), before);
    let (code, out, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    // The plan on stdout, as a dry run prints it; everything else on stderr.
    assert!(
        out.contains("--- a/etc/default/grub") && plan_only(&out),
        "{out}"
    );
    assert!(
        err.contains("restore /etc/default/grub: back to its bytes from before gpt"),
        "{err}"
    );
    assert!(
        err.contains("remove /etc/modprobe.d/gpt-vfio.conf"),
        "{err}"
    );
    assert!(err.contains("reboot"), "{err}");
    assert_eq!(
        fakes.calls(),
        [
            "update-grub".to_string(),
            format!("depmod -a {DEBIAN_KVER}"),
            "update-initramfs -u -k all".into(),
        ]
    );
    // /etc, /boot (regenerated from the restored /etc) and /var: byte for byte, modes too.
    assert_eq!(snap(root), before);

    // A second reset has nothing to do and runs nothing.
    fakes.reset_log();
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to reset"), "{err}");
    assert!(fakes.calls().is_empty());
    assert_eq!(snap(root), before);
}

/// A host whose files are awkward: CRLF grub with a single-quoted value, no final newline
/// in the modules list, unusual modes and owners, no /etc/modprobe.d and no /var.
fn awkward_host(root: &Path) -> HostTree {
    let mut t = crate::support::hosts::rocketlake(root);
    t.file(
        "/etc/default/grub",
        "GRUB_DEFAULT=0\r\nGRUB_CMDLINE_LINUX_DEFAULT='quiet splash'\r\nGRUB_CMDLINE_LINUX=\"\"\r\n",
    )
    .file("/etc/initramfs-tools/modules", "# modules\nraid1");
    fs::remove_dir_all(root.join("etc/modprobe.d")).unwrap();
    let grub = root.join("etc/default/grub");
    fs::set_permissions(&grub, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&grub, Some(1000), Some(4)).unwrap();
    }
    t
}

#[test]
fn full_then_reset_is_exact_on_an_awkward_host_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    awkward_host(root);
    let fakes = Fakes::new();
    fakes.prime(root);
    let before = snap(root);
    full_then(root, &fakes);
    assert!(root.join("etc/modprobe.d/gpt-vfio.conf").exists());
    let m = fs::metadata(root.join("etc/default/grub")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(snap(root), before);
    assert!(!root.join("etc/modprobe.d").exists());
    assert!(!root.join("var").exists());
}

#[test]
fn a_user_edit_made_between_full_and_reset_survives() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let grub_before = read(root, "/etc/default/grub");
    full_then(root, &fakes);
    // The user adds a token to gpt's line, changes another setting, and adds a line of
    // their own to gpt-vfio.conf.
    let grub = read(root, "/etc/default/grub")
        .replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=10")
        .replace("\"quiet ", "\"quiet splash ");
    fs::write(root.join("etc/default/grub"), &grub).unwrap();
    let conf = read(root, "/etc/modprobe.d/gpt-vfio.conf") + "options snd_hda_intel power_save=0\n";
    fs::write(root.join("etc/modprobe.d/gpt-vfio.conf"), conf).unwrap();

    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("edit /etc/default/grub: you changed it after gpt wrote it"),
        "{err}"
    );
    assert!(err.contains("kept yours"), "{err}");
    let want = grub_before
        .replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=10")
        .replace("\"quiet\"", "\"quiet splash\"");
    assert_eq!(read(root, "/etc/default/grub"), want);
    assert_eq!(
        read(root, "/etc/modprobe.d/gpt-vfio.conf"),
        "options snd_hda_intel power_save=0\n"
    );
    assert!(!root.join("var/lib/gpt").exists());
    let cfg = read(root, "/boot/grub/grub.cfg");
    assert!(cfg.contains(" ro  quiet splash\n"), "{cfg}");
}

#[test]
fn without_a_journal_reset_removes_what_gpt_marked() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let etc_before = etc(root);
    let boot_before: Vec<_> = snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("boot"))
        .collect();
    full_then(root, &fakes);
    fs::remove_dir_all(root.join("var/lib/gpt")).unwrap();
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no journal"), "{err}");
    assert_eq!(etc(root), etc_before);
    let boot_after: Vec<_> = snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("boot"))
        .collect();
    assert_eq!(boot_after, boot_before);
}

#[test]
fn a_failing_command_during_reset_rolls_back_to_the_configured_tree() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    let configured = snap(root);
    let (code, out, err) = run(reset(root, &fakes)
        .arg("--yes")
        .env("FAKE_FAIL", "update-initramfs:1"));
    assert_eq!(code, 1, "{err}");
    assert!(out.starts_with("--- a/") && plan_only(&out), "{out}");
    // One line: what failed, the state the host is in, what to do; then the stderr tail.
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        line.contains("update-initramfs -u -k all` failed (exit status 1); rolled back: the 3 files gpt changed are back as they were")
            && line.ends_with("; fix the cause and run the same command again"),
        "{err}"
    );
    assert_eq!(
        err.matches("fake failure requested").count(),
        1,
        "the tail once: {err}"
    );
    assert!(
        err.contains("==> Rolling back:"),
        "the second round of steps is named: {err}"
    );
    assert!(!err.contains("run `gpt reset`"), "{err}");
    assert_eq!(snap(root), configured);
    // Once the cause is gone, reset goes through.
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn an_interrupt_during_reset_waits_for_the_step_then_rolls_back() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    let configured = snap(root);
    let (code, _, err) = run(reset(root, &fakes)
        .arg("--yes")
        .env("FAKE_SIGNAL_PARENT", "update-grub:INT"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(snap(root), configured);
}

#[test]
fn a_held_lock_is_refused_with_a_clear_message() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    let before = snap(root);
    let lock = Lock::acquire(&Host::new(root)).unwrap();
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        "error: another gpt is running (lock /run/gpt.lock held); wait for it to finish \
         (an update-initramfs it started may still be running) and try again"
    );
    assert_eq!(snap(root), before);
    drop(lock);
}

#[test]
fn dry_run_prints_the_diffs_and_changes_nothing() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    // The run folder full made for its lock went with the lock.
    assert!(!root.join("run").exists());
    let before = snapshot_all(root);
    let (code, out, err) = run(reset(root, &fakes).arg("--dry-run"));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("--- a/etc/default/grub\n+++ b/etc/default/grub\n"),
        "{out}"
    );
    assert!(
        out.contains("--- a/etc/modprobe.d/gpt-vfio.conf\n+++ /dev/null\n"),
        "{out}"
    );
    assert!(out.contains("Commands:\n  update-grub\n"), "{out}");
    assert!(err.contains("dry run: nothing was changed"), "{err}");
    assert!(fakes.calls().is_empty());
    // Not even the lock file.
    assert_eq!(snapshot_all(root), before);
}

fn snapshot_all(root: &Path) -> Vec<(String, String)> {
    crate::support::tree::snapshot(root)
}

#[test]
fn without_a_terminal_and_without_yes_reset_refuses_instead_of_hanging() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    let before = snap(root);
    let (code, _, err) = run(&mut reset(root, &fakes));
    assert_eq!(code, 1);
    assert!(
        err.contains("no terminal to ask on: re-run with --yes"),
        "{err}"
    );
    assert_eq!(snap(root), before);
    assert!(fakes.calls().is_empty());
}

#[test]
fn json_output_lists_each_file_and_command() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    let (code, out, err) = run(reset(root, &fakes).args(["--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "changed": true,
            "files": [
                {"path": "/etc/default/grub", "action": "restored"},
                {"path": "/etc/initramfs-tools/modules", "action": "restored"},
                {"path": "/etc/modprobe.d/gpt-vfio.conf", "action": "removed"},
            ],
            "commands": [["update-grub"], ["depmod", "-a", DEBIAN_KVER], ["update-initramfs", "-u", "-k", "all"]],
            "reboot_required": true,
        })
    );
    let (code, out, _) = run(reset(root, &fakes).args(["--yes", "--json"]));
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["changed"], false);
    assert_eq!(v["files"], serde_json::json!([]));
}

#[test]
fn no_update_prints_the_commands_and_a_later_reset_runs_them() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let before = snap(root);
    full_then(root, &fakes);
    let (code, _, err) = run(reset(root, &fakes).args(["--yes", "--no-update"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--no-update: the boot entries and the initramfs still carry gpt's configuration until you run: `update-grub`"), "{err}");
    assert!(fakes.calls().is_empty());
    assert_eq!(
        etc(root),
        before
            .iter()
            .filter(|(p, _)| p.starts_with("etc"))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(gpt::txn::update_needed(&Host::new(root)).unwrap());
    // A second --no-update run does not claim what it did not do.
    let (code, _, err) = run(reset(root, &fakes).args(["--yes", "--no-update"]));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("match /etc again"), "{err}");
    assert!(err.contains("once you run the commands above"), "{err}");
    assert!(fakes.calls().is_empty());
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(fakes.calls().len(), 3);
    assert_eq!(snap(root), before);
}

#[test]
fn legacy_leftovers_are_removed_and_grub_bak_is_moved_aside() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let grub = read(root, "/etc/default/grub");
    let old = grub.replace(
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet amd_iommu=on preempt=voluntary vfio-pci.ids=10de:1f08\"",
    );
    fs::write(root.join("etc/default/grub"), &old).unwrap();
    fs::write(root.join("etc/default/grub.bak"), &grub).unwrap();
    // A private backup: moved aside, it keeps its mode (the real file's, not a copy's).
    fs::set_permissions(
        root.join("etc/default/grub.bak"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::write(
        root.join("etc/modprobe.d/xhci_hcd.conf"),
        "blacklist xhci_hcd\n",
    )
    .unwrap();
    let modules = read(root, "/etc/initramfs-tools/modules") + "options vfio-pci ids=10de:1f08\n";
    fs::write(root.join("etc/initramfs-tools/modules"), modules).unwrap();

    let (code, _, err) = run(reset(root, &fakes).args(["--legacy", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("old setup.sh leftover: /etc/default/grub.bak"),
        "{err}"
    );
    assert_eq!(read(root, "/etc/default/grub"), grub);
    assert!(!root.join("etc/default/grub.bak").exists());
    assert_eq!(read(root, "/etc/default/grub.bak.gpt-legacy"), grub);
    let mode = fs::metadata(root.join("etc/default/grub.bak.gpt-legacy"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert!(!root.join("etc/modprobe.d/xhci_hcd.conf").exists());
    assert!(!read(root, "/etc/initramfs-tools/modules").contains("options vfio-pci"));
    assert!(fakes.calls().contains(&"update-grub".to_string()));
}

#[test]
fn legacy_after_a_full_composes_with_the_restore() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    fs::write(
        root.join("etc/modprobe.d/xhci_hcd.conf"),
        "blacklist xhci_hcd\n",
    )
    .unwrap();
    let etc_without_leftover: Vec<_> = etc(root)
        .into_iter()
        .filter(|(p, _)| p != "etc/modprobe.d/xhci_hcd.conf")
        .collect();
    full_then(root, &fakes);
    let (code, _, err) = run(reset(root, &fakes).args(["--legacy", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(root), etc_without_leftover);
    assert!(!root.join("var/lib/gpt").exists());
}

#[test]
fn sigkill_during_a_slow_command_leaves_the_lock_held_until_it_ends_then_reset_converges() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let before = snap(root);
    full_then(root, &fakes);
    let bin = assert_cmd::cargo::cargo_bin("gpt");
    let mut child = std::process::Command::new(bin)
        .env("NO_COLOR", "1")
        .env("PATH", fakes.path())
        .env("FAKE_SLEEP", "update-initramfs:2")
        .args(["--root"])
        .arg(root)
        .args(["reset", "--yes"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !fakes
        .calls()
        .iter()
        .any(|c| c.starts_with("update-initramfs"))
    {
        assert!(
            t0.elapsed().as_secs() < 20,
            "update-initramfs never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The orphaned update-initramfs still holds the lock.
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another gpt is running"), "{err}");
    let t0 = std::time::Instant::now();
    while Lock::acquire(&Host::new(root)).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "the lock was never released");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(snap(root), before);
    crate::support::tally::record("kills", "reset-in-update-initramfs", 1, 1);
}

/// Stop `reset` dead at every fail point (as a power cut would); then each file is whole
/// (old or new), the grub file still parses, and both a second `reset` and a re-run of
/// `full` converge.
#[cfg(feature = "failpoints")]
mod crash {
    use super::*;
    use crate::support::hosts::ROCKETLAKE_IDS as IDS;

    const FILES: [&str; 3] = [
        "/etc/default/grub",
        "/etc/initramfs-tools/modules",
        "/etc/modprobe.d/gpt-vfio.conf",
    ];

    fn contents(root: &Path) -> Vec<Option<String>> {
        FILES
            .iter()
            .map(|f| fs::read_to_string(root.join(&f[1..])).ok())
            .collect()
    }

    type Snapshot = Vec<(String, String)>;

    /// Run reset stopped at `point` (with `env`), check the tree is sane, and return it with
    /// its snapshots before `full` and after it.
    fn crash_at(
        point: &str,
        env: &[(&str, &str)],
    ) -> (tempfile::TempDir, Fakes, Snapshot, Snapshot) {
        let (dir, fakes) = primed_host();
        let root = dir.path();
        let pristine = snap(root);
        let original = contents(root);
        full_then(root, &fakes);
        let configured_files = contents(root);
        let configured = snap(root);
        let mut cmd = reset(root, &fakes);
        cmd.arg("--yes").env("GPT_FAILPOINT", point);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), None, "{point}: not stopped dead: {err}");
        assert!(
            err.contains(&format!("fail point {point}")),
            "{point}: {err}"
        );
        for (i, now) in contents(root).into_iter().enumerate() {
            assert!(
                now == original[i] || now == configured_files[i],
                "{point}: {} is neither its old nor its new version: {now:?}",
                FILES[i]
            );
        }
        let grub = fs::read_to_string(root.join("etc/default/grub")).unwrap();
        gpt::edit::grub::read_var(&grub, "GRUB_CMDLINE_LINUX_DEFAULT").unwrap();
        let temps = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".gpt-tmp."))
            .count();
        assert_eq!(temps, 0, "{point}: temp files left");
        fakes.reset_log();
        (dir, fakes, pristine, configured)
    }

    const POINTS: [&str; 12] = [
        "after-journal",
        "after-write:1",
        "after-write:2",
        "after-write:3",
        "before-command:1",
        "after-command:1",
        "before-command:2",
        "after-command:2",
        "before-command:3",
        "after-command:3",
        "before-commit",
        "after-commit",
    ];

    /// Each point on its own tree, in parallel; the count goes to the reliability summary
    /// once every point has recovered.
    fn each(test: &str, points: &[&'static str], check: impl Fn(&'static str) + Sync) {
        std::thread::scope(|s| {
            let handles: Vec<_> = points.iter().map(|p| s.spawn(|| check(p))).collect();
            for h in handles {
                if let Err(e) = h.join() {
                    std::panic::resume_unwind(e);
                }
            }
        });
        crate::support::tally::record("fail points", test, points.len(), points.len());
    }

    #[test]
    fn a_second_reset_converges_from_every_fail_point() {
        each("reset-then-reset", &POINTS, |point| {
            let (dir, fakes, pristine, _) = crash_at(point, &[]);
            let root = dir.path();
            let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
            assert_eq!(code, 0, "{point}: {err}");
            assert_eq!(snap(root), pristine, "{point}: reset did not converge");
        });
    }

    #[test]
    fn a_rerun_of_full_converges_from_every_fail_point_and_reset_still_undoes_it() {
        each("reset-then-full", &POINTS, |point| {
            let (dir, fakes, pristine, configured) = crash_at(point, &[]);
            let root = dir.path();
            simulate_full(root, &fakes, &[]).unwrap();
            let now: Vec<_> = snap(root)
                .into_iter()
                .filter(|(p, _)| !p.starts_with("var/lib/gpt"))
                .collect();
            let want: Vec<_> = configured
                .into_iter()
                .filter(|(p, _)| !p.starts_with("var/lib/gpt"))
                .collect();
            assert_eq!(now, want, "{point}: full did not converge");
            let cfg = read(root, "/boot/grub/grub.cfg");
            assert!(cfg.contains(&IDS.join(",")), "{point}: {cfg}");
            let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
            assert_eq!(code, 0, "{point}: {err}");
            assert_eq!(
                snap(root),
                pristine,
                "{point}: reset after full did not converge"
            );
        });
    }

    #[test]
    fn a_crash_in_the_middle_of_a_rollback_still_converges() {
        each(
            "reset-rollback",
            &["rollback-after-restore:1", "rollback-after-restore:3"],
            |point| {
                let (dir, fakes, pristine, _) =
                    crash_at(point, &[("FAKE_FAIL", "update-initramfs:1")]);
                let root = dir.path();
                let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
                assert_eq!(code, 0, "{point}: {err}");
                assert_eq!(snap(root), pristine, "{point}: reset did not converge");
            },
        );
    }
}

#[test]
fn a_corrupt_journal_is_refused_with_what_to_do_and_nothing_changes() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    fs::write(
        root.join("var/lib/gpt/state.json"),
        "{\"version\":1,\"config\":",
    )
    .unwrap();
    let before = snap(root);
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 1);
    assert!(
        err.contains("/var/lib/gpt/state.json is corrupt; move it aside and run `gpt reset`"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(snap(root), before);
    // Moved aside, reset works from gpt's marks in the files.
    fs::rename(
        root.join("var/lib/gpt/state.json"),
        root.join("var/lib/gpt/state.json.bad"),
    )
    .unwrap();
    let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(!root.join("etc/modprobe.d/gpt-vfio.conf").exists());
    // What the user moved aside (with the copies inside it) is theirs to look at.
    assert!(root.join("var/lib/gpt/state.json.bad").exists());
}

/// The real `gpt full`, then `gpt reset`: the whole tree comes back byte for byte.
mod with_real_full {
    use super::*;
    use crate::support::hosts::{amd_datacenter, rocketlake};

    /// The host `build` makes in `d`, primed with fakes, and its snapshot before gpt.
    fn primed(d: &Path, build: fn(&Path) -> HostTree) -> (Fakes, Vec<(String, String)>) {
        build(d);
        let fakes = Fakes::new();
        fakes.prime(d);
        let before = snap(d);
        (fakes, before)
    }

    /// `gpt full --yes --no-deps nvidia` with the fakes.
    fn full(root: &Path, fakes: &Fakes) -> (i32, String, String) {
        run(gpt(root)
            .env("PATH", fakes.path())
            .args(["full", "--yes", "--no-deps", "nvidia"]))
    }

    fn cycle(build: fn(&Path) -> HostTree) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let (fakes, before) = primed(root, build);
        let (code, _, err) = full(root, &fakes);
        assert_eq!(code, 0, "{err}");
        let calls = fakes.calls();
        for c in ["update-grub", "update-initramfs -u -k all"] {
            assert!(calls.iter().any(|x| x == c), "{calls:?}");
        }
        let (code, _, err) = full(root, &fakes);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("already configured"), "{err}");
        let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(snap(root), before);
    }

    /// A journal written by an earlier build, which kept each copy in a file of its own
    /// (`/var/lib/gpt/originals/N`, `written/N.G`) instead of inside state.json: reset still
    /// gives back the byte-identical tree and removes those files and folders.
    #[test]
    fn a_journal_with_its_copies_in_files_still_resets_byte_identically() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let (fakes, before) = primed(root, rocketlake);
        let (code, _, err) = full(root, &fakes);
        assert_eq!(code, 0, "{err}");
        let state_path = root.join("var/lib/gpt/state.json");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
        let blobs = doc.as_object_mut().unwrap().remove("blobs").unwrap();
        let blobs = blobs.as_object().unwrap();
        assert!(blobs.len() >= 4, "{blobs:?}");
        for (name, value) in blobs {
            let path = root.join("var/lib/gpt").join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, value.as_str().unwrap()).unwrap();
        }
        fs::write(&state_path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
        assert_eq!(code, 0, "{err}");
        assert_eq!(snap(root), before);
    }

    /// The journal holds copies of the files: it is root's only, always — also when every
    /// file it copies is readable by all (a secret added to one of them later would otherwise
    /// land in a readable journal), and a private file keeps its own mode.
    #[test]
    fn the_journal_is_private_always() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let (fakes, _) = primed(root, rocketlake);
        let (code, _, err) = full(root, &fakes);
        assert_eq!(code, 0, "{err}");
        let state = root.join("var/lib/gpt/state.json");
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o7777, 0o600);
        let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
        assert_eq!(code, 0, "{err}");
        let grub = root.join("etc/default/grub");
        fs::set_permissions(&grub, fs::Permissions::from_mode(0o600)).unwrap();
        let (code, _, err) = full(root, &fakes);
        assert_eq!(code, 0, "{err}");
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(&grub).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn full_then_reset_is_byte_identical_on_the_rocketlake_host() {
        cycle(rocketlake);
    }

    #[test]
    fn full_then_reset_is_byte_identical_on_the_amd_datacenter_host() {
        cycle(amd_datacenter);
    }
}

/// The real `gpt full` stopped dead at each fail point of its plan, on five hosts (the old
/// README's RocketLake: three files, Intel IOMMU; an AMD server with a 3D controller and a
/// built-in vfio-pci; RocketLake with dracut as on Ubuntu 26.04; a card whose USB-C
/// controller's xhci_pci one kernel builds in, on initramfs-tools and on dracut, so the early
/// step's files are among the writes): a re-run of `full` leaves grub.cfg carrying the ids,
/// and `reset` then gives back the byte-identical tree.
#[cfg(feature = "failpoints")]
#[test]
fn full_stopped_at_every_fail_point_converges_with_a_rerun_and_a_reset() {
    use crate::support::hosts::{
        amd_datacenter, cards_with_usb, on_dracut, rocketlake, rocketlake_dracut, Dracut,
    };
    type Build = fn(&Path) -> crate::support::tree::HostTree;
    let hosts: [(&str, Build, &str); 5] = [
        ("rocketlake", rocketlake, "vfio-pci.ids=10de:1f08"),
        ("amd-datacenter", amd_datacenter, "vfio-pci.ids=10de:2331"),
        (
            "rocketlake-dracut",
            |r| rocketlake_dracut(r, Dracut::Ubuntu2604),
            "vfio-pci.ids=10de:1f08",
        ),
        (
            "xhci-built-in",
            |r| cards_with_usb(r, false, true),
            "vfio-pci.ids=10de:2504,10de:228e,10de:1ada",
        ),
        (
            "xhci-built-in-dracut",
            |r| {
                let mut t = cards_with_usb(r, false, true);
                on_dracut(&mut t, r);
                t
            },
            "vfio-pci.ids=10de:2504,10de:228e,10de:1ada",
        ),
    ];
    let mut total = 0;
    for (name, build, ids) in hosts {
        // Every point the plan reaches: after the journal, after each file, around each
        // command, around the commit.
        let d = tempfile::tempdir().unwrap();
        build(d.path());
        let (code, out, err) =
            run(gpt(d.path()).args(["full", "nvidia", "--no-deps", "--dry-run", "--json"]));
        assert_eq!(code, 0, "{name}: {err}");
        let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
        let writes = plan["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["action"] != "unchanged")
            .count();
        let commands = plan["commands"].as_array().unwrap().len();
        assert!(writes >= 2 && commands >= 2, "{name}: {out}");
        if name.starts_with("xhci") {
            let early = plan["files"].as_array().unwrap().iter().any(|f| {
                let p = f["path"].as_str().unwrap();
                p.ends_with("init-top/gpt-vfio") || p.ends_with("90gpt-vfio/gpt-vfio.sh")
            });
            assert!(early, "{name}: the early step is among the writes: {out}");
        }
        let mut points = vec!["after-journal".to_string()];
        points.extend((1..=writes).map(|n| format!("after-write:{n}")));
        for n in 1..=commands {
            points.push(format!("before-command:{n}"));
            points.push(format!("after-command:{n}"));
        }
        points.extend(["before-commit".to_string(), "after-commit".to_string()]);
        std::thread::scope(|s| {
            let handles: Vec<_> = points
                .iter()
                .map(|point| {
                    s.spawn(move || {
                        let d = tempfile::tempdir().unwrap();
                        let root = d.path();
                        build(root);
                        let fakes = Fakes::new();
                        fakes.prime(root);
                        let before = snap(root);
                        let full = || {
                            let mut c = gpt(root);
                            c.env("PATH", fakes.path()).args([
                                "full",
                                "--yes",
                                "--no-deps",
                                "nvidia",
                            ]);
                            c
                        };
                        let out = full().env("GPT_FAILPOINT", point).output().unwrap();
                        assert_eq!(out.status.code(), None, "{name} {point}: not stopped");
                        let (code, _, err) = run(&mut full());
                        assert_eq!(code, 0, "{name} {point}: {err}");
                        let cfg = read(root, "/boot/grub/grub.cfg");
                        assert!(cfg.contains(ids), "{name} {point}: {cfg}");
                        let (code, _, err) = run(reset(root, &fakes).arg("--yes"));
                        assert_eq!(code, 0, "{name} {point}: {err}");
                        assert_eq!(snap(root), before, "{name} {point}: reset did not converge");
                    })
                })
                .collect();
            for h in handles {
                if let Err(e) = h.join() {
                    std::panic::resume_unwind(e);
                }
            }
        });
        println!("fail points of gpt full on {name}: {}", points.join(" "));
        total += points.len();
    }
    crate::support::tally::record("fail points", "full", total, total);
}

/// A command that fails again when the rollback re-runs it: one error, the stderr tail once,
/// and the advice fits whichever command the user ran (not `gpt reset` from inside reset).
#[test]
fn a_command_that_fails_again_in_the_rollback_is_said_once_with_one_thing_to_do() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    full_then(root, &fakes);
    let (code, _, err) = run(reset(root, &fakes)
        .arg("--yes")
        .env("FAKE_FAIL", "update-grub"));
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("error: ").count(), 1, "{err}");
    assert_eq!(
        err.matches("fake failure requested").count(),
        1,
        "the tail once: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        line.starts_with("error: `"),
        "what failed comes first: {line}"
    );
    assert!(
        line.contains("failed too")
            && line.contains("run gpt again (the next `gpt full` or `gpt reset` runs them first)"),
        "{line}"
    );
    assert!(!err.contains("run `gpt reset`"), "{err}");
}

/// A reset on a tree with nothing of gpt's leaves no trace: not even the lock and its folder.
#[test]
fn reset_on_an_empty_tree_leaves_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (code, _, err) = run(gpt(root).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    let left: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}: {err}");
}
