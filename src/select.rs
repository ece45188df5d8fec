//! Which devices go to vfio-pci: the GPU selection policy and the refusals that keep a host
//! bootable. Pure: decides from the topology and what the host says is boot-critical.

use crate::describe::lspci_nn;
use crate::model::BindMode;
use crate::pci::{PciAddress, PciDevice, Topology};
use crate::pciids::Names;
use crate::refusal::Refusal;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub vendor: Option<u16>,
    pub devices: Vec<String>,
    pub all: bool,
    pub force: bool,
    /// Leave the card's functions that sit in IOMMU groups of their own on the host.
    pub gpu_group_only: bool,
    /// The PCI vendor id of the CPU's maker (a fact of the host, see [`crate::pci::cpu_maker`]):
    /// its functions in an APU's slot are not the GPU's.
    pub cpu_maker: Option<u16>,
}

/// The outcome: the GPUs, every device to hand to vfio-pci, and how to bind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub gpus: Vec<PciAddress>,
    /// The functions of the GPUs' cards (in whichever IOMMU group) and, with `--force`, the
    /// other members of their groups; never a bridge. Sorted.
    pub targets: Vec<PciAddress>,
    /// `vendor:device` of the targets, in address order, without repeats.
    pub ids: Vec<String>,
    /// What goes into `vfio-pci.ids=`: `ids`, but `vendor:device:subvendor:subdevice` for a
    /// device whose twin on the host is of another board maker (other subsystem ids).
    pub kernel_ids: Vec<String>,
    pub bind: BindMode,
    /// Devices taken from the host that are not functions of a chosen card (`--force`).
    pub taken: Vec<PciAddress>,
    /// Functions of a chosen card that stay on the host (`--gpu-group-only`).
    pub left: Vec<PciAddress>,
    /// Things the user must hear even though gpt goes ahead.
    pub warnings: Vec<String>,
    /// What the user should see in the plan (the card's other groups).
    pub notes: Vec<String>,
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

/// Drivers a bridge may keep in a group vfio uses: they declare that they manage no DMA.
const BRIDGE_DRIVERS: [&str; 2] = ["pcieport", "shpchp"];

/// What a device does for the host, as the user would miss it.
fn role(dev: &PciDevice) -> &'static str {
    match dev.class.map(|c| (c >> 16, (c >> 8) & 0xff)) {
        Some((0x01, _)) => "the host loses the disks on it",
        Some((0x02, _)) => "the host loses this network connection",
        Some((0x03, _)) => "the host loses the screens on it",
        Some((0x04, _)) => "the host loses this sound device",
        Some((0x0c, 0x03)) => "the host loses the USB ports on it",
        Some((0x10, _)) => {
            "the host loses this encryption device (on an AMD APU, the PSP behind its firmware TPM)"
        }
        Some((0x0c, 0x05)) => "the host loses this SMBus controller (sensors, memory SPD)",
        _ => "the host loses what it does there",
    }
}

/// One device the host gives up, by name and driver, and what that costs.
fn taken_line(dev: &PciDevice, names: &Names) -> String {
    match dev.driver.as_deref() {
        Some(drv) => format!("  {} (driver {drv}: {})", line(dev, names), role(dev)),
        None => format!(
            "  {} (no driver: nothing on the host uses it)",
            line(dev, names)
        ),
    }
}

/// Whether a kernel with the ACS override patch could put `other` in a group of its own:
/// when a PCIe port lacking ACS or a multi-function slot joins them. Devices on a root bus in
/// different slots share a group through aliasing or the root complex, which no override
/// splits.
fn acs_could_split(topo: &Topology, gpu: &PciAddress, other: &PciAddress) -> bool {
    gpu.same_slot(other)
        || topo.device(gpu).is_some_and(|d| d.parent.is_some())
        || topo.device(other).is_some_and(|d| d.parent.is_some())
}

const ACS_CAVEAT: &str = "An ACS override only tells the kernel to treat the devices as \
     isolated: it does not isolate them, and the guest may reach the other devices by DMA.";

/// Pick the GPUs and their cards, or refuse with the reason and the way out.
/// `protected` maps devices the host cannot live without (root disk, default-route NIC) to why.
pub fn select(
    topo: &Topology,
    names: &Names,
    req: &Request,
    protected: &BTreeMap<PciAddress, String>,
) -> Result<Selection> {
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    let gpus = pick_gpus(topo, names, req, &mut warnings)?;
    let (cards, left) = cards(topo, req, &gpus)?;
    let on_cards: Vec<PciAddress> = cards.iter().flat_map(|(_, c)| c.clone()).collect();

    let mut targets: Vec<PciAddress> = Vec::new();
    let mut taken: Vec<PciAddress> = Vec::new();
    let mut seen_groups = Vec::new();
    for (gpu, card) in &cards {
        notes.extend(elsewhere_note(topo, names, gpu, card));
        for g in card_groups(topo, card) {
            if seen_groups.contains(&g) {
                continue;
            }
            seen_groups.push(g);
            let mut shared = Shared {
                warnings: &mut warnings,
                taken: &mut taken,
            };
            let members = group_members(topo, names, req, g, gpu, &on_cards, &mut shared)
                .map_err(|e| force_cannot_help(e, protected))?;
            for a in members {
                if !targets.contains(&a) {
                    targets.push(a);
                }
            }
        }
    }
    targets.sort();
    taken.sort();
    if targets.is_empty() {
        bail!("no device to pass through was found; `gpt iommu --gpu` lists the GPUs and their groups");
    }
    warnings.extend(left_on_host(topo, names, &left));
    refuse_host_critical(&targets, protected)?;
    refuse_only_display(topo, req, &targets, &mut warnings)?;
    warn_boot_display(topo, names, &targets, &mut warnings);
    let (ids, kernel_ids, bind) = binding(topo, &targets, &mut notes, &mut warnings)?;
    Ok(Selection {
        gpus,
        targets,
        ids,
        kernel_ids,
        bind,
        taken,
        left,
        warnings,
        notes,
    })
}

/// A chosen GPU and the functions of its card to take.
type Card = (PciAddress, Vec<PciAddress>);

/// What a group's check adds to: the warnings, and the devices taken from the host.
struct Shared<'a> {
    warnings: &'a mut Vec<String>,
    taken: &'a mut Vec<PciAddress>,
}

/// Each GPU with the functions of its card to take, and the card's functions left on the
/// host (`--gpu-group-only`). The cards come first: a function of one chosen card in
/// another's group is not foreign.
fn cards(
    topo: &Topology,
    req: &Request,
    gpus: &[PciAddress],
) -> Result<(Vec<Card>, Vec<PciAddress>)> {
    let mut cards: Vec<Card> = Vec::new();
    let mut left: Vec<PciAddress> = Vec::new();
    for gpu in gpus {
        let Some((gpu_group, _)) = topo.group_of(gpu) else {
            return Err(Refusal::error(
                "no_iommu_group",
                [gpu],
                format!("{gpu} is in no IOMMU group, so vfio-pci cannot take it;"),
                "`gpt iommu` shows the groups",
            ));
        };
        let mut card = Vec::new();
        for f in topo.card_of(gpu, req.cpu_maker) {
            match topo.device(&f).and_then(|d| d.iommu_group) {
                Some(g) if g == gpu_group || !req.gpu_group_only => card.push(f),
                _ => left.push(f),
            }
        }
        cards.push((*gpu, card));
    }
    Ok((cards, left))
}

/// The IOMMU groups of a card's functions, in their order.
fn card_groups(topo: &Topology, card: &[PciAddress]) -> Vec<u32> {
    let mut groups: Vec<u32> = Vec::new();
    for f in card {
        if let Some((g, _)) = topo.group_of(f) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    groups
}

/// The note that the card has functions in groups of their own, taken with it.
fn elsewhere_note(
    topo: &Topology,
    names: &Names,
    gpu: &PciAddress,
    card: &[PciAddress],
) -> Option<String> {
    let elsewhere: Vec<String> = card
        .iter()
        .filter(|f| topo.group_of(f).map(|(g, _)| g) != topo.group_of(gpu).map(|(g, _)| g))
        .filter_map(|f| topo.device(f))
        .map(|d| {
            format!(
                "{} (group {})",
                line(d, names),
                d.iommu_group.map(|g| g.to_string()).unwrap_or_default()
            )
        })
        .collect();
    if elsewhere.is_empty() {
        return None;
    }
    Some(format!(
            "the card of {gpu} has functions in IOMMU groups of their own, taken with it (--gpu-group-only leaves them on the host): {}",
            elsewhere.join("; ")
        ))
}

/// The members of group `g` (of `gpu`'s card) to give to vfio-pci, bridges aside; refused
/// when a bridge in it is on a host driver, or when it holds devices that are not the card's
/// (taken anyway with `--force`, and said).
fn group_members(
    topo: &Topology,
    names: &Names,
    req: &Request,
    g: u32,
    gpu: &PciAddress,
    on_cards: &[PciAddress],
    shared: &mut Shared,
) -> Result<Vec<PciAddress>> {
    let members: Vec<&PciDevice> = topo.groups[&g]
        .iter()
        .filter_map(|a| topo.device(a))
        .collect();
    let busy_bridges: Vec<&&PciDevice> = members
        .iter()
        .filter(|d| d.is_bridge())
        .filter(|d| {
            d.driver
                .as_deref()
                .is_some_and(|drv| !BRIDGE_DRIVERS.contains(&drv))
        })
        .collect();
    if !busy_bridges.is_empty() {
        let list: Vec<String> = busy_bridges
            .iter()
            .map(|d| {
                format!(
                    "  {} (driver {})",
                    line(d, names),
                    d.driver.as_deref().unwrap_or_default()
                )
            })
            .collect();
        return Err(Refusal::error(
            "bridge_with_driver",
            busy_bridges.iter().map(|d| d.address),
            format!(
                "refusing: IOMMU group {g} of {gpu} holds a bridge that a host driver uses:\n{}\n\
                 gpt never gives a bridge to vfio-pci, and vfio cannot use a group while one of its \
                 members is on such a driver. --force does not override this;",
                list.join("\n")
            ),
            "move the card to a slot in another IOMMU group (`gpt iommu` shows them)",
        ));
    }
    let foreign: Vec<&&PciDevice> = members
        .iter()
        .filter(|d| !d.is_bridge() && !on_cards.contains(&d.address))
        .collect();
    if !foreign.is_empty() {
        let list: Vec<String> = foreign.iter().map(|d| taken_line(d, names)).collect();
        let splittable = foreign
            .iter()
            .all(|d| acs_could_split(topo, gpu, &d.address));
        let they = if foreign.len() == 1 {
            "this device is not a function of the card and would be taken from the host too"
        } else {
            "these devices are not functions of the card and would be taken from the host too"
        };
        let why = if splittable {
            format!(
                "The group is shared because the PCIe path lacks ACS isolation. Choices: move the \
                 card to another slot (CPU-attached slots usually get their own group), enable ACS \
                 in the firmware setup if it offers it, or use a kernel with the ACS override patch \
                 ({ACS_CAVEAT})"
            )
        } else {
            "No ACS setting splits this group (its members share it through the platform). \
             Choice: move the card to another slot."
                .to_string()
        };
        let msg = format!(
            "IOMMU group {g} of {gpu} also holds:\n{}\n{they}: vfio-pci can only take a whole \
             group. {why}",
            list.join("\n")
        );
        if !req.force {
            return Err(Refusal::error(
                "shared_group",
                foreign.iter().map(|d| d.address),
                msg,
                "--force takes the whole group anyway.",
            ));
        }
        shared.warnings.push(format!(
            "--force: IOMMU group {g} of {gpu} is shared; gpt takes from the host:\n{}",
            list.join("\n")
        ));
        shared.taken.extend(foreign.iter().map(|d| d.address));
    }
    Ok(members
        .iter()
        .filter(|d| !d.is_bridge())
        .map(|d| d.address)
        .collect())
}

/// A shared group's refusal offers `--force` only where it would go ahead: when the group
/// also holds a device the host cannot live without, `--force` is refused too, and the
/// refusal says so instead.
fn force_cannot_help(e: anyhow::Error, protected: &BTreeMap<PciAddress, String>) -> anyhow::Error {
    let Some(r) = e
        .downcast_ref::<Refusal>()
        .filter(|r| r.kind == "shared_group")
    else {
        return e;
    };
    let critical: Vec<String> = protected
        .iter()
        .filter(|(a, _)| r.devices.contains(&a.to_string()))
        .map(|(a, why)| format!("{a} ({why})"))
        .collect();
    if critical.is_empty() {
        return e;
    }
    Refusal::error(
        r.kind,
        r.devices.clone(),
        r.message.clone(),
        format!(
            "--force cannot help here: the group also holds {}, which the host cannot live \
             without and gpt never takes; move the card to a slot in another IOMMU group \
             (`gpt iommu` shows them).",
            critical.join(", ")
        ),
    )
}

/// `--gpu-group-only`: a warning for each function of the card that stays on the host.
fn left_on_host(topo: &Topology, names: &Names, left: &[PciAddress]) -> Vec<String> {
    let mut warnings = Vec::new();
    for f in left {
        if let Some(d) = topo.device(f) {
            warnings.push(format!(
                "--gpu-group-only: {} (group {}) is a function of the card and stays on the host{}",
                line(d, names),
                d.iommu_group
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.driver
                    .as_deref()
                    .map(|drv| format!(", on {drv}"))
                    .unwrap_or_default()
            ));
        }
    }

    warnings
}

/// Never, even with --force: devices the host needs to boot or to stay reachable.
fn refuse_host_critical(
    targets: &[PciAddress],
    protected: &BTreeMap<PciAddress, String>,
) -> Result<()> {
    let fatal: Vec<&PciAddress> = targets
        .iter()
        .filter(|a| protected.contains_key(a))
        .collect();
    if !fatal.is_empty() {
        let list: Vec<String> = fatal
            .iter()
            .map(|a| format!("  {a}: {}", protected[a]))
            .collect();
        return Err(Refusal::error(
            "host_critical",
            fatal.iter().copied(),
            format!(
                "refusing: the IOMMU group would take devices this host cannot live without:\n{}\n\
                 Binding them to vfio-pci in the initramfs would make the host unbootable or unreachable. \
                 --force does not override this;",
                list.join("\n")
            ),
            "move the GPU to a slot in another IOMMU group.",
        ));
    }

    Ok(())
}

/// The boot VGA with no other display device: the host would come up headless.
fn refuse_only_display(
    topo: &Topology,
    req: &Request,
    targets: &[PciAddress],
    warnings: &mut Vec<String>,
) -> Result<()> {
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
            let taken: Vec<String> = targets
                .iter()
                .filter_map(|a| topo.device(a))
                .filter(|d| d.is_gpu())
                .map(|d| d.address.to_string())
                .collect();
            let what = if taken.len() > 1 {
                format!(
                    "the boot display, and every display controller of this host would go to \
                     vfio-pci ({})",
                    taken.join(", ")
                )
            } else {
                "the boot display and the only display controller".to_string()
            };
            let msg = format!(
                "{} is {what}: after the reboot the host has no console on a screen (only SSH or a \
                 serial console)",
                bv.address
            );
            if !req.force {
                return Err(Refusal::error(
                    "only_display",
                    [bv.address],
                    format!("refusing: {msg}."),
                    "--force goes ahead anyway.",
                ));
            }
            warnings.push(format!("--force: {msg}"));
        }
    }

    Ok(())
}

/// The display controllers the host keeps for itself (those not going to vfio-pci).
pub fn kept_displays(topo: &Topology, targets: &[PciAddress]) -> Vec<PciAddress> {
    topo.devices
        .values()
        .filter(|d| d.is_gpu() && !targets.contains(&d.address))
        .map(|d| d.address)
        .collect()
}

/// The boot display goes to vfio-pci while another GPU stays: the console goes dark at boot,
/// and the screen is the other GPU's (said, with which one).
fn warn_boot_display(
    topo: &Topology,
    names: &Names,
    targets: &[PciAddress],
    warnings: &mut Vec<String>,
) {
    let kept = kept_displays(topo, targets);
    let Some(bv) = targets
        .iter()
        .filter_map(|a| topo.device(a))
        .find(|d| d.boot_vga)
    else {
        return;
    };
    if kept.is_empty() {
        return; // the only display: refused, or said under --force
    }
    let keeps: Vec<String> = kept
        .iter()
        .filter_map(|a| topo.device(a))
        .map(|d| line(d, names))
        .collect();
    warnings.push(format!(
        "{} is the boot display: from the next boot on, vfio-pci takes it early and the console \
         on its screen goes dark; the host keeps {} for its screen (connect the monitor there, \
         and check the firmware's primary-display setting)",
        bv.address,
        keeps.join(" and ")
    ));
}

/// The ids of the targets, the ids for the kernel command line, and how to bind: by ids,
/// by long ids when identical twins differ in subsystem ids, by address when they do not.
fn binding(
    topo: &Topology,
    targets: &[PciAddress],
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<String>, BindMode)> {
    let mut ids: Vec<String> = Vec::new();
    for a in targets {
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
    // Twins of another board maker differ in their subsystem ids, which vfio-pci.ids= can
    // name: no hook, built in or modular, and the same rescue. Only truly identical cards
    // need binding by address.
    let long =
        |d: &PciDevice| -> Option<String> { Some(format!("{}:{}", d.id()?, d.subsystem()?)) };
    let twin_ids: Vec<String> = twins.iter().filter_map(|d| d.id()).collect();
    let told_apart = twins.iter().all(|t| {
        long(t).is_some_and(|tl| {
            targets
                .iter()
                .filter_map(|a| topo.device(a))
                .filter(|d| d.id() == t.id())
                .all(|d| long(d).is_some_and(|dl| dl != tl))
        })
    });
    let mut kernel_ids: Vec<String> = Vec::new();
    for a in targets {
        let dev = topo.device(a).expect("targets come from the topology");
        let id = dev.id().expect("checked above");
        let k = if twin_ids.contains(&id) {
            long(dev).unwrap_or(id)
        } else {
            id
        };
        if !kernel_ids.contains(&k) {
            kernel_ids.push(k);
        }
    }
    let (have, it) = if twins.len() == 1 {
        ("has", "stays")
    } else {
        ("have", "stay")
    };
    let twin_list = twins
        .iter()
        .map(|d| d.address.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let bind = if twins.is_empty() {
        BindMode::Ids
    } else if told_apart {
        notes.push(format!(
            "{twin_list} {have} the same vendor:device id as a passed device and {it} on the host; \
             its subsystem ids differ, so vfio-pci.ids= names the passed devices by \
             vendor:device:subvendor:subdevice"
        ));
        BindMode::Ids
    } else {
        kernel_ids = ids.clone();
        warnings.push(format!(
            "{twin_list} {have} the same vendor:device id as a passed device and {it} on the host, so gpt binds \
             by address instead of vfio-pci.ids= (the kernel argument gpt.bind=off switches it off)"
        ));
        BindMode::Address
    };
    Ok((ids, kernel_ids, bind))
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
            if dev.is_bridge() {
                return Err(Refusal::error(
                    "bridge",
                    [dev.address],
                    format!(
                        "{} is a bridge ({}): gpt never gives a bridge to vfio-pci, --force or not;",
                        dev.address,
                        lspci_nn(dev, names)
                    ),
                    "pass the GPU behind it (`gpt iommu --gpu` lists them)",
                ));
            }
            if !dev.is_gpu() {
                let msg = format!(
                    "{} is not a display controller ({})",
                    dev.address,
                    lspci_nn(dev, names)
                );
                if !req.force {
                    return Err(Refusal::error(
                        "not_a_gpu",
                        [dev.address],
                        format!("{msg}; `gpt iommu --gpu` lists the GPUs."),
                        "--force passes it anyway.",
                    ));
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
        [] => Err(Refusal::error(
            "no_gpu",
            Vec::<String>::new(),
            format!("no GPU of {} on this host;", vendor_label(vendor)),
            "`gpt iommu --gpu` lists the display controllers",
        )),
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
            Err(Refusal::error(
                "several_gpus",
                many.iter().map(|d| d.address),
                format!(
                    "{} GPUs of {} found:\n{}\n",
                    many.len(),
                    vendor_label(vendor),
                    rows.join("\n")
                ),
                format!(
                    "Choose one with --device {} (repeatable), or take them all with --all",
                    many.iter()
                        .find(|d| !d.boot_vga)
                        .unwrap_or(&many[0])
                        .address
                ),
            ))
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
    fn a_shared_group_holding_a_critical_device_does_not_offer_force() {
        let mut t = rtx_host();
        let sata = dev("0000:00:17.0", (0x8086, 0x06d2), 0x010601, 14);
        t.groups.get_mut(&14).unwrap().push(sata.address);
        t.devices.insert(sata.address, sata);
        let mut protected = BTreeMap::new();
        protected.insert(
            "0000:00:17.0".parse().unwrap(),
            "holds /boot/efi (/dev/sda1)".to_string(),
        );
        let err = select(&t, &Names::default(), &req(0x10de), &protected).unwrap_err();
        let r = err.downcast_ref::<Refusal>().unwrap();
        assert_eq!(r.kind, "shared_group");
        assert!(!r.todo.contains("--force takes"), "{}", r.todo);
        assert!(
            r.todo.contains("--force cannot help") && r.todo.contains("holds /boot/efi"),
            "{}",
            r.todo
        );
        // Without the critical device, --force is offered (and goes ahead).
        let err = select(&t, &Names::default(), &req(0x10de), &none()).unwrap_err();
        assert!(err
            .to_string()
            .contains("--force takes the whole group anyway"));
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
    fn taking_every_display_with_all_says_so_not_only_display() {
        let mut first = dev("0000:01:00.0", (0x10de, 0x1f08), 0x030000, 1);
        first.boot_vga = true;
        let second = dev("0000:02:00.0", (0x10de, 0x2204), 0x030000, 2);
        let t = topo(vec![first, second]);
        let all = Request {
            all: true,
            ..req(0x10de)
        };
        let err = select(&t, &Names::default(), &all, &none())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("only display controller"), "{err}");
        assert!(
            err.contains("every display controller of this host would go to vfio-pci (0000:01:00.0, 0000:02:00.0)"),
            "{err}"
        );
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
        assert!(
            s.warnings[0].contains("0000:02:00.0 has the same"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn twins_of_another_board_maker_are_told_apart_by_subsystem_ids() {
        let sub = |mut d: PciDevice, v: u16, dv: u16| {
            d.subsystem_vendor = Some(v);
            d.subsystem_device = Some(dv);
            d
        };
        let t = topo(vec![
            sub(
                dev("0000:01:00.0", (0x10de, 0x2484), 0x030000, 1),
                0x1043,
                0x87b3,
            ),
            sub(
                dev("0000:01:00.1", (0x10de, 0x228b), 0x040300, 1),
                0x1043,
                0x87b3,
            ),
            sub(
                dev("0000:02:00.0", (0x10de, 0x2484), 0x030000, 2),
                0x3842,
                0x3755,
            ),
            sub(
                dev("0000:02:00.1", (0x10de, 0x228b), 0x040300, 2),
                0x3842,
                0x3755,
            ),
        ]);
        let r = Request {
            devices: vec!["01:00.0".into()],
            ..Request::default()
        };
        let s = select(&t, &Names::default(), &r, &none()).unwrap();
        assert_eq!(s.bind, BindMode::Ids);
        assert_eq!(s.ids, ["10de:2484", "10de:228b"]);
        assert_eq!(s.kernel_ids, ["10de:2484:1043:87b3", "10de:228b:1043:87b3"]);
        assert!(
            s.notes[0].contains("0000:02:00.0, 0000:02:00.1 have the same"),
            "{:?}",
            s.notes
        );
        // Same board maker, same subsystem ids: only an address tells them apart.
        let mut same = t.clone();
        for a in ["0000:02:00.0", "0000:02:00.1"] {
            let d = same.devices.get_mut(&a.parse().unwrap()).unwrap();
            d.subsystem_vendor = Some(0x1043);
            d.subsystem_device = Some(0x87b3);
        }
        let s = select(&same, &Names::default(), &r, &none()).unwrap();
        assert_eq!(s.bind, BindMode::Address);
        assert_eq!(s.kernel_ids, s.ids);
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

    fn behind(mut d: PciDevice, bridge: &str) -> PciDevice {
        d.parent = Some(bridge.parse().unwrap());
        d
    }

    fn drv(mut d: PciDevice, name: &str) -> PciDevice {
        d.driver = Some(name.to_string());
        d
    }

    fn addrs(v: &[PciAddress]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    /// An Arc A770 on an Intel desktop: the card's own switch (8086:4fa1 upstream, 8086:4fa4
    /// downstream ports) below the CPU's root port, the GPU and its audio on two buses.
    fn arc_host(audio_group: u32) -> Topology {
        let mut igpu = dev("0000:00:02.0", (0x8086, 0x4680), 0x030000, 0);
        igpu.boot_vga = true;
        topo(vec![
            igpu,
            drv(
                dev("0000:00:01.0", (0x8086, 0x460d), 0x060400, 1),
                "pcieport",
            ),
            behind(
                drv(
                    dev("0000:01:00.0", (0x8086, 0x4fa1), 0x060400, 1),
                    "pcieport",
                ),
                "0000:00:01.0",
            ),
            behind(
                drv(
                    dev("0000:02:01.0", (0x8086, 0x4fa4), 0x060400, 1),
                    "pcieport",
                ),
                "0000:01:00.0",
            ),
            behind(
                drv(
                    dev("0000:02:04.0", (0x8086, 0x4fa4), 0x060400, 1),
                    "pcieport",
                ),
                "0000:01:00.0",
            ),
            behind(
                drv(dev("0000:03:00.0", (0x8086, 0x56a0), 0x030000, 1), "i915"),
                "0000:02:01.0",
            ),
            behind(
                drv(
                    dev("0000:04:00.0", (0x8086, 0x4f90), 0x040300, audio_group),
                    "snd_hda_intel",
                ),
                "0000:02:04.0",
            ),
            dev("0000:00:17.0", (0x8086, 0x7ae2), 0x010601, 5),
        ])
    }

    fn dev_req(addr: &str) -> Request {
        Request {
            devices: vec![addr.into()],
            cpu_maker: Some(0x8086),
            ..Request::default()
        }
    }

    #[test]
    fn an_arc_card_is_its_gpu_and_the_audio_behind_its_own_switch() {
        for audio_group in [1, 2] {
            let s = select(
                &arc_host(audio_group),
                &Names::default(),
                &dev_req("03:00.0"),
                &none(),
            )
            .unwrap();
            assert_eq!(
                addrs(&s.targets),
                ["0000:03:00.0", "0000:04:00.0"],
                "{audio_group}"
            );
            assert_eq!(s.ids, ["8086:56a0", "8086:4f90"]);
            assert!(s.taken.is_empty() && s.left.is_empty());
            assert_eq!(
                s.notes.len(),
                usize::from(audio_group == 2),
                "{:?}",
                s.notes
            );
        }
        // --gpu-group-only leaves the audio in its own group on the host, and says so.
        let r = Request {
            gpu_group_only: true,
            ..dev_req("03:00.0")
        };
        let s = select(&arc_host(2), &Names::default(), &r, &none()).unwrap();
        assert_eq!(addrs(&s.targets), ["0000:03:00.0"]);
        assert_eq!(addrs(&s.left), ["0000:04:00.0"]);
        assert!(s.warnings[0].contains("0000:04:00.0") && s.warnings[0].contains("snd_hda_intel"));
    }

    #[test]
    fn a_shared_switch_of_another_vendor_is_not_the_card() {
        // An 8-GPU server: a Broadcom switch feeds two GPUs and a NIC, each in its own group.
        let t = topo(vec![
            dev("0000:00:01.0", (0x8086, 0x2030), 0x060400, 1),
            behind(
                dev("0000:01:00.0", (0x10b5, 0x8796), 0x060400, 2),
                "0000:00:01.0",
            ),
            behind(
                dev("0000:02:00.0", (0x10b5, 0x8796), 0x060400, 3),
                "0000:01:00.0",
            ),
            behind(
                dev("0000:02:01.0", (0x10b5, 0x8796), 0x060400, 4),
                "0000:01:00.0",
            ),
            behind(
                dev("0000:03:00.0", (0x10de, 0x20b0), 0x030200, 5),
                "0000:02:00.0",
            ),
            behind(
                dev("0000:04:00.0", (0x10de, 0x20b0), 0x030200, 6),
                "0000:02:01.0",
            ),
            behind(
                dev("0000:04:00.1", (0x10de, 0x1aeb), 0x040300, 7),
                "0000:02:01.0",
            ),
        ]);
        assert_eq!(t.card_switch(&"0000:03:00.0".parse().unwrap()), None);
        let r = Request {
            devices: vec!["03:00.0".into()],
            ..Request::default()
        };
        let s = select(&t, &Names::default(), &r, &none()).unwrap();
        assert_eq!(addrs(&s.targets), ["0000:03:00.0"]);
        // Its own vendor's switch feeding two GPUs is shared too.
        let mut t2 = t.clone();
        for a in ["0000:01:00.0", "0000:02:00.0", "0000:02:01.0"] {
            t2.devices.get_mut(&a.parse().unwrap()).unwrap().vendor = Some(0x10de);
        }
        assert_eq!(t2.card_switch(&"0000:03:00.0".parse().unwrap()), None);
    }

    /// An RX 6800 XT on a board that gives each function its own group: VGA, HDMI audio,
    /// USB-C (xHCI) and the UCSI controller.
    fn rx6800_host() -> Topology {
        let mut igpu = dev("0000:0c:00.0", (0x1002, 0x164e), 0x030000, 30);
        igpu.boot_vga = true;
        topo(vec![
            igpu,
            drv(
                dev("0000:03:00.0", (0x1002, 0x73bf), 0x030000, 20),
                "amdgpu",
            ),
            drv(
                dev("0000:03:00.1", (0x1002, 0xab28), 0x040300, 21),
                "snd_hda_intel",
            ),
            drv(
                dev("0000:03:00.2", (0x1002, 0x73a6), 0x0c0330, 22),
                "xhci_hcd",
            ),
            drv(
                dev("0000:03:00.3", (0x1002, 0x73a4), 0x0c8000, 23),
                "i2c-designware-pci",
            ),
            drv(dev("0000:05:00.0", (0x8086, 0x1539), 0x020000, 24), "igb"),
        ])
    }

    #[test]
    fn an_rx_6000_card_goes_whole_though_its_functions_have_four_groups() {
        let r = Request {
            devices: vec!["03:00.0".into()],
            cpu_maker: Some(0x1022),
            ..Request::default()
        };
        let s = select(&rx6800_host(), &Names::default(), &r, &none()).unwrap();
        assert_eq!(
            addrs(&s.targets),
            [
                "0000:03:00.0",
                "0000:03:00.1",
                "0000:03:00.2",
                "0000:03:00.3"
            ]
        );
        assert_eq!(s.ids, ["1002:73bf", "1002:ab28", "1002:73a6", "1002:73a4"]);
        assert_eq!(s.bind, BindMode::Ids);
        assert!(s.notes[0].contains("group 23"), "{:?}", s.notes);
        // Each group is checked like the GPU's: the NIC in the USB-C function's group.
        let mut t = rx6800_host();
        let nic: PciAddress = "0000:05:00.0".parse().unwrap();
        t.groups.remove(&24);
        t.groups.get_mut(&22).unwrap().push(nic);
        t.devices.get_mut(&nic).unwrap().iommu_group = Some(22);
        let err = select(&t, &Names::default(), &r, &none()).unwrap_err();
        let refusal = err.downcast_ref::<Refusal>().unwrap();
        assert_eq!(refusal.kind, "shared_group");
        assert_eq!(refusal.devices, ["0000:05:00.0"]);
        assert!(
            refusal
                .message
                .starts_with("IOMMU group 22 of 0000:03:00.0"),
            "{err}"
        );
        assert!(refusal.message.contains("driver igb"), "{err}");
        // --gpu-group-only leaves the USB-C function and its shared group alone.
        let only = Request {
            gpu_group_only: true,
            ..r.clone()
        };
        let s = select(&t, &Names::default(), &only, &none()).unwrap();
        assert_eq!(addrs(&s.targets), ["0000:03:00.0"]);
        assert_eq!(s.left.len(), 3);
    }

    /// A laptop APU (Renoir) whose GPU group also holds the platform's dummy host bridge,
    /// the internal port, and the CPU's PSP and USB functions in the GPU's slot.
    fn apu_group(host_bridge_driver: Option<&str>) -> Topology {
        let mut hb = dev("0000:00:08.0", (0x1022, 0x1632), 0x060000, 5);
        hb.driver = host_bridge_driver.map(str::to_string);
        let mut igpu = dev("0000:05:00.0", (0x1002, 0x1636), 0x030000, 5);
        igpu.boot_vga = true;
        igpu.driver = Some("amdgpu".into());
        let below = |d: PciDevice| behind(d, "0000:00:08.1");
        topo(vec![
            hb,
            drv(
                dev("0000:00:08.1", (0x1022, 0x1635), 0x060400, 5),
                "pcieport",
            ),
            below(igpu),
            below(drv(
                dev("0000:05:00.1", (0x1002, 0x1637), 0x040300, 5),
                "snd_hda_intel",
            )),
            below(drv(
                dev("0000:05:00.2", (0x1022, 0x15df), 0x108000, 5),
                "ccp",
            )),
            below(drv(
                dev("0000:05:00.3", (0x1022, 0x1639), 0x0c0330, 5),
                "xhci_hcd",
            )),
            drv(
                dev("0000:01:00.0", (0x10de, 0x1f95), 0x030000, 9),
                "nouveau",
            ),
        ])
    }

    #[test]
    fn an_apu_group_never_gives_up_a_bridge_and_names_what_force_takes() {
        let r = Request {
            devices: vec!["05:00.0".into()],
            cpu_maker: Some(0x1022),
            ..Request::default()
        };
        let t = apu_group(None);
        let err = select(&t, &Names::default(), &r, &none()).unwrap_err();
        let refusal = err.downcast_ref::<Refusal>().unwrap();
        assert_eq!(refusal.kind, "shared_group");
        assert_eq!(refusal.devices, ["0000:05:00.2", "0000:05:00.3"]);
        assert!(
            refusal.message.contains("these devices are not functions"),
            "{err}"
        );
        assert!(
            refusal.message.contains("ACS override")
                && refusal.message.contains("does not isolate")
        );
        let forced = Request {
            force: true,
            ..r.clone()
        };
        let s = select(&t, &Names::default(), &forced, &none()).unwrap();
        assert_eq!(
            addrs(&s.targets),
            [
                "0000:05:00.0",
                "0000:05:00.1",
                "0000:05:00.2",
                "0000:05:00.3"
            ]
        );
        assert!(
            !s.ids.contains(&"1022:1632".to_string()) && !s.ids.contains(&"1022:1635".to_string())
        );
        // Nor when named: a bridge is never a device to pass.
        let bridge = Request {
            devices: vec!["00:08.0".into()],
            ..forced.clone()
        };
        let err = select(&t, &Names::default(), &bridge, &none()).unwrap_err();
        assert_eq!(err.downcast_ref::<Refusal>().unwrap().kind, "bridge");
        assert!(err.to_string().contains("never gives a bridge"), "{err}");
        assert_eq!(addrs(&s.taken), ["0000:05:00.2", "0000:05:00.3"]);
        let w = &s.warnings[0];
        assert!(
            w.contains("0000:05:00.2") && w.contains("driver ccp"),
            "{w}"
        );
        assert!(
            w.contains("driver xhci_hcd: the host loses the USB ports on it"),
            "{w}"
        );
        // A host bridge on a driver makes the group unusable: refused, --force or not.
        let t = apu_group(Some("amd_smn"));
        let err = select(&t, &Names::default(), &forced, &none()).unwrap_err();
        let refusal = err.downcast_ref::<Refusal>().unwrap();
        assert_eq!(refusal.kind, "bridge_with_driver");
        assert_eq!(refusal.devices, ["0000:00:08.0"]);
        assert!(refusal.message.contains("(driver amd_smn)"), "{err}");
    }

    #[test]
    fn no_acs_advice_where_no_override_splits_the_group() {
        // Two devices on the root bus in different slots share a group through the platform.
        let t = topo(vec![
            dev("0000:00:02.0", (0x8086, 0x3e92), 0x030000, 1),
            drv(
                dev("0000:00:14.0", (0x8086, 0xa36d), 0x0c0330, 1),
                "xhci_hcd",
            ),
            dev("0000:01:00.0", (0x10de, 0x1f08), 0x030000, 2),
        ]);
        let err = select(&t, &Names::default(), &dev_req("00:02.0"), &none())
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("ACS override") && err.contains("No ACS setting"),
            "{err}"
        );
        assert!(err.contains("this device is not a function"), "{err}");
    }
}
