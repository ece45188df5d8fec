//! gpt's own `/etc/modprobe.d/gpt-vfio.conf`: rendered whole, deterministic.
//!
//! - `softdep MODULE pre: vfio-pci` lines make modprobe load vfio-pci before each driver
//!   that could otherwise claim a passthrough device first.
//! - For hosts with two identical cards, where `vfio-pci.ids=` would take both, an
//!   `install vfio_pci …` hook sets `driver_override` of exactly the chosen PCI addresses
//!   before vfio-pci loads. It runs in the initramfs too (busybox or klibc `sh`), so it is
//!   plain POSIX sh using only shell builtins and `cat`. It writes nothing when the kernel
//!   command line has `gpt.bind=off` (the rescue switch), and skips a device whose vendor
//!   or device id no longer match (addresses move when cards are added or removed). It
//!   always ends by loading vfio-pci for real.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The first line of every file gpt writes here; [`is_gpt_owned`] looks for it.
pub const HEADER_FIRST_LINE: &str =
    "# Managed by gpt (GPU passthrough). 'gpt reset' removes gpt's lines (and the file, unless you added lines of your own).";

/// The kernel command-line token that switches the bind hook off.
pub const BIND_OFF: &str = "gpt.bind=off";

const SYSFS_PCI: &str = "/sys/bus/pci/devices";
/// Where a registered vfio-pci shows, and the file that makes the PCI core probe a device
/// again (an override alone binds nothing when vfio-pci is already registered).
const VFIO_DRIVER_DIR: &str = "/sys/bus/pci/drivers/vfio-pci";
const DRIVERS_PROBE: &str = "/sys/bus/pci/drivers_probe";
const INSTALL_PREFIX: &str = "install vfio_pci ";

/// One PCI function to hand to vfio-pci by address, checked against its ids at boot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BindTarget {
    /// Full PCI address as in sysfs, e.g. `0000:01:00.0`.
    pub address: String,
    pub vendor: u16,
    pub device: u16,
}

/// Whether the file was written by gpt (its first line is [`HEADER_FIRST_LINE`]).
pub fn is_gpt_owned(content: &str) -> bool {
    let first = content.split('\n').next().unwrap_or("");
    first.strip_suffix('\r').unwrap_or(first) == HEADER_FIRST_LINE
}

/// The whole file: header, one `softdep` line per module (sorted, deduplicated, `-` written
/// `_`), and, when `bind` is not empty, the `install vfio_pci` hook.
///
/// vfio modules are left out of the softdeps (vfio-pci cannot depend on itself), and so
/// are names that are not plain module names and bind targets whose address is not a full
/// PCI address; each one left out gets a comment line saying so.
pub fn render(softdeps: &[String], bind: &[BindTarget]) -> String {
    render_with(softdeps, bind, false)
}

/// The line `gpt full --no-idle-d3` adds: vfio-pci keeps idle devices in D0 (some cards do
/// not wake from D3cold).
pub const NO_IDLE_D3: &str = "options vfio-pci disable_idle_d3=1";

/// [`render`], with [`NO_IDLE_D3`] after the softdeps when `no_idle_d3`.
pub fn render_with(softdeps: &[String], bind: &[BindTarget], no_idle_d3: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{HEADER_FIRST_LINE}");
    let mut skipped = Vec::new();
    let mut mods: Vec<String> = Vec::new();
    for m in softdeps {
        let n = m.trim().replace('-', "_");
        if !valid_module(&n) {
            skipped.push(format!("# gpt: left out {m:?}: not a module name"));
        } else if !n.starts_with("vfio") {
            mods.push(n);
        }
    }
    mods.sort();
    mods.dedup();
    let mut targets: Vec<BindTarget> = Vec::new();
    for t in bind {
        let address = t.address.trim().to_ascii_lowercase();
        if valid_address(&address) {
            targets.push(BindTarget { address, ..*t });
        } else {
            skipped.push(format!(
                "# gpt: left out bind target {:?}: not a full PCI address",
                t.address
            ));
        }
    }
    targets.sort();
    targets.dedup();
    skipped.sort();
    skipped.dedup();
    for line in &skipped {
        let _ = writeln!(s, "{line}");
    }
    if !mods.is_empty() {
        s.push_str("\n# Load vfio-pci first, so it can claim the passthrough devices before these drivers do.\n");
        for m in &mods {
            let _ = writeln!(s, "softdep {m} pre: vfio-pci");
        }
    }
    if no_idle_d3 {
        s.push_str("\n# Keep idle vfio-pci devices in D0: some cards do not wake from D3cold.\n");
        let _ = writeln!(s, "{NO_IDLE_D3}");
    }
    if !targets.is_empty() {
        s.push_str(
            "\n# Before vfio-pci or any driver that could claim them loads, hand these devices to\n\
             # vfio-pci by address (identical cards share ids, so vfio-pci.ids= would take them\n\
             # all), but only while the ids still match; where vfio-pci is already registered (built\n\
             # in, or loaded), ask the PCI core to probe the device again:\n",
        );
        for t in &targets {
            let _ = writeln!(s, "#   {} {:04x}:{:04x}", t.address, t.vendor, t.device);
        }
        let _ = writeln!(
            s,
            "# Booting with {BIND_OFF} on the kernel command line skips this."
        );
        for m in std::iter::once("vfio_pci").chain(mods.iter().map(String::as_str)) {
            let _ = writeln!(s, "install {m} {}", hook(&targets, m));
        }
    }
    s
}

/// The softdep modules of a file: those with `vfio-pci` (or `vfio_pci`) in their `pre:`.
pub fn softdeps(content: &str) -> Vec<String> {
    content
        .lines()
        .filter_map(|l| {
            let mut w = l.split_ascii_whitespace();
            if w.next() != Some("softdep") {
                return None;
            }
            let module = w.next()?;
            let mut in_pre = false;
            for word in w {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    _ if in_pre && word.replace('-', "_") == "vfio_pci" => {
                        return Some(module.to_string())
                    }
                    _ => {}
                }
            }
            None
        })
        .collect()
}

/// The devices the `install vfio_pci` hook of a file rendered by [`render`] binds.
pub fn bind_targets(content: &str) -> Vec<BindTarget> {
    let Some(line) = content
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(INSTALL_PREFIX))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in line.split(&format!("d={SYSFS_PCI}/")).skip(1) {
        let address = part.split(';').next().unwrap_or("");
        let id = |file: &str| {
            let pat = format!("\"$(cat $d/{file} 2>/dev/null)\" = 0x");
            let at = part.find(&pat)? + pat.len();
            u16::from_str_radix(part.get(at..at + 4)?, 16).ok()
        };
        if let (Some(vendor), Some(device)) = (id("vendor"), id("device")) {
            out.push(BindTarget {
                address: address.to_string(),
                vendor,
                device,
            });
        }
    }
    out
}

/// The shell command of the hook for `module` (what follows `install MODULE `): the overrides,
/// then the module for real. Safe to run any number of times.
fn hook(targets: &[BindTarget], module: &str) -> String {
    let checks: Vec<String> = targets
        .iter()
        .map(|t| {
            format!(
                "d={SYSFS_PCI}/{}; [ \"$(cat $d/vendor 2>/dev/null)\" = {:#06x} ] && [ \"$(cat $d/device 2>/dev/null)\" = {:#06x} ] && echo vfio-pci > $d/driver_override && {{ [ -e $d/driver ] || [ ! -d {VFIO_DRIVER_DIR} ] || echo {} > {DRIVERS_PROBE}; }}",
                t.address, t.vendor, t.device, t.address
            )
        })
        .collect();
    let load = format!("exec /sbin/modprobe --ignore-install {module} $CMDLINE_OPTS");
    format!(
        "case \" $(cat /proc/cmdline) \" in *\" {BIND_OFF} \"*) ;; *) {};; esac; {load}",
        checks.join("; ")
    )
}

fn valid_module(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `dddd:bb:dd.f` in lowercase hex, as sysfs names PCI functions.
pub(crate) fn valid_address(a: &str) -> bool {
    let b = a.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn target(address: &str, vendor: u16, device: u16) -> BindTarget {
        BindTarget {
            address: address.to_string(),
            vendor,
            device,
        }
    }

    fn two_cards() -> Vec<BindTarget> {
        vec![
            target("0000:02:00.1", 0x10de, 0x10f9),
            target("0000:02:00.0", 0x10de, 0x1f08),
        ]
    }

    #[test]
    fn softdeps_only() {
        let out = render(
            &s(&[
                "snd_hda_intel",
                "nouveau",
                "xhci-pci",
                "nouveau",
                "i2c_nvidia_gpu",
                "vfio_pci",
            ]),
            &[],
        );
        assert_eq!(
            out,
            format!(
                "{HEADER_FIRST_LINE}\n\n\
                 # Load vfio-pci first, so it can claim the passthrough devices before these drivers do.\n\
                 softdep i2c_nvidia_gpu pre: vfio-pci\n\
                 softdep nouveau pre: vfio-pci\n\
                 softdep snd_hda_intel pre: vfio-pci\n\
                 softdep xhci_pci pre: vfio-pci\n"
            )
        );
        assert!(is_gpt_owned(&out));
        assert!(is_gpt_owned(&out.replace('\n', "\r\n")));
        assert!(!is_gpt_owned("softdep nouveau pre: vfio-pci\n"));
        assert!(!is_gpt_owned(""));
        assert_eq!(
            softdeps(&out),
            s(&["i2c_nvidia_gpu", "nouveau", "snd_hda_intel", "xhci_pci"])
        );
        assert_eq!(render(&[], &[]), format!("{HEADER_FIRST_LINE}\n"));
    }

    #[test]
    fn no_idle_d3_adds_one_options_line_after_the_softdeps() {
        let plain = render(&s(&["nouveau"]), &two_cards());
        let with = render_with(&s(&["nouveau"]), &two_cards(), true);
        assert_eq!(render_with(&s(&["nouveau"]), &two_cards(), false), plain);
        let line = "\n# Keep idle vfio-pci devices in D0: some cards do not wake from D3cold.\noptions vfio-pci disable_idle_d3=1\n";
        assert_eq!(with.matches(NO_IDLE_D3).count(), 1);
        assert!(
            with.contains(&format!(
                "softdep nouveau pre: vfio-pci\n{line}\n# Before vfio-pci or any driver"
            )),
            "{with}"
        );
        assert_eq!(with.replace(line, ""), plain);
        assert_eq!(softdeps(&with), softdeps(&plain));
        assert_eq!(bind_targets(&with), bind_targets(&plain));
        assert_eq!(
            render_with(&[], &[], true),
            format!("{HEADER_FIRST_LINE}\n{line}")
        );
    }

    #[test]
    fn render_is_deterministic() {
        let a = render(&s(&["b", "a"]), &two_cards());
        let mut rev = two_cards();
        rev.reverse();
        let b = render(&s(&["a", "b", "a"]), &rev);
        assert_eq!(a, b);
    }

    #[test]
    fn bind_hook_line() {
        let out = render(&s(&["nouveau"]), &two_cards());
        let hook_line = out.lines().find(|l| l.starts_with("install ")).unwrap();
        assert_eq!(
            hook_line,
            "install vfio_pci case \" $(cat /proc/cmdline) \" in *\" gpt.bind=off \"*) ;; *) \
             d=/sys/bus/pci/devices/0000:02:00.0; [ \"$(cat $d/vendor 2>/dev/null)\" = 0x10de ] && [ \"$(cat $d/device 2>/dev/null)\" = 0x1f08 ] && echo vfio-pci > $d/driver_override && \
             { [ -e $d/driver ] || [ ! -d /sys/bus/pci/drivers/vfio-pci ] || echo 0000:02:00.0 > /sys/bus/pci/drivers_probe; }; \
             d=/sys/bus/pci/devices/0000:02:00.1; [ \"$(cat $d/vendor 2>/dev/null)\" = 0x10de ] && [ \"$(cat $d/device 2>/dev/null)\" = 0x10f9 ] && echo vfio-pci > $d/driver_override && \
             { [ -e $d/driver ] || [ ! -d /sys/bus/pci/drivers/vfio-pci ] || echo 0000:02:00.1 > /sys/bus/pci/drivers_probe; };; \
             esac; exec /sbin/modprobe --ignore-install vfio_pci $CMDLINE_OPTS"
        );
        assert!(out.contains("#   0000:02:00.0 10de:1f08\n"));
        // The same step in an install hook of every driver that could claim a device: it
        // runs where vfio-pci is built in (kmod skips a built-in module's install command).
        let nouveau = out
            .lines()
            .find(|l| l.starts_with("install nouveau "))
            .unwrap();
        assert_eq!(
            nouveau.strip_prefix("install nouveau ").unwrap(),
            hook_line
                .strip_prefix(INSTALL_PREFIX)
                .unwrap()
                .replace("--ignore-install vfio_pci", "--ignore-install nouveau")
        );
        assert_eq!(out.lines().filter(|l| l.starts_with("install ")).count(), 2);
        // One line, no `#` in the command (modprobe.d comments), nothing modprobe would
        // read as a line continuation.
        assert!(!hook_line.contains('#') && !hook_line.ends_with('\\'));
        let mut want = two_cards();
        want.sort();
        assert_eq!(bind_targets(&out), want);
        assert_eq!(softdeps(&out), s(&["nouveau"]));
    }

    #[test]
    fn bad_inputs_are_left_out_visibly() {
        let out = render(
            &s(&["ok", "bad name", "x;y"]),
            &[
                target("01:00.0", 1, 2),
                target("0000:01:00.0; rm -rf /", 1, 2),
                target("0000:0A:00.0", 0x1002, 0x73bf),
            ],
        );
        assert!(out.contains("# gpt: left out \"bad name\": not a module name\n"));
        assert!(out.contains("# gpt: left out \"x;y\": not a module name\n"));
        assert!(out.contains("left out bind target \"01:00.0\""));
        assert!(out.contains("left out bind target \"0000:01:00.0; rm -rf /\""));
        assert_eq!(
            bind_targets(&out),
            vec![target("0000:0a:00.0", 0x1002, 0x73bf)]
        );
        assert!(!out.lines().any(|l| l.starts_with("softdep bad")));
    }

    fn have_sh() -> bool {
        Path::new("/bin/sh").exists()
    }

    #[test]
    fn hook_parses_under_sh_n() {
        if !have_sh() {
            eprintln!("no /bin/sh: skipping the sh -n check");
            return;
        }
        // sh -n really catches syntax errors here.
        let bad = Command::new("sh")
            .args(["-n", "-c", "case x in"])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!bad.success());
        for targets in [two_cards(), vec![target("0000:01:00.0", 0x8086, 0x3e92)]] {
            let out = render(&[], &targets);
            let body = out
                .lines()
                .find_map(|l| l.strip_prefix(INSTALL_PREFIX))
                .unwrap();
            let st = Command::new("sh")
                .args(["-n", "-c", body])
                .status()
                .unwrap();
            assert!(st.success(), "sh -n rejects: {body}");
        }
    }

    /// Run the hook for real against a fake sysfs and /proc/cmdline in a temporary
    /// directory (paths rewritten; nothing outside the directory is read or written).
    fn run_hook(targets: &[BindTarget], cmdline: &str, ids: &[(&str, &str, &str)]) -> Vec<String> {
        run_hook_of("vfio_pci", false, &[], targets, cmdline, ids).0
    }

    /// The hook of `module`, with vfio-pci registered or not and the devices in `bound` on a
    /// driver: the overrides written, and the addresses written to drivers_probe.
    fn run_hook_of(
        module: &str,
        registered: bool,
        bound: &[&str],
        targets: &[BindTarget],
        cmdline: &str,
        ids: &[(&str, &str, &str)],
    ) -> (Vec<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let devices = root.join("devices");
        if registered {
            std::fs::create_dir_all(root.join("vfio-pci")).unwrap();
        }
        for (addr, vendor, device) in ids {
            let d = devices.join(addr);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
            std::fs::write(d.join("driver_override"), "(null)\n").unwrap();
            if bound.contains(addr) {
                std::fs::create_dir_all(d.join("driver")).unwrap();
            }
        }
        std::fs::write(root.join("cmdline"), format!("{cmdline}\n")).unwrap();
        let out = render(&[module.to_string()], targets);
        let prefix = format!("install {module} ");
        let body = out
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap();
        let body = body
            .replace(SYSFS_PCI, &devices.display().to_string())
            .replace(
                VFIO_DRIVER_DIR,
                &root.join("vfio-pci").display().to_string(),
            )
            .replace(DRIVERS_PROBE, &root.join("probe").display().to_string())
            .replace("/proc/cmdline", &root.join("cmdline").display().to_string())
            .replace(
                &format!("exec /sbin/modprobe --ignore-install {module} $CMDLINE_OPTS"),
                "echo loaded $CMDLINE_OPTS > \"$OUT\"",
            );
        assert!(!body.contains("/sys/") && !body.contains("/proc/") && !body.contains("/sbin/"));
        let st = Command::new("sh")
            .args(["-c", &body])
            .env("OUT", root.join("loaded"))
            .env("CMDLINE_OPTS", "")
            .status()
            .unwrap();
        assert!(st.success());
        assert!(std::fs::read_to_string(root.join("loaded"))
            .unwrap()
            .starts_with("loaded"));
        let mut overridden: Vec<String> = ids
            .iter()
            .filter(|(addr, _, _)| {
                std::fs::read_to_string(devices.join(addr).join("driver_override")).unwrap()
                    == "vfio-pci\n"
            })
            .map(|(addr, _, _)| addr.to_string())
            .collect();
        overridden.sort();
        let probed = std::fs::read_to_string(root.join("probe")).unwrap_or_default();
        (overridden, probed)
    }

    #[test]
    fn hook_binds_only_matching_devices_and_obeys_the_rescue_switch() {
        if !have_sh() {
            eprintln!("no /bin/sh: skipping the hook run");
            return;
        }
        let ids = [
            ("0000:02:00.0", "0x10de", "0x1f08"),
            ("0000:02:00.1", "0x10de", "0x10f9"),
            ("0000:03:00.0", "0x10de", "0x1f08"),
        ];
        let cmd = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet";
        assert_eq!(
            run_hook(&two_cards(), cmd, &ids),
            ["0000:02:00.0", "0000:02:00.1"]
        );
        // Rescue switch anywhere on the command line: nothing is written, vfio-pci still loads.
        assert!(run_hook(&two_cards(), &format!("{cmd} gpt.bind=off"), &ids).is_empty());
        assert!(run_hook(&two_cards(), &format!("gpt.bind=off {cmd}"), &ids).is_empty());
        // A similar-looking token is not the switch.
        assert_eq!(run_hook(&two_cards(), "xgpt.bind=off", &ids).len(), 2);
        // The card moved: the device at the address now has other ids, so it is left alone.
        let moved = [
            ("0000:02:00.0", "0x8086", "0x1533"),
            ("0000:02:00.1", "0x10de", "0x10f9"),
        ];
        assert_eq!(run_hook(&two_cards(), cmd, &moved), ["0000:02:00.1"]);
        // A missing device is skipped quietly.
        assert!(run_hook(&[target("0000:09:00.0", 1, 2)], cmd, &ids).is_empty());
    }

    #[test]
    fn a_claimants_hook_probes_again_only_where_vfio_pci_is_registered() {
        if !have_sh() {
            eprintln!("no /bin/sh: skipping the hook run");
            return;
        }
        let ids = [
            ("0000:02:00.0", "0x10de", "0x1f08"),
            ("0000:02:00.1", "0x10de", "0x10f9"),
            ("0000:03:00.0", "0x10de", "0x1f08"),
        ];
        let cmd = "ro quiet";
        // vfio-pci not registered yet (a module): the override is enough.
        let (o, probed) = run_hook_of("nouveau", false, &[], &two_cards(), cmd, &ids);
        assert_eq!(o, ["0000:02:00.0", "0000:02:00.1"]);
        assert_eq!(probed, "");
        // Built in (or loaded): the unbound device is probed again; a bound one is not.
        let (o, probed) = run_hook_of("nouveau", true, &["0000:02:00.1"], &two_cards(), cmd, &ids);
        assert_eq!(o, ["0000:02:00.0", "0000:02:00.1"]);
        assert_eq!(probed, "0000:02:00.0\n");
        // The rescue switch: nothing written, the driver still loads.
        let (o, probed) = run_hook_of(
            "snd_hda_intel",
            true,
            &[],
            &two_cards(),
            "gpt.bind=off",
            &ids,
        );
        assert!(o.is_empty() && probed.is_empty());
    }
}
