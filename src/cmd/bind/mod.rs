//! `gpt bind` and `gpt unbind`: hand a card to vfio-pci now, and back, without a reboot.
//!
//! Read the host → select (as `gpt full`) → refuse what holds the card → show the steps →
//! confirm → apply through `txn::live` (journalled in /run, each write with a timeout, each
//! function verified), handing back what moved on any failure. The way back (`gpt unbind`,
//! and `gpt reset`'s hand-back first) is `unbind.rs`.

mod checks;
mod report;
mod unbind;
pub use checks::trust_modprobe;
pub use unbind::{hand_back_all, unbind};

use checks::{refuse_foreign_override, refuse_holders, request};
use report::{dry_run_or_ask, print, print_steps, DeviceJson};

use super::session::Session;
use crate::facts::Facts;
use crate::host::Host;
use crate::pci::PciAddress;
use crate::runner::Runner;
use crate::runtime_bind::{self as rb, Function, Journal, Step};
use crate::select;
use crate::sysfs;
use crate::txn::live::{self, Live};
use crate::ui::Ui;
use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::time::Duration;

pub fn bind(host: &Host, ui: &Ui, args: &crate::cli::BindArgs) -> Result<u8> {
    let session = Session::start(
        host,
        ui,
        args.dry_run,
        args.yes,
        "binding a card to vfio-pci needs root: run it with sudo (or add --dry-run to see the steps)",
    )?;
    let facts = Facts::read(host)?;
    let Some(req) = request(&facts, args)? else {
        crate::usage!(
            "give a VENDOR (nvidia, amd, intel or a hex id such as 10de) or --device ADDR; \
             `gpt iommu --gpu` lists the GPUs"
        );
    };
    let topo = facts.topology()?;
    if !topo.iommu_enabled() {
        bail!(
            "the IOMMU is not active (no groups in /sys/kernel/iommu_groups), so vfio-pci cannot take \
             a card: turn VT-d or AMD-Vi on in the firmware setup and add the IOMMU arguments \
             (`sudo gpt full VENDOR` does), reboot, and run this again; nothing was changed"
        );
    }
    let names = sysfs::load_names(host, topo);
    let sel = select::select(topo, &names, &req, &facts.protected)?;
    for w in &sel.warnings {
        ui.warn(w);
    }
    let journal = live::load_journal(host)?.unwrap_or_else(|| Journal {
        boot_id: live::boot_id(host),
        functions: Vec::new(),
    });
    refuse_foreign_override(host, &sel.targets, &journal)?;
    let moving: Vec<PciAddress> = sel
        .targets
        .iter()
        .filter(|a| live::driver_of(host, a).as_deref() != Some(rb::VFIO_PCI))
        .copied()
        .collect();
    refuse_holders(host, ui, topo, &moving, "bind")?;
    let funcs: Vec<Function> = sel
        .targets
        .iter()
        .filter_map(|a| topo.device(a))
        .map(Function::of)
        .collect();
    let order = rb::bind_order(&funcs);
    let mut steps: Vec<Step> = Vec::new();
    if !live::registered(host, rb::VFIO_PCI) {
        steps.push(Step {
            address: None,
            action: rb::Action::Load {
                module: rb::VFIO_PCI_MODULE.into(),
            },
        });
    }
    for f in &order {
        steps.extend(rb::bind_steps(f));
    }
    let devices: Vec<DeviceJson> = order
        .iter()
        .map(|f| DeviceJson {
            address: f.address.to_string(),
            from: f.driver.clone(),
            to: Some(rb::VFIO_PCI.into()),
        })
        .collect();
    if order
        .iter()
        .all(|f| f.driver.as_deref() == Some(rb::VFIO_PCI))
    {
        ui.ok("every function is on vfio-pci already: nothing to change");
        return print(ui, false, args.dry_run, devices, &[], &sel.warnings).map(|()| 0);
    }
    ui.step("Functions for vfio-pci, in this order:");
    for f in &order {
        ui.info(format!(
            "    {} (driver {})",
            f.address,
            f.driver.as_deref().unwrap_or("none")
        ));
    }
    ui.step("Steps:");
    print_steps(ui, &steps);
    if steps
        .iter()
        .any(|s| matches!(s.action, rb::Action::Load { .. }))
    {
        trust_modprobe(host, &session)?;
    }
    let ask = "Bind these functions to vfio-pci now?";
    if let Some(code) = dry_run_or_ask(ui, &session, ask, || {
        print(ui, false, true, devices.clone(), &steps, &sel.warnings)
    })? {
        return Ok(code);
    }
    let runner = Runner::new(host, ui);
    let live = Live {
        host,
        runner: &runner,
        timeout: Duration::from_secs(args.timeout),
        keep_override: BTreeSet::new(),
    };
    let mut journal = journal;
    live.bind(&order, &mut journal)?;
    print(ui, true, false, devices, &steps, &sel.warnings)?;
    ui.ok("bound to vfio-pci until `sudo gpt unbind` or the next boot; `gpt qemu` prints a VM command for it");
    Ok(0)
}
