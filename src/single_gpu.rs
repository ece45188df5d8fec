//! Single-GPU mode: the decisions of `gpt single-gpu` — the libvirt hook file gpt installs
//! (its name, its text), which domain XML it acts on, what refuses the mode, and the record of
//! the last release or restore. Pure: text in, text or verdicts out; no I/O. The steps are
//! applied by `txn::display` and `txn::live`; the command is `cmd/single_gpu.rs`.
//!
//! libvirt (6.5.0 and later) runs every executable file of `/etc/libvirt/hooks/qemu.d/` in
//! alphabetical order as `FILE DOMAIN OPERATION SUB-OPERATION EXTRA`, the domain XML on
//! standard input: `prepare begin` before the host devices are prepared (a non-zero exit
//! stops the start), `release end` at the very end of the stop (after a `managed='yes'`
//! device was reattached). A hook must not call back into libvirt (a deadlock is likely), so
//! gpt's hook runs gpt only.

use crate::pci::PciAddress;
use crate::resetability::{Level, Report};
use serde::{Deserialize, Serialize};

/// Where libvirt looks for the qemu driver's hook files.
pub const HOOK_DIR: &str = "/etc/libvirt/hooks/qemu.d";
/// gpt's hook files: this prefix and the domain's name.
pub const HOOK_PREFIX: &str = "gpt-single-gpu-";
/// The record of the last release and restore (under /run: it ends with the boot).
pub const RECORD: &str = "/run/gpt/single-gpu.json";
/// The unit systemd aliases to the display manager in use (gdm, sddm, lightdm, ...).
pub const DISPLAY_MANAGER: &str = "display-manager.service";
/// The first libvirt that runs the files of `qemu.d`.
pub const LIBVIRT_MIN: (u32, u32) = (6, 5);
/// The packages whose version is libvirt's on Debian and Ubuntu (the daemon's first).
pub const LIBVIRT_PACKAGES: [&str; 3] = ["libvirt-daemon", "libvirt-daemon-system", "libvirt0"];

/// A domain name gpt puts in a file name and a shell line: letters, digits, `.`, `_`, `+`,
/// `-`, at most 64, not starting with `.` or `-`.
pub fn valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// A unit name the hook may stop: systemd's characters only, optionally `USER/` before it for
/// a unit of that user's own manager (a session's compositor, pipewire).
pub fn valid_unit(spec: &str) -> bool {
    let (user, name) = unit_of(spec);
    user.is_none_or(valid_user)
        && !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._:-\\".contains(&b))
}

/// A login name as Debian's adduser takes it: a letter or `_`, then letters, digits, `_`, `-`, `.`.
fn valid_user(u: &str) -> bool {
    u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// `USER/UNIT` → (`Some(USER)`, `UNIT`); a system unit → (`None`, `UNIT`). (`/` is in no unit
/// name.)
pub fn unit_of(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once('/') {
        Some((user, unit)) => (Some(user), unit),
        None => (None, spec),
    }
}

/// The `systemctl` command line for `verb` (`stop`, `start`, `is-active`) on a unit spec: a
/// user's unit goes to that user's manager (`systemctl --user -M USER@`, systemd 248 and later).
pub fn systemctl_argv(verb: &str, spec: &str) -> Vec<String> {
    let mut argv = vec!["systemctl".to_string()];
    let (user, unit) = unit_of(spec);
    if let Some(u) = user {
        argv.extend(["--user".into(), "-M".into(), format!("{u}@")]);
    }
    argv.push(verb.into());
    if verb == "is-active" {
        argv.push("--quiet".into());
    }
    argv.push(unit.into());
    argv
}

/// The hook file for domain `vm` (a valid name).
pub fn hook_path(vm: &str) -> String {
    format!("{HOOK_DIR}/{HOOK_PREFIX}{vm}")
}

/// Whether `path` is a hook file gpt writes.
pub fn is_hook_path(path: &str) -> bool {
    path.strip_prefix(HOOK_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|n| n.strip_prefix(HOOK_PREFIX))
        .is_some_and(valid_vm_name)
}

/// `'text'` for sh, a `'` inside closed and escaped.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What the hook passes to gpt.
#[derive(Debug, Clone)]
pub struct Hook {
    pub vm: String,
    /// The gpt binary to run (an absolute path).
    pub gpt: String,
    /// `--root` for gpt (`None`: the real root).
    pub root: Option<String>,
    /// The card's display function.
    pub device: PciAddress,
    /// Units to stop besides the display manager (a user session's compositor, pipewire).
    pub also_stop: Vec<String>,
    /// Seconds for each wait and each sysfs write.
    pub timeout: u64,
}

/// The hook file's text: it acts only for domain `vm`, at `prepare begin` and `release end`,
/// and hands the domain XML on to gpt, which acts only when the XML holds the card.
pub fn hook_script(h: &Hook) -> String {
    let mut gpt = sh_quote(&h.gpt);
    if let Some(r) = &h.root {
        gpt.push_str(&format!(" --root {}", sh_quote(r)));
    }
    let mut opts = format!("--device {} --timeout {}", h.device, h.timeout);
    for u in &h.also_stop {
        opts.push_str(&format!(" --also-stop {}", sh_quote(u)));
    }
    let vm = sh_quote(&h.vm);
    format!(
        "#!/bin/sh\n\
         # gpt single-gpu: gives this host's only GPU ({dev}) to the libvirt domain {vm}\n\
         # while it runs, and takes it back when it stops. Written by `gpt single-gpu enable`;\n\
         # `gpt single-gpu disable {name}` or `gpt reset` removes it. It runs gpt only, never\n\
         # virsh: a hook that calls back into libvirt can deadlock it. libvirt runs it as\n\
         # `FILE DOMAIN OPERATION SUB-OPERATION EXTRA`, the domain XML on standard input.\n\
         [ \"$1\" = {vm} ] || exit 0\n\
         case \"$2 $3\" in\n\
         'prepare begin') exec {gpt} single-gpu release {vm} {opts} ;;\n\
         'release end') exec {gpt} single-gpu restore {vm} {opts} ;;\n\
         esac\n\
         exit 0\n",
        dev = h.device,
        name = h.vm,
    )
}

/// One `<hostdev type='pci'>` of a domain XML: its source address and `managed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedDevice {
    pub address: PciAddress,
    pub managed: bool,
}

/// The value of attribute `name` in the tag text `tag` (`<address bus='0x01' …`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    for q in ['\'', '"'] {
        let key = format!(" {name}={q}");
        let Some(at) = tag.find(&key) else { continue };
        let rest = &tag[at + key.len()..];
        return rest.find(q).map(|end| &rest[..end]);
    }
    None
}

fn number(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The PCI host devices of a libvirt domain XML (`<hostdev mode='subsystem' type='pci'>`,
/// `<source><address domain= bus= slot= function=/></source>`).
pub fn hostdevs(xml: &str) -> Vec<PassedDevice> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<hostdev") {
        let block = &rest[start..];
        let end = block.find("</hostdev>").unwrap_or(block.len());
        rest = &block[end..];
        let block = &block[..end];
        let open = &block[..block.find('>').unwrap_or(block.len())];
        if attr(open, "type") != Some("pci") {
            continue;
        }
        let Some(src) = block.find("<source") else {
            continue;
        };
        let Some(a) = block[src..].find("<address").map(|a| src + a) else {
            continue;
        };
        let tag = &block[a..a + block[a..].find('>').unwrap_or(block.len() - a)];
        let num = |n: &str| attr(tag, n).and_then(number);
        let (Some(bus), Some(slot), Some(func)) = (num("bus"), num("slot"), num("function")) else {
            continue;
        };
        let text = format!(
            "{:04x}:{bus:02x}:{slot:02x}.{func:x}",
            num("domain").unwrap_or(0)
        );
        if let Some(address) = PciAddress::parse(&text) {
            out.push(PassedDevice {
                address,
                managed: attr(open, "managed") == Some("yes"),
            });
        }
    }
    out
}

/// The card's functions the domain holds.
pub fn held<'a>(xml: &str, card: &'a [PciAddress]) -> Vec<&'a PciAddress> {
    let devs = hostdevs(xml);
    card.iter()
        .filter(|a| devs.iter().any(|d| d.address == **a))
        .collect()
}

/// `major.minor` at the start of a package version (`9.0.0-4+deb12u1`, `1:6.0.0-2`).
pub fn version_of(v: &str) -> Option<(u32, u32)> {
    let v = v.split_once(':').map_or(v, |(_, r)| r);
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The `Version:` of installed package `name` in dpkg's status database.
pub fn package_version(status: &str, name: &str) -> Option<String> {
    status.split("\n\n").find_map(|para| {
        let mut is = false;
        let mut installed = false;
        let mut version = None;
        for line in para.lines() {
            if let Some(n) = line.strip_prefix("Package: ") {
                is = n.trim() == name;
            } else if let Some(s) = line.strip_prefix("Status: ") {
                installed = s.trim().ends_with(" installed");
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_string());
            }
        }
        (is && installed).then_some(version).flatten()
    })
}

/// Why libvirt cannot run gpt's hook (`None`: it can).
pub fn libvirt_refusal(version: Option<&str>) -> Option<String> {
    let Some(v) = version else {
        return Some(
            "libvirt is not installed (no libvirt-daemon in dpkg's database): single-GPU mode \
             runs from libvirt's hooks; install libvirt-daemon-system"
                .into(),
        );
    };
    match version_of(v) {
        Some(have) if have >= LIBVIRT_MIN => None,
        _ => Some(format!(
            "libvirt {v} does not run the hook files of {HOOK_DIR}/ (they came with 6.5.0); \
             upgrade libvirt"
        )),
    }
}

/// The kernel release's `(major, minor)` (`6.1.0-13-amd64`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut p = release.split(|c: char| !c.is_ascii_digit());
    Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
}

/// Whether gpt must release the firmware framebuffer itself: before Linux 6.0, vfio-pci did
/// not remove it when it took a VGA device (unknown kernel: yes, it is harmless).
pub fn releases_firmware_fb(release: Option<&str>) -> bool {
    release.and_then(kernel_version).is_none_or(|v| v < (6, 0))
}

/// A function whose host driver cannot have it back after a VM: its reset verdict is a
/// warning that nothing resets it (no reset method at all, or the AMD reset bug without
/// vendor-reset: `bug` lists those functions). The reason, one line.
pub fn cannot_come_back(reports: &[Report], bug: &[String]) -> Option<String> {
    let card_listed = reports
        .iter()
        .any(|r| r.reset_method.as_ref().is_some_and(|m| !m.is_empty()));
    reports.iter().find_map(|r| {
        let warn = r.verdict == Level::Warn;
        let nothing = r.reset_method.as_ref().is_some_and(Vec::is_empty) && !card_listed;
        (warn && (bug.contains(&r.address) || nothing))
            .then(|| format!("{}: {}", r.address, r.reason))
    })
}

/// The host's only display controller, of `gpus` (every display controller, class 03xx).
pub fn only_display(gpus: &[PciAddress]) -> Result<PciAddress, String> {
    match gpus {
        [one] => Ok(*one),
        [] => Err("this host has no display controller (class 03xx); `gpt iommu --gpu` lists the GPUs".into()),
        many => Err(format!(
            "this host has {} display controllers ({}): single-GPU mode is for a host with one; \
             give a second card to a VM with `gpt bind` (it keeps the host's screen), or pass --device ADDR",
            many.len(),
            many.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A way into the host besides its screen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WayIn {
    /// An enabled SSH server unit (`ssh.service`, `sshd.service`).
    pub sshd: Option<String>,
    /// A serial getty (enabled, or started by `console=ttyS…`).
    pub serial: Option<String>,
}

/// The warning when there is no way in besides the screen.
pub fn way_in_warning(w: &WayIn) -> Option<String> {
    (w.sshd.is_none() && w.serial.is_none()).then(|| {
        "NO WAY IN: no SSH server is enabled and no serial getty runs. While the VM has the GPU \
         this host has no screen; if the VM or the hand-back hangs, you can reach the host only \
         by a reboot. Enable one first: `sudo systemctl enable --now ssh`"
            .into()
    })
}

/// Release (the VM starts) or restore (it stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Release,
    Restore,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Release => "release",
            Phase::Restore => "restore",
        }
    }
}

/// The last release or restore, as `gpt check` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub phase: Phase,
    pub vm: String,
    pub ok: bool,
    /// Seconds since the epoch when it ended.
    pub at: u64,
    /// Each step done, in order (`stopped display-manager.service`, ...).
    pub steps: Vec<String>,
    /// Why it failed, one line.
    pub error: Option<String>,
    /// fbcon's vtconsoles the release unbound (the restore binds them again).
    #[serde(default)]
    pub consoles: Vec<String>,
    /// The units the release stopped, in order (the restore starts these, and only these):
    /// a unit that was not running (no display manager: `startx`) is neither stopped nor
    /// started. `None` in a record of a gpt that did not keep them.
    #[serde(default)]
    pub stopped: Option<Vec<String>>,
}

impl Record {
    /// `gpt check`'s line: `release of win10 succeeded` / `failed: …`.
    pub fn summary(&self) -> String {
        match &self.error {
            None => format!(
                "the last {} (domain {}) succeeded: {}",
                self.phase.name(),
                self.vm,
                self.steps.join(", ")
            ),
            Some(e) => format!(
                "the last {} (domain {}) FAILED: {e}",
                self.phase.name(),
                self.vm
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    #[test]
    fn vm_names_and_hook_paths() {
        assert!(valid_vm_name("win10"));
        assert!(valid_vm_name("Win_11.gaming-2"));
        for bad in [
            "",
            "-x",
            ".x",
            "a/b",
            "a b",
            "a'b",
            "x$(id)",
            &"a".repeat(65),
        ] {
            assert!(!valid_vm_name(bad), "{bad}");
        }
        assert_eq!(
            hook_path("win10"),
            "/etc/libvirt/hooks/qemu.d/gpt-single-gpu-win10"
        );
        assert!(is_hook_path(&hook_path("win10")));
        assert!(!is_hook_path("/etc/libvirt/hooks/qemu.d/other"));
        assert!(!is_hook_path(
            "/etc/libvirt/hooks/qemu.d/gpt-single-gpu-../x"
        ));
        assert!(!is_hook_path("/etc/libvirt/hooks/qemu"));
        assert!(valid_unit("plasma-kwin_wayland.service"));
        assert!(valid_unit("user@1000.service"));
        assert!(!valid_unit("a;b"));
        assert!(valid_unit("alice/pipewire.service"));
        assert!(!valid_unit("Alice/pipewire.service"));
        assert!(!valid_unit("alice/"));
        assert!(!valid_unit("a/b/c.service"));
        assert!(!valid_unit("/pipewire.service"));
    }

    #[test]
    fn a_users_unit_goes_to_that_users_manager() {
        assert_eq!(
            systemctl_argv("stop", "display-manager.service"),
            ["systemctl", "stop", "display-manager.service"]
        );
        assert_eq!(
            systemctl_argv("start", "alice/pipewire.service"),
            [
                "systemctl",
                "--user",
                "-M",
                "alice@",
                "start",
                "pipewire.service"
            ]
        );
        assert_eq!(
            systemctl_argv("is-active", "alice/pipewire.service"),
            [
                "systemctl",
                "--user",
                "-M",
                "alice@",
                "is-active",
                "--quiet",
                "pipewire.service"
            ]
        );
    }

    #[test]
    fn the_hook_runs_gpt_only_for_its_domain_at_two_points() {
        let h = Hook {
            vm: "win10".into(),
            gpt: "/usr/bin/gpt".into(),
            root: None,
            device: addr("01:00.0"),
            also_stop: vec!["pipewire.service".into()],
            timeout: 20,
        };
        let s = hook_script(&h);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("[ \"$1\" = 'win10' ] || exit 0\n"), "{s}");
        assert!(s.contains(
            "'prepare begin') exec '/usr/bin/gpt' single-gpu release 'win10' --device 0000:01:00.0 --timeout 20 --also-stop 'pipewire.service' ;;"
        ), "{s}");
        assert!(s.contains("'release end') exec '/usr/bin/gpt' single-gpu restore 'win10'"));
        assert!(!s.contains("virsh "), "{s}");
        let tree = hook_script(&Hook {
            root: Some("/tmp/it's".into()),
            ..h
        });
        assert!(
            tree.contains("exec '/usr/bin/gpt' --root '/tmp/it'\\''s' single-gpu"),
            "{tree}"
        );
    }

    #[test]
    fn hostdevs_are_read_from_the_domain_xml() {
        let xml = r#"<domain type='kvm'><name>win10</name><devices>
  <hostdev mode='subsystem' type='pci' managed='yes'>
    <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>
    <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>
  </hostdev>
  <hostdev mode="subsystem" type="pci" managed="no">
    <driver name="vfio"/>
    <source><address domain="0" bus="1" slot="0" function="1"/></source>
  </hostdev>
  <hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>
</devices></domain>"#;
        assert_eq!(
            hostdevs(xml),
            [
                PassedDevice {
                    address: addr("01:00.0"),
                    managed: true
                },
                PassedDevice {
                    address: addr("01:00.1"),
                    managed: false
                },
            ]
        );
        let card = [addr("01:00.0"), addr("01:00.1"), addr("02:00.0")];
        assert_eq!(held(xml, &card).len(), 2);
        assert!(held("<domain><name>x</name></domain>", &card).is_empty());
    }

    #[test]
    fn libvirt_from_6_5_runs_qemu_d() {
        let status =
            "Package: libvirt-daemon\nStatus: install ok installed\nVersion: 9.0.0-4+deb12u1\n\n\
                      Package: libvirt0\nStatus: deinstall ok config-files\nVersion: 6.0.0-1\n";
        assert_eq!(
            package_version(status, "libvirt-daemon").as_deref(),
            Some("9.0.0-4+deb12u1")
        );
        assert_eq!(package_version(status, "libvirt0"), None);
        assert_eq!(libvirt_refusal(Some("9.0.0-4+deb12u1")), None);
        assert_eq!(libvirt_refusal(Some("6.5.0-1")), None);
        assert!(libvirt_refusal(Some("6.0.0-0ubuntu8"))
            .unwrap()
            .contains("came with 6.5.0"));
        assert!(libvirt_refusal(None).unwrap().contains("not installed"));
        assert_eq!(version_of("1:10.0.0-2ubuntu8"), Some((10, 0)));
    }

    #[test]
    fn the_firmware_framebuffer_is_gpts_to_release_before_6_0() {
        assert!(releases_firmware_fb(Some("5.15.0-91-generic")));
        assert!(!releases_firmware_fb(Some("6.1.0-13-amd64")));
        assert!(releases_firmware_fb(None));
    }

    fn report(a: &str, methods: Option<&[&str]>, level: Level) -> Report {
        Report {
            address: a.into(),
            driver: None,
            reset_method: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            power_state: None,
            d3cold_allowed: None,
            verdict: level,
            reason: "why".into(),
        }
    }

    #[test]
    fn a_card_nothing_resets_does_not_come_back() {
        let ok = [
            report("0000:01:00.0", Some(&["bus"]), Level::Pass),
            report("0000:01:00.1", Some(&[]), Level::Warn),
        ];
        assert_eq!(cannot_come_back(&ok, &[]), None);
        let none = [
            report("0000:01:00.0", Some(&[]), Level::Warn),
            report("0000:01:00.1", Some(&[]), Level::Warn),
        ];
        assert_eq!(
            cannot_come_back(&none, &[]).as_deref(),
            Some("0000:01:00.0: why")
        );
        let bug = [report("0000:01:00.0", Some(&["bus"]), Level::Warn)];
        assert!(cannot_come_back(&bug, &["0000:01:00.0".into()]).is_some());
        assert!(cannot_come_back(&bug, &[]).is_none());
    }

    #[test]
    fn no_way_in_is_said_loudly() {
        assert!(way_in_warning(&WayIn::default())
            .unwrap()
            .starts_with("NO WAY IN"));
        let ssh = WayIn {
            sshd: Some("ssh.service".into()),
            serial: None,
        };
        assert_eq!(way_in_warning(&ssh), None);
    }

    #[test]
    fn the_record_reads_as_one_line() {
        let mut r = Record {
            phase: Phase::Release,
            vm: "win10".into(),
            ok: true,
            at: 1,
            steps: vec!["stopped display-manager.service".into()],
            error: None,
            consoles: vec!["vtcon1".into()],
            stopped: Some(vec!["display-manager.service".into()]),
        };
        assert!(r.summary().contains("release (domain win10) succeeded"));
        r.error = Some("boom".into());
        assert!(r.summary().contains("FAILED: boom"));
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
