//! Proxmox VE hosts whose ESPs proxmox-boot-tool manages.

use crate::support::fakes::Fakes;
use crate::support::hosts::{efi_var, pve_esp, pve_zfs, DEBIAN_KVER, PVE_ESP};
use crate::support::transact::snap;
use crate::support::tree::HostTree;
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
        err.contains("(4A1B-2C3D) boot systemd-boot, as read from them"),
        "the mode comes from the ESP: {err}"
    );
    assert!(!err.contains("could not read"), "{err}");
    assert!(err.contains("hold Space"), "{err}");
    // `gpt check` reads the same entries.
    let (_, out, err) = run(gpt(r).env("PATH", fakes.path()).arg("check"));
    assert!(
        out.lines()
            .any(|l| l.contains("in the entries on the ESPs") && l.ends_with("PASS")),
        "{out}{err}"
    );

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
    let (_, out, _) = run(gpt(r).env("PATH", fakes.path()).arg("check"));
    let stray = |out: &str| {
        out.lines()
            .find(|l| l.contains("boot entries without vfio-pci.ids"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(stray(&out).ends_with("PASS"), "{out}");
    // A kernel update before the reboot: without /etc/kernel/cmdline the refresh falls back to
    // /proc/cmdline, which still holds the ids; `gpt check` reads that on the ESP.
    assert!(fakes
        .run(r, &["proxmox-boot-tool", "refresh"])
        .status
        .success());
    let (_, out, _) = run(gpt(r).env("PATH", fakes.path()).arg("check"));
    assert!(
        stray(&out).contains("WARN")
            && stray(&out).contains(&format!(
                "ESP {PVE_ESP} loader/entries/proxmox-{DEBIAN_KVER}.conf"
            )),
        "{out}"
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
    assert!(
        err.contains("boot GRUB (EFI/proxmox/grubx64.efi is on them), as read from them"),
        "{err}"
    );
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

fn full(r: &Path, fakes: &Fakes) -> (i32, String, String) {
    run(gpt(r)
        .env("PATH", fakes.path())
        .args(["full", "nvidia", "--yes", "--no-deps"]))
}

/// Add ESP `uuid` (GRUB or systemd-boot) to the host's list.
fn add_esp(r: &Path, uuid: &str, grub: bool) {
    let mut t = HostTree::new(r);
    pve_esp(&mut t, uuid, grub);
    let list = read(r, "/etc/kernel/proxmox-boot-uuids");
    std::fs::write(
        r.join("etc/kernel/proxmox-boot-uuids"),
        format!("{list}{uuid}\n"),
    )
    .unwrap();
}

fn set_loader_info(r: &Path, info: Option<&str>) {
    let var = r.join("sys/firmware/efi/efivars/LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f");
    match info {
        Some(i) => std::fs::write(var, efi_var(i)).unwrap(),
        None => std::fs::remove_file(var).unwrap(),
    }
}

#[test]
fn the_esps_decide_the_loader_and_loader_info_does_not_override_them() {
    // systemd-boot on the ESP, but no LoaderInfo (this boot came from elsewhere).
    let (dir, fakes) = host(true);
    let r = dir.path();
    set_loader_info(r, None);
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    assert!(read(r, "/etc/kernel/cmdline").contains(IDS));
    assert!(!read(r, "/etc/default/grub").contains(IDS));
    let entry = format!("loader/entries/proxmox-{DEBIAN_KVER}.conf");
    assert!(esp(r, &entry).contains(IDS), "{}", esp(r, &entry));

    // GRUB on the ESP, while LoaderInfo names systemd-boot.
    let (dir, fakes) = host(false);
    let r = dir.path();
    set_loader_info(r, Some("systemd-boot 252.33-1~deb12u1"));
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    assert!(read(r, "/etc/default/grub").contains(IDS));
    assert!(!r.join("etc/kernel/cmdline").exists());
    assert!(esp(r, "grub/grub.cfg").contains(IDS));
    assert!(
        err.contains("the LoaderInfo EFI variable names systemd-boot 252.33-1~deb12u1"),
        "{err}"
    );
}

#[test]
fn esps_that_boot_different_loaders_are_refused_and_nothing_changes() {
    let (dir, fakes) = host(true);
    let r = dir.path();
    add_esp(r, "B0C1-D2E3", true);
    let before = snap(r);
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("boot different loaders: 4A1B-2C3D systemd-boot")
            && err.contains("B0C1-D2E3 GRUB")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(snap(r), before);
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
}

#[test]
fn a_refresh_that_silently_wrote_nothing_rolls_back() {
    for (what, undo) in [
        // Without its hook the real refresh says so and exits 0.
        ("the hook", "etc/kernel/postinst.d/zz-proxmox-boot"),
        // A systemd-boot ESP without loader.conf is skipped with a warning.
        (
            "loader.conf",
            "var/tmp/espmounts/4A1B-2C3D/loader/loader.conf",
        ),
    ] {
        let (dir, fakes) = host(true);
        let r = dir.path();
        std::fs::remove_file(r.join(undo)).unwrap();
        let before = snap(r);
        let (code, _, err) = full(r, &fakes);
        assert_eq!(code, 1, "without {what}: {err}");
        assert!(
            err.contains(&format!(
                "after `proxmox-boot-tool refresh`, ESP 4A1B-2C3D \
                 loader/entries/proxmox-{DEBIAN_KVER}.conf still lacks iommu=pt"
            )) && err.contains("the refresh did not reach it"),
            "without {what}: {err}"
        );
        assert!(err.contains("; rolled back: "), "{err}");
        assert_eq!(snap(r), before, "without {what}");
    }
}

#[test]
fn a_reset_whose_refresh_wrote_nothing_rolls_back() {
    let (dir, fakes) = host(true);
    let r = dir.path();
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(r.join("etc/kernel/postinst.d/zz-proxmox-boot")).unwrap();
    let before = snap(r);
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "ESP {PVE_ESP} loader/entries/proxmox-{DEBIAN_KVER}.conf still carries"
        )),
        "{err}"
    );
    assert_eq!(snap(r), before, "the configuration stays as it was");
}

#[test]
fn an_esp_without_a_device_is_said_and_loader_info_decides() {
    let (dir, fakes) = host(true);
    let r = dir.path();
    std::fs::remove_file(r.join(format!("dev/disk/by-uuid/{PVE_ESP}"))).unwrap();
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("gpt could not read the ESPs proxmox-boot-tool manages (4A1B-2C3D: /dev/disk/by-uuid/4A1B-2C3D does not exist")
            && err.contains("goes by the LoaderInfo EFI variable: systemd-boot set it"),
        "{err}"
    );
    assert!(err.contains("so it did not verify their entries"), "{err}");
    assert!(read(r, "/etc/kernel/cmdline").contains(IDS));

    // Two ESPs, one without its device: the other one is read and verified.
    let (dir, fakes) = host(true);
    let r = dir.path();
    add_esp(r, "B0C1-D2E3", false);
    std::fs::remove_file(r.join("dev/disk/by-uuid/B0C1-D2E3")).unwrap();
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("(4A1B-2C3D) boot systemd-boot, as read from them; not read: B0C1-D2E3"),
        "{err}"
    );
    assert!(err.contains("the 1 ESP(s) read carry them"), "{err}");
}

#[test]
fn the_esp_reader_reads_only_in_a_namespace_of_its_own() {
    let (dir, _fakes) = host(true);
    let r = dir.path();
    // Started without unshare, it shares this namespace: it refuses to mount.
    let (code, out, err) = run(gpt(r).args(["__read-esps", PVE_ESP]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("mount namespace of its own"), "{err}");
    assert!(out.is_empty(), "{out}");
    // Through unshare it reads the ESP (really mounted, read-only, in its namespace).
    let exe = assert_cmd::cargo::cargo_bin("gpt");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .arg("--root")
        .arg(r)
        .args(["__read-esps", PVE_ESP, "C0FF-EE00"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "unshare or the mount is not permitted here: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["format"], 1, "{doc}");
    let esp0 = &doc["esps"][0];
    assert_eq!(esp0["uuid"], PVE_ESP, "{doc}");
    assert_eq!(esp0["grub_efi"], false, "{doc}");
    assert_eq!(esp0["loader_conf"], true, "{doc}");
    assert_eq!(
        esp0["entries"][0]["name"],
        format!("proxmox-{DEBIAN_KVER}.conf"),
        "{doc}"
    );
    assert_eq!(
        esp0["entries"][0]["options"], "root=ZFS=rpool/ROOT/pve-1 boot=zfs",
        "{doc}"
    );
    assert!(
        doc["esps"][1]["error"]
            .as_str()
            .unwrap()
            .contains("/dev/disk/by-uuid/C0FF-EE00 does not exist"),
        "{doc}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains("gpt-esp-"), "nothing stays mounted here");
}

/// The reader tells for itself whether its namespace is private: nothing its starter says
/// counts. Here the starter (a shell) is in a private namespace and starts the reader in that
/// same one, its parent's: it refuses to mount (issue 27, item 9). The namespace is the
/// test's own, so nothing reaches this machine's mounts either way.
#[test]
fn the_esp_reader_refuses_its_parents_namespace_whoever_started_it() {
    let (dir, _fakes) = host(true);
    let r = dir.path();
    let exe = assert_cmd::cargo::cargo_bin("gpt");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        // `; exit` keeps the shell as the reader's parent (no exec of the last command).
        .arg("\"$0\" --root \"$1\" __read-esps \"$2\"; exit $?")
        .arg(&exe)
        .arg(r)
        .arg(PVE_ESP)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "mount namespace of its own, and this is the one of the process that started it"
        ),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
}

/// `/proc/PID` of a process running `/bin/sh /usr/sbin/proxmox-boot-tool refresh` under the
/// root `r`, with real and effective uid `uid` and the executable `exe`.
fn process(r: &Path, pid: u32, uid: &str, exe: &str) {
    let dir = r.join(format!("proc/{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cmdline"),
        b"/bin/sh\0/usr/sbin/proxmox-boot-tool\0refresh\0",
    )
    .unwrap();
    std::fs::write(
        dir.join("status"),
        format!("Name:\tsh\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
}

/// Another user's process that looks like a refresh (the same argv, a shell) does not switch
/// the check of the ESPs' entries off (issue 27, item 7).
#[test]
fn a_users_process_named_like_a_refresh_does_not_stop_the_esp_check() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: reading the ESPs needs root");
        return;
    }
    let (dir, fakes) = host(true);
    let r = dir.path();
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    process(r, 4343, "1000", "/usr/bin/dash");
    let (_, out, err) = run(gpt(r).env("PATH", fakes.path()).arg("check"));
    let line = out
        .lines()
        .find(|l| l.contains("in the entries on the ESPs"))
        .unwrap_or_default();
    assert!(!line.is_empty(), "{out}{err}");
    assert!(!line.contains("is running"), "{out}{err}");
}

#[test]
fn no_esp_is_read_while_proxmox_boot_tool_runs() {
    let (dir, fakes) = host(true);
    let r = dir.path();
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    // The host's processes: a refresh (root's, as its shell runs it) is under way.
    process(r, 4242, "0", "/usr/bin/dash");
    let (_, out, err) = run(gpt(r).env("PATH", fakes.path()).arg("check"));
    let line = out
        .lines()
        .find(|l| l.contains("in the entries on the ESPs"))
        .unwrap_or_default();
    assert!(
        line.contains(": WARN (")
            && line.contains("proxmox-boot-tool is running (process 4242: /bin/sh /usr/sbin/proxmox-boot-tool refresh)"),
        "{out}{err}"
    );
}

/// Proxmox reads only the first line of /etc/kernel/cmdline; admins keep other lines below
/// it. Reset edits the line of the stack the journal records (Proxmox's first line), not the
/// whole file as systemd-boot's reader would.
#[test]
fn reset_takes_gpts_arguments_off_the_first_line_and_keeps_the_lines_below() {
    let (dir, fakes) = host(true);
    let r = dir.path();
    let (code, _, err) = full(r, &fakes);
    assert_eq!(code, 0, "{err}");
    let path = r.join("etc/kernel/cmdline");
    let written = read(r, "/etc/kernel/cmdline");
    let (first, rest) = written.split_once('\n').unwrap();
    assert!(
        first.contains("iommu=pt") && first.contains(IDS),
        "{written}"
    );
    // The admin edits line 1 and keeps a spare line below it that names the same tokens.
    let spare = "# spare: root=ZFS=rpool/ROOT/pve-2 boot=zfs iommu=pt intel_iommu=on";
    std::fs::write(&path, format!("{first} quiet\n{spare}\n{rest}")).unwrap();
    let (code, _, err) =
        run(gpt(r)
            .env("PATH", fakes.path())
            .args(["reset", "--yes", "--no-update"]));
    assert_eq!(code, 0, "{err}");
    let after = read(r, "/etc/kernel/cmdline");
    let mut lines = after.lines();
    let line1 = lines.next().unwrap_or_default();
    assert_eq!(line1, "root=ZFS=rpool/ROOT/pve-1 boot=zfs quiet", "{after}");
    assert_eq!(lines.next(), Some(spare), "{after}");
}
