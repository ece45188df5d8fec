//! `gpt full` through the real binary: what it plans on realistic hosts, and every refusal
//! leaving the tree byte-identical.

use crate::support::hosts::{self, amd_datacenter, rocketlake};
use crate::support::tree::{snapshot, Dev, HostTree};
use crate::support::{gpt, plan_only, run};
use serde_json::Value;
use std::path::Path;

/// Everything but /run (the lock file may appear there).
fn state(root: &Path) -> Vec<(String, String)> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("run"))
        .collect()
}

fn dry(root: &Path, args: &[&str]) -> (i32, String, String) {
    let before = state(root);
    let r = run(gpt(root).arg("full").args(args).arg("--dry-run"));
    assert_eq!(state(root), before, "a dry run changed the tree");
    r
}

/// Run a command that must refuse: exit code, a message containing `needle`, tree untouched.
fn refuses(root: &Path, args: &[&str], code: i32, needle: &str) -> String {
    let before = state(root);
    let (c, out, err) = run(gpt(root).arg("full").args(args).env("PATH", "/nonexistent"));
    assert_eq!(c, code, "exit code for {args:?}; stderr: {err}");
    assert!(plan_only(&out), "stdout for {args:?}: {out}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(state(root), before, "{args:?} changed the tree");
    err
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
}

#[test]
fn the_old_readme_host_gets_its_four_ids_and_intel_iommu() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = dry(dir.path(), &["NVIDIA", "debian"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(
        "+GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb kvm.ignore_msrs=1 kvm.report_ignored_msrs=0\"\n"
    ), "{out}");
    assert!(
        !out.contains("video=efifb:off"),
        "the iGPU is the boot VGA, not the target"
    );
    assert!(
        out.contains("+vfio\n+vfio_iommu_type1\n+vfio_virqfd\n+vfio_pci\n"),
        "{out}"
    );
    for m in ["nouveau", "snd_hda_intel", "xhci_pci", "i2c_nvidia_gpu"] {
        assert!(
            out.contains(&format!("+softdep {m} pre: vfio-pci\n")),
            "{m}: {out}"
        );
    }
    assert!(!out.contains("blacklist"), "{out}");
    assert!(
        out.ends_with(
            "Commands:\n  update-grub\n  depmod -a 6.1.0-13-amd64\n  update-initramfs -u -k all\n"
        ),
        "{out}"
    );
    assert!(err.contains("0000:02:00.3 Serial bus controller"), "{err}");
    assert!(err.contains("dry run: nothing was changed"), "{err}");
}

#[test]
fn dry_run_json_is_one_document_with_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = dry(dir.path(), &["10de", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["changed"], false);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["phase"], "vfio");
    assert_eq!(
        doc["devices"],
        serde_json::json!([
            "0000:02:00.0",
            "0000:02:00.1",
            "0000:02:00.2",
            "0000:02:00.3"
        ])
    );
    assert_eq!(
        doc["ids"],
        serde_json::json!(["10de:1f08", "10de:10f9", "10de:1ada", "10de:1adb"])
    );
    assert_eq!(
        doc["files"],
        serde_json::json!([
            {"path": "/etc/default/grub", "action": "modified"},
            {"path": "/etc/initramfs-tools/modules", "action": "modified"},
            {"path": "/etc/modprobe.d/gpt-vfio.conf", "action": "created"}
        ])
    );
    assert_eq!(doc["commands"][0], serde_json::json!(["update-grub"]));
}

#[test]
fn an_amd_server_with_a_3d_controller_and_built_in_vfio_pci() {
    let dir = tempfile::tempdir().unwrap();
    amd_datacenter(dir.path());
    let (code, out, err) = dry(dir.path(), &["nvidia"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt vfio-pci.ids=10de:2331 kvm.ignore_msrs=1 kvm.report_ignored_msrs=0\"\n"), "{out}");
    assert!(
        !out.contains("intel_iommu") && !out.contains("amd_iommu"),
        "{out}"
    );
    assert!(
        !out.contains("vfio_virqfd"),
        "merged into vfio since 6.2: {out}"
    );
    assert!(
        out.contains("+vfio\n+vfio_iommu_type1\n+# END gpt"),
        "vfio_pci is built in: {out}"
    );
    assert!(out.contains("+softdep nvidia pre: vfio-pci"), "{out}");
    // QEMU is installed here: only what the configuration needs is missing, and no VM tool
    // is suggested.
    assert!(
        err.contains("packages missing under the root, not installed there: kmod")
            && !err.contains("to run the VM you may want"),
        "{err}"
    );
}

#[test]
fn the_acpi_table_decides_intel_iommu_not_the_cpu() {
    // A nested VM: the CPU says AMD, the vIOMMU is Intel (DMAR).
    let dir = tempfile::tempdir().unwrap();
    let mut t = amd_datacenter(dir.path());
    std::fs::remove_file(dir.path().join("sys/firmware/acpi/tables/IVRS")).unwrap();
    t.file("/sys/firmware/acpi/tables/DMAR", "DMAR");
    let (code, out, err) = dry(dir.path(), &["nvidia"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("iommu=pt intel_iommu=on vfio-pci.ids=10de:2331"),
        "{out}"
    );
}

#[test]
fn without_an_iommu_the_first_run_adds_only_the_iommu_arguments() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    std::fs::remove_dir_all(dir.path().join("sys/kernel/iommu_groups")).unwrap();
    let (code, out, err) = dry(dir.path(), &["nvidia", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["phase"], "iommu");
    assert_eq!(
        doc["files"],
        serde_json::json!([{"path": "/etc/default/grub", "action": "modified"}])
    );
    assert_eq!(doc["commands"], serde_json::json!([["update-grub"]]));
    assert!(
        err.contains("Reboot, then run the same command again"),
        "{err}"
    );
    let (_, out, _) = dry(dir.path(), &["nvidia"]);
    assert!(
        out.contains("+GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt intel_iommu=on\"\n"),
        "{out}"
    );

    // The arguments are on the running kernel's command line, yet no groups: firmware off.
    let mut t = HostTree::new(dir.path());
    t.file(
        "/proc/cmdline",
        "BOOT_IMAGE=/boot/vmlinuz ro quiet iommu=pt intel_iommu=on\n",
    );
    let err = refuses(
        dir.path(),
        &["nvidia", "--yes"],
        1,
        "off in the firmware setup",
    );
    assert!(err.contains("nothing was changed"), "{err}");
}

#[test]
fn grub_d_overrides_get_the_arguments_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    t.file(
        "/etc/default/grub.d/50-cloudimg-settings.cfg",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty1 console=ttyS0\"\n",
    );
    let (code, out, err) = dry(dir.path(), &["nvidia"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("--- a/etc/default/grub.d/50-cloudimg-settings.cfg"),
        "{out}"
    );
    assert!(!out.contains("--- a/etc/default/grub\n"), "{out}");
    assert!(
        err.contains(
            "50-cloudimg-settings.cfg sets GRUB_CMDLINE_LINUX_DEFAULT after /etc/default/grub"
        ),
        "{err}"
    );
}

#[test]
fn identical_cards_are_bound_by_address_not_by_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    t.device(
        Dev::new("00:01.0", (0x1234, 0x1111), 0x030000)
            .group(1)
            .boot_vga()
            .driver("bochs-drm"),
    )
    .device(
        Dev::new("01:00.0", (0x1234, 0x1111), 0x030000)
            .group(2)
            .driver("bochs-drm"),
    )
    .device(
        Dev::new("01:00.1", (0x8086, 0x293e), 0x040300)
            .group(2)
            .driver("snd_hda_intel"),
    )
    .file("/sys/firmware/acpi/tables/DMAR", "DMAR")
    .file("/proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
    hosts::debian12_etc(&mut t);
    hosts::debian_kernel(&mut t, "6.1.0-28-amd64");
    let (code, out, err) = dry(dir.path(), &["--device", "01:00.0"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("vfio-pci.ids=1234"), "{out}");
    assert!(out.contains("install vfio_pci"), "{out}");
    assert!(
        out.contains("0000:01:00.1"),
        "the audio function comes along: {out}"
    );
    assert!(
        err.contains("0000:00:01.0 has the same vendor:device id"),
        "{err}"
    );
}

#[test]
fn refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    let r = dir.path();
    refuses(r, &["matrox"], 2, "'matrox' is not a GPU vendor");
    refuses(r, &["nvidia;reboot"], 2, "is not a GPU vendor");
    refuses(r, &[""], 2, "is not a GPU vendor");
    refuses(
        r,
        &["nvidia", "fedora"],
        2,
        "'fedora' is not a distribution",
    );
    refuses(r, &[], 2, "give a VENDOR");
    refuses(
        r,
        &["nvidia", "ubuntu", "--yes"],
        1,
        "you asked for ubuntu but /etc/os-release says this host is debian",
    );
    refuses(r, &["amd", "--yes"], 1, "no GPU of AMD (1002) on this host");
    refuses(
        r,
        &["--device", "03:00.0", "--yes"],
        1,
        "is not a display controller",
    );
    refuses(
        r,
        &["--device", "07:00.0", "--yes"],
        1,
        "no PCI device at 07:00.0",
    );
    refuses(
        r,
        &["--device", "0000:02:00", "--yes"],
        2,
        "expected the form",
    );
    // Two NVIDIA GPUs: a choice is needed.
    t.device(Dev::new("0000:05:00.0", (0x10de, 0x2331), 0x030200).group(20));
    refuses(r, &["nvidia", "--yes"], 1, "Choose one with --device");
    std::fs::remove_dir_all(r.join("sys/devices/pci0000:05")).unwrap();
    std::fs::remove_file(r.join("sys/bus/pci/devices/0000:05:00.0")).unwrap();
    std::fs::remove_dir_all(r.join("sys/kernel/iommu_groups/20")).unwrap();
    // The root disk's controller in the GPU's group: never, even with --force.
    t.symlink(
        "/sys/kernel/iommu_groups/14/devices/0000:03:00.0",
        "../../../../devices/pci0000:00/0000:00:1b.0/0000:03:00.0",
    );
    let err = refuses(
        r,
        &["nvidia", "--yes", "--force"],
        1,
        "0000:03:00.0: holds / (/dev/nvme0n1p2)",
    );
    assert!(err.contains("--force does not override"), "{err}");
    std::fs::remove_file(r.join("sys/kernel/iommu_groups/14/devices/0000:03:00.0")).unwrap();
    // A SATA controller sharing the group: ACS explained, --force needed.
    t.symlink(
        "/sys/kernel/iommu_groups/14/devices/0000:00:17.0",
        "../../../../devices/pci0000:00/0000:00:17.0",
    );
    refuses(
        r,
        &["nvidia", "--yes"],
        1,
        "Comet Lake SATA AHCI Controller",
    );
    std::fs::remove_file(r.join("sys/kernel/iommu_groups/14/devices/0000:00:17.0")).unwrap();
    // The user's own intel_iommu=off, and a vfio-pci.ids= gpt did not write.
    let grub = hosts::GRUB_DEBIAN12.replace(
        "GRUB_CMDLINE_LINUX=\"\"",
        "GRUB_CMDLINE_LINUX=\"intel_iommu=off\"",
    );
    t.file("/etc/default/grub", &grub);
    refuses(
        r,
        &["nvidia", "--yes"],
        1,
        "has intel_iommu=off, which turns the IOMMU off",
    );
    let grub = hosts::GRUB_DEBIAN12.replace("\"quiet\"", "\"quiet vfio-pci.ids=10de:1f08\"");
    t.file("/etc/default/grub", &grub);
    refuses(r, &["nvidia", "--yes"], 1, "gpt reset --legacy");
    // Shell the editor cannot edit safely.
    let grub = hosts::GRUB_DEBIAN12.replace("\"quiet\"", "\"quiet $(cat /etc/extra)\"");
    t.file("/etc/default/grub", &grub);
    refuses(r, &["nvidia", "--yes"], 1, "GRUB_CMDLINE_LINUX_DEFAULT");
    t.file("/etc/default/grub", hosts::GRUB_DEBIAN12);
    // No terminal to ask on, and no --yes.
    refuses(
        r,
        &["nvidia"],
        1,
        "no terminal to ask on: re-run with --yes",
    );
    // Another distribution, no GRUB, dracut.
    t.file(
        "/etc/os-release",
        "NAME=Fedora\nID=fedora\nPRETTY_NAME=\"Fedora Linux 40\"\n",
    );
    refuses(
        r,
        &["nvidia", "--yes"],
        1,
        "this host is Fedora Linux 40 (ID fedora)",
    );
    t.file("/etc/os-release", hosts::OS_DEBIAN12);
    std::fs::rename(r.join("etc/default/grub"), r.join("etc/default/grub.away")).unwrap();
    refuses(r, &["nvidia", "--yes"], 1, "does not boot with GRUB");
    std::fs::rename(r.join("etc/default/grub.away"), r.join("etc/default/grub")).unwrap();
    // The generator comes from the package database: both, or neither, is refused.
    hosts::dpkg_status(&mut t, &["initramfs-tools", "dracut"]);
    refuses(
        r,
        &["nvidia", "--yes"],
        1,
        "both initramfs-tools and dracut are installed according to the package database",
    );
    hosts::dpkg_status(&mut t, &["initramfs-tools-core"]);
    refuses(
        r,
        &["nvidia", "--yes"],
        1,
        "no initramfs generator found in the package database",
    );
}

#[test]
fn the_only_display_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    t.device(
        Dev::new("01:00.0", (0x1002, 0x73bf), 0x030000)
            .group(1)
            .boot_vga()
            .driver("amdgpu"),
    )
    .device(
        Dev::new("01:00.1", (0x1002, 0xab28), 0x040300)
            .group(1)
            .driver("snd_hda_intel"),
    )
    .file("/sys/firmware/acpi/tables/IVRS", "IVRS");
    hosts::debian12_etc(&mut t);
    hosts::debian_kernel(&mut t, "5.10.0-30-amd64");
    refuses(
        dir.path(),
        &["amd", "--yes"],
        1,
        "the only display controller",
    );
    let (code, out, err) = dry(dir.path(), &["amd", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: --force:"), "{err}");
    // A boot-VGA target on a kernel older than 6.0 also needs video=efifb:off.
    assert!(
        out.contains("kvm.report_ignored_msrs=0 video=efifb:off\""),
        "{out}"
    );
}

// ---- Applying, with the fake update-grub/update-initramfs/depmod/lsinitramfs on PATH ----

use crate::support::fakes::Fakes;
use crate::support::transact::{primed_host, snap};

/// Compare two snapshots, showing only the entries that differ.
fn assert_same(now: &[(String, String)], before: &[(String, String)], what: &str) {
    let diff: Vec<String> = now
        .iter()
        .filter(|e| !before.contains(e))
        .map(|(p, w)| format!("+ {p}: {}", w.chars().take(200).collect::<String>()))
        .chain(
            before
                .iter()
                .filter(|e| !now.contains(e))
                .map(|(p, w)| format!("- {p}: {}", w.chars().take(200).collect::<String>())),
        )
        .collect();
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
}

fn full(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).arg("full").args(args))
}

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

#[test]
fn full_applies_runs_each_command_once_verifies_and_a_rerun_changes_nothing() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let (code, out, err) = full(
        r,
        &fakes,
        &["nvidia", "debian", "--yes", "--no-deps", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    assert_eq!(doc["changed"], true);
    assert_eq!(doc["reboot_required"], true);
    assert_eq!(doc["files"].as_array().unwrap().len(), 3, "{doc}");
    assert_eq!(
        fakes.calls(),
        [
            "update-grub",
            "depmod -a 6.1.0-13-amd64",
            "update-initramfs -u -k all",
            "lsinitramfs fd:/boot/initrd.img-6.1.0-13-amd64"
        ]
    );
    let cfg = read(r, "/boot/grub/grub.cfg");
    assert!(
        cfg.contains("vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb"),
        "{cfg}"
    );
    assert!(read(r, "/boot/initrd.img-6.1.0-13-amd64").contains("vfio_pci"));
    let state: Value = serde_json::from_str(&read(r, "/var/lib/gpt/state.json")).unwrap();
    assert_eq!(state["config"]["ids"].as_array().unwrap().len(), 4);
    assert!(
        err.contains("remove vfio-pci.ids=… from the line starting with `linux`"),
        "the rescue step: {err}"
    );

    // Second run: nothing to write, nothing to run.
    fakes.reset_log();
    let before = snap(r);
    let (code, out, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["changed"], false);
    assert!(err.contains("already configured"), "{err}");
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    assert_eq!(snap(r), before);

    // And reset gives back the tree gpt found.
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    let etc = |root: &Path| {
        snap(root)
            .into_iter()
            .filter(|(p, _)| p.starts_with("etc"))
            .collect::<Vec<_>>()
    };
    let (pristine, _f2) = primed_host();
    assert_eq!(etc(r), etc(pristine.path()));
}

#[test]
fn a_failing_command_rolls_every_file_back() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let before = snap(r);
    let (code, out, err) = run(gpt(r)
        .env("PATH", fakes.path())
        // Fails once; the rollback's re-run succeeds.
        .env("FAKE_FAIL", "update-initramfs:1")
        .args(["full", "nvidia", "--yes", "--no-deps"]));
    assert_eq!(code, 1, "{err}");
    // The plan, then nothing: the failure and the rollback are told on stderr.
    assert!(out.starts_with("--- a/") && plan_only(&out), "{out}");
    assert!(err.contains("update-initramfs"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_same(&snap(r), &before, "rollback must leave the tree as it was");
}

#[test]
fn a_rerun_with_another_gpu_replaces_the_ids() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let mut t = HostTree::new(r);
    t.device(
        Dev::new("0000:05:00.0", (0x10de, 0x2331), 0x030200)
            .group(20)
            .driver("nvidia"),
    );
    let (code, _, err) = full(r, &fakes, &["--device", "02:00.0", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = full(r, &fakes, &["--device", "05:00.0", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    let grub = read(r, "/etc/default/grub");
    assert!(grub.contains("vfio-pci.ids=10de:2331 "), "{grub}");
    assert_eq!(
        grub.matches("vfio-pci.ids=").count(),
        2,
        "the value and the marker: {grub}"
    );
    // Reset still returns to the very first originals.
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(r, "/etc/default/grub"), hosts::GRUB_DEBIAN12);
}

#[test]
fn the_iommu_phase_then_the_vfio_phase_after_the_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    let r = dir.path();
    std::fs::rename(r.join("sys/kernel/iommu_groups"), r.join("groups.away")).unwrap();
    let fakes = Fakes::new();
    fakes.prime(r);
    let (code, out, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["phase"], "iommu");
    assert_eq!(fakes.calls(), ["update-grub"]);
    assert!(read(r, "/boot/grub/grub.cfg").contains("iommu=pt intel_iommu=on"));
    // "Reboot": the kernel now runs with the arguments and the groups exist.
    std::fs::rename(r.join("groups.away"), r.join("sys/kernel/iommu_groups")).unwrap();
    t.file(
        "/proc/cmdline",
        "BOOT_IMAGE=/boot/vmlinuz-6.1.0-13-amd64 root=UUID=x ro quiet iommu=pt intel_iommu=on\n",
    );
    fakes.reset_log();
    let (code, out, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["phase"], "vfio");
    let grub = read(r, "/etc/default/grub");
    assert!(grub.contains("\"quiet iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb kvm.ignore_msrs=1 kvm.report_ignored_msrs=0\""), "{grub}");
    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(read(r, "/etc/default/grub"), hosts::GRUB_DEBIAN12);
}

#[test]
fn no_update_prints_the_commands_instead_of_running_them() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let (code, _, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps", "--no-update"]);
    assert_eq!(code, 0, "{err}");
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    assert!(err.contains("Run these yourself before rebooting:\n    update-grub\n    depmod -a 6.1.0-13-amd64\n    update-initramfs -u -k all\n"), "{err}");
    // A second --no-update run has nothing to write, and says what is still to do.
    let (code, _, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps", "--no-update"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("nothing to change"), "{err}");
    assert!(
        err.contains(
            "still to do: the boot files do not carry it yet (--no-update): run `sudo update-grub`"
        ),
        "{err}"
    );
    assert!(err.contains("still to do: a reboot"), "{err}");
    // The next run owes those updates and runs them.
    let (code, _, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        fakes.calls().contains(&"update-grub".to_string()),
        "{:?}",
        fakes.calls()
    );
}

#[test]
fn packages_are_listed_never_installed_under_a_root() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let mut t = HostTree::new(r);
    hosts::dpkg_status(&mut t, &["curl", "initramfs-tools"]);
    let (code, _, err) = full(r, &fakes, &["nvidia", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("packages missing under the root, not installed there: kmod"),
        "{err}"
    );
    assert!(err.contains("to run the VM you may want: sudo apt-get install qemu-system-x86 qemu-utils ovmf bridge-utils virtinst cloud-image-utils (or add --vm-tools)"), "{err}");
    assert!(
        !fakes.calls().iter().any(|c| c.starts_with("apt-get")),
        "{:?}",
        fakes.calls()
    );
}

#[test]
fn a_held_lock_refuses_with_a_clear_message() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let host = gpt::host::Host::new(r);
    let _lock = gpt::txn::Lock::acquire(&host).unwrap();
    let before = snap(r);
    let (code, _, err) = full(r, &fakes, &["nvidia", "--yes", "--no-deps"]);
    assert_eq!(code, 1);
    assert!(err.contains("another gpt is running"), "{err}");
    assert_eq!(snap(r), before);
}

#[test]
fn a_reader_that_stops_early_is_no_panic() {
    // `gpt … | head`: stdout is a pipe nobody reads any more. gpt must not panic on EPIPE.
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    for cmd in [
        &["full", "nvidia", "--dry-run"][..],
        &["qemu", "--device", "02:00.0"],
        &["check"],
        &["iommu", "--json"],
    ] {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(read_end);
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("gpt"))
            .env("NO_COLOR", "1")
            .arg("--root")
            .arg(dir.path())
            .args(cmd)
            .stdout(std::process::Stdio::from(write_end))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{cmd:?}: {err}");
    }
}

/// Every plan says which GPU the host keeps; taking the boot display while another GPU stays
/// is said plainly: the console goes dark at boot, and the screen is the other GPU's.
#[test]
fn the_plan_names_the_gpu_the_host_keeps_and_warns_about_the_boot_display() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let (code, _, err) = full(r, &fakes, &["nvidia", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    let keeps = err.split("The host keeps:\n").nth(1).unwrap_or_default();
    let first = keeps.lines().next().unwrap_or_default();
    assert!(
        first.contains("00:02.0") && first.contains("boot display"),
        "{err}"
    );
    let (code, _, err) = full(r, &fakes, &["intel", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is the boot display: from the next boot on, vfio-pci takes it early and the console on its screen goes dark; the host keeps"),
        "{err}"
    );
    assert!(err.contains("NVIDIA"), "{err}");
}

#[test]
fn a_real_run_prints_on_stdout_the_plan_its_dry_run_printed() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let args = ["full", "nvidia", "--no-deps"];
    let (code, dry, err) = run(gpt(r).env("PATH", fakes.path()).args(args).arg("--dry-run"));
    assert_eq!(code, 0, "{err}");
    let (code, real, err) = run(gpt(r).env("PATH", fakes.path()).args(args).arg("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(dry.contains("+++ b/etc/default/grub"), "{dry}");
    assert_eq!(real, dry, "stdout of the real run and of its dry run");
    // Under --json stdout is the one document, and the diffs go to stderr.
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let (code, out, err) = run(gpt(r)
        .env("PATH", fakes.path())
        .args(args)
        .args(["--yes", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok(),
        "{out}"
    );
    assert!(err.contains("+++ b/etc/default/grub"), "{err}");
}
