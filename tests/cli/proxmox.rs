//! Proxmox VE hosts whose ESPs proxmox-boot-tool manages.

use crate::support::fakes::Fakes;
use crate::support::hosts::{pve_zfs, DEBIAN_KVER, PVE_ESP};
use crate::support::transact::snap;
use crate::support::{gpt, run};
use std::path::Path;

const IDS: &str = "vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb";

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_default()
}

fn esp(root: &Path, p: &str) -> String {
    read(root, &format!("/var/tmp/espmounts/{PVE_ESP}/{p}"))
}

fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

fn host(sdboot: bool) -> (tempfile::TempDir, Fakes) {
    let dir = tempfile::tempdir().unwrap();
    pve_zfs(dir.path(), sdboot);
    let fakes = Fakes::new();
    for argv in [
        vec!["depmod", "-a", DEBIAN_KVER],
        vec!["update-initramfs", "-u", "-k", "all"],
        vec!["proxmox-boot-tool", "refresh"],
    ] {
        assert!(fakes.run(dir.path(), &argv).status.success(), "{argv:?}");
    }
    fakes.reset_log();
    (dir, fakes)
}

#[test]
fn a_zfs_host_with_an_unused_grub_file_gets_etc_kernel_cmdline_and_a_refresh() {
    let (dir, fakes) = host(true);
    let r = dir.path();
    let etc_before = etc(r);
    let grub_before = read(r, "/etc/default/grub");
    let entry = format!("loader/entries/proxmox-{DEBIAN_KVER}.conf");
    let entry_before = esp(r, &entry);
    let (code, out, err) = run(gpt(r).env("PATH", fakes.path()).args([
        "full",
        "nvidia",
        "--yes",
        "--no-deps",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["boot"]["loader"], "proxmox", "{doc}");
    assert_eq!(
        read(r, "/etc/default/grub"),
        grub_before,
        "GRUB's unused file is left alone"
    );
    let line = read(r, "/etc/kernel/cmdline");
    assert!(
        line.starts_with("root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt"),
        "{line}"
    );
    assert!(!line.contains("initrd="), "{line}");
    let calls = fakes.calls();
    assert!(
        calls.contains(&"proxmox-boot-tool refresh".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("update-grub")),
        "{calls:?}"
    );
    assert!(esp(r, &entry).contains(IDS), "{}", esp(r, &entry));
    assert!(
        err.contains("did not read their entries"),
        "says it could not verify: {err}"
    );
    assert!(err.contains("hold Space"), "{err}");

    // The host reboots with the arguments; reset must not let /proc/cmdline bring them back.
    let args = line
        .trim_end()
        .split_once("boot=zfs ")
        .unwrap()
        .1
        .to_string();
    let proc = read(r, "/proc/cmdline");
    std::fs::write(
        r.join("proc/cmdline"),
        format!("{} {args}\n", proc.trim_end()),
    )
    .unwrap();
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), etc_before);
    assert_eq!(
        esp(r, &entry),
        entry_before,
        "the ESP's entry is back without the arguments"
    );
}

#[test]
fn an_esp_running_grub_gets_grubs_file_and_a_refresh_never_only_update_grub() {
    let (dir, fakes) = host(false);
    let r = dir.path();
    let etc_before = etc(r);
    let (code, _, err) =
        run(gpt(r)
            .env("PATH", fakes.path())
            .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 0, "{err}");
    assert!(read(r, "/etc/default/grub").contains(IDS));
    assert!(!r.join("etc/kernel/cmdline").exists());
    let calls = fakes.calls();
    assert!(
        calls.contains(&"proxmox-boot-tool refresh".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("update-grub")),
        "{calls:?}"
    );
    assert!(
        esp(r, "grub/grub.cfg").contains(IDS),
        "{}",
        esp(r, "grub/grub.cfg")
    );
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), etc_before);
    assert!(!esp(r, "grub/grub.cfg").contains("vfio-pci.ids"));
}
