//! `gpt check`: after the reboot, is passthrough ready? One line per check, in the style of
//! libvirt's virt-host-validate: `PASS`, `WARN (why)`, `FAIL (why, and what to do)`.
//!
//! Host checks (virtualization, IOMMU, interrupt remapping, vfio-pci) always run; the
//! configuration checks (kernel command line, grub.cfg, initramfs, drivers) run when
//! `gpt full` configured the host. Read-only: nothing is ever written.

use crate::boot::{Entries, Stack, StackId};
use crate::cli::CheckArgs;
use crate::edit::cmdline;
use crate::facts::{Facts, VFIO_PCI};
use crate::host::Host;
use crate::leftovers;
use crate::pci::{PciAddress, Topology};
use crate::state::{self, Config, Phase};
use crate::txn::Runner;
use crate::ui::Ui;
use anyhow::Result;
use console::Style;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::SystemTime;
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
    /// A function's reset and power facts (the reset checks): its detail shows on PASS too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<crate::resetability::Report>,
    /// Its detail shows on PASS too (how a function came to vfio-pci).
    #[serde(skip)]
    pub explain: bool,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            reset: None,
            explain: false,
        }
    }
    /// A PASS whose detail is the point: it shows in the text output too.
    pub(crate) fn pass_explained(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            explain: true,
            ..Check::new(name, Status::Pass, detail)
        }
    }
    pub(crate) fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Pass, detail)
    }
    pub(crate) fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail)
    }
    pub(crate) fn fail(name: impl Into<String>, detail: impl Into<String>) -> Check {
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
            Status::Pass if self.reset.is_none() && !self.explain => {
                style.apply_to(word.to_string())
            }
            _ => style.apply_to(format!("{word} ({})", self.detail)),
        };
        format!("{title:<width$} : {status}")
    }
}

#[derive(Serialize)]
struct ChecksJson<'a> {
    /// The host's boot stack (`null` when gpt cannot tell).
    boot: Option<StackId>,
    checks: &'a [Check],
}

pub fn run(host: &Host, ui: &Ui, args: &CheckArgs) -> Result<u8> {
    let facts = Facts::read_for(host, args.boot_loader.map(|b| b.choice()));
    let checks = collect(host, ui, &facts);
    if ui.json {
        let boot = facts
            .as_ref()
            .ok()
            .and_then(|f| f.boot.clone())
            .and_then(|b| b.ok());
        ui.print_json(&ChecksJson {
            boot,
            checks: &checks,
        })?;
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
pub fn collect(host: &Host, ui: &Ui, facts: &Result<Facts>) -> Vec<Check> {
    let seen = match facts {
        Ok(f) => f,
        Err(e) => {
            return vec![Check::fail(
                "a readable host",
                format!("{e:#}; fix that and run `gpt check` again"),
            )]
        }
    };
    let mut out = vec![
        virtualization(seen),
        kvm_device(host),
        iommu_firmware(seen),
        iommu_kernel(seen),
        interrupt_remapping(seen),
    ];
    let config = state::load_config(host);
    let vfio_configured = matches!(&config, Ok(Some(c)) if c.phase == Phase::Vfio);
    let configured_stack = config
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .map(|c| c.boot);
    let (stack_check, stack) = boot_stack(seen, configured_stack);
    out.push(stack_check);
    out.push(vfio_driver(seen, &stack, vfio_configured));
    match &config {
        Err(e) => out.push(Check::fail("gpt's configuration", format!("{e:#}"))),
        Ok(None) => {
            out.push(Check::warn(
                "gpt's configuration",
                format!("nothing configured: run {FULL}, reboot, then `gpt check` again"),
            ));
            out.extend(stray_entries(host, seen, &stack));
        }
        Ok(Some(c)) => configured(host, ui, seen, &stack, c, &mut out),
    }
    out.push(leftovers(host));
    let cfg = config.as_ref().ok().and_then(Option::as_ref);
    out.extend(super::check_origin::checks(host, seen, cfg));
    out.extend(foreign_passthrough(seen, &stack, cfg));
    out
}

/// A guide's passthrough lines (`options vfio-pci ids=`, `pci-stub.ids=`, blacklists, …):
/// a warning naming each, and whether gpt's rescue must undo it too (no line when none).
fn foreign_passthrough(f: &Facts, stack: &Stack, c: Option<&Config>) -> Option<Check> {
    let name = "passthrough configuration gpt did not write";
    let where_ = format!("{} configuration", stack.loader.kind().name());
    let args: Vec<(String, String)> = stack
        .loader
        .user_args(f)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (where_.clone(), a))
        .collect();
    let (ids, softdeps) = match c {
        Some(c) => (c.ids.clone(), c.softdeps.iter().cloned().collect()),
        None => (Vec::new(), Default::default()),
    };
    let found = crate::passthrough::find(&f.modprobe_d, &f.module_lists, &args, &ids, &softdeps);
    if found.is_empty() {
        return None;
    }
    let lines: Vec<String> = found
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                crate::passthrough::describe(e),
                if e.defeats_rescue {
                    " (the rescue must undo it too)"
                } else {
                    ""
                }
            )
        })
        .collect();
    Some(Check::warn(name, lines.join("; ")))
}

/// The boot stack found, and the one to check with: the host's; if it cannot be told, the
/// one gpt configured (else GRUB and initramfs-tools).
fn boot_stack(f: &Facts, configured: Option<StackId>) -> (Check, Stack) {
    match &f.boot {
        Some(Ok(id)) => (
            Check::pass(
                format!(
                    "a boot stack gpt knows ({}, {})",
                    id.loader.name(),
                    id.initramfs.name()
                ),
                id.to_string(),
            ),
            Stack::of(*id),
        ),
        Some(Err(why)) => (
            Check::fail("a boot stack gpt knows", why.clone()),
            Stack::of(configured.unwrap_or_default()),
        ),
        None => (
            Check::fail("a boot stack gpt knows", "it was not read"),
            Stack::of(configured.unwrap_or_default()),
        ),
    }
}

fn iommu_table(f: &Facts) -> Option<&'static str> {
    if f.dmar {
        Some("DMAR")
    } else if f.ivrs {
        Some("IVRS")
    } else {
        None
    }
}

fn cmdline_tokens(f: &Facts) -> Vec<&str> {
    cmdline::split(&f.cmdline)
}

fn virtualization(f: &Facts) -> Check {
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

fn iommu_firmware(f: &Facts) -> Check {
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

fn iommu_kernel(f: &Facts) -> Check {
    let name = "IOMMU enabled by the kernel";
    let topo = match f.topology() {
        Ok(t) => t,
        Err(e) => return Check::fail(name, format!("cannot read the IOMMU groups: {e:#}")),
    };
    if topo.iommu_enabled() {
        return Check::pass(name, format!("{} IOMMU groups", topo.groups.len()));
    }
    let has_intel_arg = cmdline_tokens(f)
        .iter()
        .any(|t| cmdline::key(t) == "intel_iommu" && cmdline::value(t) == Some("on"));
    let detail = match iommu_table(f) {
        Some("DMAR") if !has_intel_arg => format!(
            "no IOMMU groups in /sys/kernel/iommu_groups: the kernel needs intel_iommu=on; {FULL} adds it, then reboot"
        ),
        Some(_) => "no IOMMU groups in /sys/kernel/iommu_groups although the firmware has an IOMMU: check the kernel command line for intel_iommu=off, amd_iommu=off or iommu=off".to_string(),
        None => "no IOMMU groups in /sys/kernel/iommu_groups: enable VT-d or AMD-Vi in the firmware setup first".to_string(),
    };
    Check::fail(name, detail)
}

fn interrupt_remapping(f: &Facts) -> Check {
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
fn vfio_driver(f: &Facts, stack: &Stack, configured: bool) -> Check {
    let name = "the vfio-pci driver";
    if f.vfio_pci_loaded {
        return Check::pass(name, "vfio_pci is loaded");
    }
    let Some(kver) = &f.running_kernel else {
        return Check::warn(
            name,
            "vfio_pci is not loaded, and the running kernel is unknown (no /proc/sys/kernel/osrelease)",
        );
    };
    let Some(kernel) = f.kernels.iter().find(|k| &k.version == kver) else {
        return Check::warn(
            name,
            format!(
                "vfio_pci is not loaded, and there is no {}/{kver} for the running kernel",
                crate::paths::MODULES_DIR
            ),
        );
    };
    if kernel.builtin.contains(VFIO_PCI) {
        return Check::pass(name, format!("vfio_pci is built into {kver}"));
    }
    if configured {
        return Check::fail(
            name,
            format!(
                "vfio_pci is not loaded: reboot if you have not since `gpt full`; otherwise rebuild the initramfs (`{}`) and reboot",
                stack.initramfs.regenerate_hint()
            ),
        );
    }
    if kernel.modules.contains(VFIO_PCI) {
        Check::pass(name, format!("vfio_pci is a module of {kver} (not loaded)"))
    } else {
        Check::fail(
            name,
            format!("the running kernel {kver} has no vfio-pci, neither built in nor as a module: install a distribution kernel"),
        )
    }
}

/// The checks of what `gpt full` configured.
fn configured(host: &Host, ui: &Ui, f: &Facts, stack: &Stack, c: &Config, out: &mut Vec<Check>) {
    let name = "gpt's configuration";
    match c.phase {
        Phase::Iommu => out.push(Check::warn(
            name,
            "only the IOMMU is configured (step 1 of 2): after the reboot, run `sudo gpt full VENDOR` again to bind the GPU",
        )),
        Phase::Vfio => out.push(Check::pass(
            name,
            format!(
                "{} {} for vfio-pci ({}), {} {}; to boot without them: {}",
                c.devices.len(),
                if c.devices.len() == 1 { "device" } else { "devices" },
                c.ids.join(","),
                if c.gpus.len() == 1 { "GPU" } else { "GPUs" },
                c.gpus.join(", "),
                stack.loader.rescue_on(f, c.bind)
            ),
        )),
    }
    let missing_now = missing(&cmdline_tokens(f), &c.args);
    let entries = stack.loader.entries(host, f, &c.args);
    out.push(cmdline_check(f, stack, c, &missing_now, &entries));
    out.push(entries_check(stack, c, entries));
    if c.phase == Phase::Vfio {
        out.push(initramfs_check(host, stack));
        out.push(images_check(host, ui, f, stack, c));
        let Ok(topo) = f.topology() else {
            return; // already a failure of the IOMMU check
        };
        let reboot_pending = !missing_now.is_empty();
        out.extend(device_checks(topo, stack, c, reboot_pending));
        out.extend(super::reset_checks::checks(
            host,
            f,
            stack,
            c,
            reboot_pending,
        ));
    }
}

/// The tokens of `wanted` that `have` lacks (same key, same value).
fn missing(have: &[&str], wanted: &[String]) -> Vec<String> {
    crate::boot::grub::missing(have, wanted)
}

fn cmdline_check(
    f: &Facts,
    stack: &Stack,
    c: &Config,
    missing_now: &[String],
    entries: &Entries,
) -> Check {
    let name = "gpt's kernel arguments on /proc/cmdline";
    if !f.cmdline_read {
        return Check::fail(name, "cannot read /proc/cmdline");
    }
    if missing_now.is_empty() {
        return Check::pass(name, c.args.join(" "));
    }
    let todo = match entries {
        Entries::Lack(_) => format!("run `{}`, then reboot", stack.loader.regenerate_hint()),
        _ => "reboot".to_string(),
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

fn entries_check(stack: &Stack, c: &Config, entries: Entries) -> Check {
    let name = format!("gpt's kernel arguments in {}", stack.loader.entries_name());
    match entries {
        Entries::Unreadable(why) | Entries::Unchecked(why) => Check::warn(name, why),
        Entries::Carry => Check::pass(name, c.args.join(" ")),
        Entries::Lack(m) => Check::warn(
            name,
            format!(
                "stale: no boot entry carries {}; run `{}`",
                m.join(" "),
                stack.loader.regenerate_hint()
            ),
        ),
    }
}

fn mtime(host: &Host, abs: &str) -> Option<SystemTime> {
    let path = host.resolve(abs).ok()?;
    std::fs::metadata(path).ok()?.modified().ok()
}

/// Every image is at least as new as the files gpt edited that go into it.
fn initramfs_check(host: &Host, stack: &Stack) -> Check {
    let name = "up-to-date initramfs images";
    let hint = stack.initramfs.regenerate_hint();
    let images = stack.initramfs.images(host);
    if images.is_empty() {
        return Check::warn(
            name,
            format!("no initramfs image found in /boot: run `{hint}`"),
        );
    }
    let Some((input, newest)) = stack
        .initramfs
        .inputs()
        .into_iter()
        .filter_map(|p| mtime(host, p).map(|t| (p, t)))
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
                "stale: {} older than {input}; run `{hint}`, then reboot",
                stale.join(" ")
            ),
        )
    }
}

/// Each installed kernel's image holds vfio_pci (unless the kernel builds it in), listed
/// with the generator's own tool.
fn images_check(host: &Host, ui: &Ui, f: &Facts, stack: &Stack, c: &Config) -> Check {
    let name = "vfio-pci in the initramfs images";
    if !c.initramfs_modules.iter().any(|m| m == VFIO_PCI) {
        return Check::pass(name, "vfio_pci is built into every kernel");
    }
    let runner = Runner::new(host, ui);
    let problems = stack.images_lacking(host, &runner, &f.kernels, VFIO_PCI);
    if problems.is_empty() {
        Check::pass(name, format!("{} kernel(s)", f.kernels.len()))
    } else if problems.iter().all(|p| p.starts_with("could not list")) {
        Check::warn(name, problems.join("; "))
    } else {
        Check::fail(name, problems.join("; "))
    }
}

/// One check per configured device (bound to vfio-pci?) and one per IOMMU group (no other
/// member on a host driver?).
fn device_checks(topo: &Topology, stack: &Stack, c: &Config, reboot_pending: bool) -> Vec<Check> {
    let rebuild = stack.initramfs.regenerate_hint();
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
                        Some(d) => format!("{d} claimed it before vfio-pci; rebuild the initramfs (`{rebuild}`) and reboot"),
                        None => format!("vfio-pci did not claim it; rebuild the initramfs (`{rebuild}`) and reboot"),
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

/// With nothing configured, boot entries that still carry vfio-pci.ids= (a reset before the
/// reboot, then a kernel update that read /proc/cmdline): only loaders that can tell.
fn stray_entries(host: &Host, f: &Facts, stack: &Stack) -> Option<Check> {
    let found = stack.loader.carrying(host, f, "vfio_pci.ids")?;
    let name = "boot entries without vfio-pci.ids";
    Some(if found.is_empty() {
        Check::pass(name, "none carries it")
    } else {
        Check::warn(
            name,
            format!(
                "{} still carr{} vfio-pci.ids= although gpt configures nothing: a kernel or initramfs \
                 update after `gpt reset` and before the reboot read /proc/cmdline; reboot, then run `{}`",
                found.join(", "),
                if found.len() == 1 { "ies" } else { "y" },
                stack.loader.regenerate_hint()
            ),
        )
    })
}

fn leftovers(host: &Host) -> Check {
    let name = "leftovers of the old setup.sh";
    match leftovers::scan(host) {
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

    #[test]
    fn lines_are_padded_and_only_problems_carry_a_detail() {
        console::set_colors_enabled(false);
        let pass = Check::pass("x", "fine");
        let warn = Check::warn("longer name", "why");
        assert_eq!(pass.line(24), "Checking for x           : PASS");
        assert_eq!(warn.line(24), "Checking for longer name : WARN (why)");
    }
}
