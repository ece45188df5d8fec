//! What `gpt bind` and `gpt unbind` check before they move anything: the request, what holds the
//! card (the console, a process), a driver_override someone else manages, and under `--root` the
//! tree whose modprobe would run.

use crate::cmd::session::Session;
use crate::facts::Facts;
use crate::holders;
use crate::host::Host;
use crate::pci::{PciAddress, Topology};
use crate::runtime_bind::{self as rb, Journal};
use crate::select::Request;
use crate::txn::live;
use crate::ui::{Refusal, Ui};
use anyhow::Result;

pub(super) fn vendor_of(s: &str) -> Result<u16> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    crate::pci::vendor_by_name(s)
        .or_else(|| {
            (hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(hex, 16).ok())
                .flatten()
        })
        .ok_or_else(|| {
            anyhow::Error::new(crate::cli::UsageError(format!(
                "'{}' is not a GPU vendor: give nvidia, amd, intel or a 4-digit hex vendor id such as 10de \
                 (`gpt iommu --gpu` shows the ids)",
                s.escape_debug()
            )))
        })
}

/// The request of `gpt full`'s selection for these arguments (`None`: none given).
pub(super) fn request(facts: &Facts, args: &crate::cli::BindArgs) -> Result<Option<Request>> {
    let vendor = args.vendor.as_deref().map(vendor_of).transpose()?;
    if vendor.is_none() && args.devices.is_empty() {
        return Ok(None);
    }
    Ok(Some(Request {
        vendor,
        devices: args.devices.clone(),
        cpu_maker: crate::pci::cpu_maker(facts.cpu_vendor.as_deref()),
        ..Request::default()
    }))
}

/// Refuse before any write: what holds the functions (the console, a process).
pub(super) fn refuse_holders(
    host: &Host,
    ui: &Ui,
    topo: &Topology,
    targets: &[PciAddress],
    verb: &str,
) -> Result<()> {
    let boot_vga = topo
        .devices
        .values()
        .find(|d| d.boot_vga)
        .map(|d| d.address);
    let found = holders::read(host, targets, boot_vga);
    if let Some(e) = rb::refuse_holders(&found.holds, verb) {
        return Err(e);
    }
    if found.unreadable > 0 {
        ui.warn(format!(
            "{} processes could not be looked at (only root can see every process's open files)",
            found.unreadable
        ));
    }
    Ok(())
}

/// A driver_override that someone else manages (driverctl), or that names another driver than
/// the one bound (written by hand or by a script): gpt would fight it. One that names the bound
/// driver (what `gpt unbind` leaves where `vfio-pci.ids=` would take the function back), or a
/// function in gpt's own journal (a bind that did not finish), is gpt's to change.
pub(super) fn refuse_foreign_override(
    host: &Host,
    targets: &[PciAddress],
    journal: &Journal,
) -> Result<()> {
    for a in targets {
        let Some(o) = live::override_of(host, a) else {
            continue;
        };
        let driverctl = format!("/etc/driverctl.d/pci-{a}");
        let who = if host.exists(&driverctl) {
            format!("driverctl ({driverctl}); `sudo driverctl unset-override {a}` removes it")
        } else if journal.entry(a).is_some()
            || live::driver_of(host, a).as_deref() == Some(o.as_str())
        {
            continue;
        } else {
            format!("hand or a script, not gpt; clear it with `echo | sudo tee /sys/bus/pci/devices/{a}/driver_override`")
        };
        return Err(Refusal::error(
            "foreign_override",
            [a],
            format!("refusing: {a} has driver_override set to {o} by {who}. Nothing was changed;"),
            "run this again once it is cleared",
        ));
    }
    Ok(())
}

/// Loading vfio-pci runs `modprobe`; under `--root` that is the tree's own, which only a tree
/// no other user can change may run as root (as for `gpt full`'s commands).
pub fn trust_modprobe(host: &Host, session: &Session) -> Result<()> {
    let load = crate::plan::Step::new(
        &format!("loading {}", rb::VFIO_PCI_MODULE),
        &["modprobe", rb::VFIO_PCI_MODULE],
    );
    let plan = crate::plan::Plan {
        commands: vec![load],
        ..crate::plan::Plan::default()
    };
    session.trust_tree(host, &plan)
}
