//! `gpt check`: after the reboot, is passthrough ready? One line per check, in the style of
//! libvirt's virt-host-validate: `PASS`, `WARN (why)`, `FAIL (why, and what to do)`.
//!
//! Host checks (virtualization, IOMMU, interrupt remapping, vfio-pci) always run
//! (`host.rs`); the configuration checks (kernel command line, boot entries, initramfs,
//! drivers) run when `gpt full` configured the host (`config.rs`), with the reset and power
//! lines (`reset.rs`). Every line is a [`Check`]. Read-only: nothing is ever written.

mod config;
mod host;
mod origin;
mod reset;
mod rom;
mod verdict;

use crate::boot::StackId;
use crate::cli::CheckArgs;
use crate::facts::Facts;
use crate::host::Host;
use crate::model::Phase;
use crate::ui::Ui;
use anyhow::Result;
use config::{boot_stack, configured, foreign_passthrough, leftovers, stray_entries, vfio_driver};
use host::{interrupt_remapping, iommu_firmware, iommu_kernel, kvm_device, virtualization};
use serde::Serialize;
use verdict::FULL;
pub use verdict::{Check, Status};

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

/// The journal exists and this user may not read it (it is 0600: it holds copies of the boot
/// files).
fn journal_is_roots_only(host: &Host) -> bool {
    use nix::unistd::{access, geteuid, AccessFlags};
    let path = host.path(crate::paths::STATE_FILE);
    !geteuid().is_root() && path.exists() && access(&path, AccessFlags::R_OK).is_err()
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
    let config = crate::facts::recorded_config(host);
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
        Err(_) if journal_is_roots_only(host) => out.push(Check::warn(
            "gpt's configuration",
            format!(
                "{} is readable by root only: run `sudo gpt check` to check what gpt configured",
                crate::paths::STATE_FILE
            ),
        )),
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
    out.extend(origin::checks(host, seen, cfg));
    out.extend(foreign_passthrough(seen, &stack, cfg));
    out.extend(single_gpu(host));
    out
}

/// Single-GPU mode's last release or restore (this boot): a failed release stopped a VM's
/// start and gave the display back (WARN); a failed restore may have left the host without it.
fn single_gpu(host: &Host) -> Option<Check> {
    use crate::single_gpu::Phase;
    let r = crate::txn::display::load_record(host)?;
    let name = format!(
        "single-GPU mode's last {} (domain {})",
        r.phase.name(),
        r.vm
    );
    let log = "; `journalctl -t gpt` and /run/gpt/single-gpu.json have the steps";
    Some(match (r.ok, r.phase) {
        (true, _) => Check::pass(name, r.summary()),
        (false, Phase::Release) => Check::warn(name, format!("{}{log}", r.summary())),
        (false, Phase::Restore) => Check::fail(name, format!("{}{log}", r.summary())),
    })
}
