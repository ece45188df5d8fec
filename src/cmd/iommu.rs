//! `gpt iommu`: list IOMMU groups with device names, ids and the driver in use.

use crate::cli::IommuArgs;
use crate::describe::{lspci_nn, DeviceJson};
use crate::host::Host;
use crate::pci::{PciAddress, PciDevice, Topology};
use crate::pciids::Names;
use crate::sysfs;
use crate::ui::Ui;
use anyhow::{bail, Result};
use console::Style;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Serialize)]
struct GroupJson {
    id: u32,
    devices: Vec<DeviceJson>,
}

#[derive(Serialize)]
struct ListingJson {
    iommu_enabled: bool,
    groups: Vec<GroupJson>,
    /// Devices in no IOMMU group (all of them when the IOMMU is off).
    ungrouped: Vec<DeviceJson>,
}

pub fn run(host: &Host, ui: &Ui, args: &IommuArgs) -> Result<u8> {
    // The listing shows no bridge: they are not read.
    let topo = sysfs::read_topology_without_bridges(host)?;
    let names = sysfs::load_names(host, &topo);
    let groups: Vec<(u32, &Vec<PciAddress>)> = topo
        .groups
        .iter()
        .filter(|(id, _)| args.group.is_none_or(|g| g == **id))
        .filter(|(_, members)| !args.gpu || members.iter().any(|a| is_gpu(&topo, a)))
        .map(|(id, m)| (*id, m))
        .collect();
    if let Some(g) = args.group {
        if topo.iommu_enabled() && groups.is_empty() {
            bail!(
                "there is no IOMMU group {g} on this host; `gpt iommu` lists the {} groups",
                topo.groups.len()
            );
        }
    }
    let ungrouped: Vec<&PciDevice> = topo
        .devices
        .values()
        .filter(|d| d.iommu_group.is_none())
        .filter(|d| !args.gpu || d.is_gpu())
        .filter(|_| args.group.is_none())
        .collect();

    if ui.json {
        let doc = ListingJson {
            iommu_enabled: topo.iommu_enabled(),
            groups: groups
                .iter()
                .map(|(id, members)| GroupJson {
                    id: *id,
                    devices: members
                        .iter()
                        .filter_map(|a| topo.device(a))
                        .map(|d| DeviceJson::new(d, &names))
                        .collect(),
                })
                .collect(),
            ungrouped: ungrouped
                .iter()
                .map(|d| DeviceJson::new(d, &names))
                .collect(),
        };
        ui.print_json(&doc)?;
    } else {
        // The whole listing is built in memory and written at once.
        let mut out = String::with_capacity(160 * topo.devices.len() + 20 * groups.len());
        for (id, members) in &groups {
            let _ = writeln!(out, "IOMMU group {id}");
            for addr in *members {
                if let Some(dev) = topo.device(addr) {
                    device_lines(&mut out, dev, &names);
                }
            }
        }
        if !ungrouped.is_empty() {
            out.push_str(if topo.iommu_enabled() {
                "Not in any IOMMU group\n"
            } else {
                "PCI devices (no IOMMU groups)\n"
            });
            for dev in &ungrouped {
                device_lines(&mut out, dev, &names);
            }
        }
        crate::ui::out(&out);
    }

    if !topo.iommu_enabled() {
        ui.warn(
            "the IOMMU is not enabled: there are no IOMMU groups in /sys/kernel/iommu_groups.\n\
             Enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup; \
             `sudo gpt full VENDOR` then adds the kernel arguments (reboot, and run it again).",
        );
        return Ok(1);
    }
    for dev in topo.devices.values().filter(|d| !d.problems.is_empty()) {
        ui.warn(format!("{}: {}", dev.address, dev.problems.join("; ")));
    }
    Ok(0)
}

fn is_gpu(topo: &Topology, addr: &PciAddress) -> bool {
    topo.device(addr).is_some_and(PciDevice::is_gpu)
}

/// Append a device's lines: the `lspci -nn`-style line, its driver and any problems.
fn device_lines(out: &mut String, dev: &PciDevice, names: &Names) {
    let desc = lspci_nn(dev, names);
    if dev.is_gpu() {
        let line = format!(
            "  {} {}",
            dev.address.short(),
            crate::printable::clean(&desc)
        );
        let tag = if dev.boot_vga {
            "[GPU, boot VGA]"
        } else {
            "[GPU]"
        };
        let style = Style::new().bold().magenta();
        let _ = write!(out, "{} {}", style.apply_to(line), style.apply_to(tag));
    } else {
        let _ = write!(out, "  {} {desc}", dev.address.short());
    }
    let driver = dev.driver.as_deref().unwrap_or("none");
    let _ = writeln!(out, "\n      driver: {driver}");
    for p in &dev.problems {
        let _ = writeln!(out, "      problem: {p}");
    }
}
