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

/// From this many devices on, they are read by two threads and the IOMMU groups by a third
/// (a thread costs tens of microseconds; a device about 25).
const PARALLEL_FROM: usize = 48;

/// Read every PCI function, every IOMMU group, and the bridge above each function.
pub fn read_topology(host: &Host) -> Result<Topology> {
    read_topology_with(host, PARALLEL_FROM)
}

/// Every PCI function and every IOMMU group, but not the bridges above them (each `parent`
/// stays `None`): all a listing such as `gpt iommu` shows, one system call per device fewer.
/// Not for deciding what a card is ([`Topology::card_of`] needs the bridges).
pub fn read_topology_without_bridges(host: &Host) -> Result<Topology> {
    read(host, PARALLEL_FROM, false)
}

/// [`read_topology`], in threads from `parallel_from` devices on (tests compare both ways).
pub fn read_topology_with(host: &Host, parallel_from: usize) -> Result<Topology> {
    read(host, parallel_from, true)
}

fn read(host: &Host, parallel_from: usize, bridges: bool) -> Result<Topology> {
    let addrs: Vec<PciAddress> = host
        .list_dir(PCI_DEVICES)?
        .iter()
        .filter_map(|name| PciAddress::parse(name))
        .collect();
    // The folder of the device links, opened once: each device's bridge is read from its
    // link in it, one `readlinkat` per device.
    let links = bridges.then(|| host.open_dir(PCI_DEVICES)).flatten();
    let links = links.as_ref();
    let parallel = addrs.len() >= parallel_from
        && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    let (devices, groups) = if parallel {
        std::thread::scope(|s| {
            let (first, second) = addrs.split_at(addrs.len() / 2);
            let groups = s.spawn(|| read_groups(host));
            let rest = s.spawn(|| read_devices(host, links, second));
            let mut devices = read_devices(host, links, first);
            devices.extend(join(rest));
            (devices, join(groups))
        })
    } else {
        (read_devices(host, links, &addrs), read_groups(host))
    };
    let mut topo = Topology::default();
    topo.devices
        .extend(devices.into_iter().map(|d| (d.address, d)));
    for (id, mut members) in groups? {
        for addr in &members {
            let entry = topo.devices.entry(*addr).or_insert_with(|| {
                let mut d = PciDevice::new(*addr);
                d.problems.push(format!(
                    "in IOMMU group {id} but missing from {PCI_DEVICES}"
                ));
                d
            });
            entry.iommu_group = Some(id);
        }
        members.sort();
        topo.groups.insert(id, members);
    }
    Ok(topo)
}

/// A scoped thread's result; its panic goes on in this thread.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The devices at `addrs`, each with its bridge when `links`, the open folder of their links
/// ([`PCI_DEVICES`]), is given; without it, no bridge is read.
fn read_devices(host: &Host, links: Option<&Fd>, addrs: &[PciAddress]) -> Vec<PciDevice> {
    // One buffer for every attribute of these devices.
    let mut buf = Vec::with_capacity(128);
    addrs
        .iter()
        .map(|addr| read_device(host, links, *addr, &mut buf))
        .collect()
}

/// Every IOMMU group with its PCI members (non-PCI members, such as platform devices, are
/// not ours to list).
fn read_groups(host: &Host) -> Result<Vec<(u32, Vec<PciAddress>)>> {
    let mut groups = Vec::new();
    for name in host.list_dir(IOMMU_GROUPS)? {
        let Ok(id) = name.parse::<u32>() else {
            continue;
        };
        let members = host
            .list_dir(format!("{IOMMU_GROUPS}/{name}/devices"))?
            .iter()
            .filter_map(|dev| PciAddress::parse(dev))
            .collect();
        groups.push((id, members));
    }
    Ok(groups)
}

fn read_device(host: &Host, links: Option<&Fd>, addr: PciAddress, buf: &mut Vec<u8>) -> PciDevice {
    let abs = format!("{PCI_DEVICES}/{addr}");
    // One descriptor for the device directory (the `devices/ADDR` link is resolved once); its
    // files are opened relative to it.
    let dir = host.open_dir(&abs);
    let mut dev = match dir
        .as_ref()
        .and_then(|dir| read_device_uevent(host, dir, addr, buf))
    {
        Some(dev) => dev,
        None => read_device_attrs(host, dir, addr, &abs, buf),
    };
    let name = &abs[PCI_DEVICES.len() + 1..];
    dev.parent = links.and_then(|links| parent_of(links, name));
    dev
}

/// The bridge a device sits behind: the folder holding its folder in `/sys/devices`
/// (`…/pci0000:00/0000:00:01.0/0000:01:00.0`), when that is a PCI device. Read from the text
/// of the device's link `name` in the open folder `links`, in one call; nothing is followed.
fn parent_of(links: &Fd, name: &str) -> Option<PciAddress> {
    let target = links.link_target_at(name)?;
    let up = target.parent()?.file_name()?.to_str()?;
    PciAddress::parse(up)
}

/// The ids, class, subsystem and driver of a device from its `uevent` attribute, the way the
/// kernel's `pci_uevent` and the driver core write it:
///
/// ```text
/// DRIVER=nouveau
/// PCI_CLASS=30000
/// PCI_ID=10DE:1F08
/// PCI_SUBSYS_ID=1043:86F0
/// PCI_SLOT_NAME=0000:02:00.0
/// MODALIAS=pci:v000010DEd00001F08sv00001043sd000086F0bc03sc00i00
/// ```
///
/// (`DRIVER=` only when a driver is bound; its value is the driver's name, the same name the
/// `driver` link points at.) The kernel fills it from what it cached at enumeration, without
/// touching config space, so it never wakes a runtime-suspended device.
#[derive(Debug, Default, PartialEq, Eq)]
struct Uevent {
    id: (u16, u16),
    class: u32,
    subsys: (u16, u16),
    driver: Option<String>,
}

impl Uevent {
    /// `None` unless PCI_ID, PCI_CLASS and PCI_SUBSYS_ID are all there and well-formed, and a
    /// PCI_SLOT_NAME, if any, is `addr`.
    fn parse(bytes: &[u8], addr: PciAddress) -> Option<Uevent> {
        fn hex(v: &[u8]) -> Option<u32> {
            if v.is_empty() || v.len() > 8 || !v.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            u32::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
        }
        fn pair(v: &[u8]) -> Option<(u16, u16)> {
            let colon = v.iter().position(|b| *b == b':')?;
            let a = u16::try_from(hex(&v[..colon])?).ok()?;
            let b = u16::try_from(hex(&v[colon + 1..])?).ok()?;
            Some((a, b))
        }
        let (mut id, mut class, mut subsys, mut driver) = (None, None, None, None);
        for line in bytes.split(|b| *b == b'\n') {
            let Some(eq) = line.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (key, value) = (&line[..eq], &line[eq + 1..]);
            match key {
                b"PCI_ID" => id = Some(pair(value)?),
                b"PCI_SUBSYS_ID" => subsys = Some(pair(value)?),
                b"PCI_CLASS" => class = Some(hex(value).filter(|c| *c <= 0xff_ffff)?),
                b"DRIVER" if !value.is_empty() => {
                    driver = Some(String::from_utf8_lossy(value).into_owned());
                }
                b"PCI_SLOT_NAME" => {
                    let slot = PciAddress::parse(std::str::from_utf8(value).ok()?)?;
                    if slot != addr {
                        return None;
                    }
                }
                _ => {}
            }
        }
        Some(Uevent {
            id: id?,
            class: class?,
            subsys: subsys?,
            driver,
        })
    }
}

/// A device read from `uevent` and `revision` (and `boot_vga` for VGA) in its open directory:
/// two or three files instead of six attributes and the `driver` link. `None` when a file is
/// missing or does not parse, or is a symlink under a foreign root: then [`read_device_attrs`] reads the attributes one
/// by one and says what is wrong with which.
fn read_device_uevent(
    host: &Host,
    dir: &Fd,
    addr: PciAddress,
    buf: &mut Vec<u8>,
) -> Option<PciDevice> {
    // Under a foreign root a symlinked file fails here (O_NOFOLLOW) and the attributes path
    // resolves it inside the root.
    let nofollow = !host.is_real_root();
    dir.open_at("uevent", nofollow).ok()?.read_into(buf).ok()?;
    let ev = Uevent::parse(buf, addr)?;
    dir.open_at("revision", nofollow)
        .ok()?
        .read_into(buf)
        .ok()?;
    let rev = std::str::from_utf8(buf).ok()?.trim();
    let rev = u8::from_str_radix(rev.trim_start_matches("0x"), 16).ok()?;
    let mut dev = PciDevice::new(addr);
    dev.vendor = Some(ev.id.0);
    dev.device = Some(ev.id.1);
    dev.class = Some(ev.class);
    dev.revision = Some(rev);
    dev.subsystem_vendor = Some(ev.subsys.0);
    dev.subsystem_device = Some(ev.subsys.1);
    dev.boot_vga = is_vga(Some(ev.class))
        && read_attr(host, dir, &format!("{PCI_DEVICES}/{addr}"), "boot_vga", buf)
            .is_ok_and(|v| v.trim() == "1");
    dev.driver = ev.driver;
    Some(dev)
}

/// The kernel gives boot_vga only to VGA devices (class 0300, or 0001 from before class
/// codes); looking for it elsewhere would be one failed open per device.
fn is_vga(class: Option<u32>) -> bool {
    class.is_none_or(|c| matches!(c >> 8, 0x0300 | 0x0001))
}

/// A device read attribute by attribute, each failure recorded as a problem of the device.
fn read_device_attrs(
    host: &Host,
    dir: Option<Fd>,
    addr: PciAddress,
    abs: &str,
    buf: &mut Vec<u8>,
) -> PciDevice {
    let mut dev = PciDevice::new(addr);
    let Some(dir) = dir else {
        dev.problems.push(match host.resolve(abs) {
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
        match read_attr(host, &dir, abs, name, buf) {
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
    dev.boot_vga =
        is_vga(class) && read_attr(host, &dir, abs, "boot_vga", buf).is_ok_and(|v| v.trim() == "1");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    #[test]
    fn a_uevent_as_the_kernel_writes_it() {
        let text = b"DRIVER=nvidia-gpu\nPCI_CLASS=C8000\nPCI_ID=10DE:1ADB\nPCI_SUBSYS_ID=1043:86F0\nPCI_SLOT_NAME=0000:02:00.3\nMODALIAS=pci:v000010DEd00001ADBsv00001043sd000086F0bc0Csc80i00\n";
        assert_eq!(
            Uevent::parse(text, addr("0000:02:00.3")),
            Some(Uevent {
                id: (0x10de, 0x1adb),
                class: 0x0c8000,
                subsys: (0x1043, 0x86f0),
                driver: Some("nvidia-gpu".into()),
            })
        );
        // Unbound: no DRIVER line. A class with leading zeros dropped (`%04X`).
        let text = b"PCI_CLASS=10802\nPCI_ID=144D:A808\nPCI_SUBSYS_ID=144D:A801\nPCI_SLOT_NAME=0000:03:00.0\n";
        let ev = Uevent::parse(text, addr("03:00.0")).unwrap();
        assert_eq!((ev.class, ev.driver), (0x010802, None));
        let text = b"PCI_CLASS=0000\nPCI_ID=1234:0001\nPCI_SUBSYS_ID=0000:0000\n";
        assert_eq!(Uevent::parse(text, addr("00:01.0")).unwrap().class, 0);
    }

    #[test]
    fn a_uevent_that_does_not_parse_is_none() {
        let ok = "PCI_CLASS=30000\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=1043:86F0\nPCI_SLOT_NAME=0000:02:00.0\n";
        assert!(Uevent::parse(ok.as_bytes(), addr("02:00.0")).is_some());
        let broken = [
            "",
            "garbage",
            // each required key missing
            "PCI_ID=10DE:1F08\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=30000\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=30000\nPCI_ID=10DE:1F08\n",
            // malformed values
            "PCI_CLASS=zz\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=1000000\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=30000\nPCI_ID=10DE1F08\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=30000\nPCI_ID=10DE:1F080\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=30000\nPCI_ID=:1F08\nPCI_SUBSYS_ID=1043:86F0\n",
            "PCI_CLASS=30000\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=+043:86F0\n",
            // another device's uevent
            "PCI_CLASS=30000\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=1043:86F0\nPCI_SLOT_NAME=0000:02:00.1\n",
            "PCI_CLASS=30000\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=1043:86F0\nPCI_SLOT_NAME=x\n",
        ];
        for text in broken {
            assert_eq!(
                Uevent::parse(text.as_bytes(), addr("02:00.0")),
                None,
                "{text:?}"
            );
        }
    }
}
