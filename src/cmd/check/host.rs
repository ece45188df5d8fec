//! The host's readiness, configured or not: virtualization, the IOMMU, interrupt remapping.

use super::verdict::{Check, FULL};
use crate::facts::Facts;
use crate::host::Host;
use std::collections::BTreeSet;

pub(super) fn iommu_table(f: &Facts) -> Option<&'static str> {
    if f.dmar {
        Some("DMAR")
    } else if f.ivrs {
        Some("IVRS")
    } else {
        None
    }
}

pub(super) fn virtualization(f: &Facts) -> Check {
    let name = "hardware virtualization (VT-x/AMD-V)";
    let Some(cpuinfo) = &f.cpuinfo else {
        return Check::fail(name, "cannot read /proc/cpuinfo");
    };
    let flags: BTreeSet<&str> = cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .flat_map(|(_, v)| v.split_ascii_whitespace())
        .collect();
    match ["vmx", "svm"].into_iter().find(|f| flags.contains(f)) {
        Some(flag) => Check::pass(name, format!("the CPU has {flag}")),
        None => Check::fail(
            name,
            "no vmx or svm flag in /proc/cpuinfo: enable Intel VT-x or AMD-V (SVM) in the firmware setup",
        ),
    }
}

pub(super) fn kvm_device(host: &Host) -> Check {
    let name = "the /dev/kvm device";
    if host.exists("/dev/kvm") {
        Check::pass(name, "/dev/kvm exists")
    } else {
        Check::fail(
            name,
            "/dev/kvm does not exist: load kvm_intel or kvm_amd (`sudo modprobe kvm_intel`), or enable virtualization in the firmware setup",
        )
    }
}

pub(super) fn iommu_firmware(f: &Facts) -> Check {
    let name = "IOMMU support in the firmware (DMAR/IVRS)";
    match iommu_table(f) {
        Some("DMAR") => Check::pass(name, "ACPI DMAR table: Intel VT-d"),
        Some(_) => Check::pass(name, "ACPI IVRS table: AMD-Vi"),
        None => Check::fail(
            name,
            "no DMAR or IVRS ACPI table: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup",
        ),
    }
}

pub(super) fn iommu_kernel(f: &Facts) -> Check {
    let name = "IOMMU enabled by the kernel";
    let topo = match f.topology() {
        Ok(t) => t,
        Err(e) => return Check::fail(name, format!("cannot read the IOMMU groups: {e:#}")),
    };
    if topo.iommu_enabled() {
        return Check::pass(name, format!("{} IOMMU groups", topo.groups.len()));
    }
    let has_intel_arg = f.cmdline_has("intel_iommu", "on");
    let detail = match iommu_table(f) {
        Some("DMAR") if !has_intel_arg => format!(
            "no IOMMU groups in /sys/kernel/iommu_groups: the kernel needs intel_iommu=on; {FULL} adds it, then reboot"
        ),
        Some(_) => "no IOMMU groups in /sys/kernel/iommu_groups although the firmware has an IOMMU: check the kernel command line for intel_iommu=off, amd_iommu=off or iommu=off".to_string(),
        None => "no IOMMU groups in /sys/kernel/iommu_groups: enable VT-d or AMD-Vi in the firmware setup first".to_string(),
    };
    Check::fail(name, detail)
}

pub(super) fn interrupt_remapping(f: &Facts) -> Check {
    let name = "interrupt remapping";
    let Some(text) = &f.interrupts else {
        return Check::fail(name, "cannot read /proc/interrupts");
    };
    if text.split_ascii_whitespace().any(|w| w.starts_with("IR-")) {
        Check::pass(name, "IR- interrupt chips in /proc/interrupts")
    } else {
        Check::fail(
            name,
            "no IR- interrupt chip in /proc/interrupts: without interrupt remapping vfio_iommu_type1 refuses to attach a group; enable the IOMMU (and x2APIC) in the firmware setup",
        )
    }
}
