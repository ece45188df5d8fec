//! `gpt bind` / `gpt unbind` against host trees with a fake kernel (`support::kernel`): the
//! RTX 2060 of the RocketLake host (four functions, nouveau, snd_hda_intel, xhci_hcd,
//! nvidia-gpu) goes to vfio-pci and back; the refusals leave the tree as it was; a probe that
//! binds nothing, a driver whose unbind never returns and a crash between functions all end
//! with the functions handed back.

use crate::support::hosts::{
    as_full_left_it, rebooted, rocketlake, rocketlake_config, DEBIAN_KVER,
};
use crate::support::kernel::{driver_of, Kernel, Rules};
use crate::support::tree::{Dev, HostTree};
use crate::support::{gpt, run};
use serde_json::Value;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

const CARD: [&str; 4] = [
    "0000:02:00.0",
    "0000:02:00.1",
    "0000:02:00.2",
    "0000:02:00.3",
];
const HOST_DRIVERS: [&str; 4] = ["nouveau", "snd_hda_intel", "xhci_hcd", "nvidia-gpu"];
const BOOT_ID: &str = "5f1c7a4e-2b1d-4e8a-9c3f-7d2e1b0a9f64";

/// The RocketLake host as it runs: the RTX 2060's DRM nodes and sound card, the iGPU (boot
/// VGA) showing the console through fbcon on fb0, each module's PCI driver in sysfs.
fn second_card(root: &Path) -> HostTree {
    let mut t = rocketlake(root);
    let gpu = t.dev_dir("0000:02:00.0");
    let audio = t.dev_dir("0000:02:00.1");
    let igpu = t.dev_dir("0000:00:02.0");
    t.file(&format!("{gpu}/drm/card1/dev"), "226:1\n")
        .file(&format!("{gpu}/drm/renderD129/dev"), "226:129\n")
        .file("/dev/dri/card1", "")
        .file("/dev/dri/renderD129", "")
        .symlink("/dev/dri/by-path/pci-0000:02:00.0-card", "../card1")
        .symlink("/dev/dri/by-path/pci-0000:02:00.0-render", "../renderD129")
        .file(&format!("{igpu}/drm/card0/dev"), "226:0\n")
        .file("/dev/dri/card0", "")
        .symlink("/dev/dri/by-path/pci-0000:00:02.0-card", "../card0")
        .file(&format!("{audio}/sound/card1/id"), "NVidia\n")
        .file("/dev/snd/controlC1", "")
        .file("/dev/snd/pcmC1D3p", "")
        .file("/dev/snd/controlC0", "")
        .file(&format!("{igpu}/graphics/fb0/dev"), "29:0\n")
        // nouveau's fbdev: a framebuffer of the second card, which the console is not on.
        .file(&format!("{gpu}/graphics/fb1/dev"), "29:1\n")
        .symlink(
            &format!("{gpu}/graphics/fb1/device"),
            "../../../0000:02:00.0",
        )
        .symlink(
            "/sys/class/graphics/fb1",
            "../../devices/pci0000:00/0000:00:01.0/0000:02:00.0/graphics/fb1",
        )
        .symlink(
            &format!("{igpu}/graphics/fb0/device"),
            "../../../0000:00:02.0",
        )
        .symlink(
            "/sys/class/graphics/fb0",
            "../../devices/pci0000:00/0000:00:02.0/graphics/fb0",
        )
        .file("/sys/class/vtconsole/vtcon0/name", "(S) dummy device\n")
        .file("/sys/class/vtconsole/vtcon0/bind", "0\n")
        .file(
            "/sys/class/vtconsole/vtcon1/name",
            "(M) frame buffer device\n",
        )
        .file("/sys/class/vtconsole/vtcon1/bind", "1\n")
        .file("/proc/sys/kernel/random/boot_id", &format!("{BOOT_ID}\n"));
    for (module, driver) in [
        ("nouveau", "nouveau"),
        ("snd_hda_intel", "snd_hda_intel"),
        ("xhci_pci", "xhci_hcd"),
        ("i2c_nvidia_gpu", "nvidia-gpu"),
        ("vfio_pci", "vfio-pci"),
        ("i915", "i915"),
    ] {
        t.symlink(
            &format!("/sys/module/{module}/drivers/pci:{driver}"),
            &format!("../../../bus/pci/drivers/{driver}"),
        );
    }
    t
}

/// Every path under the root with its content (a FIFO as `<fifo>`: reading it would block),
/// but gpt's lock file (not a fact of the host; `gpt full`'s tests leave it out too).
fn tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        if rel == "run" || rel == "run/gpt.lock" {
            continue;
        }
        let m = e.path().symlink_metadata().unwrap();
        let what = if m.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.file_type().is_fifo() {
            "<fifo>".into()
        } else if m.is_dir() {
            "<dir>".into()
        } else {
            String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned()
        };
        out.push((rel, what));
    }
    out
}

fn drivers(root: &Path) -> Vec<Option<String>> {
    CARD.iter().map(|a| driver_of(root, a)).collect()
}

fn host_drivers() -> Vec<Option<String>> {
    HOST_DRIVERS.iter().map(|d| Some(d.to_string())).collect()
}

fn overrides(root: &Path) -> Vec<String> {
    CARD.iter()
        .map(|a| {
            std::fs::read_to_string(
                root.join("sys/bus/pci/devices")
                    .join(a)
                    .join("driver_override"),
            )
            .unwrap()
            .trim()
            .to_string()
        })
        .collect()
}

fn journal(root: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(root.join("run/gpt/bind.json")).ok()?;
    Some(serde_json::from_str(&text).unwrap())
}

/// The RocketLake host after `gpt bind --device 02:00.0`: the card on vfio-pci, the fake kernel
/// (returned) still serving.
fn bound_second_card(root: &Path) -> Kernel {
    second_card(root);
    let k = Kernel::start(root, Rules::default());
    let (code, _, err) = run(gpt(root).args(["bind", "--device", "02:00.0", "--yes"]));
    assert_eq!(code, 0, "{err}");
    k
}

#[test]
fn bind_moves_the_whole_card_display_last_and_unbind_gives_it_back() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let k = Kernel::start(root, Rules::default());
    let (code, out, err) = run(gpt(root).args([
        "--json",
        "bind",
        "--device",
        "02:00.0",
        "--yes",
        "--timeout",
        "5",
    ]));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["changed"], true);
    assert_eq!(
        drivers(root),
        vec![Some("vfio-pci".to_string()); 4],
        "{err}"
    );
    // The audio, USB and UCSI functions left their drivers before the GPU did.
    let unbinds: Vec<String> = k
        .log()
        .into_iter()
        .filter(|l| l.starts_with("unbind"))
        .collect();
    assert_eq!(
        unbinds,
        [
            "unbind snd_hda_intel 0000:02:00.1",
            "unbind xhci_hcd 0000:02:00.2",
            "unbind nvidia-gpu 0000:02:00.3",
            "unbind nouveau 0000:02:00.0",
        ]
    );
    let j = journal(root).expect("the binding journal");
    assert_eq!(j["boot_id"], BOOT_ID);
    let recorded: Vec<(&str, &str)> = j["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap(),
                e["driver"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recorded,
        [
            ("0000:02:00.1", "snd_hda_intel"),
            ("0000:02:00.2", "xhci_hcd"),
            ("0000:02:00.3", "nvidia-gpu"),
            ("0000:02:00.0", "nouveau"),
        ]
    );
    // A second bind changes nothing.
    let (code, _, err) = run(gpt(root).args(["bind", "--device", "02:00.0", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to change"), "{err}");

    let (code, _, err) = run(gpt(root).args(["unbind", "--yes", "--timeout", "5"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers(), "{err}");
    assert_eq!(
        overrides(root),
        ["", "", "", ""],
        "driver_override left empty"
    );
    assert!(
        journal(root).is_none(),
        "the journal is gone once all is back"
    );
    let probes: Vec<String> = k
        .log()
        .into_iter()
        .filter(|l| l.starts_with("probe"))
        .skip(4)
        .collect();
    assert_eq!(
        probes,
        [
            "probe 0000:02:00.0 -> nouveau",
            "probe 0000:02:00.3 -> nvidia-gpu",
            "probe 0000:02:00.2 -> xhci_hcd",
            "probe 0000:02:00.1 -> snd_hda_intel",
        ],
        "the GPU comes back first"
    );
    let (code, _, err) = run(gpt(root).args(["unbind", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to hand back"), "{err}");
}

#[test]
fn a_dry_run_shows_the_steps_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let k = Kernel::start(root, Rules::default());
    let before = tree(root);
    let (code, _, err) = run(gpt(root).args(["bind", "nvidia", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    for line in [
        "echo vfio-pci > /sys/bus/pci/devices/0000:02:00.1/driver_override",
        "echo 0000:02:00.1 > /sys/bus/pci/drivers/snd_hda_intel/unbind",
        "echo 0000:02:00.0 > /sys/bus/pci/drivers/nouveau/unbind",
        "check that 0000:02:00.0 is bound to vfio-pci",
        "dry run: nothing was changed",
    ] {
        assert!(err.contains(line), "{line}\n{err}");
    }
    assert!(
        err.find("drivers/nvidia-gpu/unbind").unwrap()
            < err.find("drivers/nouveau/unbind").unwrap(),
        "{err}"
    );
    assert_eq!(tree(root), before);
    assert!(k.log().is_empty());
}

/// Run `gpt bind ARGS --yes --json`, expect a refusal of `kind`, and the tree unchanged.
fn refused(root: &Path, args: &[&str], kind: &str) -> String {
    let before = tree(root);
    let mut all = vec!["--json", "bind"];
    all.extend_from_slice(args);
    all.extend(["--yes", "--timeout", "5"]);
    let (code, out, err) = run(gpt(root).args(&all));
    assert_eq!(code, 1, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    assert_eq!(doc["kind"], kind, "{doc}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert_eq!(tree(root), before, "a refusal changes nothing");
    doc["message"].as_str().unwrap().to_string()
}

#[test]
fn a_process_holding_the_card_is_named_and_nothing_changes() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let k = Kernel::start(root, Rules::default());
    for node in ["dev/dri/by-path/pci-0000:02:00.0-card", "dev/snd/pcmC1D3p"] {
        let mut holder = std::process::Command::new("sleep")
            .arg("60")
            .stdin(std::fs::File::open(root.join(node)).unwrap())
            .spawn()
            .unwrap();
        let msg = refused(root, &["--device", "02:00.0"], "in_use");
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(
            msg.contains(&format!("sleep (pid {})", holder.id())),
            "{msg}"
        );
        let shown = if node.contains("dri") {
            "/dev/dri/card1 (0000:02:00.0)"
        } else {
            "/dev/snd/pcmC1D3p (0000:02:00.1)"
        };
        assert!(msg.contains(shown), "{msg}");
    }
    assert!(k.log().is_empty(), "no write reached the kernel");
    assert_eq!(drivers(root), host_drivers());
}

#[test]
fn the_console_card_and_gpt_fulls_refusals_hold() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mut t = second_card(root);
    // A NIC in the card's IOMMU group: `gpt full`'s refusal of a shared group holds here too.
    t.device(
        Dev::new("0000:04:00.0", (0x8086, 0x1539), 0x020000)
            .group(14)
            .driver("igb"),
    );
    let _k = Kernel::start(root, Rules::default());
    let msg = refused(root, &["--device", "00:02.0"], "console");
    assert!(
        msg.contains("0000:00:02.0 shows this host's console (fbcon draws it on fb0)"),
        "{msg}"
    );
    let msg = refused(root, &["--device", "02:00.0"], "shared_group");
    assert!(msg.contains("0000:04:00.0"), "{msg}");
}

#[test]
fn a_probe_that_binds_nothing_is_an_error_and_every_function_goes_back() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let mut rules = Rules::default();
    rules.refuse.insert("vfio-pci".into());
    let _k = Kernel::start(root, rules);
    let (code, _, err) =
        run(gpt(root).args(["bind", "--device", "02:00.0", "--yes", "--timeout", "5"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("0000:02:00.1 is bound to no driver after the probe, not to vfio-pci: the probe bound nothing"), "{err}");
    assert!(
        err.contains("handed back to their drivers: 0000:02:00.1"),
        "{err}"
    );
    assert_eq!(drivers(root), host_drivers());
    assert_eq!(overrides(root), ["(null)", "", "(null)", "(null)"]);
    assert!(journal(root).is_none());
}

#[test]
fn a_driver_that_never_lets_go_is_named_and_the_rest_goes_back() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let mut rules = Rules::default();
    rules.blocked.insert("nouveau".into());
    let k = Kernel::start(root, rules);
    let started = std::time::Instant::now();
    let (code, _, err) =
        run(gpt(root).args(["bind", "--device", "02:00.0", "--yes", "--timeout", "2"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "gpt did not hang"
    );
    assert!(
        err.contains("`echo 0000:02:00.0 > /sys/bus/pci/drivers/nouveau/unbind` did not return within 2 s: the nouveau driver does not let go"),
        "{err}"
    );
    assert!(
        err.contains("sudo gpt unbind --device 0000:02:00.0"),
        "{err}"
    );
    assert!(
        err.contains("handed back to their drivers: 0000:02:00.3, 0000:02:00.2, 0000:02:00.1"),
        "{err}"
    );
    assert_eq!(drivers(root), host_drivers());
    // The stuck function stays journalled; once its unbind finally ends, gpt unbind brings it back.
    let j = journal(root).unwrap();
    assert_eq!(j["functions"].as_array().unwrap().len(), 1, "{j}");
    k.release("nouveau");
    assert_eq!(driver_of(root, CARD[0]), None);
    let (code, _, err) = run(gpt(root).args(["unbind", "--yes", "--timeout", "5"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers());
    assert!(journal(root).is_none());
}

/// A crash (a power cut, SIGKILL) after any step of any function: `gpt unbind` then finds
/// the original drivers in the journal and hands every function back.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_after_any_step_is_undone_by_unbind_from_the_journal() {
    // Four functions of five steps each (driver_override, unbind, its check, probe, its check).
    let total = 20;
    for n in 1..=total {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        second_card(root);
        let _k = Kernel::start(root, Rules::default());
        let point = format!("bind-after-step:{n}");
        let (code, _, err) = run(gpt(root)
            .args(["bind", "--device", "02:00.0", "--yes"])
            .env("GPT_FAILPOINT", &point));
        assert_ne!(code, 0, "{point}: {err}");
        assert!(
            err.contains(&format!("fail point {point}")),
            "{point}: {err}"
        );
        // A write returns before the fake kernel acts on it (sysfs returns after): let it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let moved = drivers(root)
            .iter()
            .filter(|d| d.as_deref() == Some("vfio-pci"))
            .count();
        // Moved once its probe ran (step 4 of 5), whether or not its check did.
        assert_eq!(moved, (n + 1) / 5, "{point}");
        let (code, _, err) = run(gpt(root).args(["unbind", "--yes", "--timeout", "5"]));
        assert_eq!(code, 0, "{point}: {err}");
        assert_eq!(drivers(root), host_drivers(), "{point}");
        assert!(
            overrides(root)
                .iter()
                .all(|o| o.is_empty() || o == "(null)"),
            "{point}: {:?}",
            overrides(root)
        );
        assert!(journal(root).is_none(), "{point}");
    }
    crate::support::tally::record("fail points", "bind_crash_after_each_step", total, total);
}

#[test]
fn reset_hands_back_what_bind_bound_first() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let _k = bound_second_card(root);
    let (_, _, err) = run(gpt(root).args(["reset", "--dry-run"]));
    assert!(
        err.contains(
            "would first hand back what `gpt bind` bound: 0000:02:00.1 (to snd_hda_intel)"
        ),
        "{err}"
    );
    assert!(journal(root).is_some());
    let (code, _, err) = run(gpt(root).args(["reset", "--yes", "--no-update"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers(), "{err}");
    assert!(journal(root).is_none());
}

#[test]
fn reset_refuses_to_take_a_bound_card_from_the_vm_that_has_it_open() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let _k = bound_second_card(root);
    // A VM: a process with the function's /dev/vfio group open.
    let group = std::fs::read_link(root.join("sys/bus/pci/devices/0000:02:00.0/iommu_group"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let node = root.join("dev/vfio").join(&group);
    std::fs::create_dir_all(node.parent().unwrap()).unwrap();
    std::fs::write(&node, "").unwrap();
    let mut vm = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::fs::File::open(&node).unwrap())
        .spawn()
        .unwrap();
    let bound = drivers(root);
    let before = tree(root);
    for args in [
        &["reset", "--dry-run"][..],
        &["reset", "--yes", "--no-update"],
    ] {
        let (code, _, err) = run(gpt(root).args(args));
        assert_eq!(code, 1, "{args:?}: {err}");
        // The function in bind's journal is named, and what to stop.
        assert!(
            err.contains(&format!(
                "/dev/vfio/{group} (0000:02:00.1): sleep (pid {})",
                vm.id()
            )) && err.contains("a VM with the card's /dev/vfio group open"),
            "{err}"
        );
        assert!(err.contains("Nothing was changed"), "{err}");
        assert_eq!(tree(root), before, "{args:?} changed the tree");
        assert_eq!(drivers(root), bound);
    }
    let _ = vm.kill();
    let _ = vm.wait();
    let (code, _, err) = run(gpt(root).args(["reset", "--yes", "--no-update"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers(), "{err}");
    assert!(journal(root).is_none());
}

#[test]
fn unbind_gives_gpt_fulls_card_to_its_host_drivers_for_this_boot() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mut t = second_card(root);
    as_full_left_it(&mut t, &rocketlake_config(), DEBIAN_KVER, true);
    rebooted(&mut t, &rocketlake_config(), DEBIAN_KVER);
    let mut rules = Rules::default();
    for (a, drv) in CARD.iter().zip(HOST_DRIVERS) {
        rules.native.insert(a.to_string(), drv.to_string());
        rules.ids.insert(a.to_string());
    }
    let _k = Kernel::start(root, rules);
    assert_eq!(drivers(root), vec![Some("vfio-pci".to_string()); 4]);
    let (code, _, err) = run(gpt(root).args(["unbind", "--yes", "--timeout", "5"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers(), "{err}");
    assert!(err.contains("for this boot only"), "{err}");
    // vfio-pci.ids= of this boot would take them straight back: the override names the driver.
    assert_eq!(overrides(root), HOST_DRIVERS);
    assert!(
        err.contains("driver_override keeps naming nouveau"),
        "{err}"
    );
    assert!(journal(root).is_none());
    // That override names the bound driver: it is no reason to refuse the next bind.
    let (code, _, err) = run(gpt(root).args(["bind", "--device", "02:00.0", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), vec![Some("vfio-pci".to_string()); 4]);
}

#[test]
fn an_override_someone_else_set_is_refused_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let _k = Kernel::start(root, Rules::default());
    let ov = root.join("sys/bus/pci/devices/0000:02:00.1/driver_override");
    std::fs::write(&ov, "pci-stub\n").unwrap();
    let msg = refused(root, &["--device", "02:00.0"], "foreign_override");
    assert!(
        msg.contains("0000:02:00.1 has driver_override set to pci-stub by hand or a script"),
        "{msg}"
    );
    std::fs::create_dir_all(root.join("etc/driverctl.d")).unwrap();
    std::fs::write(root.join("etc/driverctl.d/pci-0000:02:00.1"), "pci-stub\n").unwrap();
    let msg = refused(root, &["--device", "02:00.0"], "foreign_override");
    assert!(
        msg.contains("by driverctl (/etc/driverctl.d/pci-0000:02:00.1)"),
        "{msg}"
    );
}

#[test]
fn qemu_passes_the_bound_card_and_libvirt_leaves_it_to_gpt() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let _k = bound_second_card(root);
    // Nothing configured by `gpt full`: `gpt qemu` takes the card `gpt bind` bound.
    let (code, out, err) = run(gpt(root).args(["qemu"]));
    assert_eq!(code, 0, "{err}");
    for f in CARD {
        assert!(out.contains(&format!("vfio-pci,host={f}")), "{f}\n{out}");
    }
    let (code, xml, err) = run(gpt(root).args(["qemu", "--libvirt"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(xml.matches("type='pci' managed='no'>").count(), 4, "{xml}");
    assert!(!xml.contains("managed='yes'"), "{xml}");
    assert!(xml.contains("bound to vfio-pci by `gpt bind`"), "{xml}");
}

#[test]
fn check_says_how_each_function_came_to_vfio_pci() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let mut t = second_card(root);
    // The chipset's audio function is on vfio-pci by a driverctl override; the card by `gpt bind`.
    t.file("/etc/driverctl.d/pci-0000:00:1f.3", "vfio-pci\n");
    crate::support::hosts::bind(&mut t, "0000:00:1f.3", "vfio-pci");
    let _k = Kernel::start(root, Rules::default());
    let (code, _, err) = run(gpt(root).args(["bind", "--device", "02:00.0", "--yes"]));
    assert_eq!(code, 0, "{err}");
    let (_, out, err) = run(gpt(root).args(["--json", "check"]));
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
    let detail = |name: &str| -> (String, String) {
        let c = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {doc}"));
        (
            c["status"].as_str().unwrap().to_string(),
            c["detail"].as_str().unwrap().to_string(),
        )
    };
    let (status, why) = detail("how 0000:02:00.0 came to vfio-pci");
    assert_eq!(status, "pass");
    assert!(why.starts_with("by `gpt bind`, for this boot"), "{why}");
    let (status, why) = detail("how 0000:00:1f.3 came to vfio-pci");
    assert_eq!(status, "warn");
    assert!(
        why.contains("driverctl override, /etc/driverctl.d/pci-0000:00:1f.3")
            && why.contains("`gpt reset` leaves it"),
        "{why}"
    );
}

#[test]
fn bind_waits_for_no_one_while_another_gpt_holds_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    let k = Kernel::start(root, Rules::default());
    let held = gpt::txn::Lock::acquire(&gpt::host::Host::new(root)).unwrap();
    for cmd in ["bind", "unbind"] {
        let (code, _, err) = run(gpt(root).args([cmd, "--device", "02:00.0", "--yes"]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("another gpt is running"), "{err}");
    }
    drop(held);
    assert!(k.log().is_empty());
    assert_eq!(drivers(root), host_drivers());
}

/// Under `--root`, loading vfio-pci runs the tree's own `modprobe` as root: as for `gpt full`'s
/// commands, gpt says so and refuses a tree another user could change, before any write.
#[test]
fn under_root_loading_vfio_pci_needs_a_tree_only_root_can_change() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    second_card(root);
    std::fs::remove_dir_all(root.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o757)).unwrap();
    let before = tree(root);
    let (code, out, err) =
        run(gpt(root).args(["bind", "--device", "02:00.0", "--yes", "--timeout", "5"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("note: under --root, modprobe run as root inside"),
        "{err}"
    );
    let named = format!(
        "refusing to run the tree's own programs: {} is writable by others (mode 757)",
        root.canonicalize().unwrap().display()
    );
    assert!(err.contains(&named), "{err}");
    assert_eq!(tree(root), before, "a refusal changes nothing");
    assert_eq!(drivers(root), host_drivers());
    // A dry run, which runs nothing, says what a real run would refuse.
    let (code, _, err) = run(gpt(root).args(["bind", "--device", "02:00.0", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("a real run would refuse:"), "{err}");
}
