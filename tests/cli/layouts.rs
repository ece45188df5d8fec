//! Layouts people posted, through the real binary: which devices gpt takes (the whole card,
//! never a bridge), each through a dry run, the apply, a second run and `gpt reset`.

use crate::support::fakes::Fakes;
use crate::support::hosts::{apu_laptop, arc_a770, rx6800_four_groups};
use crate::support::transact::snap;
use crate::support::{gpt, run};
use serde_json::{json, Value};
use std::path::Path;

fn doc(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
}

fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

fn full(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).arg("full").args(args))
}

/// Dry run, apply, second run, reset: returns the dry run's JSON document (and checks the
/// apply reports the same devices, the second run changes nothing, reset restores /etc).
fn cycle(root: &Path, args: &[&str]) -> (Value, String) {
    let fakes = Fakes::new();
    fakes.prime(root);
    let pristine = etc(root);
    let before = snap(root);
    let mut a = args.to_vec();
    a.extend(["--no-deps", "--json"]);
    let (code, out, err) = full(root, &fakes, &[a.as_slice(), &["--dry-run"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(snap(root), before, "the dry run changed the tree");
    let dry = doc(&out);
    assert_eq!(dry["ok"], true);

    let (code, out, err) = full(root, &fakes, &[a.as_slice(), &["--yes"]].concat());
    assert_eq!(code, 0, "{err}");
    let applied = doc(&out);
    assert_eq!(applied["changed"], true);
    assert_eq!(applied["devices"], dry["devices"]);
    assert_eq!(applied["ids"], dry["ids"]);

    fakes.reset_log();
    let configured = snap(root);
    let (code, out, err2) = full(root, &fakes, &[a.as_slice(), &["--yes"]].concat());
    assert_eq!(code, 0, "{err2}");
    assert_eq!(doc(&out)["changed"], false);
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    assert_eq!(snap(root), configured);

    let (code, _, rerr) = run(gpt(root).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{rerr}");
    assert_eq!(
        etc(root),
        pristine,
        "reset must give /etc back byte for byte"
    );
    (dry, err)
}

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_default()
}

#[test]
fn an_arc_card_takes_its_audio_behind_its_switch_in_one_group_or_two() {
    for audio_group in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        arc_a770(dir.path(), audio_group);
        let (dry, err) = cycle(dir.path(), &["--device", "03:00.0"]);
        assert_eq!(
            dry["devices"],
            json!(["0000:03:00.0", "0000:04:00.0"]),
            "{err}"
        );
        assert_eq!(dry["ids"], json!(["8086:56a0", "8086:4f90"]));
        assert_eq!(dry["binding"], "ids");
        assert_eq!(dry["taken_from_host"], json!([]));
        assert!(!err.contains("not functions of the card"), "{err}");
        assert!(
            !err.contains("4fa1") && !err.contains("4fa4"),
            "no bridge: {err}"
        );
        if audio_group == 2 {
            assert!(
                err.contains("functions in IOMMU groups of their own"),
                "{err}"
            );
        }
    }
}

#[test]
fn an_arc_card_with_gpu_group_only_leaves_its_audio_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    arc_a770(dir.path(), 2);
    let (dry, err) = cycle(dir.path(), &["--device", "03:00.0", "--gpu-group-only"]);
    assert_eq!(dry["devices"], json!(["0000:03:00.0"]));
    assert_eq!(dry["left_on_host"], json!(["0000:04:00.0"]));
    assert!(
        err.contains("0000:04:00.0") && err.contains("stays on the host"),
        "{err}"
    );
}

#[test]
fn an_rx_6000_card_goes_whole_from_its_four_groups() {
    let dir = tempfile::tempdir().unwrap();
    rx6800_four_groups(dir.path());
    let (dry, err) = cycle(dir.path(), &["--device", "0c:00.0"]);
    assert_eq!(
        dry["devices"],
        json!([
            "0000:0c:00.0",
            "0000:0c:00.1",
            "0000:0c:00.2",
            "0000:0c:00.3"
        ])
    );
    assert_eq!(
        dry["ids"],
        json!(["1002:73bf", "1002:ab28", "1002:73a6", "1002:73a4"])
    );
    assert!(
        err.contains("(group 16, driver i2c-designware-pci)"),
        "{err}"
    );
    // The UCSI function's driver is held off like the others.
    let dir = tempfile::tempdir().unwrap();
    rx6800_four_groups(dir.path());
    let fakes = Fakes::new();
    let (code, out, err) = full(
        dir.path(),
        &fakes,
        &["--device", "0c:00.0", "--dry-run", "--no-deps"],
    );
    assert_eq!(code, 0, "{err}");
    for m in ["amdgpu", "snd_hda_intel", "xhci_pci", "i2c_designware_pci"] {
        assert!(
            out.contains(&format!("+softdep {m} pre: vfio-pci")),
            "{m}: {out}"
        );
    }
    assert!(
        out.contains("vfio-pci.ids=1002:73bf,1002:ab28,1002:73a6,1002:73a4"),
        "{out}"
    );
}

#[test]
fn a_laptop_apu_group_is_refused_in_one_json_document_and_force_never_takes_a_bridge() {
    let dir = tempfile::tempdir().unwrap();
    apu_laptop(dir.path());
    let root = dir.path();
    let fakes = Fakes::new();
    fakes.prime(root);
    let before = snap(root);
    let (code, out, err) = full(root, &fakes, &["--device", "05:00.0", "--yes", "--json"]);
    assert_eq!(code, 1, "{err}");
    let d = doc(&out);
    assert_eq!(d["ok"], false);
    assert_eq!(d["kind"], "shared_group");
    assert_eq!(d["devices"], json!(["0000:05:00.2", "0000:05:00.3"]));
    assert_eq!(d["todo"], "--force takes the whole group anyway.");
    assert!(d["message"].as_str().unwrap().contains("driver ccp"), "{d}");
    assert!(
        err.contains("error: IOMMU group 5 of 0000:05:00.0 also holds:"),
        "{err}"
    );
    assert_eq!(snap(root), before, "a refusal changes nothing");

    let (dry, err) = cycle(root, &["--device", "05:00.0", "--force"]);
    assert_eq!(
        dry["devices"],
        json!([
            "0000:05:00.0",
            "0000:05:00.1",
            "0000:05:00.2",
            "0000:05:00.3"
        ])
    );
    let ids = dry["ids"].to_string();
    assert!(
        !ids.contains("1022:1632") && !ids.contains("1022:1635"),
        "{ids}"
    );
    assert_eq!(
        dry["taken_from_host"],
        json!(["0000:05:00.2", "0000:05:00.3"])
    );
    assert!(
        err.contains("(driver xhci_hcd: the host loses the USB ports on it)"),
        "{err}"
    );
    assert!(!read(root, "/boot/grub/grub.cfg").contains("1022:1632"));
}

#[test]
fn a_refusal_that_is_not_about_devices_is_one_json_document_too() {
    let dir = tempfile::tempdir().unwrap();
    rx6800_four_groups(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["full", "amd", "--dry-run", "--json"]));
    assert_eq!(code, 1, "{err}");
    let d = doc(&out);
    assert_eq!(d["kind"], "several_gpus");
    assert_eq!(d["devices"], json!(["0000:0c:00.0", "0000:10:00.0"]));
    assert!(
        d["todo"]
            .as_str()
            .unwrap()
            .contains("--device 0000:0c:00.0"),
        "{d}"
    );
    let (code, out, _) = run(gpt(dir.path()).args(["full", "matrox", "--json"]));
    assert_eq!(code, 2);
    assert_eq!(doc(&out)["kind"], "usage");
}

/// The README host after a guide: its own `options vfio-pci ids=` file, and vfio in
/// /etc/modules.
fn guided(root: &Path) {
    let mut t = crate::support::hosts::rocketlake(root);
    t.file(
        "/etc/modprobe.d/vfio.conf",
        "# from a passthrough guide\noptions vfio-pci ids=10de:1f08,10de:10f9\nsoftdep nouveau pre: vfio-pci\n",
    )
    .file("/etc/modules", "# /etc/modules\nvfio_pci\n");
}

#[test]
fn a_guides_options_line_is_shown_and_the_rescue_says_to_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    guided(root);
    let guide = read(root, "/etc/modprobe.d/vfio.conf");
    let (dry, err) = cycle(root, &["nvidia"]);
    assert_eq!(
        read(root, "/etc/modprobe.d/vfio.conf"),
        guide,
        "gpt leaves it alone"
    );
    let found = dry["existing_passthrough"].as_array().unwrap();
    assert_eq!(found.len(), 2, "{dry}");
    assert_eq!(found[0]["path"], "/etc/modprobe.d/vfio.conf");
    assert_eq!(found[0]["line"], 2);
    assert_eq!(found[0]["defeats_rescue"], true);
    assert_eq!(found[1]["path"], "/etc/modules");
    assert_eq!(found[1]["defeats_rescue"], false);
    assert!(
        err.contains("/etc/modprobe.d/vfio.conf:2: `options vfio-pci ids=10de:1f08,10de:10f9`"),
        "{err}"
    );

    // The apply's rescue text names what else to undo.
    let fakes = Fakes::new();
    fakes.prime(root);
    let (code, _, err) = full(root, &fakes, &["nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("that rescue alone does not give the card back")
            && err
                .contains("`options vfio-pci ids=10de:1f08,10de:10f9` (/etc/modprobe.d/vfio.conf)"),
        "{err}"
    );
    // ... and the commands that rebuild this host's boot files, from its stack (GRUB and
    // initramfs-tools here).
    let warning = err
        .lines()
        .find(|l| l.contains("that rescue alone"))
        .unwrap_or_default();
    assert!(
        warning.contains("`sudo update-initramfs -u -k all`")
            && warning.contains("`sudo update-grub`"),
        "{warning}"
    );
    // `gpt check` warns about it.
    let (_, out, cerr) = run(crate::support::gpt_with_fakes(root).arg("check"));
    let all = format!("{out}{cerr}");
    assert!(
        all.contains("passthrough configuration gpt did not write"),
        "{all}"
    );
    assert!(all.contains("the rescue must undo it too"), "{all}");
}

#[test]
fn no_update_lists_the_commands_left_to_run_in_the_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    crate::support::hosts::rocketlake(root);
    let fakes = Fakes::new();
    fakes.prime(root);
    let (code, out, err) = full(
        root,
        &fakes,
        &["nvidia", "--yes", "--no-deps", "--no-update", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let d = doc(&out);
    assert_eq!(d["commands"], json!([]));
    assert_eq!(
        d["manual_commands"],
        json!([
            "update-grub",
            "depmod -a 6.1.0-13-amd64",
            "update-initramfs -u -k all"
        ])
    );
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
}

#[test]
fn identical_twins_bind_by_address_through_every_claimants_hook_where_vfio_pci_is_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    crate::support::hosts::twin_cards(root, false, false);
    let (dry, err) = cycle(root, &["--device", "01:00.0"]);
    assert_eq!(dry["binding"], "address", "{err}");
    assert_eq!(dry["devices"], json!(["0000:01:00.0", "0000:01:00.1"]));
    assert_eq!(dry["ids"], json!(["10de:2504", "10de:228e"]));
    assert!(
        err.contains("0000:02:00.0, 0000:02:00.1 have the same vendor:device id"),
        "{err}"
    );
    assert!(
        err.contains("vfio-pci is built into kernel 5.4.0-150-generic"),
        "{err}"
    );
    // What the apply writes: the hooks on vfio_pci and on each driver that could claim them.
    let fakes = Fakes::new();
    fakes.prime(root);
    let (code, _, err) = full(root, &fakes, &["--device", "01:00.0", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let conf = read(root, "/etc/modprobe.d/gpt-vfio.conf");
    for m in ["vfio_pci", "nouveau", "snd_hda_intel"] {
        let line = conf
            .lines()
            .find(|l| l.starts_with(&format!("install {m} ")))
            .unwrap_or_else(|| panic!("no hook for {m}: {conf}"));
        assert!(
            line.contains("echo 0000:01:00.1 > /sys/bus/pci/drivers_probe"),
            "{line}"
        );
        assert!(
            !line.contains("0000:02:00"),
            "the twin is never named: {line}"
        );
        assert!(
            line.ends_with(&format!("--ignore-install {m} $CMDLINE_OPTS")),
            "{line}"
        );
    }
    let cfg = read(root, "/boot/grub/grub.cfg");
    assert!(!cfg.contains("vfio-pci.ids"), "{cfg}");
    assert!(
        err.contains("gpt.bind=off"),
        "the rescue for binding by address: {err}"
    );
}

#[test]
fn twins_of_two_board_makers_are_named_by_subsystem_ids_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    crate::support::hosts::twin_cards(root, true, true);
    let (dry, err) = cycle(root, &["--device", "01:00.0"]);
    assert_eq!(dry["binding"], "ids", "{err}");
    assert_eq!(dry["ids"], json!(["10de:2504", "10de:228e"]));
    // A claimant built into one kernel is said, with the kernel.
    assert!(
        !err.contains("xhci_pci is built into"),
        "no USB function here: {err}"
    );
    let fakes = Fakes::new();
    fakes.prime(root);
    let (code, _, err) = full(root, &fakes, &["--device", "01:00.0", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let cfg = read(root, "/boot/grub/grub.cfg");
    assert!(
        cfg.contains("vfio-pci.ids=10de:2504:1043:87f3,10de:228e:1043:87f3"),
        "{cfg}"
    );
    assert!(!read(root, "/etc/modprobe.d/gpt-vfio.conf").contains("install "));
}

#[test]
fn gpt_qemu_passes_the_arc_cards_audio_behind_its_switch() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    arc_a770(root, 2);
    let fakes = Fakes::new();
    fakes.prime(root);
    let (code, _, err) = full(root, &fakes, &["--device", "03:00.0", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(gpt(root).env("PATH", fakes.path()).arg("qemu"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("host=0000:03:00.0"), "{out}");
    assert!(out.contains("host=0000:04:00.0"), "{out}");
    assert!(!err.contains("left out of the VM"), "{err}");
}
