//! `gpt unbind`: give what `gpt bind` bound (its journal in /run), or `gpt full`'s card for
//! this boot, back to its host drivers; and `gpt reset`'s hand-back of bind's card first.

use super::checks::{refuse_holders, request};
use super::report::{dry_run_or_ask, print, print_steps, DeviceJson};
use crate::cmd::session::Session;
use crate::facts::Facts;
use crate::holders;
use crate::host::Host;
use crate::pci::{PciAddress, PciDevice};
use crate::runner::Runner;
use crate::runtime_bind::{self as rb, Function, Journal};
use crate::select;
use crate::sysfs;
use crate::txn::live::{self, Live};
use crate::ui::{Refusal, Ui};
use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::time::Duration;
/// Where a function goes back to.
struct Back {
    address: PciAddress,
    driver: Option<String>,
    module: Option<String>,
    /// From gpt's binding journal (else: `gpt full`'s card, back for this boot).
    journalled: bool,
}

/// The host driver a function of `gpt full`'s card would have without vfio-pci: the module
/// whose `modules.alias` pattern matches it (a loaded one first), and the PCI driver it
/// registers (`/sys/module/M/drivers/pci:NAME`), once it is loaded.
fn host_driver(host: &Host, facts: &Facts, d: &PciDevice) -> Option<(String, Option<String>)> {
    let (v, dv, class) = (d.vendor?, d.device?, d.class?);
    let modalias = format!(
        "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
        v,
        dv,
        d.subsystem_vendor.unwrap_or(0),
        d.subsystem_device.unwrap_or(0),
        class >> 16,
        (class >> 8) & 0xff,
        class & 0xff
    );
    let mut mods: Vec<String> = crate::facts::pci_alias_modules(&facts.aliases, &modalias)
        .into_iter()
        .filter(|m| m != rb::VFIO_PCI_MODULE && m != "pci_stub")
        .collect();
    mods.sort_by_key(|m| !host.exists(format!("/sys/module/{m}")));
    let module = mods.into_iter().next()?;
    let driver = registered_driver(host, &module);
    Some((module, driver))
}

fn registered_driver(host: &Host, module: &str) -> Option<String> {
    host.list_dir(format!("/sys/module/{module}/drivers"))
        .ok()?
        .iter()
        .find_map(|n| n.strip_prefix("pci:").map(str::to_string))
}

/// The functions to hand back and where each goes.
fn to_hand_back(
    host: &Host,
    facts: &Facts,
    args: &crate::cli::BindArgs,
    journal: &Journal,
) -> Result<Vec<Back>> {
    let topo = facts.topology()?;
    let config = crate::facts::recorded_config(host)?;
    let targets: Vec<PciAddress> = match request(facts, args)? {
        Some(req) => {
            let names = sysfs::load_names(host, topo);
            select::select(topo, &names, &req, &facts.protected)?.targets
        }
        None if !journal.functions.is_empty() => journal
            .functions
            .iter()
            .filter_map(|e| PciAddress::parse(&e.address))
            .collect(),
        None => config
            .iter()
            .flat_map(|c| &c.devices)
            .filter_map(|a| PciAddress::parse(a))
            .filter(|a| live::driver_of(host, a).as_deref() == Some(rb::VFIO_PCI))
            .collect(),
    };
    let configured = |a: &PciAddress| {
        config
            .iter()
            .flat_map(|c| &c.devices)
            .any(|d| *d == a.to_string())
    };
    let mut out = Vec::new();
    for a in targets {
        if let Some(e) = journal.entry(&a) {
            out.push(Back {
                address: a,
                driver: e.driver.clone(),
                module: e.module.clone(),
                journalled: true,
            });
            continue;
        }
        if live::driver_of(host, &a).as_deref() != Some(rb::VFIO_PCI) {
            continue;
        }
        if !configured(&a) {
            return Err(Refusal::error(
                "not_gpts",
                [a],
                format!("refusing: {a} is on vfio-pci, but neither `gpt bind` nor `gpt full` put it there \
                     ({}). Nothing was changed;", origin_hint(host, &a)),
                "give it back the way it was bound",
            ));
        }
        let d = topo.device(&a).expect("targets come from the topology");
        let Some((module, driver)) = host_driver(host, facts, d) else {
            bail!("cannot tell the host driver of {a}: no module of the running kernel's modules.alias matches it; nothing was changed");
        };
        out.push(Back {
            address: a,
            driver,
            module: Some(module),
            journalled: false,
        });
    }
    // Display function first, then the others: the reverse of binding.
    let funcs: Vec<Function> = out
        .iter()
        .filter_map(|b| topo.device(&b.address))
        .map(Function::of)
        .collect();
    let order: Vec<PciAddress> = rb::bind_order(&funcs)
        .iter()
        .rev()
        .map(|f| f.address)
        .collect();
    out.sort_by_key(|b| order.iter().position(|a| *a == b.address));
    Ok(out)
}

/// What else may have put a function on vfio-pci.
fn origin_hint(host: &Host, a: &PciAddress) -> String {
    let driverctl = format!("/etc/driverctl.d/pci-{a}");
    if host.exists(&driverctl) {
        return format!("a driverctl override, {driverctl}: `sudo driverctl unset-override {a}`");
    }
    if live::override_of(host, a).is_some() {
        return "its driver_override was written by hand or by a script".into();
    }
    "vfio-pci.ids= or another tool; libvirt's managed devices are given back by libvirt".into()
}

pub fn unbind(host: &Host, ui: &Ui, args: &crate::cli::BindArgs) -> Result<u8> {
    let session = Session::start(
        host,
        ui,
        args.dry_run,
        args.yes,
        "giving a card back to its drivers needs root: run it with sudo (or add --dry-run to see the steps)",
    )?;
    let facts = Facts::read(host)?;
    let mut journal = live::load_journal(host)?.unwrap_or_else(|| Journal {
        boot_id: live::boot_id(host),
        functions: Vec::new(),
    });
    let backs = to_hand_back(host, &facts, args, &journal)?;
    if backs.is_empty() {
        ui.ok("nothing that gpt bound is on vfio-pci: nothing to hand back");
        return print(ui, false, args.dry_run, Vec::new(), &[], &[]).map(|()| 0);
    }
    let topo = facts.topology()?;
    let addrs: Vec<PciAddress> = backs.iter().map(|b| b.address).collect();
    refuse_holders(host, ui, topo, &addrs, "unbind")?;
    let ids = rb::vfio_ids(
        &facts.cmdline,
        &facts
            .modprobe_d
            .iter()
            .map(|(_, t)| t.clone())
            .collect::<Vec<_>>(),
    );
    let keep: BTreeSet<PciAddress> = backs
        .iter()
        .filter(|b| b.driver.is_some())
        .filter_map(|b| topo.device(&b.address))
        .filter(|d| {
            d.id()
                .is_some_and(|id| rb::ids_match(&ids, &id, d.subsystem().as_deref()))
        })
        .map(|d| d.address)
        .collect();
    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    for b in &backs {
        let target = b.driver.clone().or_else(|| {
            b.module
                .as_ref()
                .filter(|_| !b.journalled)
                .map(|m| format!("<driver of {m}>"))
        });
        steps.extend(rb::restore_steps(
            b.address,
            live::driver_of(host, &b.address).as_deref(),
            target.as_deref(),
            keep.contains(&b.address),
        ));
        if !b.journalled {
            warnings.push(format!("{} goes back to its host driver for this boot only: `gpt full` configured it, and the next boot gives it to vfio-pci again (`sudo gpt reset` undoes that)", b.address));
        }
        if keep.contains(&b.address) {
            warnings.push(format!("{}: driver_override keeps naming {} afterwards, as vfio-pci.ids= on this boot would take it straight back on the next probe", b.address, target.as_deref().unwrap_or("its driver")));
        }
    }
    for w in &warnings {
        ui.warn(w);
    }
    ui.step("Steps:");
    print_steps(ui, &steps);
    let devices: Vec<DeviceJson> = backs
        .iter()
        .map(|b| DeviceJson {
            address: b.address.to_string(),
            from: live::driver_of(host, &b.address),
            to: b.driver.clone().or(b.module.clone()),
        })
        .collect();
    let ask = "Give these functions back to their drivers now?";
    if let Some(code) = dry_run_or_ask(ui, &session, ask, || {
        print(ui, false, true, devices.clone(), &steps, &warnings)
    })? {
        return Ok(code);
    }
    let runner = Runner::new(host, ui);
    let live = Live {
        host,
        runner: &runner,
        timeout: Duration::from_secs(args.timeout),
        keep_override: keep,
    };
    hand_back(&live, host, &backs, &mut journal)?;
    print(ui, true, false, devices, &steps, &warnings)?;
    ui.ok("handed back to the host");
    Ok(0)
}

/// Hand back `backs` (in order); a function of `gpt full`'s card is journalled first too, so a
/// crash half-way leaves it to `gpt unbind`.
fn hand_back(live: &Live, host: &Host, backs: &[Back], journal: &mut Journal) -> Result<()> {
    for b in backs.iter().filter(|b| !b.journalled) {
        let driver = match (&b.driver, &b.module) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(m)) => {
                live.load(m)?;
                registered_driver(host, m)
            }
            (None, None) => None,
        };
        let Some(driver) = driver else {
            bail!("the module {} registers no PCI driver (/sys/module/{}/drivers); {} stays on vfio-pci", b.module.as_deref().unwrap_or("?"), b.module.as_deref().unwrap_or("?"), b.address);
        };
        journal.record(rb::Entry {
            address: b.address.to_string(),
            driver: Some(driver),
            module: b.module.clone(),
            override_before: None,
        });
    }
    let addrs: Vec<PciAddress> = backs.iter().map(|b| b.address).collect();
    let problems = live.hand_back(&addrs, journal);
    if !problems.is_empty() {
        bail!(
            "not every function went back:\n{}",
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

/// For `gpt reset`: hand back everything `gpt bind` bound (before the boot configuration is
/// undone). A dry run only says what it would do.
pub fn hand_back_all(host: &Host, ui: &Ui, dry_run: bool) -> Result<()> {
    let Some(mut journal) = live::load_journal(host)? else {
        return Ok(());
    };
    if journal.functions.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = journal
        .functions
        .iter()
        .map(|e| {
            format!(
                "{} (to {})",
                e.address,
                e.driver.as_deref().unwrap_or("no driver")
            )
        })
        .collect();
    // A VM with the card's /dev/vfio group open (or any other holder): taking the card from
    // under it is not reset's to do, and vfio-pci's release would wait for it.
    let mut addrs: Vec<PciAddress> = journal
        .functions
        .iter()
        .filter_map(|e| PciAddress::parse(&e.address))
        .collect();
    let found = holders::read(host, &addrs, None);
    if let Some(e) = rb::refuse_holders(&found.holds, "reset") {
        return Err(e);
    }
    if dry_run {
        ui.info(format!(
            "would first hand back what `gpt bind` bound: {}",
            list.join(", ")
        ));
        return Ok(());
    }
    ui.step(format!(
        "Handing back what `gpt bind` bound: {}",
        list.join(", ")
    ));
    let runner = Runner::new(host, ui);
    let live = Live {
        host,
        runner: &runner,
        timeout: Duration::from_secs(20),
        keep_override: BTreeSet::new(),
    };
    addrs.reverse();
    let problems = live.hand_back(&addrs, &mut journal);
    if !problems.is_empty() {
        bail!("`gpt bind`'s functions did not all go back, so the boot configuration was left as it is:\n{}\nrun `sudo gpt unbind`, then `sudo gpt reset` again", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"));
    }
    Ok(())
}
