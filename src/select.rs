//! Which devices go to vfio-pci: the GPU selection policy and the refusals that keep a host
//! bootable. Pure: decides from the topology and what the host says is boot-critical.

use crate::describe::lspci_nn;
use crate::pci::{PciAddress, PciDevice, Topology};
use crate::pciids::Names;
use crate::state::BindMode;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub vendor: Option<u16>,
    pub devices: Vec<String>,
    pub all: bool,
    pub force: bool,
}

/// The outcome: the GPUs, every device to hand to vfio-pci, and how to bind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub gpus: Vec<PciAddress>,
    /// GPUs and the other functions of their IOMMU groups (bridges aside), sorted.
    pub targets: Vec<PciAddress>,
    /// `vendor:device` of the targets, in address order, without repeats.
    pub ids: Vec<String>,
    pub bind: BindMode,
    /// Things the user must hear even though gpt goes ahead.
    pub warnings: Vec<String>,
}

fn line(dev: &PciDevice, names: &Names) -> String {
    format!("{} {}", dev.address, lspci_nn(dev, names))
}

fn vendor_label(v: u16) -> String {
    match v {
        0x10de => "NVIDIA (10de)".into(),
        0x1002 => "AMD (1002)".into(),
        0x8086 => "Intel (8086)".into(),
        _ => format!("vendor {v:04x}"),
    }
}

/// Pick the GPUs and their group members, or refuse with the reason and the way out.
/// `protected` maps devices the host cannot live without (root disk, default-route NIC) to why.
pub fn select(
    topo: &Topology,
    names: &Names,
    req: &Request,
    protected: &BTreeMap<PciAddress, String>,
) -> Result<Selection> {
    let mut warnings = Vec::new();
    let gpus = pick_gpus(topo, names, req, &mut warnings)?;

    let mut targets: Vec<PciAddress> = Vec::new();
    for gpu in &gpus {
        let Some((group, members)) = topo.group_of(gpu) else {
            bail!(
                "{gpu} is in no IOMMU group, so vfio-pci cannot take it; `gpt iommu` shows the groups"
            );
        };
        let foreign: Vec<&PciDevice> = members
            .iter()
            .filter_map(|a| topo.device(a))
            .filter(|d| !d.is_bridge() && !d.address.same_slot(gpu))
            .collect();
        if !foreign.is_empty() {
            let list: Vec<String> = foreign
                .iter()
                .map(|d| format!("  {}", line(d, names)))
                .collect();
            let msg = format!(
                "IOMMU group {group} of {gpu} also holds devices that are not functions of the GPU:\n{}\n\
                 vfio-pci can only take a whole group, so these would be taken from the host too. \
                 The group is shared because the PCIe path lacks ACS isolation. Choices: move the card \
                 to another slot (CPU-attached slots usually get their own group), enable ACS in the \
                 firmware setup if it offers it, or use a kernel with the ACS override patch. \
                 --force takes the whole group anyway.",
                list.join("\n")
            );
            if !req.force {
                bail!(msg);
            }
            warnings.push(format!("--force: {msg}"));
        }
        for addr in members {
            let Some(dev) = topo.device(addr) else {
                continue;
            };
            if dev.is_bridge() || targets.contains(addr) {
                continue;
            }
            targets.push(*addr);
        }
    }
    targets.sort();
    if targets.is_empty() {
        bail!("no device to pass through was found; `gpt iommu --gpu` lists the GPUs and their groups");
    }

    // Never, even with --force: devices the host needs to boot or to stay reachable.
    let fatal: Vec<String> = targets
        .iter()
        .filter_map(|a| protected.get(a).map(|why| format!("  {a}: {why}")))
        .collect();
    if !fatal.is_empty() {
        bail!(
            "refusing: the IOMMU group would take devices this host cannot live without:\n{}\n\
             Binding them to vfio-pci in the initramfs would make the host unbootable or unreachable. \
             --force does not override this; move the GPU to a slot in another IOMMU group.",
            fatal.join("\n")
        );
    }

    // The boot VGA with no other display device: the host would come up headless.
    let other_display = topo
        .devices
        .values()
        .any(|d| d.is_gpu() && !targets.contains(&d.address));
    if let Some(bv) = targets
        .iter()
        .filter_map(|a| topo.device(a))
        .find(|d| d.boot_vga)
    {
        if !other_display {
            let msg = format!(
                "{} is the boot display and the only display controller: after the reboot the host \
                 has no console on a screen (only SSH or a serial console)",
                bv.address
            );
            if !req.force {
                bail!("refusing: {msg}. --force goes ahead anyway.");
            }
            warnings.push(format!("--force: {msg}"));
        }
    }

    let mut ids: Vec<String> = Vec::new();
    for a in &targets {
        let dev = topo.device(a).expect("targets come from the topology");
        let Some(id) = dev.id() else {
            bail!(
                "cannot read the vendor/device id of {a}: {}",
                dev.problems.join("; ")
            );
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    // An identical device that stays on the host would be grabbed by vfio-pci.ids= too.
    let twins: Vec<&PciDevice> = topo
        .devices
        .values()
        .filter(|d| !targets.contains(&d.address))
        .filter(|d| d.id().is_some_and(|id| ids.contains(&id)))
        .collect();
    let bind = if twins.is_empty() {
        BindMode::Ids
    } else {
        warnings.push(format!(
            "{} has the same vendor:device id as a passed device and stays on the host, so gpt binds \
             by address instead of vfio-pci.ids= (the kernel argument gpt.bind=off switches it off)",
            twins.iter().map(|d| d.address.to_string()).collect::<Vec<_>>().join(", ")
        ));
        BindMode::Address
    };
    Ok(Selection {
        gpus,
        targets,
        ids,
        bind,
        warnings,
    })
}

/// The GPUs the request names (before looking at groups).
pub fn pick_gpus(
    topo: &Topology,
    names: &Names,
    req: &Request,
    warnings: &mut Vec<String>,
) -> Result<Vec<PciAddress>> {
    if !req.devices.is_empty() {
        let mut gpus = Vec::new();
        for wanted in &req.devices {
            let dev = topo.find(wanted)?;
            if let Some(v) = req.vendor {
                if dev.vendor != Some(v) {
                    bail!(
                        "{} is not a device of {} ({}); drop VENDOR or pick another --device",
                        dev.address,
                        vendor_label(v),
                        lspci_nn(dev, names)
                    );
                }
            }
            if !dev.problems.is_empty() {
                bail!(
                    "the sysfs entry of {} is broken ({}), so gpt cannot tell what the device is; \
                     nothing was changed (`gpt iommu` shows the entry; the kernel log may say why, \
                     and --force does not override this)",
                    dev.address,
                    dev.problems.join("; ")
                );
            }
            if !dev.is_gpu() {
                let msg = format!(
                    "{} is not a display controller ({})",
                    dev.address,
                    lspci_nn(dev, names)
                );
                if !req.force {
                    bail!("{msg}; `gpt iommu --gpu` lists the GPUs. --force passes it anyway.");
                }
                warnings.push(format!("--force: {msg}"));
            }
            if !gpus.contains(&dev.address) {
                gpus.push(dev.address);
            }
        }
        return Ok(gpus);
    }
    let Some(vendor) = req.vendor else {
        crate::usage!(
            "give a VENDOR (nvidia, amd, intel or a hex id such as 10de) or --device ADDR"
        );
    };
    let found: Vec<&PciDevice> = topo
        .devices
        .values()
        .filter(|d| d.vendor == Some(vendor) && d.is_gpu())
        .collect();
    match found.as_slice() {
        [] => bail!(
            "no GPU of {} on this host; `gpt iommu --gpu` lists the display controllers",
            vendor_label(vendor)
        ),
        [one] => Ok(vec![one.address]),
        many if req.all => Ok(many.iter().map(|d| d.address).collect()),
        many => {
            let rows: Vec<String> = many
                .iter()
                .map(|d| {
                    format!(
                        "  {}  group {}{}  driver {}  {}",
                        d.address,
                        d.iommu_group
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| "-".into()),
                        if d.boot_vga { "  boot VGA" } else { "" },
                        d.driver.as_deref().unwrap_or("none"),
                        lspci_nn(d, names)
                    )
                })
                .collect();
            bail!(
                "{} GPUs of {} found:\n{}\nChoose one with --device {} (repeatable), or take them all with --all",
                many.len(),
                vendor_label(vendor),
                rows.join("\n"),
                many.iter().find(|d| !d.boot_vga).unwrap_or(&many[0]).address
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(addr: &str, id: (u16, u16), class: u32, group: u32) -> PciDevice {
        let mut d = PciDevice::new(addr.parse().unwrap());
        d.vendor = Some(id.0);
        d.device = Some(id.1);
        d.class = Some(class);
        d.iommu_group = Some(group);
        d
    }

    fn topo(devs: Vec<PciDevice>) -> Topology {
        let mut t = Topology::default();
        for d in devs {
            if let Some(g) = d.iommu_group {
                t.groups.entry(g).or_default().push(d.address);
            }
            t.devices.insert(d.address, d);
        }
        for m in t.groups.values_mut() {
            m.sort();
        }
        t
    }

    fn rtx_host() -> Topology {
        let mut igpu = dev("0000:00:02.0", (0x8086, 0x4c8a), 0x030000, 0);
        igpu.boot_vga = true;
        topo(vec![
            igpu,
            dev("0000:00:01.0", (0x8086, 0x4c01), 0x060400, 14),
            dev("0000:02:00.0", (0x10de, 0x1f08), 0x030000, 14),
            dev("0000:02:00.1", (0x10de, 0x10f9), 0x040300, 14),
            dev("0000:02:00.2", (0x10de, 0x1ada), 0x0c0330, 14),
            dev("0000:02:00.3", (0x10de, 0x1adb), 0x0c8000, 14),
            dev("0000:03:00.0", (0x1cc1, 0x8201), 0x010802, 15),
        ])
    }

    fn req(vendor: u16) -> Request {
        Request {
            vendor: Some(vendor),
            ..Request::default()
        }
    }

    fn none() -> BTreeMap<PciAddress, String> {
        BTreeMap::new()
    }

    #[test]
    fn takes_every_function_of_the_group_but_the_bridge() {
        let s = select(&rtx_host(), &Names::default(), &req(0x10de), &none()).unwrap();
        assert_eq!(s.gpus, vec!["0000:02:00.0".parse().unwrap()]);
        let t: Vec<String> = s.targets.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            t,
            [
                "0000:02:00.0",
                "0000:02:00.1",
                "0000:02:00.2",
                "0000:02:00.3"
            ]
        );
        assert_eq!(s.ids, ["10de:1f08", "10de:10f9", "10de:1ada", "10de:1adb"]);
        assert_eq!(s.bind, BindMode::Ids);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn a_shared_group_is_refused_naming_the_foreign_device_unless_forced() {
        let mut t = rtx_host();
        let sata = dev("0000:00:17.0", (0x8086, 0x06d2), 0x010601, 14);
        t.groups.get_mut(&14).unwrap().push(sata.address);
        t.devices.insert(sata.address, sata);
        let err = select(&t, &Names::default(), &req(0x10de), &none())
            .unwrap_err()
            .to_string();
        assert!(err.contains("0000:00:17.0 Class [0106]"), "{err}");
        assert!(err.contains("ACS") && err.contains("--force"), "{err}");
        let forced = Request {
            force: true,
            ..req(0x10de)
        };
        let s = select(&t, &Names::default(), &forced, &none()).unwrap();
        assert!(s.targets.contains(&"0000:00:17.0".parse().unwrap()));
        assert!(s.warnings[0].starts_with("--force: IOMMU group 14"));
    }

    #[test]
    fn boot_critical_devices_are_refused_even_with_force() {
        let mut t = rtx_host();
        let nvme = dev("0000:02:00.4", (0x1cc1, 0x8201), 0x010802, 14);
        t.groups.get_mut(&14).unwrap().push(nvme.address);
        t.devices.insert(nvme.address, nvme);
        let mut protected = BTreeMap::new();
        protected.insert(
            "0000:02:00.4".parse().unwrap(),
            "holds / (/dev/nvme0n1p2)".to_string(),
        );
        let forced = Request {
            force: true,
            ..req(0x10de)
        };
        let err = select(&t, &Names::default(), &forced, &protected)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0000:02:00.4: holds / (/dev/nvme0n1p2)"),
            "{err}"
        );
        assert!(err.contains("does not override"), "{err}");
    }

    #[test]
    fn several_gpus_need_a_choice() {
        let mut t = rtx_host();
        let second = dev("0000:05:00.0", (0x10de, 0x2331), 0x030200, 20);
        t.groups.insert(20, vec![second.address]);
        t.devices.insert(second.address, second);
        let err = select(&t, &Names::default(), &req(0x10de), &none())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("2 GPUs of NVIDIA (10de) found:"), "{err}");
        assert!(err.contains("0000:05:00.0  group 20  driver none"), "{err}");
        assert!(err.contains("--device 0000:02:00.0"), "{err}");
        let all = Request {
            all: true,
            ..req(0x10de)
        };
        let s = select(&t, &Names::default(), &all, &none()).unwrap();
        assert_eq!(s.gpus.len(), 2);
        assert_eq!(s.targets.len(), 5);
        let one = Request {
            devices: vec!["05:00.0".into()],
            ..Request::default()
        };
        let s = select(&t, &Names::default(), &one, &none()).unwrap();
        assert_eq!(s.ids, ["10de:2331"]);
    }

    #[test]
    fn the_only_display_is_refused_unless_forced() {
        let mut gpu = dev("0000:01:00.0", (0x1002, 0x73bf), 0x030000, 1);
        gpu.boot_vga = true;
        let t = topo(vec![gpu]);
        let err = select(&t, &Names::default(), &req(0x1002), &none())
            .unwrap_err()
            .to_string();
        assert!(err.contains("only display controller"), "{err}");
        let forced = Request {
            force: true,
            ..req(0x1002)
        };
        assert!(select(&t, &Names::default(), &forced, &none()).is_ok());
    }

    #[test]
    fn identical_twins_switch_to_binding_by_address() {
        let t = topo(vec![
            dev("0000:01:00.0", (0x1234, 0x1111), 0x030000, 1),
            dev("0000:01:00.1", (0x8086, 0x293e), 0x040300, 1),
            dev("0000:02:00.0", (0x1234, 0x1111), 0x030000, 2),
        ]);
        let r = Request {
            devices: vec!["0000:01:00.0".into()],
            ..Request::default()
        };
        let s = select(&t, &Names::default(), &r, &none()).unwrap();
        assert_eq!(s.bind, BindMode::Address);
        assert!(s.warnings[0].contains("0000:02:00.0"), "{:?}", s.warnings);
    }

    #[test]
    fn non_display_devices_and_wrong_vendors() {
        let t = rtx_host();
        let r = Request {
            devices: vec!["03:00.0".into()],
            ..Request::default()
        };
        let err = select(&t, &Names::default(), &r, &none())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a display controller") && err.contains("--force"),
            "{err}"
        );
        let err = select(&t, &Names::default(), &req(0x1002), &none())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no GPU of AMD (1002) on this host; `gpt iommu --gpu` lists the display controllers"
        );
        let r = Request {
            devices: vec!["02:00.0".into()],
            ..req(0x1002)
        };
        assert!(select(&t, &Names::default(), &r, &none())
            .unwrap_err()
            .to_string()
            .contains("is not a device of AMD"));
    }
}
