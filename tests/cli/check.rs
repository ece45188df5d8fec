//! `gpt check` against host trees: before and after the reboot, hosts without an IOMMU or
//! interrupt remapping, a group member left on a host driver, nothing configured.

use crate::support::hosts::{
    as_full_left_it, bind, rebooted, rocketlake, rocketlake_config, DEBIAN_KVER,
};
use crate::support::tree::{snapshot, Dev, HostTree};
use crate::support::{gpt_with_fakes, run};
use serde_json::Value;
use std::path::Path;

/// `(name, "PASS" | "WARN (…)" | "FAIL (…)")` per line of the text output.
fn checks(out: &str) -> Vec<(String, String)> {
    out.lines()
        .map(|l| {
            let rest = l
                .strip_prefix("Checking for ")
                .unwrap_or_else(|| panic!("not a check line: {l:?}\n{out}"));
            let (name, status) = rest.split_once(" : ").unwrap();
            (name.trim_end().to_string(), status.to_string())
        })
        .collect()
}

fn status<'a>(all: &'a [(String, String)], name: &str) -> &'a str {
    all.iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s.as_str())
        .unwrap_or_else(|| panic!("no check {name:?} in {all:#?}"))
}

fn configured(root: &Path, updated: bool) -> HostTree {
    let mut t = rocketlake(root);
    t.file("/dev/kvm", "");
    as_full_left_it(&mut t, &rocketlake_config(), DEBIAN_KVER, updated);
    t
}

fn after_reboot(root: &Path) -> HostTree {
    let mut t = configured(root, true);
    rebooted(&mut t, &rocketlake_config(), DEBIAN_KVER);
    t
}

const ARGS: &str =
    "iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb kvm.ignore_msrs=1 kvm.report_ignored_msrs=0";

#[test]
fn passes_on_the_old_readme_host_after_the_reboot() {
    let dir = tempfile::tempdir().unwrap();
    after_reboot(dir.path());
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err, "");
    assert_eq!(
        out,
        "Checking for hardware virtualization (VT-x/AMD-V)                : PASS
Checking for the /dev/kvm device                                 : PASS
Checking for IOMMU support in the firmware (DMAR/IVRS)           : PASS
Checking for IOMMU enabled by the kernel                         : PASS
Checking for interrupt remapping                                 : PASS
Checking for a boot stack gpt knows (grub, initramfs-tools)      : PASS
Checking for the vfio-pci driver                                 : PASS
Checking for gpt's configuration                                 : PASS
Checking for gpt's kernel arguments on /proc/cmdline             : PASS
Checking for gpt's kernel arguments in /boot/grub/grub.cfg       : PASS
Checking for up-to-date initramfs images                         : PASS
Checking for vfio-pci in the initramfs images                    : PASS
Checking for 0000:02:00.0 bound to vfio-pci                      : PASS
Checking for 0000:02:00.1 bound to vfio-pci                      : PASS
Checking for 0000:02:00.2 bound to vfio-pci                      : PASS
Checking for 0000:02:00.3 bound to vfio-pci                      : PASS
Checking for IOMMU group 14 free of host drivers                 : PASS
Checking for 0000:02:00.0, .1, .2 and .3 resettable by the guest : PASS (vfio resets bus 0000:02, where every device goes to vfio-pci (no function-level reset); 0000:02:00.0: driver vfio-pci, reset_method \"bus\", power_state D0, d3cold_allowed 1)
Checking for leftovers of the old setup.sh                       : PASS
Checking for how 0000:02:00.0 came to vfio-pci                   : PASS (by vfio-pci.ids= at boot, from `gpt full`; `gpt reset` undoes it from the next boot on)
Checking for how 0000:02:00.1 came to vfio-pci                   : PASS (by vfio-pci.ids= at boot, from `gpt full`; `gpt reset` undoes it from the next boot on)
Checking for how 0000:02:00.2 came to vfio-pci                   : PASS (by vfio-pci.ids= at boot, from `gpt full`; `gpt reset` undoes it from the next boot on)
Checking for how 0000:02:00.3 came to vfio-pci                   : PASS (by vfio-pci.ids= at boot, from `gpt full`; `gpt reset` undoes it from the next boot on)
"
    );
}

#[test]
fn fails_before_the_reboot_with_reboot_pending() {
    let dir = tempfile::tempdir().unwrap();
    configured(dir.path(), true);
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err, "passthrough is not ready: 6 checks failed\n");
    let c = checks(&out);
    assert_eq!(
        status(&c, "gpt's kernel arguments on /proc/cmdline"),
        format!("FAIL (reboot pending: the running kernel lacks {ARGS} (configured in /etc/default/grub GRUB_CMDLINE_LINUX_DEFAULT); reboot)")
    );
    assert_eq!(
        status(&c, "gpt's kernel arguments in /boot/grub/grub.cfg"),
        "PASS"
    );
    assert_eq!(status(&c, "up-to-date initramfs images"), "PASS");
    assert_eq!(
        status(&c, "0000:02:00.0 bound to vfio-pci"),
        "FAIL (driver in use: nouveau: reboot pending)"
    );
    assert_eq!(
        status(&c, "0000:02:00.3 bound to vfio-pci"),
        "FAIL (driver in use: nvidia-gpu: reboot pending)"
    );
    // The group is not free of host drivers while its own functions are on them: no PASS
    // under their FAILs.
    assert_eq!(
        status(&c, "IOMMU group 14 free of host drivers"),
        "FAIL (4 of the functions gpt configured in it are still on host drivers (above): reboot pending)"
    );
    // gpt's own kernel arguments are not taken for the old script's.
    assert_eq!(status(&c, "leftovers of the old setup.sh"), "PASS");
}

#[test]
fn without_update_grub_cfg_and_the_initramfs_are_stale() {
    let dir = tempfile::tempdir().unwrap();
    configured(dir.path(), false);
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    let c = checks(&out);
    assert_eq!(
        status(&c, "gpt's kernel arguments on /proc/cmdline"),
        format!("FAIL (reboot pending: the running kernel lacks {ARGS} (configured in /etc/default/grub GRUB_CMDLINE_LINUX_DEFAULT); run `sudo update-grub`, then reboot)")
    );
    assert_eq!(
        status(&c, "gpt's kernel arguments in /boot/grub/grub.cfg"),
        format!("WARN (stale: no boot entry carries {ARGS}; run `sudo update-grub`)")
    );
    assert_eq!(
        status(&c, "up-to-date initramfs images"),
        "WARN (stale: /boot/initrd.img-6.1.0-13-amd64 older than /etc/initramfs-tools/modules; run `sudo update-initramfs -u -k all`, then reboot)"
    );
}

#[test]
fn a_host_without_an_iommu_fails_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    t.device(
        Dev::new("00:02.0", (0x8086, 0x4c8a), 0x030000)
            .boot_vga()
            .driver("i915"),
    )
    .device(Dev::new("01:00.0", (0x10de, 0x1f08), 0x030000).driver("nouveau"))
    .file(
        "/proc/cpuinfo",
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2\n\n",
    )
    .file(
        "/proc/cmdline",
        "BOOT_IMAGE=/boot/vmlinuz-6.1.0-13-amd64 ro quiet\n",
    )
    .file(
        "/proc/interrupts",
        "            CPU0\n  24:          0  PCI-MSI 1048576-edge      nvme0q0\n",
    );
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1, "{out}{err}");
    let c = checks(&out);
    assert_eq!(
        status(&c, "hardware virtualization (VT-x/AMD-V)"),
        "FAIL (no vmx or svm flag in /proc/cpuinfo: enable Intel VT-x or AMD-V (SVM) in the firmware setup)"
    );
    assert_eq!(
        status(&c, "the /dev/kvm device"),
        "FAIL (/dev/kvm does not exist: load kvm_intel or kvm_amd (`sudo modprobe kvm_intel`), or enable virtualization in the firmware setup)"
    );
    assert_eq!(
        status(&c, "IOMMU support in the firmware (DMAR/IVRS)"),
        "FAIL (no DMAR or IVRS ACPI table: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup)"
    );
    assert_eq!(
        status(&c, "IOMMU enabled by the kernel"),
        "FAIL (no IOMMU groups in /sys/kernel/iommu_groups: enable VT-d or AMD-Vi in the firmware setup first)"
    );
    assert_eq!(
        status(&c, "interrupt remapping"),
        "FAIL (no IR- interrupt chip in /proc/interrupts: without interrupt remapping vfio_iommu_type1 refuses to attach a group; enable the IOMMU (and x2APIC) in the firmware setup)"
    );
    assert_eq!(
        status(&c, "gpt's configuration"),
        "WARN (nothing configured: run `sudo gpt full VENDOR` (try `--dry-run` first), reboot, then `gpt check` again)"
    );
}

#[test]
fn firmware_iommu_without_the_kernel_argument_points_at_gpt_full() {
    // DMAR present, no intel_iommu=on: the kernel left VT-d off. An AMD CPU model (as in
    // nested VMs) does not matter: the table decides.
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    t.device(Dev::new("01:00.0", (0x10de, 0x1f08), 0x030000).driver("nouveau"))
        .file("/sys/firmware/acpi/tables/DMAR", "DMAR")
        .file(
            "/proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm\n\n",
        )
        .file("/proc/cmdline", "ro quiet\n")
        .file(
            "/proc/interrupts",
            "  0:  1  IR-IO-APIC    2-edge      timer\n",
        );
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    let c = checks(&out);
    assert_eq!(status(&c, "hardware virtualization (VT-x/AMD-V)"), "PASS");
    assert_eq!(
        status(&c, "IOMMU support in the firmware (DMAR/IVRS)"),
        "PASS"
    );
    assert_eq!(
        status(&c, "IOMMU enabled by the kernel"),
        "FAIL (no IOMMU groups in /sys/kernel/iommu_groups: the kernel needs intel_iommu=on; `sudo gpt full VENDOR` (try `--dry-run` first) adds it, then reboot)"
    );
    assert_eq!(status(&c, "interrupt remapping"), "PASS");
}

#[test]
fn nothing_configured_warns_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    t.file("/dev/kvm", "");
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err, "");
    let c = checks(&out);
    assert_eq!(c.len(), 9, "{out}");
    assert!(c[..7].iter().all(|(_, s)| s == "PASS"), "{out}");
    assert!(out.contains(
        "Checking for gpt's configuration                            : WARN (nothing configured: run `sudo gpt full VENDOR` (try `--dry-run` first), reboot, then `gpt check` again)\n"
    ), "{out}");
}

#[test]
fn no_interrupt_remapping_fails_even_when_all_else_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = after_reboot(dir.path());
    t.file(
        "/proc/interrupts",
        "            CPU0       CPU1\n 120:          0          0  PCI-MSI 1048576-edge      nvme0q0\n",
    );
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    assert_eq!(err, "passthrough is not ready: 1 check failed\n");
    let fails: Vec<_> = checks(&out)
        .into_iter()
        .filter(|(_, s)| s.starts_with("FAIL"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(fails, ["interrupt remapping"]);
}

#[test]
fn a_group_member_left_on_a_host_driver_fails() {
    // A configuration that left out the card's UCSI function, which stays on nvidia-gpu.
    let dir = tempfile::tempdir().unwrap();
    let mut c = rocketlake_config();
    c.devices.pop();
    c.ids.pop();
    c.args[2] = "vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada".into();
    let mut t = rocketlake(dir.path());
    t.file("/dev/kvm", "");
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    rebooted(&mut t, &c, DEBIAN_KVER);
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    let c = checks(&out);
    assert_eq!(status(&c, "0000:02:00.2 bound to vfio-pci"), "PASS");
    assert_eq!(
        status(&c, "IOMMU group 14 free of host drivers"),
        "FAIL (0000:02:00.3 (nvidia-gpu) on a host driver: vfio cannot use the group while it is; `gpt iommu --group 14` shows the group, `sudo gpt full` takes every function of it)"
    );
}

#[test]
fn a_driver_that_won_the_race_after_the_reboot_fails_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = after_reboot(dir.path());
    bind(&mut t, "0000:02:00.2", "xhci_hcd");
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    let c = checks(&out);
    assert_eq!(
        status(&c, "0000:02:00.2 bound to vfio-pci"),
        "FAIL (driver in use: xhci_hcd: xhci_hcd claimed it before vfio-pci; rebuild the initramfs (`sudo update-initramfs -u -k all`) and reboot)"
    );
    assert_eq!(status(&c, "0000:02:00.1 bound to vfio-pci"), "PASS");
}

#[test]
fn a_moved_card_is_reported_at_its_address() {
    let dir = tempfile::tempdir().unwrap();
    after_reboot(dir.path());
    let mut c = rocketlake_config();
    c.devices.push("0000:05:00.0".into());
    let doc = serde_json::json!({"version": 1, "config": c, "files": []});
    std::fs::write(dir.path().join("var/lib/gpt/state.json"), doc.to_string()).unwrap();
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    assert_eq!(
        status(&checks(&out), "0000:05:00.0 bound to vfio-pci"),
        "FAIL (no device at this address any more (was a card added or moved?): run `sudo gpt full` again)"
    );
}

#[test]
fn vfio_pci_built_in_passes_and_missing_fails_once_configured() {
    let dir = tempfile::tempdir().unwrap();
    let t = after_reboot(dir.path());
    std::fs::remove_dir_all(t.root.join("sys/module/vfio_pci")).unwrap();
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    assert_eq!(
        status(&checks(&out), "the vfio-pci driver"),
        "FAIL (vfio_pci is not loaded: reboot if you have not since `gpt full`; otherwise rebuild the initramfs (`sudo update-initramfs -u -k all`) and reboot)"
    );
    std::fs::write(
        t.root
            .join(format!("lib/modules/{DEBIAN_KVER}/modules.builtin")),
        "kernel/drivers/vfio/pci/vfio-pci.ko\n",
    )
    .unwrap();
    let (code, out, _) = run(gpt_with_fakes(dir.path()).args(["check", "--json"]));
    assert_eq!(code, 0, "{out}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let vfio = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "the vfio-pci driver")
        .unwrap();
    assert_eq!(vfio["status"], "pass");
    assert_eq!(vfio["detail"], "vfio_pci is built into 6.1.0-13-amd64");
}

#[test]
fn json_is_one_document_with_every_check() {
    let dir = tempfile::tempdir().unwrap();
    configured(dir.path(), true);
    let (code, out, err) = run(gpt_with_fakes(dir.path()).args(["check", "--json"]));
    assert_eq!(code, 1);
    assert_eq!(err, "passthrough is not ready: 6 checks failed\n");
    let doc: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(out.lines().count(), 1);
    assert_eq!(
        doc["boot"],
        serde_json::json!({"loader": "grub", "initramfs": "initramfs-tools"})
    );
    let list = doc["checks"].as_array().unwrap();
    // One reset line for the card whose four functions say the same.
    assert_eq!(list.len(), 19);
    for c in list {
        // The reset checks carry the facts their verdict comes from.
        let keys = if c.get("resets").is_some() { 4 } else { 3 };
        assert_eq!(c.as_object().unwrap().len(), keys, "{c}");
        assert!(["pass", "warn", "fail"].contains(&c["status"].as_str().unwrap()));
        assert!(c["detail"].is_string());
    }
    assert_eq!(list[0]["name"], "hardware virtualization (VT-x/AMD-V)");
    assert_eq!(list[0]["detail"], "the CPU has vmx");
    assert_eq!(list[8]["name"], "gpt's kernel arguments on /proc/cmdline");
    assert_eq!(list[8]["status"], "fail");
    assert!(list[8]["detail"]
        .as_str()
        .unwrap()
        .starts_with("reboot pending: "));
}

#[test]
fn phase_one_asks_for_the_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = rocketlake_config();
    c.phase = gpt::model::Phase::Iommu;
    c.gpus.clear();
    c.devices.clear();
    c.ids.clear();
    c.args = vec!["iommu=pt".into(), "intel_iommu=on".into()];
    let mut t = rocketlake(dir.path());
    t.file("/dev/kvm", "");
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    rebooted(&mut t, &c, DEBIAN_KVER);
    let (code, out, err) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 0, "{out}{err}");
    let c = checks(&out);
    assert_eq!(
        status(&c, "gpt's configuration"),
        "WARN (only the IOMMU is configured (step 1 of 2): after the reboot, run `sudo gpt full VENDOR` again to bind the GPU)"
    );
    assert_eq!(
        status(&c, "gpt's kernel arguments on /proc/cmdline"),
        "PASS"
    );
    assert!(!out.contains("bound to vfio-pci"), "{out}");
}

#[test]
fn a_corrupt_state_file_is_a_failed_check_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    t.file("/dev/kvm", "")
        .file("/var/lib/gpt/state.json", "{not json");
    let (code, out, _) = run(gpt_with_fakes(dir.path()).arg("check"));
    assert_eq!(code, 1);
    let c = checks(&out);
    assert!(status(&c, "gpt's configuration")
        .starts_with("FAIL (/var/lib/gpt/state.json is corrupt; move it aside"));
    assert_eq!(status(&c, "interrupt remapping"), "PASS");
}

#[test]
fn check_writes_nothing_and_prints_no_colour_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let t = configured(dir.path(), false);
    let before = t.snapshot();
    let (_, out, err) = run(gpt_with_fakes(dir.path())
        .arg("check")
        .env_remove("NO_COLOR"));
    assert!(!out.contains('\u{1b}') && !err.contains('\u{1b}'), "{out}");
    let (_, json, _) = run(gpt_with_fakes(dir.path()).args(["check", "--json"]));
    assert!(json.starts_with('{'));
    assert_eq!(before, snapshot(dir.path()));
}

#[test]
fn the_bundled_example_host_runs_through_check() {
    // The example has no /dev/kvm (a tree, not a running host): that alone fails.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::example::EXAMPLE);
    let (code, out, _) = run(gpt_with_fakes(&example).arg("check"));
    assert_eq!(code, 1);
    let fails: Vec<_> = checks(&out)
        .into_iter()
        .filter(|(_, s)| s.starts_with("FAIL"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(fails, ["the /dev/kvm device"]);
}
