//! The old setup.sh's leftovers: `leftovers::scan` on trees the old script left, what
//! `gpt check` says about them, and that applying the changes removes exactly them.

use crate::support::hosts::{
    as_full_left_it, old_setup_sh, rocketlake, rocketlake_config, DEBIAN_KVER, GRUB_DEBIAN12,
    MODULES_DEBIAN12,
};
use crate::support::tree::snapshot;
use crate::support::{gpt_with_fakes, run};
use gpt::host::Host;
use gpt::leftovers::{scan, Leftover};
use std::path::Path;

/// Apply the changes as `reset --legacy` would (without its transaction): write or remove.
fn apply(root: &Path, leftovers: &[Leftover]) {
    for l in leftovers {
        for c in &l.changes {
            let at = root.join(c.path.strip_prefix("/").unwrap());
            let now = std::fs::read(&at).ok();
            assert_eq!(now, c.before, "{} changed since the scan", c.path.display());
            match &c.after {
                Some(bytes) => std::fs::write(&at, bytes).unwrap(),
                None => std::fs::remove_file(&at).unwrap(),
            }
        }
    }
}

fn read(root: &Path, abs: &str) -> String {
    std::fs::read_to_string(root.join(abs.trim_start_matches('/'))).unwrap()
}

#[test]
fn everything_the_old_script_left_is_found_in_a_fixed_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    old_setup_sh(&mut t);
    let found = scan(&Host::new(dir.path())).unwrap();
    let lines: Vec<&str> = found.iter().map(|l| l.description.as_str()).collect();
    assert_eq!(
        lines,
        [
            "/etc/default/grub: kernel arguments the old setup.sh appended: preempt=voluntary (GRUB_CMDLINE_LINUX_DEFAULT), amd_iommu=on (GRUB_CMDLINE_LINUX_DEFAULT), intel_iommu=on (GRUB_CMDLINE_LINUX_DEFAULT), vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb (GRUB_CMDLINE_LINUX_DEFAULT), rd.driver.pre=vfio-pci (GRUB_CMDLINE_LINUX_DEFAULT), video=efifb:off (GRUB_CMDLINE_LINUX_DEFAULT), kvm.ignore_msrs=1 (GRUB_CMDLINE_LINUX_DEFAULT), kvm.report_ignored_msrs=0 (GRUB_CMDLINE_LINUX_DEFAULT)",
            "/etc/default/grub.bak: a stale copy of /etc/default/grub saved by the old setup.sh (its reset restored it over later changes); moved aside to /etc/default/grub.bak.gpt-legacy",
            "/etc/modprobe.d/xhci_hcd.conf: `blacklist xhci_hcd` keeps every USB 3 controller of the host from its driver; the file is removed",
            "/etc/initramfs-tools/modules: `options vfio-pci ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb` does nothing there (it takes module names; options belong in modprobe.d); the line is removed",
            "/etc/modprobe.d/blacklist.conf: `options vfio-pci ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb` binds devices to vfio-pci outside gpt's configuration; the file is removed",
        ]
    );
}

#[test]
fn applying_the_changes_leaves_only_what_was_not_the_old_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    old_setup_sh(&mut t);
    let found = scan(&Host::new(dir.path())).unwrap();
    apply(dir.path(), &found);
    assert!(scan(&Host::new(dir.path())).unwrap().is_empty());
    // iommu=pt is harmless and not on the list; every other byte of the file is as it was.
    assert_eq!(
        read(dir.path(), "/etc/default/grub"),
        GRUB_DEBIAN12.replace("\"quiet\"", "\"quiet iommu=pt\"")
    );
    assert_eq!(
        read(dir.path(), "/etc/default/grub.bak.gpt-legacy"),
        GRUB_DEBIAN12
    );
    assert!(!dir.path().join("etc/default/grub.bak").exists());
    assert!(!dir.path().join("etc/modprobe.d/xhci_hcd.conf").exists());
    assert!(!dir.path().join("etc/modprobe.d/blacklist.conf").exists());
    assert_eq!(
        read(dir.path(), "/etc/initramfs-tools/modules"),
        format!("{MODULES_DEBIAN12}vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n")
    );
}

#[test]
fn check_warns_and_points_at_reset_legacy() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    t.file("/dev/kvm", "");
    old_setup_sh(&mut t);
    let before = snapshot(dir.path());
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 0, "a leftover is a warning: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("Checking for leftovers of the old setup.sh"))
        .unwrap();
    assert!(line.contains(" : WARN (/etc/default/grub: kernel arguments the old setup.sh appended: preempt=voluntary"), "{line}");
    assert!(
        line.contains("; /etc/modprobe.d/xhci_hcd.conf: `blacklist xhci_hcd`"),
        "{line}"
    );
    assert!(
        line.ends_with("; `sudo gpt reset --legacy` shows and removes them)"),
        "{line}"
    );
    assert_eq!(before, snapshot(dir.path()), "check wrote something");
}

#[test]
fn arguments_gpt_configured_on_top_of_the_old_script_are_not_leftovers() {
    // The old script ran, then `gpt full`: gpt found intel_iommu=on and kvm.* already there
    // and did not add them again, so only the configuration says they are needed.
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    old_setup_sh(&mut t);
    as_full_left_it(&mut t, &rocketlake_config(), DEBIAN_KVER, true);
    let found = scan(&Host::new(dir.path())).unwrap();
    assert!(
        found[0].description.starts_with(
            "/etc/default/grub: kernel arguments the old setup.sh appended: preempt=voluntary (GRUB_CMDLINE_LINUX_DEFAULT), amd_iommu=on (GRUB_CMDLINE_LINUX_DEFAULT), rd.driver.pre=vfio-pci (GRUB_CMDLINE_LINUX_DEFAULT), video=efifb:off (GRUB_CMDLINE_LINUX_DEFAULT)"
        ),
        "{}",
        found[0].description
    );
    apply(dir.path(), &found[..1]);
    let grub = read(dir.path(), "/etc/default/grub");
    let value = gpt::edit::grub::read_var(&grub, "GRUB_CMDLINE_LINUX_DEFAULT")
        .unwrap()
        .unwrap();
    for arg in rocketlake_config().args {
        assert!(value.split(' ').any(|t| t == arg), "{arg} lost: {value}");
    }
}
