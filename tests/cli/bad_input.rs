//! The bad-input catalogue: every case runs the real binary on a host tree of its own and must
//! exit non-zero with one `error: …` line that says what was wrong and what to do, print
//! nothing on stdout, not panic, and leave every byte, mode and owner of the tree as it was
//! (the lock file in /run aside: /run is a tmpfs on a real host).

use crate::support::fakes::Fakes;
use crate::support::tally;
use crate::support::transact::{primed_host, simulate_full, snap};
use crate::support::tree::snapshot;
use crate::support::{gpt, plan_only, run};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// A change made to a fresh, primed RocketLake host before the command runs.
type Setup = fn(&Path, &Fakes);

struct Case {
    name: &'static str,
    setup: Setup,
    args: &'static [&'static str],
    /// The exit status: 2 for usage errors, 1 for the rest.
    code: i32,
    /// What the error line must say (the fault and the way out).
    says: &'static [&'static str],
    /// Run as `nobody` instead of root.
    unprivileged: bool,
}

const fn case(
    name: &'static str,
    setup: Setup,
    args: &'static [&'static str],
    code: i32,
    says: &'static [&'static str],
) -> Case {
    Case {
        name,
        setup,
        args,
        code,
        says,
        unprivileged: false,
    }
}

const fn as_nobody(mut c: Case) -> Case {
    c.unprivileged = true;
    c
}

fn nothing(_: &Path, _: &Fakes) {}

fn write(root: &Path, abs: &str, content: impl AsRef<[u8]>) {
    let path = root.join(&abs[1..]);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn replace_in(root: &Path, abs: &str, from: &str, to: &str) {
    let p = root.join(&abs[1..]);
    let s = fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "{abs} has no {from:?}");
    fs::write(&p, s.replace(from, to)).unwrap();
}

fn dir_in_place_of(root: &Path, abs: &str) {
    let p = root.join(&abs[1..]);
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
}

fn file_in_place_of(root: &Path, abs: &str) {
    let p = root.join(&abs[1..]);
    fs::remove_dir_all(&p).unwrap();
    fs::write(&p, "").unwrap();
}

fn configured(root: &Path, fakes: &Fakes) {
    simulate_full(root, fakes, &[]).unwrap();
}

const CASES: &[Case] = &[
    // --- the command line -------------------------------------------------------------------
    case("unknown vendor", nothing, &["full", "matrox"], 2, &["'matrox' is not a GPU vendor", "give nvidia, amd, intel or a 4-digit hex vendor id"]),
    case("shell metacharacters", nothing, &["full", "nvidia;reboot"], 2, &["'nvidia;reboot' is not a GPU vendor"]),
    case("command substitution", nothing, &["full", "$(reboot)"], 2, &["'$(reboot)' is not a GPU vendor"]),
    case("empty vendor", nothing, &["full", ""], 2, &["'' is not a GPU vendor"]),
    case("unicode vendor", nothing, &["full", "nvídia"], 2, &["'nvídia' is not a GPU vendor"]),
    case("five hex digits", nothing, &["full", "10de0"], 2, &["'10de0' is not a GPU vendor"]),
    case("unknown distribution", nothing, &["full", "nvidia", "fedora"], 2, &["'fedora' is not a distribution"]),
    case("no vendor, no device", nothing, &["full"], 2, &["give a VENDOR"]),
    case("address without function", nothing, &["full", "--device", "0000:02:00"], 2, &["is not a PCI address", "expected the form 0000:02:00.0"]),
    case("address of letters", nothing, &["full", "--device", "zz:00.0"], 2, &["'zz:00.0' is not a PCI address"]),
    case("absent address", nothing, &["full", "--device", "07:00.0", "--yes"], 1, &["no PCI device at 07:00.0"]),
    case("not a GPU", nothing, &["full", "--device", "03:00.0", "--yes"], 1, &["is not a display controller"]),
    case("distribution mismatch", nothing, &["full", "nvidia", "ubuntu", "--yes"], 1, &["you asked for ubuntu but /etc/os-release says this host is debian"]),
    case("vendor without a GPU here", nothing, &["full", "amd", "--yes"], 1, &["no GPU of AMD (1002) on this host"]),
    case("no terminal and no --yes", nothing, &["full", "nvidia", "--no-deps"], 1, &["no terminal to ask on: re-run with --yes"]),
    case("no such IOMMU group", nothing, &["iommu", "--group", "99"], 1, &["there is no IOMMU group 99", "`gpt iommu` lists the 16 groups"]),
    case("qemu on a SATA controller", nothing, &["qemu", "--device", "00:17.0"], 1, &["0000:00:17.0 is not a GPU", "`gpt iommu --gpu` lists them"]),
    case("qemu with nothing configured", nothing, &["qemu"], 1, &["nothing configured; run `sudo gpt full VENDOR` or pass --device ADDR"]),
    // --- files of the host ------------------------------------------------------------------
    case("no os-release", |r, _| fs::remove_file(r.join("etc/os-release")).unwrap(), &["full", "nvidia", "--yes"], 1, &["cannot tell the distribution: /etc/os-release is missing"]),
    case("another distribution", |r, _| write(r, "/etc/os-release", "NAME=Fedora\nID=fedora\nPRETTY_NAME=\"Fedora Linux 40\"\n"), &["full", "nvidia", "--yes"], 1, &["this host is Fedora Linux 40 (ID fedora)"]),
    case("no GRUB", |r, _| fs::remove_file(r.join("etc/default/grub")).unwrap(), &["full", "nvidia", "--yes"], 1, &["does not boot with GRUB"]),
    case("grub is a directory", |r, _| dir_in_place_of(r, "/etc/default/grub"), &["full", "nvidia", "--yes"], 1, &["cannot read /etc/default/grub: it is a directory, not a file; move it aside"]),
    case("grub is not text", |r, _| write(r, "/etc/default/grub", b"GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n\xff\xfe\n"), &["full", "nvidia", "--yes"], 1, &["/etc/default/grub: it is not UTF-8 text"]),
    case("unterminated quote", |r, _| replace_in(r, "/etc/default/grub", "\"quiet\"", "\"quiet"), &["full", "nvidia", "--yes"], 1, &["inside a quoted string opened on line 9", "fix the file or edit it by hand"]),
    case("command substitution in grub", |r, _| replace_in(r, "/etc/default/grub", "\"quiet\"", "\"quiet $(cat /etc/extra)\""), &["full", "nvidia", "--yes"], 1, &["GRUB_CMDLINE_LINUX_DEFAULT"]),
    case("intel_iommu=off", |r, _| replace_in(r, "/etc/default/grub", "GRUB_CMDLINE_LINUX=\"\"", "GRUB_CMDLINE_LINUX=\"intel_iommu=off\""), &["full", "nvidia", "--yes"], 1, &["has intel_iommu=off, which turns the IOMMU off"]),
    case("ids gpt did not write", |r, _| replace_in(r, "/etc/default/grub", "\"quiet\"", "\"quiet vfio-pci.ids=10de:1f08\""), &["full", "nvidia", "--yes"], 1, &["gpt reset --legacy"]),
    case("both initramfs generators installed", |r, _| {
        write(r, "/var/lib/dpkg/status", "Package: initramfs-tools\nStatus: install ok installed\n\nPackage: dracut\nStatus: install ok installed\n\n");
    }, &["full", "nvidia", "--yes"], 1, &["both initramfs-tools and dracut are installed", "remove the one you do not use"]),
    case("modprobe.d is a file", |r, _| file_in_place_of(r, "/etc/modprobe.d"), &["full", "nvidia", "--yes", "--no-deps"], 1, &["/etc/modprobe.d/gpt-vfio.conf: a file stands where a folder of that path should be; move it aside"]),
    case("initramfs modules is a directory", |r, _| dir_in_place_of(r, "/etc/initramfs-tools/modules"), &["full", "nvidia", "--yes", "--no-deps"], 1, &["/etc/initramfs-tools/modules: it is a directory, not a file; move it aside"]),
    // --- sysfs ------------------------------------------------------------------------------
    // gpt reads uevent first and the single attributes only when it is missing or garbled.
    case("GPU without uevent or class", |r, _| {
        fs::remove_file(r.join("sys/devices/pci0000:00/0000:00:01.0/0000:02:00.0/uevent")).unwrap();
        fs::remove_file(r.join("sys/devices/pci0000:00/0000:00:01.0/0000:02:00.0/class")).unwrap();
    }, &["full", "--device", "02:00.0", "--yes"], 1, &["the sysfs entry of 0000:02:00.0 is broken (cannot read class", "nothing was changed"]),
    case("garbled uevent, no vendor, forced", |r, _| {
        write(r, "/sys/devices/pci0000:00/0000:00:01.0/0000:02:00.0/uevent", "PCI_ID=zz\n");
        fs::remove_file(r.join("sys/devices/pci0000:00/0000:00:01.0/0000:02:00.0/vendor")).unwrap();
    }, &["full", "--device", "02:00.0", "--yes", "--force"], 1, &["the sysfs entry of 0000:02:00.0 is broken (cannot read vendor", "--force does not override this"]),
    case("dangling link for the GPU", |r, _| {
        fs::remove_dir_all(r.join("sys/devices/pci0000:00/0000:00:01.0/0000:02:00.0")).unwrap();
    }, &["full", "--device", "02:00.0", "--yes"], 1, &["the sysfs entry of 0000:02:00.0 is broken (", "is a dangling link"]),
    // --- the journal and the lock -----------------------------------------------------------
    case("corrupt journal", |r, f| {
        configured(r, f);
        write(r, "/var/lib/gpt/state.json", "{\"version\":1,\"config\":");
    }, &["reset", "--yes"], 1, &["/var/lib/gpt/state.json is corrupt; move it aside and run `gpt reset`"]),
    case("journal is a directory", |r, f| {
        configured(r, f);
        dir_in_place_of(r, "/var/lib/gpt/state.json");
    }, &["reset", "--yes"], 1, &["/var/lib/gpt/state.json"]),
    // --- without root -----------------------------------------------------------------------
    as_nobody(case("unreadable grub", |r, _| {
        fs::set_permissions(r.join("etc/default/grub"), fs::Permissions::from_mode(0o600)).unwrap();
    }, &["full", "nvidia", "--dry-run"], 1, &["cannot read /etc/default/grub: permission denied; run gpt with sudo"])),
    as_nobody(case("full without root", nothing, &["full", "nvidia", "--yes", "--no-deps"], 1, &["permission denied; run gpt with sudo"])),
    as_nobody(case("reset without root", configured, &["reset", "--yes"], 1, &["permission denied; run gpt with sudo"])),
];

/// Run one case: its error line, or `Err` saying how it failed.
fn check(c: &Case) -> Result<String, String> {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    (c.setup)(root, &fakes);
    fakes.reset_log();
    let before = snap(root);
    let mut cmd = gpt(root);
    cmd.env("PATH", fakes.path()).args(c.args);
    if c.unprivileged {
        // nobody must be able to reach the tree (temp folders are 0700).
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        let mut std_cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("gpt"));
        std_cmd
            .env("NO_COLOR", "1")
            .env("GPT_PCI_IDS", root.join("usr/share/misc/pci.ids"))
            .env("PATH", fakes.path())
            .arg("--root")
            .arg(root)
            .args(c.args)
            .uid(65534)
            .gid(65534);
        cmd = assert_cmd::Command::from_std(std_cmd);
    }
    let (code, out, err) = run(&mut cmd);
    let fail = |why: String| {
        Err(format!(
            "{}: {why}\n--- stderr:\n{err}--- stdout:\n{out}",
            c.name
        ))
    };
    if code != c.code {
        return fail(format!("exit {code}, want {}", c.code));
    }
    if err.contains("panicked") {
        return fail("a panic".into());
    }
    if !plan_only(&out) {
        return fail("stdout holds more than the plan".into());
    }
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    if errors.len() != 1 || err.lines().last() != errors.first().copied() {
        return fail("want exactly one `error: …` line, and last".into());
    }
    if c.code == 2 && err.lines().count() != 1 {
        // clap's usage errors add a usage block; ours are one line.
        return fail("a usage error of gpt's is one line".into());
    }
    for needle in c.says {
        if !errors[0].contains(needle) {
            return fail(format!("the error does not say {needle:?}"));
        }
    }
    if snap(root) != before {
        return fail("the tree changed".into());
    }
    let calls = fakes.calls();
    if !calls.is_empty() {
        return fail(format!("commands ran: {calls:?}"));
    }
    Ok(errors[0].to_string())
}

#[test]
fn every_bad_input_is_refused_with_one_clear_line_and_no_byte_changed() {
    // The cases run as `nobody` need root to switch to it (CI runs as root).
    let root = nix::unistd::geteuid().is_root();
    let cases: Vec<&Case> = CASES.iter().filter(|c| root || !c.unprivileged).collect();
    if cases.len() < CASES.len() {
        println!(
            "bad inputs: {} cases that run as nobody skipped: not root",
            CASES.len() - cases.len()
        );
    }
    assert!(cases.len() >= 30);
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .chunks(cases.len().div_ceil(4))
            .map(|chunk| s.spawn(move || chunk.iter().map(|c| check(c)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // The catalogue as it ran, for `--nocapture`: each case and the line gpt printed.
    for (c, r) in cases.iter().zip(&results) {
        if let Ok(line) = r {
            println!("{:<34} {line}", c.name);
        }
    }
    let failures: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(String::as_str))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    tally::record("bad inputs", "catalogue", cases.len(), cases.len());
}

/// The `--root` itself: usage errors, nothing written anywhere.
#[test]
fn a_root_that_is_missing_or_a_file_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    fs::write(&file, "").unwrap();
    let missing = d.path().join("missing");
    let mut n = 0;
    for root in [&missing, &file] {
        let before = snapshot(d.path());
        let (code, out, err) = run(assert_cmd::Command::cargo_bin("gpt")
            .unwrap()
            .env("NO_COLOR", "1")
            .arg("--root")
            .arg(root)
            .args(["full", "nvidia", "--yes"]));
        assert_eq!(code, 2, "{err}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains("--root"),
            "{err}"
        );
        assert_eq!(snapshot(d.path()), before);
        n += 1;
    }
    tally::record("bad inputs", "root", n, 2);
}

/// A full disk: /var/lib (where the journal goes) on a tmpfs of 8 KiB. Needs the right to
/// mount (root, outside a restricted container); where that is missing it says so and counts
/// nothing.
#[test]
fn a_full_disk_is_refused_and_nothing_is_left_behind() {
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let var_lib = root.join("var/lib");
    fs::create_dir_all(&var_lib).unwrap();
    let dpkg = fs::read(root.join("var/lib/dpkg/status")).ok();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8k,mode=0755", "gpt-test-full"])
        .arg(&var_lib)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        println!("reliability: full disk: skipped, cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&var_lib);
    if let Some(bytes) = &dpkg {
        fs::create_dir_all(var_lib.join("dpkg")).unwrap();
        fs::write(var_lib.join("dpkg/status"), bytes).unwrap();
    }
    let before = snap(root);
    let (code, out, err) =
        run(gpt(root)
            .env("PATH", fakes.path())
            .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 1, "{err}");
    assert!(plan_only(&out), "{out}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("no space left on the file system; free some space and run gpt again"),
        "{err}"
    );
    assert_eq!(snap(root), before, "{err}");
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    tally::record("bad inputs", "full-disk", 1, 1);
}

/// The small things a newcomer tripped over: a malformed address is a usage error (exit 2)
/// before anything is read, a --root that does not exist is said so, the usage line shows
/// one vendor, and a dry run names the command that applies it.
#[test]
fn usage_errors_are_said_before_anything_is_read_and_truly() {
    let (dir, _fakes) = primed_host();
    let r = dir.path();
    let before = snap(r);
    let (code, out, err) = run(gpt(r).args(["full", "nvidia", "--device", "zz:1", "--dry-run"]));
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty() && !err.contains("boot stack:"), "{err}");
    assert!(
        err.contains("'zz:1'") && err.contains("not a PCI address"),
        "{err}"
    );
    let missing = r.join("no-such-tree");
    let (code, _, err) = run(gpt(&missing).arg("iommu"));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no such folder") && !err.contains("not a directory"),
        "{err}"
    );
    let (_, out, _) = run(gpt(r).args(["full", "--help"]));
    assert!(
        out.contains("Usage: gpt full [OPTIONS] [VENDOR] [DISTRO]\n"),
        "{out}"
    );
    let (code, _, err) = run(gpt(r).args(["full", "nvidia", "--dry-run", "--no-deps"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "dry run: nothing was changed; run the same command without --dry-run to apply it"
        ),
        "{err}"
    );
    assert_eq!(snap(r), before);
}
