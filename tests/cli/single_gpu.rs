//! `gpt single-gpu` against a host tree whose only GPU (an RTX 2060: nouveau and its HDMI audio)
//! shows the console (fbcon on nouveau's fb0) and the desktop, with a fake kernel
//! (`support::kernel`) and fake `systemctl`: `display-manager.service` is a process that keeps
//! the tree's `/dev/dri/card0` open while it runs, as a display server does. The hook file gpt
//! installs is run as libvirt runs it (`FILE DOMAIN OPERATION SUB-OP EXTRA`, the XML on stdin).
//! Every failure must leave the display as it was: the display manager running and holding the
//! card, fbcon bound, the card on its drivers.

use crate::support::hosts::layout_base;
use crate::support::kernel::{driver_of, Kernel, Rules};
use crate::support::tree::{Dev, HostTree};
use crate::support::{gpt, run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";
const VM: &str = "win10";
const HOOK: &str = "etc/libvirt/hooks/qemu.d/gpt-single-gpu-win10";
const BOOT_ID: &str = "0e7c1d2a-4b5f-4c6d-8e9f-a0b1c2d3e4f5";

/// The domain XML libvirt passes on stdin: the card's two functions as hostdevs.
fn domain_xml(name: &str, managed: &str, funcs: &[&str]) -> String {
    let devs: String = funcs
        .iter()
        .map(|f| {
            format!(
                "<hostdev mode='subsystem' type='pci' managed='{managed}'><source>\
                 <address domain='0x0000' bus='0x01' slot='0x00' function='0x{f}'/></source></hostdev>\n"
            )
        })
        .collect();
    format!("<domain type='kvm'><name>{name}</name><devices>\n{devs}</devices></domain>\n")
}

/// The host: a Debian 12 desktop whose only GPU is the RTX 2060 at 01:00.0 (boot VGA, nouveau,
/// card0 / renderD128 / fb0) with its audio at 01:00.1 (sound card 0), libvirt 9.0 installed,
/// an SSH server enabled.
fn one_card(root: &Path) -> HostTree {
    let mut t = layout_base(root, "GenuineIntel");
    let nv = |addr: &str, dev: u16, class: u32, drv: &str| {
        Dev::new(addr, (0x10de, dev), class)
            .rev(0xa1)
            .subsys(0x1043, 0x86f0)
            .group(1)
            .driver(drv)
            .behind("00:01.0")
            .power_state("D0")
            .d3cold_allowed(true)
    };
    t.device(
        Dev::new("00:01.0", (0x8086, 0x4c01), 0x060400)
            .group(2)
            .driver("pcieport"),
    )
    .device(
        nv("01:00.0", 0x1f08, 0x030000, "nouveau")
            .boot_vga()
            .reset_method("bus"),
    )
    .device(nv("01:00.1", 0x10f9, 0x040300, "snd_hda_intel"));
    let gpu = t.dev_dir(GPU);
    let audio = t.dev_dir(AUDIO);
    t.file(&format!("{gpu}/drm/card0/dev"), "226:0\n")
        .file(&format!("{gpu}/drm/renderD128/dev"), "226:128\n")
        .file("/dev/dri/card0", "")
        .file("/dev/dri/renderD128", "")
        .symlink("/dev/dri/by-path/pci-0000:01:00.0-card", "../card0")
        .file(&format!("{audio}/sound/card0/id"), "NVidia\n")
        .file("/dev/snd/controlC0", "")
        .file(&format!("{gpu}/graphics/fb0/dev"), "29:0\n")
        .symlink(
            &format!("{gpu}/graphics/fb0/device"),
            "../../../0000:01:00.0",
        )
        .symlink(
            "/sys/class/graphics/fb0",
            "../../devices/pci0000:00/0000:00:01.0/0000:01:00.0/graphics/fb0",
        )
        .file("/sys/class/vtconsole/vtcon0/name", "(S) dummy device\n")
        .file("/sys/class/vtconsole/vtcon0/bind", "0\n")
        .file(
            "/sys/class/vtconsole/vtcon1/name",
            "(M) frame buffer device\n",
        )
        .file("/sys/class/vtconsole/vtcon1/bind", "1\n")
        .file("/proc/sys/kernel/random/boot_id", &format!("{BOOT_ID}\n"))
        .file(
            "/var/lib/dpkg/status",
            "Package: libvirt-daemon\nStatus: install ok installed\nVersion: 9.0.0-4+deb12u1\n\n",
        )
        .file("/etc/libvirt/qemu.conf", "# libvirt's\n")
        .symlink(
            "/etc/systemd/system/multi-user.target.wants/ssh.service",
            "/lib/systemd/system/ssh.service",
        );
    for (module, driver) in [
        ("nouveau", "nouveau"),
        ("snd_hda_intel", "snd_hda_intel"),
        ("vfio_pci", "vfio-pci"),
    ] {
        t.symlink(
            &format!("/sys/module/{module}/drivers/pci:{driver}"),
            &format!("../../../bus/pci/drivers/{driver}"),
        );
    }
    t
}

const SYSTEMCTL: &str = r#"#!/bin/bash
# systemctl: a fake for gpt's single-GPU tests. A unit "runs" as a process; the display
# manager's keeps the tree's /dev/dri/card0 open, as a display server does.
set -u
echo "systemctl $*" >> "$FAKE_STATE/calls"
manager=
if [ "$1" = --user ]; then
  [ "$2" = -M ] || { echo "fake systemctl: --user without -M USER@" >&2; exit 1; }
  manager=$3; shift 3
fi
verb=$1; shift
[ "${1:-}" = --quiet ] && shift
unit=$1
pidf="$FAKE_STATE/$manager$unit.pid"
alive() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
case $verb in
stop)
  if [ -f "$pidf" ]; then
    pid=$(cat "$pidf"); rm -f "$pidf"; kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi ;;
start)
  alive && exit 0
  if [ -e "$FAKE_STATE/fail-start" ]; then echo "Job for $unit failed." >&2; exit 1; fi
  node=/dev/null
  [ "$unit" = display-manager.service ] && node="$FAKE_ROOT/dev/dri/card0"
  setsid sleep 600 < "$node" > /dev/null 2>&1 &
  echo $! > "$pidf" ;;
is-active) alive ;;
*) exit 1 ;;
esac
"#;

/// Fake commands (`chroot`, `systemctl`, `logger`) and their state; the units' processes end
/// with it.
struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Fakes {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in [
            (
                "chroot",
                "#!/bin/bash\nroot=$1; shift\nFAKE_ROOT=$root exec \"$@\"\n",
            ),
            ("systemctl", SYSTEMCTL),
            (
                "logger",
                "#!/bin/bash\necho \"$*\" >> \"$FAKE_STATE/logger\"\n",
            ),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fakes { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn env(&self, cmd: &mut Command, root: &Path) {
        cmd.env("PATH", self.path())
            .env("FAKE_STATE", self.state())
            .env("FAKE_ROOT", root)
            .env("NO_COLOR", "1")
            .env("GPT_PCI_IDS", root.join("usr/share/misc/pci.ids"));
    }

    fn systemctl(&self, root: &Path, args: &[&str]) -> bool {
        let mut cmd = Command::new(self.dir.path().join("bin/systemctl"));
        self.env(&mut cmd, root);
        cmd.args(args).status().unwrap().success()
    }

    fn dm_active(&self, root: &Path) -> bool {
        self.systemctl(root, &["is-active", "display-manager.service"])
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(self.state().join("logger")).unwrap_or_default()
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = std::fs::read_to_string(e.path()) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
    }
}

/// The host running its desktop: the display manager holds card0.
fn desktop(root: &Path) -> (HostTree, Fakes) {
    let t = one_card(root);
    let f = Fakes::new();
    assert!(f.systemctl(root, &["start", "display-manager.service"]));
    (t, f)
}

fn gpt_f(root: &Path, f: &Fakes) -> assert_cmd::Command {
    let mut c = gpt(root);
    c.env("PATH", f.path()).env("FAKE_STATE", f.state());
    c
}

fn enable(root: &Path, f: &Fakes, extra: &[&str]) {
    let (code, _, err) = run(gpt_f(root, f)
        .args(["single-gpu", "enable", VM, "--yes", "--timeout", "3"])
        .args(extra));
    assert_eq!(code, 0, "{err}");
}

/// Run the installed hook as libvirt does; (exit code, stderr).
/// The hook for domain VM, whose XML holds both of the card's functions (`managed='no'`).
fn card_hook(root: &Path, f: &Fakes, op: &str, sub: &str) -> (i32, String) {
    hook(root, f, op, sub, &domain_xml(VM, "no", &["0", "1"]))
}

fn hook(root: &Path, f: &Fakes, op: &str, sub: &str, xml: &str) -> (i32, String) {
    let mut cmd = Command::new(root.join(HOOK));
    f.env(&mut cmd, root);
    cmd.args([VM, op, sub, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    // A hook that does not read its input (another domain) closes the pipe early.
    let _ = child.stdin.take().unwrap().write_all(xml.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gpt check`'s line for the last release or restore.
fn check_line(out: &str, phase: &str) -> String {
    let name = format!("Checking for single-GPU mode's last {phase} (domain win10)");
    out.lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("no line {name}: {out}"))
        .to_string()
}

fn fbcon_bound(root: &Path) -> bool {
    std::fs::read_to_string(root.join("sys/class/vtconsole/vtcon1/bind"))
        .unwrap()
        .trim()
        == "1"
}

fn drivers(root: &Path) -> [Option<String>; 2] {
    [driver_of(root, GPU), driver_of(root, AUDIO)]
}

fn host_drivers() -> [Option<String>; 2] {
    [Some("nouveau".into()), Some("snd_hda_intel".into())]
}

/// The display as the desktop had it: the card on its drivers with its DRM node, fbcon bound,
/// the display manager running and holding card0.
fn assert_display_restored(root: &Path, f: &Fakes) {
    assert_eq!(drivers(root), host_drivers());
    assert!(root
        .join("sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/drm/card0")
        .is_dir());
    assert!(fbcon_bound(root), "fbcon bound again");
    assert!(f.dm_active(root), "the display manager runs again");
}

/// Every file under /etc with its bytes and mode (and links), and whether /var/lib/gpt exists.
fn etc(root: &Path) -> (Vec<(String, String, u32)>, bool) {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root.join("etc")).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let what = if m.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_dir() {
            "<dir>".into()
        } else {
            String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned()
        };
        out.push((e.path().display().to_string(), what, m.mode_bits()));
    }
    (out, root.join("var/lib/gpt").exists())
}

trait ModeBits {
    fn mode_bits(&self) -> u32;
}

impl ModeBits for std::fs::Metadata {
    fn mode_bits(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        self.mode()
    }
}

#[test]
fn enable_shows_the_hook_installs_it_and_disable_and_reset_remove_it_exactly() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let before = etc(root);
    let (code, out, err) = run(gpt_f(root, &f).args(["single-gpu", "enable", VM, "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+++ b/etc/libvirt/hooks/qemu.d/gpt-single-gpu-win10"),
        "{out}"
    );
    assert!(out.contains("+[ \"$1\" = 'win10' ] || exit 0"), "{out}");
    assert!(
        out.contains("single-gpu release 'win10' --device 0000:01:00.0"),
        "{out}"
    );
    assert!(!out.contains("virsh "), "{out}");
    assert_eq!(etc(root), before, "a dry run changes nothing");

    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "enable", VM, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("restart libvirtd"), "{err}");
    let hook = root.join(HOOK);
    let mode = std::fs::metadata(&hook).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "libvirt runs only executable hooks");
    // A second enable changes nothing.
    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "enable", VM, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("installed already"), "{err}");

    let (code, out, err) = run(gpt_f(root, &f).args(["single-gpu", "disable", VM, "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("--- a/etc/libvirt/hooks/qemu.d/gpt-single-gpu-win10"),
        "{out}"
    );
    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "disable", VM, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        etc(root),
        before,
        "disable leaves /etc as it was, and no journal"
    );

    enable(root, &f, &[]);
    let (code, _, err) = run(gpt_f(root, &f).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("update-initramfs"),
        "the hook is no boot file: {err}"
    );
    assert_eq!(
        etc(root),
        before,
        "reset leaves /etc as it was, and no journal"
    );

    // Where the modular daemons run, the hooks are virtqemud's: that is the one to restart.
    let wants = root.join("etc/systemd/system/sockets.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/virtqemud.socket",
        wants.join("virtqemud.socket"),
    )
    .unwrap();
    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "enable", VM, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("(`sudo systemctl restart virtqemud`)"),
        "{err}"
    );
    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "disable", VM, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("restart virtqemud so that it forgets"),
        "{err}"
    );
}

/// libvirt runs the hook, and so the gpt binary it names, as root at every start: a gpt in a
/// folder another user can change is refused, naming the folder, and nothing is written.
#[test]
fn enable_refuses_a_gpt_binary_another_user_could_change() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let before = etc(root);
    let elsewhere = tempfile::tempdir().unwrap();
    let bin = elsewhere.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(assert_cmd::cargo::cargo_bin("gpt"), bin.join("gpt")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = assert_cmd::Command::new(bin.join("gpt"));
    cmd.env("NO_COLOR", "1")
        .env("GPT_PCI_IDS", root.join("usr/share/misc/pci.ids"))
        .env("PATH", f.path())
        .env("FAKE_STATE", f.state())
        .arg("--root")
        .arg(root)
        .args(["single-gpu", "enable", VM, "--yes"]);
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, 1, "{err}");
    let named = format!(
        "refusing: {} is writable by others (mode 777), and libvirt would run {} as root",
        bin.canonicalize().unwrap().display(),
        bin.canonicalize().unwrap().join("gpt").display()
    );
    assert!(err.contains(&named), "{err}");
    assert!(err.contains("/usr/bin/gpt"), "{err}");
    assert_eq!(etc(root), before, "nothing was written");
}

#[test]
fn enable_refuses_what_cannot_work_and_changes_nothing() {
    let refused = |root: &Path, f: &Fakes, want: &str| {
        let before = etc(root);
        let (code, _, err) = run(gpt_f(root, f).args(["single-gpu", "enable", VM, "--yes"]));
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(etc(root), before);
    };
    // A second display: the host keeps a screen, `gpt bind` is for that.
    let d = tempfile::tempdir().unwrap();
    let (mut t, f) = desktop(d.path());
    t.device(
        Dev::new("00:02.0", (0x8086, 0x4c8a), 0x030000)
            .group(0)
            .driver("i915"),
    );
    let (code, _, err) =
        run(gpt_f(d.path(), &f).args(["single-gpu", "enable", VM, "--device", "01:00.0", "--yes"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not this host's only display (0000:00:02.0 stays on the host)"),
        "{err}"
    );
    assert!(err.contains("gpt bind --device 0000:01:00.0"), "{err}");
    refused(d.path(), &f, "2 display controllers");

    // libvirt before 6.5, and none.
    let d = tempfile::tempdir().unwrap();
    let (mut t, f) = desktop(d.path());
    t.file(
        "/var/lib/dpkg/status",
        "Package: libvirt-daemon\nStatus: install ok installed\nVersion: 6.0.0-0ubuntu8\n\n",
    );
    refused(
        d.path(),
        &f,
        "libvirt 6.0.0-0ubuntu8 does not run the hook files",
    );
    t.file("/var/lib/dpkg/status", "");
    refused(d.path(), &f, "libvirt is not installed");

    // A card nothing resets: no reset method on any function.
    let d = tempfile::tempdir().unwrap();
    let (t, f) = desktop(d.path());
    std::fs::write(
        d.path()
            .join(t.dev_dir(GPU).trim_start_matches('/'))
            .join("reset_method"),
        "",
    )
    .unwrap();
    refused(d.path(), &f, "nothing resets this card");

    // A VM name that is no file name.
    let (code, _, err) = run(gpt_f(d.path(), &f).args(["single-gpu", "enable", "a/b", "--yes"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn without_ssh_or_a_serial_getty_enable_warns_loudly() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    std::fs::remove_file(root.join("etc/systemd/system/multi-user.target.wants/ssh.service"))
        .unwrap();
    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "enable", VM, "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("NO WAY IN"), "{err}");
    let (_, _, err) = run(gpt_f(root, &f)
        .args(["single-gpu", "enable", VM, "--dry-run"])
        .env("X", "1"));
    assert!(err.contains("NO WAY IN"));
    std::fs::write(
        root.join("proc/cmdline"),
        "root=/dev/nvme0n1p2 ro console=ttyS0,115200\n",
    )
    .unwrap();
    let (_, _, err) = run(gpt_f(root, &f).args(["single-gpu", "enable", VM, "--dry-run"]));
    assert!(
        !err.contains("NO WAY IN"),
        "a serial console is a way in: {err}"
    );
}

#[test]
fn the_hook_takes_the_card_at_start_and_gives_the_display_back_at_the_stop() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let k = Kernel::start(root, Rules::default());
    enable(root, &f, &[]);
    let xml = domain_xml(VM, "no", &["0", "1"]);

    // Another domain, or this one without the card: nothing happens.
    assert_eq!(
        hook(root, &f, "prepare", "begin", &domain_xml(VM, "no", &[])).0,
        0
    );
    let (code, _) = {
        let mut cmd = Command::new(root.join(HOOK));
        f.env(&mut cmd, root);
        let s = cmd
            .args(["other", "prepare", "begin", "-"])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        (s.code().unwrap(), ())
    };
    assert_eq!(code, 0);
    assert!(k.log().is_empty(), "{:?}", k.log());
    assert!(f.dm_active(root));

    let (code, err) = hook(root, &f, "prepare", "begin", &xml);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        drivers(root),
        [Some("vfio-pci".into()), Some("vfio-pci".into())]
    );
    assert!(!f.dm_active(root), "the display manager stopped");
    assert!(!fbcon_bound(root), "fbcon let go of the card");
    let unbinds: Vec<String> = k
        .log()
        .into_iter()
        .filter(|l| l.starts_with("unbind"))
        .collect();
    assert_eq!(
        unbinds,
        [
            "unbind snd_hda_intel 0000:01:00.1",
            "unbind nouveau 0000:01:00.0"
        ]
    );
    assert!(
        f.logged().contains("release (domain win10) succeeded"),
        "{}",
        f.logged()
    );
    let (_, out, _) = run(gpt_f(root, &f).arg("check"));
    assert!(check_line(&out, "release").ends_with(": PASS"), "{out}");

    // The other hook phases (started, stopped, release begin) do nothing.
    assert_eq!(hook(root, &f, "started", "begin", &xml).0, 0);
    assert_eq!(
        drivers(root),
        [Some("vfio-pci".into()), Some("vfio-pci".into())]
    );

    let (code, err) = hook(root, &f, "release", "end", &xml);
    assert_eq!(code, 0, "{err}");
    assert_display_restored(root, &f);
    assert!(
        f.logged().contains("restore (domain win10) succeeded"),
        "{}",
        f.logged()
    );
    assert!(
        !root.join("run/gpt/bind.json").exists(),
        "the binding journal is done"
    );
    let (_, out, _) = run(gpt_f(root, &f).arg("check"));
    assert!(check_line(&out, "restore").ends_with(": PASS"), "{out}");
}

/// managed='yes': libvirt hands the card back itself before `release end` (as its reattach
/// does: unbind from vfio-pci, clear driver_override, reprobe); gpt's restore checks it.
#[test]
fn with_managed_yes_the_restore_finds_libvirts_hand_back_and_checks_it() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let k = Kernel::start(root, Rules::default());
    enable(root, &f, &[]);
    let xml = domain_xml(VM, "yes", &["0", "1"]);
    let (code, err) = hook(root, &f, "prepare", "begin", &xml);
    assert_eq!(code, 0, "{err}");
    let sys = |p: &str, v: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(p))
            .unwrap()
            .write_all(format!("{v}\n").as_bytes())
            .unwrap()
    };
    use std::io::Write;
    for a in [GPU, AUDIO] {
        sys("sys/bus/pci/drivers/vfio-pci/unbind", a);
        std::fs::write(
            root.join(format!("sys/bus/pci/devices/{a}/driver_override")),
            "(null)\n",
        )
        .unwrap();
        while driver_of(root, a).is_some() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        sys("sys/bus/pci/drivers_probe", a);
        while driver_of(root, a).is_none() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let probes_before = k.log().len();
    let (code, err) = hook(root, &f, "release", "end", &xml);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        k.log().len(),
        probes_before,
        "gpt moved nothing libvirt had moved: {:?}",
        k.log()
    );
    assert_display_restored(root, &f);
}

#[test]
fn a_process_that_will_not_let_go_is_named_and_the_display_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let k = Kernel::start(root, Rules::default());
    enable(root, &f, &[]);
    // A user session's compositor, outside the display manager's unit.
    let mut stray = Command::new("sleep")
        .arg("60")
        .stdin(std::fs::File::open(root.join("dev/dri/card0")).unwrap())
        .spawn()
        .unwrap();
    let (code, err) = card_hook(root, &f, "prepare", "begin");
    let _ = stray.kill();
    let _ = stray.wait();
    assert_eq!(code, 1, "libvirt must not start the VM: {err}");
    assert!(
        err.contains(&format!("sleep (pid {}) holds /dev/dri/card0", stray.id())),
        "{err}"
    );
    assert!(err.contains("--also-stop"), "{err}");
    assert!(err.contains("the host has its display back"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(!errors[0].contains('\n'));
    assert_display_restored(root, &f);
    assert!(k.log().is_empty(), "no function moved: {:?}", k.log());
    assert!(
        f.logged().contains("release (domain win10) FAILED"),
        "{}",
        f.logged()
    );
    let (_, out, _) = run(gpt_f(root, &f).arg("check"));
    assert!(
        check_line(&out, "release")
            .contains(": WARN (the last release (domain win10) FAILED: the card is still in use"),
        "{out}"
    );
    // libvirt runs `release end` after a failed start too: nothing is left to restore.
    let (code, err) = card_hook(root, &f, "release", "end");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to restore"), "{err}");
    assert_display_restored(root, &f);
}

#[test]
fn a_listed_unit_is_stopped_too_and_started_again() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let _k = Kernel::start(root, Rules::default());
    assert!(f.systemctl(root, &["start", "pipewire.service"]));
    // A unit of a user's own manager: USER/UNIT.
    let alices = |verb: &'static str| ["--user", "-M", "alice@", verb, "kwin_wayland.service"];
    assert!(f.systemctl(root, &alices("start")));
    enable(
        root,
        &f,
        &[
            "--also-stop",
            "pipewire.service",
            "--also-stop",
            "alice/kwin_wayland.service",
        ],
    );
    let xml = domain_xml(VM, "no", &["0", "1"]);
    let (code, err) = hook(root, &f, "prepare", "begin", &xml);
    assert_eq!(code, 0, "{err}");
    assert!(!f.systemctl(root, &["is-active", "pipewire.service"]));
    assert!(!f.systemctl(root, &alices("is-active")));
    let calls = std::fs::read_to_string(f.state().join("calls")).unwrap();
    assert!(
        calls.contains("systemctl --user -M alice@ stop kwin_wayland.service"),
        "{calls}"
    );
    let (code, err) = hook(root, &f, "release", "end", &xml);
    assert_eq!(code, 0, "{err}");
    assert!(f.systemctl(root, &["is-active", "pipewire.service"]));
    assert!(f.systemctl(root, &alices("is-active")));
    assert_display_restored(root, &f);
}

/// A desktop started by hand (`startx`), no display manager running: the release stops no unit
/// that was not running, and the restore starts none (it used to start display-manager.service,
/// which on such a host fails the restore).
#[test]
fn without_a_running_display_manager_no_unit_is_stopped_or_started() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    one_card(root);
    let f = Fakes::new();
    let _k = Kernel::start(root, Rules::default());
    enable(root, &f, &[]);
    let (code, err) = card_hook(root, &f, "prepare", "begin");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        drivers(root),
        [Some("vfio-pci".into()), Some("vfio-pci".into())]
    );
    let (code, err) = card_hook(root, &f, "release", "end");
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers());
    assert!(fbcon_bound(root), "fbcon bound again");
    assert!(!f.dm_active(root), "no display manager was started");
    let calls = std::fs::read_to_string(f.state().join("calls")).unwrap_or_default();
    assert!(!calls.contains("systemctl stop"), "{calls}");
    assert!(!calls.contains("systemctl start"), "{calls}");
    let record = std::fs::read_to_string(root.join("run/gpt/single-gpu.json")).unwrap();
    assert!(record.contains("\"restore\""), "{record}");
}

#[test]
fn a_driver_whose_unbind_blocks_fails_the_start_and_the_display_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let mut rules = Rules::default();
    rules.blocked.insert("nouveau".into());
    let k = Kernel::start(root, rules);
    enable(root, &f, &[]);
    let started = std::time::Instant::now();
    let (code, err) = card_hook(root, &f, "prepare", "begin");
    assert_eq!(code, 1, "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "no hang"
    );
    assert!(
        err.contains("did not return within 3 s: the nouveau driver does not let go"),
        "{err}"
    );
    assert!(err.contains("the host has its display back"), "{err}");
    // The audio went back; the GPU's unbind is still pending in the kernel.
    assert_eq!(driver_of(root, AUDIO).as_deref(), Some("snd_hda_intel"));
    assert!(fbcon_bound(root));
    assert!(f.dm_active(root));
    assert!(
        err.contains("sudo gpt unbind --device 0000:01:00.0"),
        "{err}"
    );
    // Once the unbind ends, nouveau's fbdev (fb0) goes with it; with the display manager
    // stopped, `gpt unbind` hands the GPU back.
    k.release("nouveau");
    std::fs::remove_file(root.join("sys/class/graphics/fb0")).unwrap();
    assert!(f.systemctl(root, &["stop", "display-manager.service"]));
    let (code, _, err) = run(gpt_f(root, &f).args(["unbind", "--yes", "--timeout", "5"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(drivers(root), host_drivers());
}

#[test]
fn a_probe_that_binds_nothing_fails_the_start_and_the_display_comes_back() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let mut rules = Rules::default();
    rules.refuse.insert("vfio-pci".into());
    let _k = Kernel::start(root, rules);
    enable(root, &f, &[]);
    let (code, err) = card_hook(root, &f, "prepare", "begin");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the probe bound nothing"), "{err}");
    assert_display_restored(root, &f);
}

#[test]
fn a_display_manager_that_will_not_start_fails_the_restore_loudly_after_every_other_step() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let _k = Kernel::start(root, Rules::default());
    enable(root, &f, &[]);
    let xml = domain_xml(VM, "no", &["0", "1"]);
    assert_eq!(hook(root, &f, "prepare", "begin", &xml).0, 0);
    std::fs::write(f.state().join("fail-start"), "").unwrap();
    let (code, err) = hook(root, &f, "release", "end", &xml);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Job for display-manager.service failed"),
        "{err}"
    );
    assert_eq!(drivers(root), host_drivers());
    assert!(fbcon_bound(root), "the console is back even so");
    let (code, out, _) = run(gpt_f(root, &f).arg("check"));
    assert_eq!(code, 1, "{out}");
    assert!(
        check_line(&out, "restore").contains(": FAIL (the last restore (domain win10) FAILED"),
        "{out}"
    );
}

/// Every `<!-- … -->` of `out` is a well-formed XML comment: no `--` inside, no `-` at its end.
fn valid_xml_comments(out: &str) -> bool {
    out.split("<!--").skip(1).all(|rest| {
        rest.split_once("-->")
            .is_some_and(|(body, _)| !body.contains("--") && !body.ends_with('-'))
    })
}

#[test]
fn qemu_prints_the_single_gpu_hostdevs_managed_or_not() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    one_card(root);
    let (code, out, err) = run(gpt(root).args(["qemu", "--libvirt", "--single-gpu"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("gpt single-gpu enable NAME"), "{out}");
    assert!(valid_xml_comments(&out), "{out}");
    let xml = |out: &str| {
        out.lines()
            .filter(|l| !l.starts_with("<!--"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(xml(&out).matches("managed='yes'").count(), 2, "{out}");
    assert!(
        out.contains("bus='0x01' slot='0x00' function='0x1'"),
        "{out}"
    );
    // What the hook reads from the domain XML is exactly the card.
    let (code, out, err) =
        run(gpt(root).args(["qemu", "--libvirt", "--single-gpu", "--unmanaged"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(xml(&out).matches("managed='no'").count(), 2, "{out}");
    assert!(!xml(&out).contains("managed='yes'"));
    // libvirt refuses a domain whose comment holds `--` (`virsh define`: "Double hyphen within
    // comment"), as the unmanaged note once did.
    assert!(valid_xml_comments(&out), "{out}");
    // --unmanaged alone is a usage error.
    let (code, _, _) = run(gpt(root).args(["qemu", "--libvirt", "--unmanaged"]));
    assert_eq!(code, 2);
}

/// Before Linux 6.0 vfio-pci leaves the firmware framebuffer (efifb) in place: gpt unbinds it
/// at the start, and binds it again when the start fails. efifb's `unbind` and `bind` are FIFOs
/// here, served as the platform bus would (the `efi-framebuffer.0` link goes and comes back).
#[test]
fn before_6_0_the_firmware_framebuffer_is_released_and_given_back_on_failure() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (mut t, f) = desktop(root);
    t.file("/proc/sys/kernel/osrelease", "5.10.0-26-amd64\n")
        .file(
            "/sys/devices/platform/efi-framebuffer.0/uevent",
            "DRIVER=efi-framebuffer\n",
        )
        .symlink(
            "/sys/bus/platform/drivers/efi-framebuffer/efi-framebuffer.0",
            "../../../../devices/platform/efi-framebuffer.0",
        );
    let drv = root.join("sys/bus/platform/drivers/efi-framebuffer");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for verb in ["unbind", "bind"] {
        let fifo = drv.join(verb);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (drv, log) = (drv.clone(), log.clone());
        std::thread::spawn(move || loop {
            let mut text = String::new();
            if let Ok(mut fh) = std::fs::File::open(&fifo) {
                use std::io::Read;
                let _ = fh.read_to_string(&mut text);
            }
            if text.trim() != "efi-framebuffer.0" {
                continue;
            }
            // The change shows a moment after the write returned (as a FIFO's reader acts
            // after its writer is gone): gpt reads it back for a short while, not once.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let link = drv.join("efi-framebuffer.0");
            let _ = std::fs::remove_file(&link);
            if verb == "bind" {
                std::os::unix::fs::symlink("../../../../devices/platform/efi-framebuffer.0", &link)
                    .unwrap();
            }
            log.lock().unwrap().push(verb.to_string());
        });
    }
    let efifb_bound = || drv.join("efi-framebuffer.0").exists();
    let mut rules = Rules::default();
    rules.refuse.insert("vfio-pci".into());
    let _k = Kernel::start(root, rules);
    enable(root, &f, &[]);
    let (code, err) = card_hook(root, &f, "prepare", "begin");
    assert_eq!(code, 1, "{err}");
    assert_eq!(*log.lock().unwrap(), ["unbind", "bind"], "{err}");
    assert!(efifb_bound(), "efifb is back");
    assert_display_restored(root, &f);
}

/// The hook shares gpt's journal with `gpt full`: each keeps the other's part, `disable` takes
/// out only the hook, and `gpt reset` puts /etc back as it was before both.
#[test]
fn the_hook_and_gpt_fulls_configuration_share_the_journal_and_reset_undoes_both() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (_t, f) = desktop(root);
    let mut status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    for p in [
        "initramfs-tools",
        "initramfs-tools-core",
        "grub-efi-amd64",
        "kmod",
    ] {
        status.push_str(&format!(
            "Package: {p}\nStatus: install ok installed\nVersion: 1.0\n\n"
        ));
    }
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    let boot = crate::support::fakes::Fakes::new();
    boot.prime(root);
    let before = etc(root);
    let with_boot = |args: &[&str]| {
        let (code, _, err) = run(gpt(root).env("PATH", boot.path()).args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        err
    };
    with_boot(&["full", "nvidia", "--force", "--yes"]);
    let config = |root: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(root.join("var/lib/gpt/state.json")).unwrap())
            .unwrap()
    };
    assert!(config(root)["config"].is_object());
    enable(root, &f, &[]);
    assert!(
        config(root)["config"].is_object(),
        "enable keeps gpt full's configuration"
    );
    assert_eq!(
        config(root)["update_needed"],
        false,
        "the hook owes no initramfs update"
    );
    with_boot(&["full", "nvidia", "--force", "--yes"]);
    assert!(root.join(HOOK).exists(), "a second gpt full keeps the hook");
    let (code, _, err) = run(gpt_f(root, &f).args(["single-gpu", "disable", VM, "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(!root.join(HOOK).exists());
    assert!(
        config(root)["config"].is_object(),
        "disable keeps gpt full's configuration"
    );
    enable(root, &f, &[]);
    let err = with_boot(&["reset", "--yes"]);
    assert!(err.contains("gpt-single-gpu-win10"), "{err}");
    assert_eq!(etc(root), before);
}
