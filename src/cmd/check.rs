//! `gpt check`: after the reboot, is passthrough ready? One line per check, in the style of
//! libvirt's virt-host-validate: `PASS`, `WARN (why)`, `FAIL (why, and what to do)`.
//!
//! Host checks (virtualization, IOMMU, interrupt remapping, vfio-pci) always run; the
//! configuration checks (kernel command line, grub.cfg, initramfs, drivers) run when
//! `gpt full` configured the host. Read-only: nothing is ever written.

use crate::cli::CheckArgs;
use crate::edit::cmdline;
use crate::host::Host;
use crate::legacy;
use crate::pci::{PciAddress, Topology};
use crate::state::{self, Config, Phase};
use crate::sysfs;
use crate::ui::Ui;
use anyhow::Result;
use console::Style;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::SystemTime;

const GRUB_CFG: &str = "/boot/grub/grub.cfg";
/// The files whose content goes into the initramfs images (`gpt full` edits them).
const INITRAMFS_INPUTS: [&str; 2] = [
    "/etc/initramfs-tools/modules",
    "/etc/modprobe.d/gpt-vfio.conf",
];
/// Drivers that leave a device free for vfio (pci-stub holds it without using it).
const NEUTRAL_DRIVERS: [&str; 2] = ["vfio-pci", "pci-stub"];
const FULL: &str = "`sudo gpt full VENDOR` (try `--dry-run` first)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
        }
    }
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Pass, detail)
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail)
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail)
    }

    /// `Checking for NAME` padded to `width`, then `: PASS` / `: WARN (detail)`.
    fn line(&self, width: usize) -> String {
        let title = format!("Checking for {}", self.name);
        let (word, style) = match self.status {
            Status::Pass => ("PASS", Style::new().green().bold()),
            Status::Warn => ("WARN", Style::new().yellow().bold()),
            Status::Fail => ("FAIL", Style::new().red().bold()),
        };
        let status = match self.status {
            Status::Pass => style.apply_to(word.to_string()),
            _ => style.apply_to(format!("{word} ({})", self.detail)),
        };
        format!("{title:<width$} : {status}")
    }
}

#[derive(Serialize)]
struct ChecksJson<'a> {
    checks: &'a [Check],
}

pub fn run(host: &Host, ui: &Ui, _args: &CheckArgs) -> Result<u8> {
    let checks = collect(host);
    if ui.json {
        ui.print_json(&ChecksJson { checks: &checks })?;
    } else {
        let width = checks
            .iter()
            .map(|c| "Checking for ".len() + c.name.chars().count())
            .max()
            .unwrap_or(0);
        for c in &checks {
            crate::ui::out(&format!("{}\n", c.line(width)));
        }
    }
    let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
    if fails > 0 {
        ui.info(format!(
            "passthrough is not ready: {fails} check{} failed",
            if fails == 1 { "" } else { "s" }
        ));
        Ok(1)
    } else {
        Ok(0)
    }
}

/// Every check, in the order they are shown.
pub fn collect(host: &Host) -> Vec<Check> {
    let seen = Observed::read(host);
    let mut out = vec![
        virtualization(&seen),
        kvm_device(host),
        iommu_firmware(&seen),
        iommu_kernel(&seen),
        interrupt_remapping(&seen),
    ];
    let config = state::load_config(host);
    let vfio_configured = matches!(&config, Ok(Some(c)) if c.phase == Phase::Vfio);
    out.push(vfio_driver(host, &seen, vfio_configured));
    match &config {
        Err(e) => out.push(Check::fail("gpt's configuration", format!("{e:#}"))),
        Ok(None) => out.push(Check::warn(
            "gpt's configuration",
            format!("nothing configured: run {FULL}, reboot, then `gpt check` again"),
        )),
        Ok(Some(c)) => configured(host, &seen, c, &mut out),
    }
    out.push(leftovers(host));
    out
}

/// What several checks read, read once.
struct Observed {
    cpuinfo: Option<String>,
    cmdline: Option<String>,
    interrupts: Option<String>,
    /// `DMAR` (Intel VT-d) or `IVRS` (AMD-Vi) if the firmware has the table.
    iommu_table: Option<&'static str>,
    topology: Result<Topology>,
    /// The running kernel's release.
    kernel: Option<String>,
}

impl Observed {
    fn read(host: &Host) -> Observed {
        let read = |p: &str| host.read_optional(p).ok().flatten();
        let cmdline = read("/proc/cmdline");
        let iommu_table = ["DMAR", "IVRS"]
            .into_iter()
            .find(|t| host.exists(format!("/sys/firmware/acpi/tables/{t}")));
        Observed {
            cpuinfo: read("/proc/cpuinfo"),
            interrupts: read("/proc/interrupts"),
            iommu_table,
            topology: sysfs::read_topology(host),
            kernel: running_kernel(host, cmdline.as_deref()),
            cmdline,
        }
    }

    fn cmdline_tokens(&self) -> Vec<&str> {
        self.cmdline
            .as_deref()
            .map(cmdline::split)
            .unwrap_or_default()
    }
}

/// `uname -r` of the running kernel: `/proc/sys/kernel/osrelease`, else the `BOOT_IMAGE` on
/// the command line, else the only installed kernel.
fn running_kernel(host: &Host, cmdline: Option<&str>) -> Option<String> {
    if let Some(r) = host
        .read_optional("/proc/sys/kernel/osrelease")
        .ok()
        .flatten()
    {
        return Some(r.trim().to_string()).filter(|r| !r.is_empty());
    }
    let from_image = cmdline.and_then(|c| {
        cmdline::split(c)
            .into_iter()
            .find(|t| cmdline::key(t) == "BOOT_IMAGE")
            .and_then(cmdline::value)
            .and_then(|v| v.rsplit('/').next())
            .and_then(|f| f.strip_prefix("vmlinuz-"))
            .map(str::to_string)
    });
    if from_image.is_some() {
        return from_image;
    }
    match host.list_dir("/lib/modules").unwrap_or_default().as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

fn virtualization(f: &Observed) -> Check {
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

fn kvm_device(host: &Host) -> Check {
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

fn iommu_firmware(f: &Observed) -> Check {
    let name = "IOMMU support in the firmware (DMAR/IVRS)";
    match f.iommu_table {
        Some("DMAR") => Check::pass(name, "ACPI DMAR table: Intel VT-d"),
        Some(_) => Check::pass(name, "ACPI IVRS table: AMD-Vi"),
        None => Check::fail(
            name,
            "no DMAR or IVRS ACPI table: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup",
        ),
    }
}

fn iommu_kernel(f: &Observed) -> Check {
    let name = "IOMMU enabled by the kernel";
    let topo = match &f.topology {
        Ok(t) => t,
        Err(e) => return Check::fail(name, format!("cannot read the IOMMU groups: {e:#}")),
    };
    if topo.iommu_enabled() {
        return Check::pass(name, format!("{} IOMMU groups", topo.groups.len()));
    }
    let has_intel_arg = f
        .cmdline_tokens()
        .iter()
        .any(|t| cmdline::key(t) == "intel_iommu" && cmdline::value(t) == Some("on"));
    let detail = match f.iommu_table {
        Some("DMAR") if !has_intel_arg => format!(
            "no IOMMU groups in /sys/kernel/iommu_groups: the kernel needs intel_iommu=on; {FULL} adds it, then reboot"
        ),
        Some(_) => "no IOMMU groups in /sys/kernel/iommu_groups although the firmware has an IOMMU: check the kernel command line for intel_iommu=off, amd_iommu=off or iommu=off".to_string(),
        None => "no IOMMU groups in /sys/kernel/iommu_groups: enable VT-d or AMD-Vi in the firmware setup first".to_string(),
    };
    Check::fail(name, detail)
}

fn interrupt_remapping(f: &Observed) -> Check {
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

/// vfio-pci loaded or built in; with a vfio configuration, not loaded is a failure.
fn vfio_driver(host: &Host, f: &Observed, configured: bool) -> Check {
    let name = "the vfio-pci driver";
    if host.exists("/sys/module/vfio_pci") {
        return Check::pass(name, "vfio_pci is loaded");
    }
    let Some(kver) = &f.kernel else {
        return Check::warn(
            name,
            "vfio_pci is not loaded, and the running kernel is unknown (no /proc/sys/kernel/osrelease)",
        );
    };
    let base = format!("/lib/modules/{kver}");
    let named_vfio_pci = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next() == Some("vfio-pci") || file.split(".ko").next() == Some("vfio_pci")
    };
    let builtin = host
        .read_optional(format!("{base}/modules.builtin"))
        .ok()
        .flatten()
        .is_some_and(|t| t.lines().any(|l| named_vfio_pci(l.trim())));
    if builtin {
        return Check::pass(name, format!("vfio_pci is built into {kver}"));
    }
    if !host.exists(&base) {
        return Check::warn(
            name,
            format!("vfio_pci is not loaded, and there is no {base} for the running kernel"),
        );
    }
    if configured {
        return Check::fail(
            name,
            "vfio_pci is not loaded: reboot if you have not since `gpt full`; otherwise rebuild the initramfs (`sudo update-initramfs -u -k all`) and reboot",
        );
    }
    let module = walkdir::WalkDir::new(host.path(format!("{base}/kernel/drivers/vfio")))
        .into_iter()
        .filter_map(|e| e.ok())
        .any(|e| named_vfio_pci(&e.file_name().to_string_lossy()));
    if module {
        Check::pass(name, format!("vfio_pci is a module of {kver} (not loaded)"))
    } else {
        Check::fail(
            name,
            format!("the running kernel {kver} has no vfio-pci, neither built in nor as a module: install a distribution kernel"),
        )
    }
}

/// The checks of what `gpt full` configured.
fn configured(host: &Host, f: &Observed, c: &Config, out: &mut Vec<Check>) {
    let name = "gpt's configuration";
    match c.phase {
        Phase::Iommu => out.push(Check::warn(
            name,
            "only the IOMMU is configured (step 1 of 2): after the reboot, run `sudo gpt full VENDOR` again to bind the GPU",
        )),
        Phase::Vfio => out.push(Check::pass(
            name,
            format!(
                "{} device(s) for vfio-pci ({}), GPU(s) {}",
                c.devices.len(),
                c.ids.join(","),
                c.gpus.join(", ")
            ),
        )),
    }
    let missing_now = missing(&f.cmdline_tokens(), &c.args);
    let grub_cfg = host.read_optional(GRUB_CFG).ok().flatten();
    let stale_cfg = grub_cfg
        .as_deref()
        .map(|cfg| missing_in_grub_cfg(cfg, &c.args));
    out.push(cmdline_check(f, c, &missing_now, stale_cfg.as_ref()));
    out.push(grub_cfg_check(c, stale_cfg));
    if c.phase == Phase::Vfio {
        out.push(initramfs_check(host));
        let topo = match &f.topology {
            Ok(t) => t,
            Err(_) => return, // already a failure of the IOMMU check
        };
        let reboot_pending = !missing_now.is_empty();
        out.extend(device_checks(topo, c, reboot_pending));
    }
}

/// The tokens of `wanted` that `have` lacks (same key, same value).
fn missing(have: &[&str], wanted: &[String]) -> Vec<String> {
    let norm = |t: &str| (cmdline::key(t), cmdline::value(t).map(str::to_string));
    let have: BTreeSet<_> = have.iter().map(|t| norm(t)).collect();
    wanted
        .iter()
        .filter(|w| !have.contains(&norm(w)))
        .cloned()
        .collect()
}

/// The configured arguments that no `linux` line of grub.cfg carries all of: empty when some
/// boot entry has them all; otherwise what the closest entry lacks.
fn missing_in_grub_cfg(cfg: &str, wanted: &[String]) -> Vec<String> {
    cfg.lines()
        .filter_map(|l| {
            let mut words = l.split_ascii_whitespace();
            matches!(words.next(), Some("linux" | "linuxefi" | "linux16"))
                .then(|| missing(&words.collect::<Vec<_>>(), wanted))
        })
        .min_by_key(Vec::len)
        .unwrap_or_else(|| wanted.to_vec())
}

fn cmdline_check(
    f: &Observed,
    c: &Config,
    missing_now: &[String],
    stale_cfg: Option<&Vec<String>>,
) -> Check {
    let name = "gpt's kernel arguments on /proc/cmdline";
    if f.cmdline.is_none() {
        return Check::fail(name, "cannot read /proc/cmdline");
    }
    if missing_now.is_empty() {
        return Check::pass(name, c.args.join(" "));
    }
    let todo = if stale_cfg.is_some_and(|m| !m.is_empty()) {
        "run `sudo update-grub`, then reboot"
    } else {
        "reboot"
    };
    Check::fail(
        name,
        format!(
            "reboot pending: the running kernel lacks {} (configured in {} {}); {todo}",
            missing_now.join(" "),
            c.grub_file,
            c.grub_var
        ),
    )
}

fn grub_cfg_check(c: &Config, stale: Option<Vec<String>>) -> Check {
    let name = "gpt's kernel arguments in /boot/grub/grub.cfg";
    match stale {
        None => Check::warn(
            name,
            "no /boot/grub/grub.cfg: cannot tell whether update-grub ran (`sudo update-grub`)",
        ),
        Some(m) if m.is_empty() => Check::pass(name, c.args.join(" ")),
        Some(m) => Check::warn(
            name,
            format!(
                "stale: no boot entry carries {}; run `sudo update-grub`",
                m.join(" ")
            ),
        ),
    }
}

fn mtime(host: &Host, abs: &str) -> Option<SystemTime> {
    let path = host.resolve(abs).ok()?;
    std::fs::metadata(path).ok()?.modified().ok()
}

/// Every `/boot/initrd.img-*` is at least as new as the files gpt edited that go into it.
fn initramfs_check(host: &Host) -> Check {
    let name = "up-to-date initramfs images";
    let images: Vec<String> = host
        .list_dir("/boot")
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("initrd.img-"))
        .map(|n| format!("/boot/{n}"))
        .collect();
    if images.is_empty() {
        return Check::warn(
            name,
            "no /boot/initrd.img-* found: run `sudo update-initramfs -u -k all`",
        );
    }
    let Some((input, newest)) = INITRAMFS_INPUTS
        .iter()
        .filter_map(|p| mtime(host, p).map(|t| (*p, t)))
        .rev() // on a tie, name the first input
        .max_by_key(|(_, t)| *t)
    else {
        return Check::pass(name, images.join(" "));
    };
    let stale: Vec<&str> = images
        .iter()
        .filter(|i| mtime(host, i).is_none_or(|t| t < newest))
        .map(String::as_str)
        .collect();
    if stale.is_empty() {
        Check::pass(name, images.join(" "))
    } else {
        Check::warn(
            name,
            format!(
                "stale: {} older than {input}; run `sudo update-initramfs -u -k all`, then reboot",
                stale.join(" ")
            ),
        )
    }
}

/// One check per configured device (bound to vfio-pci?) and one per IOMMU group (no other
/// member on a host driver?).
fn device_checks(topo: &Topology, c: &Config, reboot_pending: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let mut configured: Vec<PciAddress> = Vec::new();
    for d in &c.devices {
        let name = format!("{d} bound to vfio-pci");
        let Some(addr) = PciAddress::parse(d) else {
            out.push(Check::fail(
                name,
                format!("not a PCI address in {}", state::STATE_FILE),
            ));
            continue;
        };
        configured.push(addr);
        let Some(dev) = topo.device(&addr) else {
            out.push(Check::fail(
                name,
                "no device at this address any more (was a card added or moved?): run `sudo gpt full` again",
            ));
            continue;
        };
        if let Some(id) = dev.id().filter(|id| !c.ids.contains(id)) {
            out.push(Check::fail(
                name,
                format!("the device here is now {id}, not one gpt configured ({}): run `sudo gpt full` again", c.ids.join(",")),
            ));
            continue;
        }
        match dev.driver.as_deref() {
            Some("vfio-pci") => out.push(Check::pass(name, "driver in use: vfio-pci")),
            other => {
                let now = other.map_or("no driver".to_string(), |d| format!("driver in use: {d}"));
                let todo = if reboot_pending {
                    "reboot pending".to_string()
                } else {
                    match other {
                        Some(d) => format!("{d} claimed it before vfio-pci; rebuild the initramfs (`sudo update-initramfs -u -k all`) and reboot"),
                        None => "vfio-pci did not claim it; rebuild the initramfs (`sudo update-initramfs -u -k all`) and reboot".to_string(),
                    }
                };
                out.push(Check::fail(name, format!("{now}: {todo}")));
            }
        }
    }
    let groups: BTreeSet<u32> = configured
        .iter()
        .filter_map(|a| topo.group_of(a).map(|(g, _)| g))
        .collect();
    for g in groups {
        let name = format!("IOMMU group {g} free of host drivers");
        let held: Vec<String> = topo.groups[&g]
            .iter()
            .filter(|a| !configured.contains(a))
            .filter_map(|a| topo.device(a))
            .filter(|d| !d.is_bridge())
            .filter_map(|d| {
                d.driver
                    .as_deref()
                    .filter(|drv| !NEUTRAL_DRIVERS.contains(drv))
                    .map(|drv| format!("{} ({drv})", d.address))
            })
            .collect();
        if held.is_empty() {
            out.push(Check::pass(
                name,
                "no member outside the configuration is on a host driver",
            ));
        } else {
            out.push(Check::fail(
                name,
                format!(
                    "{} on a host driver: vfio cannot use the group while it is; `gpt iommu --group {g}` shows the group, `sudo gpt full` takes every function of it",
                    held.join(", ")
                ),
            ));
        }
    }
    out
}

fn leftovers(host: &Host) -> Check {
    let name = "leftovers of the old setup.sh";
    match legacy::scan(host) {
        Ok(found) if found.is_empty() => Check::pass(name, "none"),
        Ok(found) => Check::warn(
            name,
            format!(
                "{}; `sudo gpt reset --legacy` shows and removes them",
                found
                    .iter()
                    .map(|l| l.description.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Err(e) => Check::warn(name, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_compares_keys_like_the_kernel() {
        let have = ["ro", "vfio_pci.ids=10de:1f08", "iommu=pt"];
        assert!(missing(&have, &args(&["vfio-pci.ids=10de:1f08", "iommu=pt"])).is_empty());
        assert_eq!(
            missing(
                &have,
                &args(&["vfio-pci.ids=10de:1f08,10de:10f9", "intel_iommu=on"])
            ),
            args(&["vfio-pci.ids=10de:1f08,10de:10f9", "intel_iommu=on"])
        );
    }

    #[test]
    fn grub_cfg_needs_one_entry_with_every_argument() {
        let cfg = "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.1 root=UUID=x ro  quiet iommu=pt intel_iommu=on\n}\n\
                   menuentry 'Debian (recovery)' {\n\tlinux\t/boot/vmlinuz-6.1 root=UUID=x ro single\n}\n";
        assert!(missing_in_grub_cfg(cfg, &args(&["iommu=pt", "intel_iommu=on"])).is_empty());
        assert_eq!(
            missing_in_grub_cfg(cfg, &args(&["iommu=pt", "kvm.ignore_msrs=1"])),
            args(&["kvm.ignore_msrs=1"])
        );
        assert_eq!(
            missing_in_grub_cfg("", &args(&["iommu=pt"])),
            args(&["iommu=pt"])
        );
    }

    #[test]
    fn lines_are_padded_and_only_problems_carry_a_detail() {
        console::set_colors_enabled(false);
        let pass = Check::pass("x", "fine");
        let warn = Check::warn("longer name", "why");
        assert_eq!(pass.line(24), "Checking for x           : PASS");
        assert_eq!(warn.line(24), "Checking for longer name : WARN (why)");
    }
}
