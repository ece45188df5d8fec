//! The PCI/IOMMU model: addresses, devices, groups. Pure: no I/O.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A PCI address with its full domain (`0000:02:00.0`; Intel VMD domains have 5 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    /// `02:00.0` as lspci prints it in domain 0, the full form otherwise.
    pub fn short(&self) -> String {
        if self.domain == 0 {
            format!("{:02x}:{:02x}.{:x}", self.bus, self.device, self.function)
        } else {
            self.to_string()
        }
    }

    /// Same physical slot (domain, bus, device): functions of one card.
    pub fn same_slot(&self, other: &PciAddress) -> bool {
        (self.domain, self.bus, self.device) == (other.domain, other.bus, other.device)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl PciAddress {
    /// Parse `DOMAIN:BUS:DEV.FN` or `BUS:DEV.FN` (domain 0), hex, any case; `None` if it is
    /// not one. Cheap: used to filter directory names and path components.
    pub fn parse(s: &str) -> Option<PciAddress> {
        let mut parts = s.split(':');
        let (a, b, c) = (parts.next()?, parts.next()?, parts.next());
        if parts.next().is_some() {
            return None;
        }
        let (domain, bus, rest) = match c {
            None => ("0", a, b),
            Some(c) => (a, b, c),
        };
        let (dev, func) = rest.split_once('.')?;
        let hex = |t: &str, max_len: usize| -> Option<u32> {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(t, 16).ok()
        };
        let (domain, bus) = (hex(domain, 8)?, hex(bus, 2)?);
        let (device, function) = (hex(dev, 2)?, hex(func, 1)?);
        if device > 0x1f || function > 7 {
            return None;
        }
        Some(PciAddress {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl FromStr for PciAddress {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        PciAddress::parse(s).ok_or_else(|| {
            anyhow::anyhow!(
                "'{s}' is not a PCI address; expected the form 0000:02:00.0 or 02:00.0 (see `gpt iommu`)"
            )
        })
    }
}

/// One PCI function as sysfs describes it. Attributes that could not be read are `None`
/// and explained in `problems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    pub address: PciAddress,
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    /// The 24-bit class: base class, subclass, programming interface.
    pub class: Option<u32>,
    pub revision: Option<u8>,
    pub subsystem_vendor: Option<u16>,
    pub subsystem_device: Option<u16>,
    pub boot_vga: bool,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// The bridge (port) this function sits behind; `None` on a root bus.
    pub parent: Option<PciAddress>,
    pub problems: Vec<String>,
}

impl PciDevice {
    pub fn new(address: PciAddress) -> Self {
        PciDevice {
            address,
            vendor: None,
            device: None,
            class: None,
            revision: None,
            subsystem_vendor: None,
            subsystem_device: None,
            boot_vga: false,
            driver: None,
            iommu_group: None,
            parent: None,
            problems: Vec::new(),
        }
    }

    /// Base class and subclass, `0x0300` for a VGA controller.
    pub fn class_code(&self) -> Option<u16> {
        self.class.map(|c| (c >> 8) as u16)
    }

    /// Display controllers (base class 0x03: VGA 0300, 3D 0302, other 0380) are GPUs.
    pub fn is_gpu(&self) -> bool {
        self.class.is_some_and(|c| c >> 16 == 0x03)
    }

    /// Bridges of every kind (base class 0x06: host, ISA/LPC, PCI-to-PCI, …) stay with the
    /// host: vfio-pci never takes them and their ids never go on the command line.
    pub fn is_bridge(&self) -> bool {
        self.class.is_some_and(|c| c >> 16 == 0x06)
    }

    /// A PCI-to-PCI bridge (a PCIe port or a switch port), which devices sit behind.
    pub fn is_port(&self) -> bool {
        self.class_code() == Some(0x0604)
    }

    /// `10de:1f08`, or `None` if either half is unknown.
    pub fn id(&self) -> Option<String> {
        Some(format!("{:04x}:{:04x}", self.vendor?, self.device?))
    }

    pub fn subsystem(&self) -> Option<String> {
        Some(format!(
            "{:04x}:{:04x}",
            self.subsystem_vendor?, self.subsystem_device?
        ))
    }
}

/// Every PCI function of a host and, when the IOMMU is on, its groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub devices: BTreeMap<PciAddress, PciDevice>,
    /// Group number → member addresses (sorted). Empty when the IOMMU is off.
    pub groups: BTreeMap<u32, Vec<PciAddress>>,
}

impl Topology {
    /// Every display controller (class 03), in address order.
    pub fn gpus(&self) -> Vec<PciAddress> {
        self.devices
            .values()
            .filter(|d| d.is_gpu())
            .map(|d| d.address)
            .collect()
    }

    pub fn iommu_enabled(&self) -> bool {
        !self.groups.is_empty()
    }

    pub fn device(&self, addr: &PciAddress) -> Option<&PciDevice> {
        self.devices.get(addr)
    }

    /// The members of `addr`'s IOMMU group (sorted), or `None` without a group.
    pub fn group_of(&self, addr: &PciAddress) -> Option<(u32, &[PciAddress])> {
        let id = self.devices.get(addr)?.iommu_group?;
        self.groups.get(&id).map(|m| (id, m.as_slice()))
    }

    /// The bridges above `addr`, nearest first.
    pub fn ancestors(&self, addr: &PciAddress) -> Vec<PciAddress> {
        let mut out = Vec::new();
        let mut cur = self.devices.get(addr).and_then(|d| d.parent);
        while let Some(p) = cur {
            if out.contains(&p) {
                break;
            }
            out.push(p);
            cur = self.devices.get(&p).and_then(|d| d.parent);
        }
        out
    }

    /// The switch a card carries on board (Intel Arc and Battlemage): the upstream port above
    /// the GPU's downstream port, when both carry the GPU's vendor id, every port directly
    /// below it does too, and the only display controllers below it are the GPU's slot. A
    /// server's shared switch (another vendor's, or feeding other devices) is not the card.
    pub fn card_switch(&self, gpu: &PciAddress) -> Option<PciAddress> {
        let g = self.devices.get(gpu)?;
        let vendor = g.vendor?;
        let up = self.ancestors(gpu);
        let (down, upstream) = (up.first()?, up.get(1)?);
        let ours = |a: &PciAddress| {
            self.devices
                .get(a)
                .is_some_and(|d| d.is_port() && d.vendor == Some(vendor))
        };
        if !ours(down) || !ours(upstream) {
            return None;
        }
        // The slot's port sits above the switch; a switch on the root bus is the platform's.
        self.devices.get(upstream)?.parent?;
        let below: Vec<&PciDevice> = self
            .devices
            .values()
            .filter(|d| self.ancestors(&d.address).contains(upstream))
            .collect();
        let ports_ours = below
            .iter()
            .filter(|d| d.parent.as_ref() == Some(upstream))
            .all(|d| ours(&d.address));
        let other_gpu = below
            .iter()
            .any(|d| d.is_gpu() && !d.address.same_slot(gpu));
        (ports_ours && !other_gpu).then_some(*upstream)
    }

    /// The functions of the card that holds `gpu`: the functions of its slot (but those with
    /// the vendor id of the CPU's maker, `cpu_maker`, when the GPU is not the CPU maker's: an
    /// APU's slot also holds the PSP and USB functions of the CPU, which are not the GPU), and
    /// the endpoints with the GPU's vendor id below the card's own switch. Sorted; bridges never.
    pub fn card_of(&self, gpu: &PciAddress, cpu_maker: Option<u16>) -> Vec<PciAddress> {
        let Some(vendor) = self.devices.get(gpu).and_then(|d| d.vendor) else {
            return vec![*gpu];
        };
        let switch = self.card_switch(gpu);
        let mut out: Vec<PciAddress> = self
            .devices
            .values()
            .filter(|d| !d.is_bridge())
            .filter(|d| {
                let slot = d.address.same_slot(gpu)
                    && (d.vendor == Some(vendor) || d.vendor.is_none_or(|v| Some(v) != cpu_maker));
                let switch = d.vendor == Some(vendor)
                    && switch.is_some_and(|s| self.ancestors(&d.address).contains(&s));
                slot || switch
            })
            .map(|d| d.address)
            .collect();
        if !out.contains(gpu) {
            out.push(*gpu);
        }
        out.sort();
        out
    }

    /// Find a device by a user-given address: the full form, or the short form in any domain
    /// when it is unambiguous.
    pub fn find(&self, wanted: &str) -> Result<&PciDevice> {
        let addr: PciAddress = wanted.parse()?;
        if let Some(dev) = self.devices.get(&addr) {
            return Ok(dev);
        }
        let has_domain = wanted.matches(':').count() == 2;
        if !has_domain {
            let matches: Vec<&PciDevice> = self
                .devices
                .values()
                .filter(|d| {
                    (d.address.bus, d.address.device, d.address.function)
                        == (addr.bus, addr.device, addr.function)
                })
                .collect();
            match matches.as_slice() {
                [one] => return Ok(one),
                [] => {}
                many => bail!(
                    "'{wanted}' matches {} devices in different PCI domains ({}); give the full address",
                    many.len(),
                    many.iter().map(|d| d.address.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        bail!("no PCI device at {wanted}; `gpt iommu` lists the devices of this host")
    }
}

/// The PCI vendor id of the CPU's maker, from the vendor string in /proc/cpuinfo.
pub fn cpu_maker(cpu_vendor: Option<&str>) -> Option<u16> {
    match cpu_vendor? {
        "GenuineIntel" => Some(0x8086),
        "AuthenticAMD" | "HygonGenuine" => Some(0x1022),
        _ => None,
    }
}

/// The vendor ids gpt knows by name.
pub fn vendor_by_name(name: &str) -> Option<u16> {
    match name.to_ascii_lowercase().as_str() {
        "nvidia" => Some(0x10de),
        "amd" | "ati" => Some(0x1002),
        "intel" => Some(0x8086),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_both_forms_and_keep_long_domains() {
        let a: PciAddress = "0000:02:00.0".parse().unwrap();
        assert_eq!(a.to_string(), "0000:02:00.0");
        assert_eq!(a.short(), "02:00.0");
        let b: PciAddress = "02:00.0".parse().unwrap();
        assert_eq!(a, b);
        let vmd: PciAddress = "10000:e1:00.0".parse().unwrap();
        assert_eq!(vmd.domain, 0x10000);
        assert_eq!(vmd.to_string(), "10000:e1:00.0");
        assert_eq!(vmd.short(), "10000:e1:00.0");
        let upper: PciAddress = "0000:0A:1F.7".parse().unwrap();
        assert_eq!(upper.to_string(), "0000:0a:1f.7");
    }

    #[test]
    fn bad_addresses_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "02:00",
            "02-00.0",
            "0000:02:00.8",
            "0000:02:20.0",
            "zz:00.0",
            "02:00.0;rm",
            "1:2:3:4.0",
            "٠٢:00.0",
            "0000:002:00.0",
        ] {
            let err = bad.parse::<PciAddress>().unwrap_err().to_string();
            assert!(err.contains("expected the form"), "{bad}: {err}");
        }
    }

    #[test]
    fn gpu_and_bridge_classes() {
        let mut d = PciDevice::new("01:00.0".parse().unwrap());
        for (class, gpu) in [
            (0x030000, true),
            (0x030200, true),
            (0x038000, true),
            (0x040300, false),
        ] {
            d.class = Some(class);
            assert_eq!(d.is_gpu(), gpu, "{class:06x}");
        }
        d.class = Some(0x060400);
        assert!(d.is_bridge());
        d.class = None;
        assert!(!d.is_gpu());
    }

    #[test]
    fn find_accepts_short_addresses_unless_ambiguous() {
        let mut t = Topology::default();
        for a in ["0000:02:00.0", "0001:03:00.0", "0002:03:00.0"] {
            let addr: PciAddress = a.parse().unwrap();
            t.devices.insert(addr, PciDevice::new(addr));
        }
        assert_eq!(
            t.find("02:00.0").unwrap().address.to_string(),
            "0000:02:00.0"
        );
        assert!(t
            .find("03:00.0")
            .unwrap_err()
            .to_string()
            .contains("give the full address"));
        assert_eq!(t.find("0001:03:00.0").unwrap().address.domain, 1);
        assert!(t
            .find("04:00.0")
            .unwrap_err()
            .to_string()
            .contains("no PCI device"));
    }

    #[test]
    fn vendor_names() {
        assert_eq!(vendor_by_name("NVIDIA"), Some(0x10de));
        assert_eq!(vendor_by_name("amd"), Some(0x1002));
        assert_eq!(vendor_by_name("Intel"), Some(0x8086));
        assert_eq!(vendor_by_name("matrox"), None);
    }
}
