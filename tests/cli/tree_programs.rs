//! Under `--root`, a read-only command runs no program of the tree (issue 27, item 1): the
//! initramfs images are listed with this machine's own lister on the image opened inside the
//! root, never through `chroot ROOT`; without a lister here, `gpt check` says what it could
//! not tell (a warning), and still runs nothing from the tree.

use crate::support::fakes::{Fakes, FAKES};
use crate::support::hosts::{
    as_full_left_it, rebooted, rocketlake, rocketlake_config, DEBIAN_KVER,
};
use crate::support::{gpt, run};
use std::path::Path;

/// The host of `gpt check`'s tests after `gpt full` and the reboot, with programs of its own
/// that would leave a mark if anything ran them.
fn configured_host(root: &Path) {
    let mut t = rocketlake(root);
    t.file("/dev/kvm", "");
    as_full_left_it(&mut t, &rocketlake_config(), DEBIAN_KVER, true);
    rebooted(&mut t, &rocketlake_config(), DEBIAN_KVER);
    for prog in ["/usr/sbin/lsinitramfs", "/usr/bin/lsinitrd"] {
        let script = "#!/bin/sh\ntouch /tree-program-ran\necho usr/lib/modules/x/vfio-pci.ko\n";
        t.file(prog, script);
        let p = root.join(prog.trim_start_matches('/'));
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("Checking for {name} ")))
        .unwrap_or_else(|| panic!("no check {name:?} in\n{out}"))
}

#[test]
fn read_only_commands_list_the_images_with_this_machines_lister() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    configured_host(root);
    let fakes = Fakes::new();
    let (code, out, err) = run(gpt(root).env("PATH", fakes.path()).arg("check"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        line(&out, "vfio-pci in the initramfs images").ends_with(": PASS"),
        "{out}"
    );
    assert!(
        fakes
            .calls()
            .contains(&format!("lsinitramfs fd:/boot/initrd.img-{DEBIAN_KVER}")),
        "{:?}",
        fakes.calls()
    );
    for args in [
        &["full", "nvidia", "debian", "--dry-run", "--no-deps"][..],
        &["reset", "--dry-run"],
        &["iommu"],
    ] {
        let (code, out, err) = run(gpt(root).env("PATH", fakes.path()).args(args));
        assert!(code == 0 || code == 1, "{args:?}: {out}{err}");
    }
    assert_eq!(fakes.chrooted(), Vec::<String>::new(), "ran in the tree");
    assert!(!root.join("tree-program-ran").exists());
}

#[test]
fn without_a_lister_here_check_warns_and_runs_none_of_the_trees() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    configured_host(root);
    let fakes = Fakes::new();
    // This machine's commands: the fakes, less lsinitramfs (the tree has one).
    let bin = tempfile::tempdir().unwrap();
    for name in FAKES.iter().filter(|n| **n != "lsinitramfs") {
        std::os::unix::fs::symlink(fakes.bin.join(name), bin.path().join(name)).unwrap();
    }
    let (code, out, err) = run(gpt(root).env("PATH", bin.path()).arg("check"));
    assert_eq!(code, 0, "{out}{err}");
    let l = line(&out, "vfio-pci in the initramfs images");
    assert!(
        l.contains(": WARN (could not list /boot/initrd.img-")
            && l.contains("lsinitramfs is not installed on this machine"),
        "{out}"
    );
    assert_eq!(fakes.chrooted(), Vec::<String>::new(), "ran in the tree");
    assert!(!root.join("tree-program-ran").exists());
}

/// A FIFO planted where gpt reads a file (the kernel's command line, a function's config space
/// and reset method, the pci.ids database) does not hang a read-only command: every read opens
/// without blocking, so the FIFO reads as nothing and `gpt check` and `gpt iommu` still answer.
#[test]
fn fifos_where_files_are_read_do_not_hang_a_read_only_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    configured_host(root);
    let dev = root.join("sys/bus/pci/devices/0000:02:00.0");
    let dev = dev.canonicalize().unwrap_or(dev);
    for p in [
        root.join("proc/cmdline"),
        dev.join("config"),
        dev.join("reset_method"),
    ] {
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    }
    for args in [&["check"][..], &["iommu"][..]] {
        let started = std::time::Instant::now();
        let (code, out, err) = run(gpt(root)
            .args(args)
            .timeout(std::time::Duration::from_secs(60)));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{args:?} hung: {err}"
        );
        assert!(code == 0 || code == 1, "{args:?} exit {code}: {out}{err}");
        assert!(!out.is_empty(), "{args:?} said nothing: {err}");
    }
}
