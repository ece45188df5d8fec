//! gpt's early binding step in the initramfs, through the real binary on both generators: an
//! `init-top` script on initramfs-tools, a `pre-udev` hook from gpt's own dracut module on
//! dracut. Which mechanism gpt picks for identical twins with vfio-pci a module, with
//! vfio-pci built into one kernel, and for a claimant (xhci_pci) built into one kernel — each
//! through a dry run, the apply, a second run (`changed: false`) and `gpt reset`.

use crate::support::fakes::Fakes;
use crate::support::hosts::{cards_with_usb, on_dracut, twin_cards, XHCI_BUILTIN_KVER};
use crate::support::transact::{etc, snap};
use crate::support::tree::HostTree;
use crate::support::{gpt, run};
use serde_json::Value;
use std::path::Path;

const INIT_TOP: &str = "/etc/initramfs-tools/scripts/init-top/gpt-vfio";
const DRACUT_SETUP: &str = "/usr/lib/dracut/modules.d/90gpt-vfio/module-setup.sh";
const DRACUT_HOOK: &str = "/usr/lib/dracut/modules.d/90gpt-vfio/gpt-vfio.sh";
const DRACUT_CONF: &str = "/etc/dracut.conf.d/gpt-vfio.conf";
const MODPROBE_CONF: &str = "/etc/modprobe.d/gpt-vfio.conf";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Gen {
    InitramfsTools,
    Dracut,
}

fn host(root: &Path, g: Gen, build: fn(&Path) -> HostTree) {
    let mut t = build(root);
    if g == Gen::Dracut {
        on_dracut(&mut t, root);
    }
}

fn read(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).ok()
}

fn full(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).arg("full").args(args))
}

/// What one host came to: the dry run's stderr (notes) and diff, and the files as applied.
struct Seen {
    notes: String,
    diff: String,
    binding: String,
    /// The script as it runs in the initramfs (the hook on dracut).
    script: String,
    modprobe: String,
    dracut_conf: Option<String>,
    /// The listing of each image (lsinitramfs / lsinitrd), newest kernel first.
    images: Vec<String>,
}

/// Dry run (text and JSON), apply, second run, reset: checks the invariants and returns what
/// was seen. `/etc` and every folder outside /boot, /lib/modules and gpt's state come back
/// byte for byte (dracut's module folder under /usr/lib included).
fn cycle(root: &Path, g: Gen, args: &[&str]) -> Seen {
    let fakes = Fakes::new();
    fakes.prime(root);
    let outside = |root: &Path| -> Vec<(String, String)> {
        snap(root)
            .into_iter()
            .filter(|(p, _)| {
                !p.starts_with("boot") && !p.starts_with("lib/modules") && !p.starts_with("var")
            })
            .collect()
    };
    let pristine_etc = etc(root);
    let pristine = outside(root);
    let before = snap(root);
    let mut a = args.to_vec();
    a.push("--no-deps");
    let (code, diff, notes) = full(root, &fakes, &[a.as_slice(), &["--dry-run"]].concat());
    assert_eq!(code, 0, "{notes}");
    let (code, out, err) = full(
        root,
        &fakes,
        &[a.as_slice(), &["--dry-run", "--json"]].concat(),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(snap(root), before, "the dry run changed the tree");
    let dry: Value = serde_json::from_str(&out).unwrap();

    let (code, out, err) = full(root, &fakes, &[a.as_slice(), &["--yes", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let applied: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(applied["changed"], true);
    let paths = |v: &Value| -> Vec<String> {
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        paths(&applied),
        paths(&dry),
        "the apply wrote what the dry run listed"
    );
    let script_path = match g {
        Gen::InitramfsTools => INIT_TOP,
        Gen::Dracut => DRACUT_HOOK,
    };
    let script = read(root, script_path).unwrap_or_default();
    if !script.is_empty() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join(script_path.trim_start_matches('/')))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{script_path}");
    }
    let mut kernels: Vec<String> = std::fs::read_dir(root.join("lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kernels.sort();
    kernels.reverse();
    let lister = match g {
        Gen::InitramfsTools => "lsinitramfs",
        Gen::Dracut => "lsinitrd",
    };
    let images = kernels
        .iter()
        .map(|k| {
            let out = fakes.run(root, &[lister, &format!("/boot/initrd.img-{k}")]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let seen = Seen {
        notes,
        diff,
        binding: dry["binding"].as_str().unwrap().to_string(),
        script,
        modprobe: read(root, MODPROBE_CONF).unwrap_or_default(),
        dracut_conf: read(root, DRACUT_CONF),
        images,
    };

    fakes.reset_log();
    let configured = snap(root);
    let (code, out, err) = full(root, &fakes, &[a.as_slice(), &["--yes", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let again: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["changed"], false, "{out}");
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    assert_eq!(snap(root), configured);

    let (code, _, err) = run(gpt(root).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        etc(root),
        pristine_etc,
        "reset must give /etc back byte for byte"
    );
    assert_eq!(outside(root), pristine, "reset left something outside /etc");
    for p in [INIT_TOP, DRACUT_SETUP, DRACUT_HOOK] {
        assert!(read(root, p).is_none(), "{p} is still there");
    }
    seen
}

/// `gpt_vfio ADDRESS VENDOR DEVICE keep|unbind` lines of a script.
fn calls(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("gpt_vfio "))
        .map(str::to_string)
        .collect()
}

fn in_image(g: Gen) -> &'static str {
    match g {
        Gen::InitramfsTools => "scripts/init-top/gpt-vfio",
        Gen::Dracut => "var/lib/dracut/hooks/pre-udev/00-gpt-vfio.sh",
    }
}

fn twins_modular(root: &Path) -> HostTree {
    cards_with_usb(root, true, false)
}

#[test]
fn identical_twins_with_vfio_pci_a_module_get_install_hooks_and_the_early_overrides() {
    for g in [Gen::InitramfsTools, Gen::Dracut] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, g, twins_modular);
        let s = cycle(root, g, &["--device", "01:00.0"]);
        assert_eq!(s.binding, "address", "{g:?}: {}", s.notes);
        // The early step: overrides only, no unbind (nothing is built in), by address.
        assert_eq!(
            calls(&s.script),
            [
                "0000:01:00.0 0x10de 0x2504 keep",
                "0000:01:00.1 0x10de 0x228e keep",
                "0000:01:00.2 0x10de 0x1ada keep"
            ],
            "{g:?}: {}",
            s.script
        );
        assert!(
            !s.script.contains("vfio-pci.ids=\"*"),
            "gated by gpt.bind=off only"
        );
        assert!(!s.script.contains("0000:02:00"), "the twin is never named");
        // The install hook of the modular vfio_pci is still there.
        assert!(
            s.modprobe.contains("\ninstall vfio_pci case "),
            "{}",
            s.modprobe
        );
        // Shown in the plan: where it runs and which functions, and its file in the diff.
        let how = match g {
            Gen::InitramfsTools => "an init-top script, which runs before initramfs-tools' udev",
            Gen::Dracut => "a dracut pre-udev hook (gpt's module 90gpt-vfio)",
        };
        assert!(
            s.notes
                .contains(&format!("note: early in the initramfs, {how}")),
            "{g:?}: {}",
            s.notes
        );
        assert!(
            s.notes
                .contains("0000:01:00.0, 0000:01:00.1, 0000:01:00.2\n"),
            "{}",
            s.notes
        );
        let script_file = match g {
            Gen::InitramfsTools => INIT_TOP,
            Gen::Dracut => DRACUT_HOOK,
        };
        assert!(
            s.diff.contains(&format!("+++ b{script_file}\n")),
            "{}",
            s.diff
        );
        // Every image carries it.
        for (i, list) in s.images.iter().enumerate() {
            assert!(list.contains(in_image(g)), "{g:?} image {i}: {list}");
        }
        if g == Gen::Dracut {
            let conf = s.dracut_conf.unwrap();
            assert!(
                conf.contains("\nadd_dracutmodules+=\" gpt-vfio \"\n"),
                "{conf}"
            );
            assert!(
                conf.contains("force_drivers+=\" vfio vfio_iommu_type1 vfio_virqfd vfio_pci \""),
                "{conf}"
            );
        }
    }
}

#[test]
fn identical_twins_with_vfio_pci_built_into_a_kernel_are_probed_by_the_early_step() {
    for g in [Gen::InitramfsTools, Gen::Dracut] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, g, |r| twin_cards(r, false, false));
        let s = cycle(root, g, &["--device", "01:00.0"]);
        assert_eq!(s.binding, "address");
        assert_eq!(
            calls(&s.script),
            [
                "0000:01:00.0 0x10de 0x2504 keep",
                "0000:01:00.1 0x10de 0x228e keep"
            ],
            "{g:?}"
        );
        // Where vfio-pci is registered the step probes the function again.
        assert!(
            s.script.contains("> /sys/bus/pci/drivers_probe"),
            "{}",
            s.script
        );
        assert!(
            s.notes.contains(
                "vfio-pci is built into kernel 5.4.0-150-generic: kmod never runs an install \
                 command for it there, so the early step and the hooks"
            ),
            "{}",
            s.notes
        );
        for m in ["nouveau", "snd_hda_intel"] {
            assert!(s.modprobe.contains(&format!("\ninstall {m} case ")), "{m}");
        }
        for list in &s.images {
            assert!(list.contains(in_image(g)), "{g:?}: {list}");
        }
    }
}

#[test]
fn a_claimant_built_into_one_kernel_is_unbound_early_by_ids_and_by_address() {
    for g in [Gen::InitramfsTools, Gen::Dracut] {
        // One card, bound by ids: the early step carries only the USB-C controller, whose
        // xhci_pci the 6.17 kernel builds in, and runs only with vfio-pci.ids= on the line.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, g, |r| cards_with_usb(r, false, true));
        let s = cycle(root, g, &["--device", "01:00.0"]);
        assert_eq!(s.binding, "ids", "{}", s.notes);
        assert_eq!(
            calls(&s.script),
            ["0000:01:00.2 0x10de 0x1ada unbind"],
            "{g:?}"
        );
        assert!(
            s.script
                .contains("*\" vfio-pci.ids=\"* | *\" vfio_pci.ids=\"*)\n"),
            "{}",
            s.script
        );
        assert!(
            s.notes.contains(&format!(
                "note: xhci_pci is built into kernel {XHCI_BUILTIN_KVER}: it holds 0000:01:00.2 \
                 before any userspace runs, so gpt's early step unbinds it there and hands it to \
                 vfio-pci; a module on kernel 6.1.0-13-amd64 (held off by its softdep or install hook)"
            )),
            "{g:?}: {}",
            s.notes
        );
        assert!(
            s.notes.contains("0000:01:00.2 (unbound first)"),
            "{}",
            s.notes
        );
        assert!(!s.modprobe.contains("install "), "by ids: no install hook");
        for list in &s.images {
            assert!(list.contains(in_image(g)), "{g:?}: {list}");
        }

        // Identical twins with the same kernels: every function by address, the USB-C
        // controller unbound first.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, g, |r| cards_with_usb(r, true, true));
        let s = cycle(root, g, &["--device", "01:00.0"]);
        assert_eq!(s.binding, "address");
        assert_eq!(
            calls(&s.script),
            [
                "0000:01:00.0 0x10de 0x2504 keep",
                "0000:01:00.1 0x10de 0x228e keep",
                "0000:01:00.2 0x10de 0x1ada unbind"
            ],
            "{g:?}"
        );
    }
}

#[test]
fn a_card_with_nothing_built_in_bound_by_ids_gets_no_early_step() {
    for g in [Gen::InitramfsTools, Gen::Dracut] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, g, |r| cards_with_usb(r, false, false));
        let s = cycle(root, g, &["--device", "01:00.0"]);
        assert_eq!(s.binding, "ids");
        assert!(s.script.is_empty(), "{}", s.script);
        assert!(!s.notes.contains("early in the initramfs"), "{}", s.notes);
        if let Some(conf) = s.dracut_conf {
            assert!(!conf.contains("add_dracutmodules"), "{conf}");
        }
        for list in &s.images {
            assert!(!list.contains(in_image(g)), "{list}");
        }
    }
}

/// A file of gpt's early step that someone else wrote is never overwritten.
#[test]
fn someone_elses_file_at_the_scripts_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut t = twins_modular(root);
    t.file(INIT_TOP, "#!/bin/sh\necho mine\n");
    let before = snap(root);
    let fakes = Fakes::new();
    let (code, _, err) = full(root, &fakes, &["--device", "01:00.0", "--yes", "--no-deps"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "error: {INIT_TOP} exists and was not written by gpt; move it aside"
        )),
        "{err}"
    );
    assert_eq!(snap(root), before);
}

/// Without the journal, reset still finds gpt's early files by their header and removes them.
#[test]
fn reset_without_a_journal_removes_the_early_files() {
    for g in [Gen::InitramfsTools, Gen::Dracut] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        host(root, g, twins_modular);
        let fakes = Fakes::new();
        fakes.prime(root);
        let (code, _, err) = full(root, &fakes, &["--device", "01:00.0", "--yes", "--no-deps"]);
        assert_eq!(code, 0, "{err}");
        std::fs::remove_file(root.join("var/lib/gpt/state.json")).unwrap();
        let (code, _, err) = run(gpt(root).env("PATH", fakes.path()).args(["reset", "--yes"]));
        assert_eq!(code, 0, "{err}");
        for p in [INIT_TOP, DRACUT_SETUP, DRACUT_HOOK] {
            assert!(read(root, p).is_none(), "{g:?}: {p} is still there: {err}");
        }
    }
}
