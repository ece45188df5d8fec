//! The transaction (`gpt::txn`, the library, not the binary) against host trees, with the
//! fake commands on PATH: journal, atomic writes, commands, rollback.

#[path = "support/mod.rs"]
mod support;

use crate::support::hosts::{rocketlake_config, DEBIAN_KVER};
use crate::support::transact::{plan_with_args, planned, primed_host, simulate_full, snap};
use gpt::host::Host;
use gpt::plan::{FileAction, Plan, Step};
use gpt::runner::Runner;
use gpt::txn::{self, Finish, Lock, State};
use gpt::ui::Ui;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn grub_tokens() -> Vec<String> {
    rocketlake_config().args
}

/// `gpt full`'s plan for the host, with `tokens` as the kernel arguments.
fn full_plan(root: &Path, tokens: &[String]) -> Plan {
    let mut plan = planned(root).plan;
    plan.files
        .retain(|f| f.path != Path::new("/etc/default/grub"));
    let args = plan_with_args(root, tokens);
    plan.files.splice(0..0, args.files);
    if plan.commands.is_empty() {
        plan.commands = args.commands;
    }
    plan
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

fn temp_files(root: &Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".gpt-tmp."))
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn the_fakes_regenerate_boot_files_from_etc_like_the_real_commands() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let cfg = read(root, "/boot/grub/grub.cfg");
    assert!(
        cfg.contains(&format!("\tlinux\t/boot/vmlinuz-{DEBIAN_KVER} root=UUID=")),
        "{cfg}"
    );
    assert!(cfg.contains(" ro  quiet\n"), "{cfg}");
    assert!(read(root, &format!("/boot/initrd.img-{DEBIAN_KVER}"))
        .starts_with("# initramfs written by gpt's fake update-initramfs"));
    assert!(
        read(root, &format!("/lib/modules/{DEBIAN_KVER}/modules.dep"))
            .contains("kernel/drivers/vfio/pci/vfio-pci.ko:\n")
    );
    // Without the fake chroot, the fakes refuse to touch anything.
    let out = std::process::Command::new("/bin/bash")
        .arg(fakes.bin.join("update-grub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(99));
    // dpkg-query reads the root's status file.
    let status = root.join("var/lib/dpkg/status");
    fs::create_dir_all(status.parent().unwrap()).unwrap();
    fs::write(
        &status,
        "Package: ovmf\nStatus: install ok installed\nVersion: 2023\n\n",
    )
    .unwrap();
    let out = fakes.run(
        root,
        &[
            "dpkg-query",
            "-W",
            "--showformat=${db:Status-Abbrev}${Package}\\n",
            "ovmf",
            "curl",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ii ovmf\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no packages found matching curl"));
    assert_eq!(out.status.code(), Some(1));
    let out = fakes.run(root, &["apt-get", "install", "-y", "curl"]);
    assert!(out.status.success());
    let out = fakes.run(
        root,
        &[
            "dpkg-query",
            "-W",
            "--showformat=${db:Status-Status}\\n",
            "curl",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "installed\n");
}

#[test]
fn apply_journals_first_writes_the_files_and_runs_the_commands() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let grub_before = read(root, "/etc/default/grub");
    let outcome = simulate_full(root, &fakes, &[]).unwrap();
    assert_eq!(
        outcome.files,
        vec![
            ("/etc/default/grub".into(), FileAction::Modified),
            ("/etc/initramfs-tools/modules".into(), FileAction::Modified),
            ("/etc/modprobe.d/gpt-vfio.conf".into(), FileAction::Created),
        ]
    );
    assert_eq!(
        fakes.calls(),
        [
            "update-grub".to_string(),
            format!("depmod -a {DEBIAN_KVER}"),
            "update-initramfs -u -k all".into(),
        ]
    );
    let cfg = read(root, "/boot/grub/grub.cfg");
    assert!(
        cfg.contains(&format!(" ro  quiet {}\n", grub_tokens().join(" "))),
        "{cfg}"
    );
    let out = fakes.run(
        root,
        &["lsinitramfs", &format!("/boot/initrd.img-{DEBIAN_KVER}")],
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&format!(
            "usr/lib/modules/{DEBIAN_KVER}/kernel/drivers/vfio/pci/vfio-pci.ko\n"
        )),
        "{listing}"
    );
    assert!(
        listing.contains("etc/modprobe.d/gpt-vfio.conf\n"),
        "{listing}"
    );

    let host = Host::new(root);
    let state = State::load(&host).unwrap().unwrap();
    assert_eq!(state.config, Some(rocketlake_config()));
    assert!(!state.update_needed);
    assert_eq!(state.generation, 1);
    let grub = state.entry(Path::new("/etc/default/grub")).unwrap();
    assert!(grub.existed);
    assert_eq!((grub.mode, grub.uid, grub.gid), (0o644, 0, 0));
    assert_eq!(grub.original.as_deref(), Some("originals/1"));
    assert_eq!(grub.written.as_deref(), Some("written/1.1"));
    assert_eq!(
        state.original(&host, grub).unwrap().unwrap(),
        grub_before.as_bytes()
    );
    assert_eq!(
        state.written(&host, grub).unwrap().unwrap(),
        read(root, "/etc/default/grub").as_bytes()
    );
    let conf = state
        .entry(Path::new("/etc/modprobe.d/gpt-vfio.conf"))
        .unwrap();
    assert!(!conf.existed);
    assert_eq!(conf.original, None);
    let json = read(root, "/var/lib/gpt/state.json");
    assert!(
        json.starts_with("{\n  \"version\": 1,\n  \"config\": {"),
        "{json}"
    );
    assert!(temp_files(root).is_empty());
}

#[test]
fn a_second_run_keeps_the_very_first_originals_and_updates_what_was_written() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let grub_before = read(root, "/etc/default/grub");
    simulate_full(root, &fakes, &[]).unwrap();
    // A second run with another GPU: the ids change.
    let host = Host::new(root);
    let ui = Ui::new(false);
    let runner = Runner::new(&host, &ui).with_path(fakes.path());
    let mut tokens = grub_tokens();
    tokens[2] = "vfio-pci.ids=10de:2204,10de:1aef".into();
    let plan = full_plan(root, &tokens);
    assert_eq!(plan.files.len(), 1, "only grub changes");
    let lock = Lock::acquire(&host).unwrap();
    txn::apply_with(
        &runner,
        &lock,
        &plan,
        Finish::Record(Some(&rocketlake_config())),
        &[],
    )
    .unwrap();
    let state = State::load(&host).unwrap().unwrap();
    assert_eq!(state.generation, 2);
    let grub = state.entry(Path::new("/etc/default/grub")).unwrap();
    assert_eq!(grub.written.as_deref(), Some("written/1.2"));
    assert_eq!(
        state.original(&host, grub).unwrap().unwrap(),
        grub_before.as_bytes()
    );
    assert!(read(root, "/etc/default/grub").contains("vfio-pci.ids=10de:2204,10de:1aef"));
    // The copy of the first run's grub is gone; the other copies stay, all in the state.
    let blobs: Vec<&str> = state.blobs.keys().map(String::as_str).collect();
    assert_eq!(
        blobs,
        [
            "originals/1",
            "originals/2",
            "written/1.2",
            "written/2.1",
            "written/3.1"
        ]
    );
    assert!(!root.join("var/lib/gpt/written").exists());
    assert!(!root.join("var/lib/gpt/originals").exists());
}

#[test]
fn a_failing_command_rolls_back_to_the_identical_tree() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let before = snap(root);
    let err = simulate_full(root, &fakes, &[("FAKE_FAIL", "update-initramfs:1")]).unwrap_err();
    let msg = format!("{err:#}");
    // What failed first, then the state the host is in and what to do; the stderr tail last.
    assert!(msg.contains("update-initramfs -u -k all` failed (exit status 1); rolled back: the 3 files gpt changed are back as they were, and `update-grub`, `depmod -a 6.1.0-13-amd64`, `update-initramfs -u -k all` ran again; fix the cause and run the same command again\nthe last lines of its stderr:"), "{msg}");
    assert!(
        msg.contains("update-initramfs -u -k all` failed (exit status 1)"),
        "{msg}"
    );
    assert!(msg.contains("fake failure requested by FAKE_FAIL"), "{msg}");
    assert_eq!(
        fakes.calls(),
        [
            "update-grub",
            "depmod -a 6.1.0-13-amd64",
            "update-initramfs -u -k all",
            "update-grub",
            "depmod -a 6.1.0-13-amd64",
            "update-initramfs -u -k all"
        ]
    );
    assert_eq!(snap(root), before);
}

#[test]
fn when_the_rollback_cannot_rerun_a_command_the_files_are_back_and_an_update_is_owed() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let etc_before: Vec<_> = snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect();
    let err = simulate_full(root, &fakes, &[("FAKE_FAIL", "update-initramfs")]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("But re-running `update-initramfs -u -k all` failed too"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "or run `update-grub && depmod -a 6.1.0-13-amd64 && update-initramfs -u -k all` yourself"
        ),
        "{msg}"
    );
    let etc_after: Vec<_> = snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect();
    assert_eq!(etc_after, etc_before);
    let host = Host::new(root);
    assert!(txn::update_needed(&host).unwrap());
    let state = State::load(&host).unwrap().unwrap();
    assert!(state.files.is_empty() && state.config.is_none());
}

#[test]
fn a_failing_write_puts_back_the_files_already_written() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    // gpt-vfio.conf is a link into a folder that does not exist: its write fails, after grub's.
    std::os::unix::fs::symlink(
        "/nowhere/gpt-vfio.conf",
        root.join("etc/modprobe.d/gpt-vfio.conf"),
    )
    .unwrap();
    let before = snap(root);
    let err = simulate_full(root, &fakes, &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("; rolled back: the 2 files gpt changed are back as they were; fix the cause"),
        "{msg}"
    );
    assert!(
        msg.contains("link into a folder that does not exist"),
        "{msg}"
    );
    assert!(fakes.calls().is_empty());
    assert_eq!(snap(root), before);
}

#[test]
fn files_keep_their_mode_and_owner_and_stale_temp_files_are_cleaned() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let grub = root.join("etc/default/grub");
    fs::set_permissions(&grub, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(&grub, Some(1000), Some(4)).unwrap();
    }
    fs::write(
        root.join("etc/default/.gpt-tmp.grub"),
        "left by a killed gpt",
    )
    .unwrap();
    simulate_full(root, &fakes, &[]).unwrap();
    let m = fs::metadata(&grub).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    if as_root {
        assert_eq!((m.uid(), m.gid()), (1000, 4));
        let conf = fs::metadata(root.join("etc/modprobe.d/gpt-vfio.conf")).unwrap();
        assert_eq!(
            (conf.mode() & 0o7777, conf.uid(), conf.gid()),
            (0o644, 0, 0)
        );
    }
    assert!(temp_files(root).is_empty());
}

#[test]
fn a_file_changed_after_planning_is_refused_and_nothing_changes() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let host = Host::new(root);
    let ui = Ui::new(false);
    let runner = Runner::new(&host, &ui).with_path(fakes.path());
    let plan = full_plan(root, &grub_tokens());
    fs::write(
        root.join("etc/default/grub"),
        "GRUB_CMDLINE_LINUX_DEFAULT=\"edited\"\n",
    )
    .unwrap();
    let before = snap(root);
    let lock = Lock::acquire(&host).unwrap();
    let err = txn::apply_with(&runner, &lock, &plan, Finish::Record(None), &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("/etc/default/grub changed since gpt read it"),
        "{err:#}"
    );
    assert_eq!(snap(root), before);
    assert!(fakes.calls().is_empty());
}

#[test]
fn skipping_the_update_commands_leaves_an_update_owed() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let host = Host::new(root);
    let ui = Ui::new(false);
    let runner = Runner::new(&host, &ui).with_path(fakes.path());
    let mut plan = full_plan(root, &grub_tokens());
    plan.commands.clear();
    let lock = Lock::acquire(&host).unwrap();
    txn::apply_with(&runner, &lock, &plan, Finish::Record(None), &[]).unwrap();
    assert!(txn::update_needed(&host).unwrap());
    assert!(fakes.calls().is_empty());
}

#[test]
fn a_rollback_reruns_only_the_commands_that_rebuild_boot_files() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let host = Host::new(root);
    let ui = Ui::new(false);
    let runner = Runner::new(&host, &ui)
        .with_path(fakes.path())
        .with_env("FAKE_FAIL", "update-initramfs:1");
    let mut plan = full_plan(root, &grub_tokens());
    plan.commands.insert(
        0,
        Step::new("Installing packages", &["apt-get", "install", "-y", "ovmf"]),
    );
    let lock = Lock::acquire(&host).unwrap();
    let err = txn::apply_with(&runner, &lock, &plan, Finish::Record(None), &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "and `update-grub`, `depmod -a 6.1.0-13-amd64`, `update-initramfs -u -k all` ran again"
        ),
        "{err:#}"
    );
    assert_eq!(
        fakes.calls(),
        [
            "apt-get install -y ovmf",
            "update-grub",
            "depmod -a 6.1.0-13-amd64",
            "update-initramfs -u -k all",
            "update-grub",
            "depmod -a 6.1.0-13-amd64",
            "update-initramfs -u -k all"
        ]
    );
}
