//! Read the PCI devices and IOMMU groups of a host from its sysfs, and their names from pci.ids.
//!
//! A broken or partial entry (missing attribute, dangling link) is recorded as a problem of
//! that device, never a panic and never a failure of the whole listing.

use crate::host::{Fd, Host};
use crate::pci::{PciAddress, PciDevice, Topology};
use crate::pciids::{Names, Wanted};
use anyhow::Result;
use std::io;
use std::path::PathBuf;

pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";
pub const IOMMU_GROUPS: &str = "/sys/kernel/iommu_groups";

/// Where pci.ids may live on a Debian/Ubuntu host, in order of preference.
const PCI_IDS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// Read every PCI function and every IOMMU group.
pub fn read_topology(host: &Host) -> Result<Topology> {
    let mut topo = Topology::default();
    // One buffer for every attribute of every device.
    let mut buf = Vec::with_capacity(128);
    for name in host.list_dir(PCI_DEVICES)? {
        if let Some(addr) = PciAddress::parse(&name) {
            topo.devices.insert(addr, read_device(host, addr, &mut buf));
        }
    }
    for name in host.list_dir(IOMMU_GROUPS)? {
        let Ok(id) = name.parse::<u32>() else {
            continue;
        };
        let mut members = Vec::new();
        for dev in host.list_dir(format!("{IOMMU_GROUPS}/{name}/devices"))? {
            let Some(addr) = PciAddress::parse(&dev) else {
                continue; // non-PCI members (platform devices) are not ours to list
            };
            let entry = topo.devices.entry(addr).or_insert_with(|| {
                let mut d = PciDevice::new(addr);
                d.problems.push(format!(
                    "in IOMMU group {id} but missing from {PCI_DEVICES}"
                ));
                d
            });
            entry.iommu_group = Some(id);
            members.push(addr);
        }
        members.sort();
        topo.groups.insert(id, members);
    }
    Ok(topo)
}

fn read_device(host: &Host, addr: PciAddress, buf: &mut Vec<u8>) -> PciDevice {
    let mut dev = PciDevice::new(addr);
    let abs = format!("{PCI_DEVICES}/{addr}");
    // One descriptor for the device directory; its attributes are opened relative to it.
    let Some(dir) = host.open_dir(&abs) else {
        dev.problems.push(match host.resolve(&abs) {
            Ok(dir) if !dir.is_dir() => format!(
                "{abs} is a dangling link (points to {}, which does not exist)",
                dir.strip_prefix(host.root()).unwrap_or(&dir).display()
            ),
            Ok(_) => format!("{abs}: cannot open the directory"),
            Err(e) => format!("{abs}: {e:#}"),
        });
        return dev;
    };
    let mut attr = |name: &str| -> Option<u32> {
        match read_attr(host, &dir, &abs, name, buf) {
            Ok(text) => {
                let t = text.trim();
                let parsed = u32::from_str_radix(t.trim_start_matches("0x"), 16).ok();
                if parsed.is_none() {
                    dev.problems
                        .push(format!("{name} holds '{t}', not a hex number"));
                }
                parsed
            }
            Err(e) => {
                dev.problems.push(format!("cannot read {name}: {e}"));
                None
            }
        }
    };
    let vendor = attr("vendor").and_then(|v| u16::try_from(v).ok());
    let device = attr("device").and_then(|v| u16::try_from(v).ok());
    let class = attr("class").filter(|c| *c <= 0xff_ffff);
    let revision = attr("revision").and_then(|v| u8::try_from(v).ok());
    let subsystem_vendor = attr("subsystem_vendor").and_then(|v| u16::try_from(v).ok());
    let subsystem_device = attr("subsystem_device").and_then(|v| u16::try_from(v).ok());
    dev.vendor = vendor;
    dev.device = device;
    dev.class = class;
    dev.revision = revision;
    dev.subsystem_vendor = subsystem_vendor;
    dev.subsystem_device = subsystem_device;
    // The kernel gives boot_vga only to VGA devices (class 0300, or 0001 from before class
    // codes); looking for it elsewhere would be one failed open per device.
    dev.boot_vga = class.is_none_or(|c| matches!(c >> 8, 0x0300 | 0x0001))
        && read_attr(host, &dir, &abs, "boot_vga", buf).is_ok_and(|v| v.trim() == "1");
    dev.driver = dir.link_name_at("driver");
    dev
}

/// Read a sysfs attribute of an open device directory (`abs` is its path on the host) into
/// `buf`. Attributes are plain files; under a foreign root, one that is a symlink is resolved
/// inside the root, never outside.
fn read_attr<'b>(
    host: &Host,
    dir: &Fd,
    abs: &str,
    name: &str,
    buf: &'b mut Vec<u8>,
) -> io::Result<&'b str> {
    match dir.open_at(name, !host.is_real_root()) {
        Ok(file) => file.read_into(buf)?,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            *buf = host.read(format!("{abs}/{name}"))?;
        }
        Err(e) => return Err(e),
    }
    std::str::from_utf8(buf).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// The pci.ids file to use: the root's, else (under a foreign root) this machine's.
/// `GPT_PCI_IDS` overrides: a path, or empty for none (tests use it for stable output).
pub fn pci_ids_path(host: &Host) -> Option<PathBuf> {
    if let Some(over) = std::env::var_os("GPT_PCI_IDS") {
        return (!over.is_empty()).then(|| PathBuf::from(over));
    }
    let in_root = PCI_IDS
        .iter()
        .map(|p| host.resolve(p))
        .filter_map(Result::ok)
        .find(|p| p.is_file());
    in_root.or_else(|| {
        PCI_IDS
            .iter()
            .map(PathBuf::from)
            .find(|p| !host.is_real_root() && p.is_file())
    })
}

/// Names for every device of `topo`, from pci.ids when there is one (empty otherwise).
pub fn load_names(host: &Host, topo: &Topology) -> Names {
    let Some(path) = pci_ids_path(host) else {
        return Names::default();
    };
    let Ok(file) = std::fs::File::open(&path) else {
        return Names::default();
    };
    let mut wanted = Wanted::default();
    for d in topo.devices.values() {
        if let Some(v) = d.vendor {
            wanted.vendors.insert(v);
            if let Some(id) = d.device {
                wanted.devices.insert((v, id));
            }
        }
        if let Some(c) = d.class_code() {
            wanted.classes.insert(((c >> 8) as u8, c as u8));
        }
    }
    // Streamed in 64 KiB pieces: the database is never held whole.
    let reader = std::io::BufReader::with_capacity(64 * 1024, file);
    Names::parse_reader(reader, &wanted).unwrap_or_default()
}
