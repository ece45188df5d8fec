//! Hosts that boot systemd-boot through kernel-install: detection, `full`, `reset`, `check`.

use crate::support::fakes::Fakes;
use crate::support::hosts::{sdboot, DEBIAN_KVER, MACHINE_ID};
use crate::support::transact::snap;
use crate::support::{gpt, run};
use std::path::Path;

const CMDLINE: &str = "root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet\n";
const IDS: &str = "vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb";

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_default()
}

fn entry(root: &Path) -> String {
    read(
        root,
        &format!("/boot/efi/loader/entries/{MACHINE_ID}-{DEBIAN_KVER}.conf"),
    )
}

fn options(root: &Path) -> String {
    entry(root)
        .lines()
        .find_map(|l| l.strip_prefix("options"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn gpt_f(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).args(args))
}

/// A primed systemd-boot host (entries regenerated from its /etc) and the fakes.
fn host(cmdline: Option<&str>, grub: bool, info: Option<&str>) -> (tempfile::TempDir, Fakes) {
    let dir = tempfile::tempdir().unwrap();
    sdboot(dir.path(), cmdline, grub, info);
    let fakes = Fakes::new();
    fakes.prime_sdboot(dir.path());
    (dir, fakes)
}

fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

#[test]
fn full_writes_etc_kernel_cmdline_regenerates_each_kernel_and_reset_gives_it_back() {
    let (dir, fakes) = host(Some(CMDLINE), false, Some("systemd-boot 257.9-1~deb13u1"));
    let r = dir.path();
    let etc_before = etc(r);
    let entry_before = entry(r);
    let (code, out, err) = gpt_f(
        r,
        &fakes,
        &["full", "nvidia", "--yes", "--no-deps", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["boot"]["loader"], "systemd-boot", "{doc}");
    assert_eq!(
        read(r, "/etc/kernel/cmdline"),
        format!("root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet iommu=pt intel_iommu=on {IDS} kvm.ignore_msrs=1 kvm.report_ignored_msrs=0\n")
    );
    // The images first, then each kernel's entry once (it copies the image).
    assert_eq!(
        fakes.calls(),
        [
            "kernel-install inspect".to_string(),
            format!("depmod -a {DEBIAN_KVER}"),
            "update-initramfs -u -k all".into(),
            format!("kernel-install add {DEBIAN_KVER} /boot/vmlinuz-{DEBIAN_KVER} /boot/initrd.img-{DEBIAN_KVER}"),
            format!("lsinitramfs /boot/initrd.img-{DEBIAN_KVER}"),
        ]
    );
    let opts = options(r);
    assert!(
        opts.contains(IDS) && opts.contains("intel_iommu=on"),
        "{opts}"
    );
    assert!(
        opts.ends_with(&format!("systemd.machine_id={MACHINE_ID}")),
        "{opts}"
    );
    assert!(
        err.contains("hold Space") && err.contains("press `e`"),
        "{err}"
    );
    assert!(!r.join("boot/grub/grub.cfg").exists());

    // Idempotent: nothing to write, nothing to run.
    fakes.reset_log();
    let before = snap(r);
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already configured"), "{err}");
    assert_eq!(fakes.calls(), ["kernel-install inspect"]);
    assert_eq!(snap(r), before);

    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), etc_before);
    assert_eq!(
        entry(r),
        entry_before,
        "the entry is regenerated without gpt's arguments"
    );
}

#[test]
fn without_etc_kernel_cmdline_it_is_created_and_reset_avoids_the_fallback_trap() {
    let (dir, fakes) = host(None, false, None);
    let r = dir.path();
    let etc_before = etc(r);
    let (code, out, err) = gpt_f(r, &fakes, &["full", "nvidia", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+++ b/etc/kernel/cmdline"), "{out}");
    assert!(err.contains("creates it from /proc/cmdline"), "{err}");
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let line = read(r, "/etc/kernel/cmdline");
    assert!(
        line.starts_with("root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet iommu=pt"),
        "{line}"
    );
    assert!(!line.contains("BOOT_IMAGE"), "{line}");
    let state: serde_json::Value =
        serde_json::from_str(&read(r, "/var/lib/gpt/state.json")).unwrap();
    assert_eq!(
        state["files"][0]["existed"], false,
        "journalled as created: {state}"
    );

    // The host reboots with gpt's arguments: /proc/cmdline now holds them.
    let proc = read(r, "/proc/cmdline");
    let booted = format!(
        "{} {}\n",
        proc.trim_end(),
        line.trim_end().split_once("quiet ").unwrap().1
    );
    std::fs::write(r.join("proc/cmdline"), &booted).unwrap();

    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        etc(r),
        etc_before,
        "/etc byte for byte: the file gpt created is gone"
    );
    let opts = options(r);
    assert!(
        !opts.contains("vfio-pci.ids") && !opts.contains("iommu=pt"),
        "{opts}"
    );
    assert!(err.contains("until you reboot"), "{err}");
}
