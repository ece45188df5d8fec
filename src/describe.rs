//! One-line descriptions of PCI devices in the style of `lspci -nn`. Pure.

use crate::pci::PciDevice;
use crate::pciids::Names;
use serde::Serialize;

/// `VGA compatible controller [0300]: NVIDIA Corporation TU106 [...] [10de:1f08] (rev a1)`,
/// without the address.
pub fn lspci_nn(dev: &PciDevice, names: &Names) -> String {
    let class = match dev.class_code() {
        Some(code) => match names.class(code) {
            Some(name) => format!("{name} [{code:04x}]"),
            None => format!("Class [{code:04x}]"),
        },
        None => "Class [????]".to_string(),
    };
    let product = match (dev.vendor, dev.device) {
        (Some(v), Some(d)) => {
            let vendor = names.vendor(v);
            let device = names.device(v, d);
            let text = match (vendor, device) {
                (Some(vn), Some(dn)) => format!("{vn} {dn}"),
                (Some(vn), None) => format!("{vn} Device"),
                _ => "Device".to_string(),
            };
            format!("{text} [{v:04x}:{d:04x}]")
        }
        _ => "Device [????:????]".to_string(),
    };
    let rev = dev
        .revision
        .filter(|r| *r != 0)
        .map(|r| format!(" (rev {r:02x})"))
        .unwrap_or_default();
    format!("{class}: {product}{rev}")
}

/// A device as `gpt iommu --json` shows it.
#[derive(Debug, Serialize)]
pub struct DeviceJson {
    pub address: String,
    pub class: Option<String>,
    pub class_name: Option<String>,
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub revision: Option<String>,
    pub subsystem: Option<String>,
    pub driver: Option<String>,
    pub boot_vga: bool,
    pub gpu: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl DeviceJson {
    pub fn new(dev: &PciDevice, names: &Names) -> DeviceJson {
        DeviceJson {
            address: dev.address.to_string(),
            class: dev.class_code().map(|c| format!("{c:04x}")),
            class_name: dev
                .class_code()
                .and_then(|c| names.class(c))
                .map(str::to_string),
            vendor_id: dev.vendor.map(|v| format!("{v:04x}")),
            device_id: dev.device.map(|d| format!("{d:04x}")),
            vendor_name: dev.vendor.and_then(|v| names.vendor(v)).map(str::to_string),
            device_name: match (dev.vendor, dev.device) {
                (Some(v), Some(d)) => names.device(v, d).map(str::to_string),
                _ => None,
            },
            revision: dev.revision.map(|r| format!("{r:02x}")),
            subsystem: dev.subsystem(),
            driver: dev.driver.clone(),
            boot_vga: dev.boot_vga,
            gpu: dev.is_gpu(),
            problems: dev.problems.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pciids::Wanted;

    fn rtx() -> PciDevice {
        let mut d = PciDevice::new("0000:02:00.0".parse().unwrap());
        d.vendor = Some(0x10de);
        d.device = Some(0x1f08);
        d.class = Some(0x030000);
        d.revision = Some(0xa1);
        d
    }

    #[test]
    fn like_lspci_with_names() {
        let mut w = Wanted::default();
        w.vendors.insert(0x10de);
        w.devices.insert((0x10de, 0x1f08));
        w.classes.insert((3, 0));
        let names = Names::parse(
            "10de  NVIDIA Corporation\n\t1f08  TU106 [GeForce RTX 2060 Rev. A]\nC 03  Display controller\n\t00  VGA compatible controller\n",
            &w,
        );
        assert_eq!(
            lspci_nn(&rtx(), &names),
            "VGA compatible controller [0300]: NVIDIA Corporation TU106 [GeForce RTX 2060 Rev. A] [10de:1f08] (rev a1)"
        );
    }

    #[test]
    fn ids_only_without_a_database_and_marks_for_unknowns() {
        assert_eq!(
            lspci_nn(&rtx(), &Names::default()),
            "Class [0300]: Device [10de:1f08] (rev a1)"
        );
        let blank = PciDevice::new("0000:02:00.0".parse().unwrap());
        assert_eq!(
            lspci_nn(&blank, &Names::default()),
            "Class [????]: Device [????:????]"
        );
    }
}
