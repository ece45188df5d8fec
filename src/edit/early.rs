//! gpt's early binding step: one POSIX sh script, run in the initramfs before udev starts (an
//! initramfs-tools `init-top` script, a dracut `pre-udev` hook), rendered whole and
//! deterministic.
//!
//! It does, for each PCI function it lists, what the modprobe.d hooks do when a driver loads,
//! but before any uevent can load a driver at all: write `vfio-pci` to `driver_override`,
//! and where vfio-pci is already registered (built into the kernel) write the address to
//! `/sys/bus/pci/drivers_probe`. A function whose claimant is built into a kernel is already
//! bound when userspace starts: the script unbinds it first (unless it is bound to vfio-pci,
//! or is the GPU that drives the console, `boot_vga` = 1), so the probe hands it to vfio-pci.
//!
//! Every run checks the kernel command line: `gpt.bind=off` switches it off, and when gpt
//! binds by ids it also does nothing without `vfio-pci.ids=` (the rescue printed for that
//! binding is to delete that argument). It checks each address's vendor and device ids before
//! touching it, and it is safe to run twice (a function already on vfio-pci is left alone).
//! Only shell builtins and `cat` are used (busybox, klibc and dash run it); each function it
//! hands over is said on the kernel log (`gpt-vfio: …` in dmesg).

use std::fmt::Write as _;

use super::modprobe::{BIND_OFF, HEADER_FIRST_LINE};

/// One function the early step hands to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EarlyTarget {
    /// Full PCI address as in sysfs, e.g. `0000:01:00.0`.
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    /// A claimant of this function is built into a kernel: unbind it first.
    pub unbind: bool,
}

/// What switches the step on at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Binding by address: on unless `gpt.bind=off`.
    Address,
    /// Binding by ids: only while `vfio-pci.ids=` (or `vfio_pci.ids=`) is on the command line,
    /// and never with `gpt.bind=off`.
    Ids,
}

/// The early step: its functions and its switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyBind {
    pub targets: Vec<EarlyTarget>,
    pub gate: Gate,
}

/// How the script is run: as a program (initramfs-tools runs `init-top` scripts, after asking
/// each for its `prereqs`), or sourced (dracut sources its hooks into its own shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    InitTop,
    DracutHook,
}

const SYSFS_PCI: &str = "/sys/bus/pci";
/// What the script says on the kernel log, first word of each line.
pub const LOG_TAG: &str = "gpt-vfio";

/// The second line of every script gpt writes (the first is the `#!` line).
pub fn is_gpt_script(content: &str) -> bool {
    let mut lines = content.split('\n');
    let first = lines.next().unwrap_or("");
    let second = lines.next().unwrap_or("");
    first.starts_with("#!") && second.strip_suffix('\r').unwrap_or(second) == HEADER_FIRST_LINE
}

/// The whole script for `bind` in `flavour`. Targets whose address is not a full PCI address
/// are left out with a comment line saying so.
pub fn render(bind: &EarlyBind, flavour: Flavour) -> String {
    let mut targets: Vec<EarlyTarget> = Vec::new();
    let mut skipped = Vec::new();
    for t in &bind.targets {
        let address = t.address.trim().to_ascii_lowercase();
        if super::modprobe::valid_address(&address) {
            targets.push(EarlyTarget {
                address,
                ..t.clone()
            });
        } else {
            skipped.push(format!(
                "# gpt: left out {:?}: not a full PCI address",
                t.address
            ));
        }
    }
    targets.sort();
    targets.dedup_by(|a, b| a.address == b.address);
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/sh\n{HEADER_FIRST_LINE}");
    s.push_str(
        "# Early in the initramfs, before udev can load a driver for them, hand these PCI\n\
         # functions to vfio-pci (driver_override; where vfio-pci is already registered, built\n\
         # into the kernel, the PCI core probes them again). \"unbind\": a driver built into a\n\
         # kernel may hold the function already; it is unbound first (never the console's GPU).\n",
    );
    for t in &targets {
        let _ = writeln!(
            s,
            "#   {} {:04x}:{:04x}{}",
            t.address,
            t.vendor,
            t.device,
            if t.unbind { " unbind" } else { "" }
        );
    }
    for line in &skipped {
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(
        s,
        "# Booting with {BIND_OFF} on the kernel command line skips this{}.",
        match bind.gate {
            Gate::Address => "",
            Gate::Ids => ", and so does booting without vfio-pci.ids=",
        }
    );
    if flavour == Flavour::InitTop {
        s.push_str(
            "\nPREREQ=\"\"\nprereqs() { echo \"$PREREQ\"; }\ncase \"$1\" in\nprereqs) prereqs; exit 0 ;;\nesac\n",
        );
    }
    // In a subshell: dracut sources its hooks, and nothing here may leak into its shell.
    let _ = write!(
        s,
        "\n(\n\
         gpt_vfio() {{\n\
         \td={SYSFS_PCI}/devices/$1\n\
         \t[ \"$(cat \"$d/vendor\" 2>/dev/null)\" = \"$2\" ] && [ \"$(cat \"$d/device\" 2>/dev/null)\" = \"$3\" ] || {{ echo \"{LOG_TAG}: $1 is not $2:$3 (or absent): left alone\" > /dev/kmsg; return 0; }}\n\
         \t[ -e {SYSFS_PCI}/drivers/vfio-pci/$1 ] && return 0\n\
         \techo vfio-pci > \"$d/driver_override\" || {{ echo \"{LOG_TAG}: $1: cannot write driver_override\" > /dev/kmsg; return 0; }}\n\
         \tif [ \"$4\" = unbind ] && [ -e \"$d/driver\" ] && [ \"$(cat \"$d/boot_vga\" 2>/dev/null)\" != 1 ]; then\n\
         \t\techo \"$1\" > \"$d/driver/unbind\" && echo \"{LOG_TAG}: $1 unbound from its built-in driver\" > /dev/kmsg\n\
         \tfi\n\
         \tif [ ! -e \"$d/driver\" ] && [ -d {SYSFS_PCI}/drivers/vfio-pci ]; then\n\
         \t\techo \"$1\" > {SYSFS_PCI}/drivers_probe\n\
         \tfi\n\
         \techo \"{LOG_TAG}: $1 driver_override vfio-pci (early, before udev)\" > /dev/kmsg\n\
         }}\n\
         case \" $(cat /proc/cmdline) \" in\n\
         *\" {BIND_OFF} \"*) echo \"{LOG_TAG}: {BIND_OFF}: nothing bound early\" > /dev/kmsg ;;\n"
    );
    if bind.gate == Gate::Ids {
        let _ = writeln!(s, "*\" vfio-pci.ids=\"* | *\" vfio_pci.ids=\"*)");
    } else {
        s.push_str("*)\n");
    }
    for t in &targets {
        let _ = writeln!(
            s,
            "\tgpt_vfio {} {:#06x} {:#06x} {}",
            t.address,
            t.vendor,
            t.device,
            if t.unbind { "unbind" } else { "keep" }
        );
    }
    s.push_str("\t;;\n");
    if bind.gate == Gate::Ids {
        let _ = writeln!(
            s,
            "*) echo \"{LOG_TAG}: no vfio-pci.ids= on the command line: nothing bound early\" > /dev/kmsg ;;"
        );
    }
    s.push_str("esac\n) 2>/dev/null\n");
    if flavour == Flavour::InitTop {
        s.push_str("exit 0\n");
    }
    s
}

/// The addresses a script rendered by [`render`] hands over, and whether each is unbound first.
pub fn targets(content: &str) -> Vec<(String, bool)> {
    content
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("gpt_vfio "))
        .filter_map(|rest| {
            let w: Vec<&str> = rest.split_whitespace().collect();
            match w.as_slice() {
                [addr, _, _, how] => Some((addr.to_string(), *how == "unbind")),
                _ => None,
            }
        })
        .collect()
}

/// dracut's module folder name (under `modules.d`) and module name.
pub const DRACUT_MODULE: &str = "gpt-vfio";
/// The hook file in the module folder, installed as `pre-udev/00-gpt-vfio.sh`.
pub const DRACUT_HOOK_FILE: &str = "gpt-vfio.sh";

/// The module's `module-setup.sh`: dracut takes the module only when asked for
/// (`add_dracutmodules+=`, in gpt's dracut.conf.d file), and installs the hook with its own
/// `inst_hook`, which knows where this dracut version keeps its hooks.
pub fn dracut_module_setup() -> String {
    format!(
        "#!/bin/bash\n{HEADER_FIRST_LINE}\n\
         # dracut module {DRACUT_MODULE}: gpt's early binding step as a pre-udev hook.\n\n\
         # Only when asked for (gpt's /etc/dracut.conf.d/gpt-vfio.conf adds it).\n\
         check() {{\n    return 255\n}}\n\n\
         depends() {{\n    return 0\n}}\n\n\
         install() {{\n    inst_multiple cat\n    inst_hook pre-udev 00 \"$moddir/{DRACUT_HOOK_FILE}\"\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn t(address: &str, vendor: u16, device: u16, unbind: bool) -> EarlyTarget {
        EarlyTarget {
            address: address.into(),
            vendor,
            device,
            unbind,
        }
    }

    fn twin_usb(gate: Gate) -> EarlyBind {
        EarlyBind {
            targets: vec![
                t("0000:01:00.2", 0x10de, 0x1ada, true),
                t("0000:01:00.0", 0x10de, 0x2504, false),
                t("0000:01:00.1", 0x10de, 0x228e, false),
            ],
            gate,
        }
    }

    #[test]
    fn the_script_lists_its_functions_sorted_with_the_header_on_line_two() {
        let s = render(&twin_usb(Gate::Address), Flavour::InitTop);
        assert!(s.starts_with(&format!("#!/bin/sh\n{HEADER_FIRST_LINE}\n")));
        assert!(is_gpt_script(&s) && is_gpt_script(&s.replace('\n', "\r\n")));
        assert!(!is_gpt_script(HEADER_FIRST_LINE));
        assert!(!super::super::modprobe::is_gpt_owned(&s));
        assert_eq!(
            targets(&s),
            [
                ("0000:01:00.0".to_string(), false),
                ("0000:01:00.1".to_string(), false),
                ("0000:01:00.2".to_string(), true)
            ]
        );
        assert!(
            s.contains("\tgpt_vfio 0000:01:00.2 0x10de 0x1ada unbind\n"),
            "{s}"
        );
        assert!(s.contains("#   0000:01:00.2 10de:1ada unbind\n"), "{s}");
        assert!(s.contains("\nprereqs) prereqs; exit 0 ;;\n"));
        assert!(s.ends_with(") 2>/dev/null\nexit 0\n"));
        // The same order whatever order the planner gives.
        let mut rev = twin_usb(Gate::Address);
        rev.targets.reverse();
        assert_eq!(render(&rev, Flavour::InitTop), s);
        // The dracut hook is sourced: no prereqs, no exit.
        let h = render(&twin_usb(Gate::Address), Flavour::DracutHook);
        assert!(!h.contains("prereqs") && !h.contains("exit "), "{h}");
        assert_eq!(targets(&h), targets(&s));
        // Bad addresses never reach the shell.
        let bad = EarlyBind {
            targets: vec![
                t("0000:01:00.0; reboot", 1, 2, true),
                t("01:00.0", 1, 2, true),
            ],
            gate: Gate::Address,
        };
        let b = render(&bad, Flavour::InitTop);
        assert!(targets(&b).is_empty(), "{b}");
        assert!(b.contains("# gpt: left out \"0000:01:00.0; reboot\": not a full PCI address\n"));
    }

    #[test]
    fn the_scripts_parse_under_sh_n() {
        for flavour in [Flavour::InitTop, Flavour::DracutHook] {
            for gate in [Gate::Address, Gate::Ids] {
                let s = render(&twin_usb(gate), flavour);
                let out = Command::new("sh").args(["-n", "-c", &s]).output().unwrap();
                assert!(out.status.success(), "{flavour:?} {gate:?}: {s}");
            }
        }
        let setup = dracut_module_setup();
        let out = Command::new("bash")
            .args(["-n", "-c", &setup])
            .output()
            .unwrap();
        assert!(out.status.success(), "{setup}");
        assert!(setup.contains("inst_hook pre-udev 00 \"$moddir/gpt-vfio.sh\"\n"));
        assert!(is_gpt_script(&setup));
    }

    /// One fake PCI function: address, vendor, device, its driver (`""`: none), boot_vga.
    type Fn = (&'static str, &'static str, &'static str, &'static str, bool);

    /// What a run did: per function its driver_override, what was written to its driver's
    /// unbind file; the addresses written to drivers_probe; the kernel log.
    #[derive(Debug, Default)]
    struct Ran {
        overrides: Vec<String>,
        unbound: Vec<String>,
        probed: String,
        log: String,
    }

    /// Run the script for real against a fake sysfs, /proc/cmdline and /dev/kmsg in a temp
    /// folder (the paths rewritten; nothing outside it is read or written). `registered`:
    /// vfio-pci is a registered driver (built in); `on_vfio`: functions already bound to it.
    fn run(
        bind: &EarlyBind,
        flavour: Flavour,
        cmdline: &str,
        fns: &[Fn],
        registered: bool,
        on_vfio: &[&str],
    ) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sys = root.join("pci");
        let w = |p: &Path, s: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        for (addr, vendor, device, driver, vga) in fns {
            let d = sys.join("devices").join(addr);
            w(&d.join("vendor"), &format!("{vendor}\n"));
            w(&d.join("device"), &format!("{device}\n"));
            w(&d.join("driver_override"), "(null)\n");
            w(&d.join("boot_vga"), if *vga { "1\n" } else { "0\n" });
            if !driver.is_empty() {
                w(&d.join("driver").join("unbind"), "");
            }
        }
        if registered {
            std::fs::create_dir_all(sys.join("drivers/vfio-pci")).unwrap();
            for a in on_vfio {
                w(&sys.join("drivers/vfio-pci").join(a), "");
            }
        }
        w(&root.join("cmdline"), &format!("{cmdline}\n"));
        let script = render(bind, flavour)
            .replace(SYSFS_PCI, &sys.display().to_string())
            .replace("/proc/cmdline", &root.join("cmdline").display().to_string())
            .replace("/dev/kmsg", &root.join("kmsg").display().to_string())
            // Each write to the log and to drivers_probe kept, in order.
            .replace("> /", ">> /");
        assert!(
            !script.contains(" /sys/")
                && !script.contains(" /proc/")
                && !script.contains(" /dev/k")
        );
        let path = root.join("script");
        std::fs::write(&path, &script).unwrap();
        {
            let st = match flavour {
                Flavour::InitTop => Command::new("sh").arg(&path).status().unwrap(),
                // Sourced, as dracut does, followed by a command that must still run.
                Flavour::DracutHook => Command::new("sh")
                    .args([
                        "-c",
                        &format!(
                            ". {}; echo after > {}/after",
                            path.display(),
                            root.display()
                        ),
                    ])
                    .status()
                    .unwrap(),
            };
            assert!(st.success());
            if flavour == Flavour::DracutHook {
                assert!(
                    root.join("after").exists(),
                    "sourcing the hook ended its shell"
                );
            }
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let mut ran = Ran::default();
        for (addr, ..) in fns {
            let d = sys.join("devices").join(addr);
            if read(&d.join("driver_override")).contains("vfio-pci") {
                ran.overrides.push(addr.to_string());
            }
            if !read(&d.join("driver/unbind")).is_empty() {
                ran.unbound.push(read(&d.join("driver/unbind")));
            }
        }
        ran.probed = read(&sys.join("drivers_probe"));
        ran.log = read(&root.join("kmsg"));
        ran
    }

    const CARD: [Fn; 4] = [
        ("0000:01:00.0", "0x10de", "0x2504", "", false),
        ("0000:01:00.1", "0x10de", "0x228e", "", false),
        ("0000:01:00.2", "0x10de", "0x1ada", "xhci_hcd", false),
        ("0000:02:00.0", "0x10de", "0x2504", "", false),
    ];

    #[test]
    fn a_modular_vfio_pci_gets_overrides_only_and_the_built_in_claimant_is_unbound() {
        for flavour in [Flavour::InitTop, Flavour::DracutHook] {
            let r = run(
                &twin_usb(Gate::Address),
                flavour,
                "ro quiet",
                &CARD,
                false,
                &[],
            );
            assert_eq!(
                r.overrides,
                ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2"]
            );
            assert_eq!(r.unbound, ["0000:01:00.2\n"], "{flavour:?}");
            // Not registered yet: vfio-pci takes them when it loads; nothing to probe.
            assert_eq!(r.probed, "");
            assert!(
                r.log.contains(
                    "gpt-vfio: 0000:01:00.0 driver_override vfio-pci (early, before udev)\n"
                ),
                "{}",
                r.log
            );
            assert!(r
                .log
                .contains("gpt-vfio: 0000:01:00.2 unbound from its built-in driver\n"));
            assert!(!r.log.contains("0000:02:00.0"), "the twin is never touched");
        }
    }

    #[test]
    fn a_built_in_vfio_pci_is_probed_for_each_unbound_function_and_a_second_run_is_a_no_op() {
        // Registered (built in): each function without a driver is probed at once; one on
        // vfio-pci already is left alone. (The fake unbind leaves the driver link, so the
        // unbound 01:00.2 shows as overridden and unbound, not probed.)
        let r = run(
            &twin_usb(Gate::Address),
            Flavour::InitTop,
            "ro",
            &CARD,
            true,
            &["0000:01:00.1"],
        );
        assert_eq!(r.overrides, ["0000:01:00.0", "0000:01:00.2"]);
        assert_eq!(r.probed, "0000:01:00.0\n");
        assert_eq!(r.unbound, ["0000:01:00.2\n"]);
        // Run again on what the kernel made of the first run (all three on vfio-pci): nothing.
        let on = ["0000:01:00.0", "0000:01:00.1", "0000:01:00.2"];
        for flavour in [Flavour::InitTop, Flavour::DracutHook] {
            let again = run(&twin_usb(Gate::Address), flavour, "ro", &CARD, true, &on);
            assert!(
                again.overrides.is_empty() && again.unbound.is_empty(),
                "{again:?}"
            );
            assert_eq!((again.probed.as_str(), again.log.as_str()), ("", ""));
        }
    }

    #[test]
    fn the_rescue_switch_the_ids_gate_and_the_id_check_hold_it_off() {
        let off = run(
            &twin_usb(Gate::Address),
            Flavour::InitTop,
            "ro gpt.bind=off",
            &CARD,
            true,
            &[],
        );
        assert!(off.overrides.is_empty() && off.unbound.is_empty() && off.probed.is_empty());
        assert_eq!(off.log, "gpt-vfio: gpt.bind=off: nothing bound early\n");
        let similar = run(
            &twin_usb(Gate::Address),
            Flavour::InitTop,
            "xgpt.bind=off",
            &CARD,
            false,
            &[],
        );
        assert_eq!(similar.overrides.len(), 3);
        // By ids: only while vfio-pci.ids= is there (either spelling), never with gpt.bind=off.
        let ids = EarlyBind {
            targets: vec![t("0000:01:00.2", 0x10de, 0x1ada, true)],
            gate: Gate::Ids,
        };
        for (cmdline, bound) in [
            ("ro vfio-pci.ids=10de:1ada", true),
            ("vfio_pci.ids=10de:1ada ro", true),
            ("ro quiet", false),
            ("ro vfio-pci.ids=10de:1ada gpt.bind=off", false),
        ] {
            let r = run(&ids, Flavour::DracutHook, cmdline, &CARD, false, &[]);
            assert_eq!(r.overrides.len(), usize::from(bound), "{cmdline}: {r:?}");
            assert_eq!(r.unbound.len(), usize::from(bound), "{cmdline}");
        }
        // Another device at the address (cards moved): left alone, and said.
        let moved: [Fn; 2] = [
            ("0000:01:00.0", "0x8086", "0x1533", "igb", false),
            ("0000:01:00.2", "0x10de", "0x1ada", "xhci_hcd", false),
        ];
        let r = run(
            &twin_usb(Gate::Address),
            Flavour::InitTop,
            "ro",
            &moved,
            false,
            &[],
        );
        assert_eq!(r.overrides, ["0000:01:00.2"]);
        assert_eq!(r.unbound, ["0000:01:00.2\n"]);
        assert!(
            r.log
                .contains("gpt-vfio: 0000:01:00.0 is not 0x10de:0x2504 (or absent): left alone\n"),
            "{}",
            r.log
        );
    }

    #[test]
    fn the_console_gpu_is_never_unbound() {
        let vga: [Fn; 1] = [("0000:01:00.2", "0x10de", "0x1ada", "xhci_hcd", true)];
        let r = run(
            &twin_usb(Gate::Address),
            Flavour::InitTop,
            "ro",
            &vga,
            true,
            &[],
        );
        assert!(r.unbound.is_empty(), "{r:?}");
    }
}
