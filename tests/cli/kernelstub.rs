//! Pop!_OS hosts whose systemd-boot entries kernelstub writes.

use crate::support::fakes::Fakes;
use crate::support::hosts::{pop_os, DEBIAN_KVER, KERNELSTUB_CONF};
use crate::support::transact::snap;
use crate::support::{gpt, run};
use std::path::Path;

const IDS: &str = "vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb";
const ENTRY: &str = "/boot/efi/loader/entries/Pop_OS-current.conf";

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_default()
}

fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

fn host() -> (tempfile::TempDir, Fakes) {
    let dir = tempfile::tempdir().unwrap();
    pop_os(dir.path());
    let fakes = Fakes::new();
    for argv in [
        vec!["depmod", "-a", DEBIAN_KVER],
        vec!["update-initramfs", "-u", "-k", "all"],
        vec!["kernelstub"],
    ] {
        let out = fakes.run(dir.path(), &argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fakes.reset_log();
    (dir, fakes)
}

#[test]
fn the_options_list_is_edited_in_place_and_reset_restores_the_bytes() {
    let (dir, fakes) = host();
    assert_eq!(
        read(dir.path(), "/etc/kernelstub/configuration"),
        KERNELSTUB_CONF
    );
    cycle(dir.path(), &fakes, false);
    // A file with a final newline, which every kernelstub run takes away: gpt puts its bytes
    // back after the run, in full and in reset.
    let (dir, fakes) = host();
    std::fs::write(
        dir.path().join("etc/kernelstub/configuration"),
        format!("{KERNELSTUB_CONF}\n"),
    )
    .unwrap();
    cycle(dir.path(), &fakes, true);
    assert!(read(dir.path(), "/etc/kernelstub/configuration").ends_with("}\n"));
}

fn cycle(r: &Path, fakes: &Fakes, newline: bool) {
    let etc_before = etc(r);
    let entry_before = read(r, ENTRY);
    let (code, out, err) = run(gpt(r).env("PATH", fakes.path()).args([
        "full",
        "nvidia",
        "--yes",
        "--no-deps",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["boot"]["loader"], "kernelstub", "{doc}");
    let conf = read(r, "/etc/kernelstub/configuration");
    assert!(
        conf.contains("      \"splash\",\n      \"iommu=pt\",\n      \"intel_iommu=on\","),
        "the user's options first, in their order: {conf}"
    );
    assert_eq!(
        conf.ends_with('\n'),
        newline,
        "the final newline as the user had it"
    );
    assert!(
        fakes.calls().contains(&"kernelstub".to_string()),
        "{:?}",
        fakes.calls()
    );
    let entry = read(r, ENTRY);
    assert!(
        entry.contains(IDS) && entry.contains("loglevel=0"),
        "{entry}"
    );

    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), etc_before, "the configuration's bytes are back");
    assert_eq!(read(r, ENTRY), entry_before);
}

#[test]
fn reset_keeps_an_option_the_user_added_since_and_their_order() {
    let (dir, fakes) = host();
    let r = dir.path();
    let (code, _, err) =
        run(gpt(r)
            .env("PATH", fakes.path())
            .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 0, "{err}");
    // The user adds an option with kernelstub itself (which rewrites the whole file).
    assert!(fakes
        .run(r, &["kernelstub", "-a", "mitigations=off"])
        .status
        .success());
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    let conf = read(r, "/etc/kernelstub/configuration");
    assert!(
        conf.contains("      \"quiet\",\n      \"loglevel=0\",\n      \"systemd.show_status=false\",\n      \"splash\",\n      \"mitigations=off\"\n    ],"),
        "{conf}"
    );
    assert!(!conf.contains("iommu") && !conf.contains("vfio"), "{conf}");
    let entry = read(r, ENTRY);
    assert!(
        entry.contains("mitigations=off") && !entry.contains("vfio-pci.ids"),
        "{entry}"
    );
}

#[test]
fn a_broken_configuration_is_refused_with_no_byte_changed() {
    let (dir, fakes) = host();
    let r = dir.path();
    std::fs::write(
        r.join("etc/kernelstub/configuration"),
        "{\n  \"user\": {\n    \"kernel_options\": [\"quiet\",]\n",
    )
    .unwrap();
    let before = snap(r);
    let (code, _, err) =
        run(gpt(r)
            .env("PATH", fakes.path())
            .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not valid JSON (line 3"), "{err}");
    assert_eq!(snap(r), before);
}

/// `"setup_loader": false`: kernelstub writes no systemd-boot entry, so gpt could not verify
/// anything it configured. Refused up front with what is true and what to do; nothing changes.
#[test]
fn kernelstub_that_does_not_manage_the_loader_is_refused_with_the_reason() {
    let (dir, fakes) = host();
    let r = dir.path();
    let conf = KERNELSTUB_CONF.replace("\"setup_loader\": true", "\"setup_loader\": false");
    std::fs::write(r.join("etc/kernelstub/configuration"), &conf).unwrap();
    let before = snap(r);
    let (code, _, err) =
        run(gpt(r)
            .env("PATH", fakes.path())
            .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("kernelstub is not managing the boot entries")
            && err.contains("setup_loader")
            && !err.contains("is the ESP mounted"),
        "{err}"
    );
    assert_eq!(snap(r), before, "nothing changed");
}
