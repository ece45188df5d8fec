//! Hosts that boot systemd-boot through kernel-install: detection, `full`, `reset`, `check`.

use crate::support::fakes::Fakes;
use crate::support::hosts::{sdboot, DEBIAN_KVER, MACHINE_ID};
use crate::support::transact::snap;
use crate::support::{gpt, run};
use std::path::Path;

const CMDLINE: &str = "root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet\n";
const IDS: &str = "vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb";

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap_or_default()
}

fn entry(root: &Path) -> String {
    read(
        root,
        &format!("/boot/efi/loader/entries/{MACHINE_ID}-{DEBIAN_KVER}.conf"),
    )
}

fn options(root: &Path) -> String {
    entry(root)
        .lines()
        .find_map(|l| l.strip_prefix("options"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn gpt_f(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).args(args))
}

/// A primed systemd-boot host (entries regenerated from its /etc) and the fakes.
fn host(cmdline: Option<&str>, grub: bool, info: Option<&str>) -> (tempfile::TempDir, Fakes) {
    let dir = tempfile::tempdir().unwrap();
    sdboot(dir.path(), cmdline, grub, info);
    let fakes = Fakes::new();
    fakes.prime_sdboot(dir.path());
    (dir, fakes)
}

fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

#[test]
fn full_writes_etc_kernel_cmdline_regenerates_each_kernel_and_reset_gives_it_back() {
    let (dir, fakes) = host(Some(CMDLINE), false, Some("systemd-boot 257.9-1~deb13u1"));
    let r = dir.path();
    let etc_before = etc(r);
    let entry_before = entry(r);
    let (code, out, err) = gpt_f(
        r,
        &fakes,
        &["full", "nvidia", "--yes", "--no-deps", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["boot"]["loader"], "systemd-boot", "{doc}");
    assert_eq!(
        read(r, "/etc/kernel/cmdline"),
        format!("root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet iommu=pt intel_iommu=on {IDS} kvm.ignore_msrs=1 kvm.report_ignored_msrs=0\n")
    );
    // The images first, then each kernel's entry once (it copies the image).
    assert_eq!(
        fakes.calls(),
        [
            format!("depmod -a {DEBIAN_KVER}"),
            "update-initramfs -u -k all".into(),
            format!("kernel-install add {DEBIAN_KVER} /boot/vmlinuz-{DEBIAN_KVER} /boot/initrd.img-{DEBIAN_KVER}"),
            format!("lsinitramfs fd:/boot/initrd.img-{DEBIAN_KVER}"),
        ]
    );
    let opts = options(r);
    assert!(
        opts.contains(IDS) && opts.contains("intel_iommu=on"),
        "{opts}"
    );
    assert!(
        opts.ends_with(&format!("systemd.machine_id={MACHINE_ID}")),
        "{opts}"
    );
    assert!(
        err.contains("hold Space") && err.contains("press `e`"),
        "{err}"
    );
    assert!(!r.join("boot/grub/grub.cfg").exists());

    // Idempotent: nothing to write, nothing to run.
    fakes.reset_log();
    let before = snap(r);
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("already configured"), "{err}");
    // Under --root the tree's kernel-install is never run to inspect it.
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    assert_eq!(snap(r), before);

    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), etc_before);
    assert_eq!(
        entry(r),
        entry_before,
        "the entry is regenerated without gpt's arguments"
    );
}

#[test]
fn without_etc_kernel_cmdline_it_is_created_and_reset_avoids_the_fallback_trap() {
    let (dir, fakes) = host(None, false, None);
    let r = dir.path();
    let etc_before = etc(r);
    let (code, out, err) = gpt_f(r, &fakes, &["full", "nvidia", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+++ b/etc/kernel/cmdline"), "{out}");
    assert!(err.contains("creates it from /proc/cmdline"), "{err}");
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let line = read(r, "/etc/kernel/cmdline");
    assert!(
        line.starts_with("root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet iommu=pt"),
        "{line}"
    );
    assert!(!line.contains("BOOT_IMAGE"), "{line}");
    let state: serde_json::Value =
        serde_json::from_str(&read(r, "/var/lib/gpt/state.json")).unwrap();
    assert_eq!(
        state["files"][0]["existed"], false,
        "journalled as created: {state}"
    );

    // The host reboots with gpt's arguments: /proc/cmdline now holds them.
    let proc = read(r, "/proc/cmdline");
    let booted = format!(
        "{} {}\n",
        proc.trim_end(),
        line.trim_end().split_once("quiet ").unwrap().1
    );
    std::fs::write(r.join("proc/cmdline"), &booted).unwrap();

    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        etc(r),
        etc_before,
        "/etc byte for byte: the file gpt created is gone"
    );
    let opts = options(r);
    assert!(
        !opts.contains("vfio-pci.ids") && !opts.contains("iommu=pt"),
        "{opts}"
    );
    assert!(err.contains("until you reboot"), "{err}");
}

/// `gpt full nvidia --dry-run` refuses with `needle`, and nothing under the root changed.
fn refused(r: &Path, fakes: &Fakes, extra: &[&str], needle: &str) -> String {
    let before = snap(r);
    let mut args = vec!["full", "nvidia", "--yes", "--no-deps"];
    args.extend(extra);
    let (code, out, err) = gpt_f(r, fakes, &args);
    assert_eq!(code, 1, "{args:?} should fail: {err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(
        err.trim_end().ends_with(errors[0]),
        "the error comes last: {err}"
    );
    assert_eq!(snap(r), before, "no byte changed");
    err
}

#[test]
fn grub_and_systemd_boot_both_installed_loader_info_decides_or_the_user_does() {
    // Without LoaderInfo: refused, naming the option.
    let (dir, fakes) = host(Some(CMDLINE), true, None);
    let r = dir.path();
    std::fs::create_dir_all(r.join("boot/grub")).unwrap();
    std::fs::write(r.join("boot/grub/grub.cfg"), "").unwrap();
    refused(r, &fakes, &[], "--boot-loader grub|systemd-boot");
    let (code, out, err) = gpt_f(
        r,
        &fakes,
        &[
            "full",
            "nvidia",
            "--dry-run",
            "--json",
            "--boot-loader",
            "grub",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"loader\": \"grub\"") || out.contains("\"loader\":\"grub\""),
        "{out}"
    );
    assert!(out.contains("etc/default/grub"), "{out}");

    // LoaderInfo from systemd-boot: /etc/kernel/cmdline, not GRUB's file.
    let (dir, fakes) = host(Some(CMDLINE), true, Some("systemd-boot 257.9-1~deb13u1"));
    let (code, out, err) = gpt_f(dir.path(), &fakes, &["full", "nvidia", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("b/etc/kernel/cmdline") && !out.contains("b/etc/default/grub"),
        "{out}"
    );
    assert!(err.contains("boot loader systemd-boot"), "{err}");

    // LoaderInfo from GRUB 2.12: GRUB's file, no kernel-install run for the entries.
    let (dir, fakes) = host(Some(CMDLINE), true, Some("GRUB 2.12"));
    let (code, out, err) = gpt_f(dir.path(), &fakes, &["full", "nvidia", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("b/etc/default/grub") && !out.contains("etc/kernel/cmdline"),
        "{out}"
    );
    assert!(
        out.contains("update-grub") && !out.contains("kernel-install add"),
        "{out}"
    );
}

#[test]
fn bad_kernel_command_lines_are_refused_with_no_byte_changed() {
    for (content, needle) in [
        ("root=/dev/sda1 ro\r\n", "carriage return"),
        ("root=/dev/sda1 ro\nquiet\n", "more than one line"),
        ("\n", "is empty"),
        ("ro quiet splash\n", "no root="),
    ] {
        let dir = tempfile::tempdir().unwrap();
        sdboot(dir.path(), Some(content), false, None);
        let fakes = Fakes::new();
        refused(dir.path(), &fakes, &[], needle);
    }
    // Without the file, /proc/cmdline must hold root= (not a rescue boot).
    let dir = tempfile::tempdir().unwrap();
    sdboot(dir.path(), None, false, None);
    std::fs::write(
        dir.path().join("proc/cmdline"),
        "BOOT_IMAGE=/vmlinuz single\n",
    )
    .unwrap();
    refused(dir.path(), &Fakes::new(), &[], "/proc/cmdline has no root=");
}

#[test]
fn layouts_gpt_does_not_handle_are_refused_with_the_reason() {
    // The ESP is not mounted: /boot/efi is an empty folder, kernel-install falls back to
    // /boot and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    sdboot(dir.path(), Some(CMDLINE), false, None);
    std::fs::remove_dir_all(dir.path().join("boot/efi")).unwrap();
    std::fs::create_dir(dir.path().join("boot/efi")).unwrap();
    refused(dir.path(), &Fakes::new(), &[], "is the ESP mounted?");
    // The uki layout: the command line is inside the images.
    let dir = tempfile::tempdir().unwrap();
    sdboot(dir.path(), Some(CMDLINE), false, None);
    std::fs::write(dir.path().join("etc/kernel/install.conf"), "layout=uki\n").unwrap();
    refused(dir.path(), &Fakes::new(), &[], "layout is uki");
    // An XBOOTLDR partition at /boot besides the ESP.
    let dir = tempfile::tempdir().unwrap();
    sdboot(dir.path(), Some(CMDLINE), false, None);
    let mounts = read(dir.path(), "/proc/mounts").replace(
        "/dev/nvme0n1p1 /boot/efi",
        "/dev/nvme0n1p4 /boot vfat rw 0 0\n/dev/nvme0n1p1 /boot/efi",
    );
    std::fs::write(dir.path().join("proc/mounts"), mounts).unwrap();
    refused(dir.path(), &Fakes::new(), &[], "XBOOTLDR");
}

#[test]
fn a_regeneration_that_silently_wrote_nothing_rolls_back() {
    let (dir, fakes) = host(Some(CMDLINE), false, None);
    let r = dir.path();
    let before = snap(r);
    let (code, _, err) = run(gpt(r)
        .env("PATH", fakes.path())
        .env("FAKE_ESP_UNMOUNTED", "1")
        .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("still lacks") && err.contains("ESP mounted"),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(
        snap(r),
        before,
        "the files are back and the entries as they were"
    );
}

#[test]
fn reset_keeps_the_users_later_edits_to_etc_kernel_cmdline() {
    let (dir, fakes) = host(Some(CMDLINE), false, None);
    let r = dir.path();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let line = read(r, "/etc/kernel/cmdline");
    std::fs::write(
        r.join("etc/kernel/cmdline"),
        line.replace(" quiet ", " quiet splash "),
    )
    .unwrap();
    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        read(r, "/etc/kernel/cmdline"),
        "root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet splash\n"
    );
    assert!(err.contains("kept your changes"), "{err}");
    assert!(!options(r).contains("vfio-pci.ids"), "{}", options(r));
}

/// systemd 256 and later take `/usr/lib/modules/$(uname -r)/vmlinuz` when `inspect` names no
/// image, and Debian's kernel packages ship none there: a bare `kernel-install inspect` fails
/// on Debian 13 (seen in the VM test's trixie guest), and gpt refused every systemd-boot host.
/// gpt names the running kernel's image, else the newest installed kernel's.
/// Under --root the tree's programs are not run to read it (issue: a tree's kernel-install
/// could escape a chroot as root): what `kernel-install inspect` would say comes from the
/// tree's files, and a read-only command runs nothing of the tree.
#[test]
fn under_a_root_kernel_install_is_read_from_its_files_never_run() {
    let (dir, fakes) = host(Some(CMDLINE), false, Some("systemd-boot 257.9-1~deb13u1"));
    let r = dir.path();
    let (code, out, err) = gpt_f(r, &fakes, &["full", "nvidia", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["boot"]["loader"], "systemd-boot", "{doc}");
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    let (_, _, err) = gpt_f(r, &fakes, &["check"]);
    assert!(
        !fakes
            .calls()
            .iter()
            .any(|c| c.starts_with("kernel-install")),
        "{err}"
    );
    // install.conf's BOOT_ROOT and layout decide, as for kernel-install itself.
    std::fs::write(r.join("etc/kernel/install.conf"), "layout=other\n").unwrap();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--dry-run"]);
    assert_ne!(code, 0, "a layout gpt does not handle is refused: {err}");
    assert!(err.contains("other"), "{err}");
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
}

#[test]
fn a_locked_editor_changes_the_rescue_and_check_passes_after_the_reboot() {
    let (dir, fakes) = host(Some(CMDLINE), false, None);
    let r = dir.path();
    std::fs::write(
        r.join("boot/efi/loader/loader.conf"),
        "timeout 0\neditor no\n",
    )
    .unwrap();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("`editor no`") && err.contains("copy this kernel's entry"),
        "{err}"
    );
    let (_, out, err) = gpt_f(r, &fakes, &["check"]);
    assert!(
        out.contains("gpt's kernel arguments in the systemd-boot entries (loader/entries) : PASS")
            || out
                .lines()
                .any(|l| l.contains("systemd-boot entries") && l.ends_with("PASS")),
        "{out}{err}"
    );
}

#[test]
fn check_flags_an_entry_that_still_carries_the_ids_after_a_reset() {
    let (dir, fakes) = host(None, false, None);
    let r = dir.path();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let line = read(r, "/etc/kernel/cmdline");
    let added = line.trim_end().split_once("quiet ").unwrap().1.to_string();
    let proc = read(r, "/proc/cmdline");
    std::fs::write(
        r.join("proc/cmdline"),
        format!("{} {added}\n", proc.trim_end()),
    )
    .unwrap();
    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = gpt_f(r, &fakes, &["check"]);
    assert!(
        out.contains("boot entries without vfio-pci.ids") && out.contains("PASS"),
        "{out}"
    );
    // A kernel update before the reboot: kernel-install falls back to /proc/cmdline.
    let out = fakes.run(
        r,
        &[
            "kernel-install",
            "add",
            DEBIAN_KVER,
            &format!("/boot/vmlinuz-{DEBIAN_KVER}"),
        ],
    );
    assert!(out.status.success());
    let (_, out, _) = gpt_f(r, &fakes, &["check"]);
    let flagged = out
        .lines()
        .find(|l| l.contains("boot entries without vfio-pci.ids"))
        .unwrap_or_default();
    assert!(
        flagged.contains("WARN") && flagged.contains(&format!("{MACHINE_ID}-{DEBIAN_KVER}.conf")),
        "{out}"
    );
}

#[test]
fn a_failing_kernel_install_rolls_back_and_the_entries_come_back() {
    let (dir, fakes) = host(None, false, None);
    let r = dir.path();
    let before = snap(r);
    let (code, _, err) = run(gpt(r)
        .env("PATH", fakes.path())
        // The first add fails; the rollback's re-run (from the restored /etc) succeeds.
        .env("FAKE_FAIL", "kernel-install:1")
        .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("kernel-install") && err.contains("rolled back"),
        "{err}"
    );
    assert!(
        !r.join("etc/kernel/cmdline").exists(),
        "the created file is gone again"
    );
    assert_eq!(snap(r), before, "the tree as it was, the entry included");
}

#[test]
fn reset_without_the_journal_says_it_cannot_tell_gpts_arguments_apart() {
    let (dir, fakes) = host(Some(CMDLINE), false, None);
    let r = dir.path();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_dir_all(r.join("var/lib/gpt")).unwrap();
    let line = read(r, "/etc/kernel/cmdline");
    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("cannot tell the arguments") && err.contains("/etc/kernel/cmdline"),
        "{err}"
    );
    assert_eq!(
        read(r, "/etc/kernel/cmdline"),
        line,
        "no guess: the file is left as it is"
    );
}

#[test]
fn the_warning_about_a_guides_configuration_names_this_stacks_commands_not_grubs() {
    let (dir, fakes) = host(Some(CMDLINE), false, Some("systemd-boot 257.9-1~deb13u1"));
    let r = dir.path();
    let conf = r.join("etc/modprobe.d/vfio.conf");
    std::fs::write(&conf, "options vfio-pci ids=10de:1f08,10de:10f9\n").unwrap();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("that rescue alone"))
        .unwrap_or_else(|| panic!("no warning about the guide's line: {err}"));
    assert!(warning.contains("kernel-install add"), "{warning}");
    assert!(!warning.contains("update-grub"), "{warning}");
}

/// Boot counting (`/etc/kernel/tries`): kernel-install writes `TOKEN-KVER+TRIES.conf` and
/// leaves the entries of earlier installs — one in trial (`+2-1`), one marked bad (`+0-3`) —
/// with their old options. gpt checks the entry its run wrote, names the stale ones, and
/// does not roll back because of them.
#[test]
fn boot_counting_stale_entries_are_named_not_a_reason_to_roll_back() {
    let (dir, fakes) = host(Some(CMDLINE), false, Some("systemd-boot 257.9-1~deb13u1"));
    let r = dir.path();
    std::fs::write(r.join("etc/kernel/tries"), "3\n").unwrap();
    let entries = r.join("boot/efi/loader/entries");
    let old =
        std::fs::read_to_string(entries.join(format!("{MACHINE_ID}-{DEBIAN_KVER}.conf"))).unwrap();
    for stale in ["+2-1", "+0-3"] {
        std::fs::write(
            entries.join(format!("{MACHINE_ID}-{DEBIAN_KVER}{stale}.conf")),
            &old,
        )
        .unwrap();
    }
    std::fs::remove_file(entries.join(format!("{MACHINE_ID}-{DEBIAN_KVER}.conf"))).unwrap();
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let written = read(
        r,
        &format!("/boot/efi/loader/entries/{MACHINE_ID}-{DEBIAN_KVER}+3.conf"),
    );
    assert!(written.contains(IDS), "{written}");
    let stale = format!("{MACHINE_ID}-{DEBIAN_KVER}+0-3.conf");
    assert!(
        err.contains(&stale) && err.contains("+2-1.conf"),
        "the stale entries are named: {err}"
    );
    let (_, out, cerr) = gpt_f(r, &fakes, &["check"]);
    let all = format!("{out}{cerr}");
    assert!(
        all.contains(&stale),
        "gpt check names the stale entry: {all}"
    );
}

/// dracut beside systemd-boot (Debian 12's dracut 059 or 13's 106: no update-initramfs).
/// Told no output path, dracut writes its image to the ESP (`$BOOT/MACHINE-ID/KVER/initrd`),
/// which no entry boots; gpt names the image, so kernel-install copies the new one.
#[test]
fn dracut_beside_systemd_boot_builds_the_image_the_entry_boots() {
    use crate::support::hosts::{dpkg_status, on_dracut};
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut t = crate::support::hosts::sdboot(
        r,
        Some(CMDLINE),
        false,
        Some("systemd-boot 257.9-1~deb13u1"),
    );
    on_dracut(&mut t, r);
    dpkg_status(
        &mut t,
        &[
            "dracut",
            "dracut-core",
            "systemd-boot",
            "systemd-boot-efi",
            "systemd",
        ],
    );
    let fakes = Fakes::new();
    fakes.prime_sdboot(r);
    let etc_before = etc(r);
    let (code, _, err) = gpt_f(r, &fakes, &["full", "nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("initramfs by dracut"), "{err}");
    let booted = read(
        r,
        &format!("/boot/efi/{MACHINE_ID}/{DEBIAN_KVER}/initrd.img-{DEBIAN_KVER}"),
    );
    assert!(
        booted.contains("vfio_pci"),
        "the image the entry boots: {booted}"
    );
    assert!(
        entry(r).contains(&format!("initrd.img-{DEBIAN_KVER}")),
        "{}",
        entry(r)
    );
    assert!(
        !r.join(format!("boot/efi/{MACHINE_ID}/{DEBIAN_KVER}/initrd"))
            .exists(),
        "no image on the ESP that no entry boots"
    );
    let (code, _, err) = gpt_f(r, &fakes, &["reset", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), etc_before, "/etc byte-identical after reset");
}
