//! Facts without a host tree: what `Facts::read` would give, built directly, for the
//! planner's table tests (`tests/planner.rs`).

use gpt::boot::{self, Probe};
use gpt::facts::{Facts, Kernel};
use gpt::pci::{PciAddress, PciDevice};
use std::collections::BTreeSet;

pub const GRUB: &str =
    "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"\"\n";
pub const MODULES: &str = "# List of modules\n";
pub const KVER: &str = "6.1.0-13-amd64";

pub struct FactsBuilder {
    f: Facts,
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl FactsBuilder {
    /// A Debian 12 host: GRUB, initramfs-tools (files only, no package database), an Intel
    /// IOMMU, one 6.1 kernel with the vfio modules loadable.
    pub fn debian12() -> FactsBuilder {
        let mut f = Facts {
            os_ids: vec!["debian".into()],
            dmar: true,
            cpu_vendor: Some("GenuineIntel".into()),
            grub_default: Some(GRUB.into()),
            initramfs_modules: Some(MODULES.into()),
            ..Facts::default()
        };
        f.kernels.push(Kernel {
            version: KVER.into(),
            modules: names(&[
                "vfio",
                "vfio_iommu_type1",
                "vfio_virqfd",
                "vfio_pci",
                "nouveau",
            ]),
            builtin: BTreeSet::new(),
        });
        f.probe = Probe {
            grub_default: true,
            update_initramfs: true,
            ..Probe::default()
        };
        FactsBuilder { f }
    }

    /// A PCI function in IOMMU group `group` (no group: the IOMMU is off).
    pub fn device(
        mut self,
        addr: &str,
        id: (u16, u16),
        class: u32,
        group: Option<u32>,
        driver: &str,
    ) -> Self {
        let address = PciAddress::parse(addr).unwrap();
        let mut d = PciDevice::new(address);
        d.vendor = Some(id.0);
        d.device = Some(id.1);
        d.class = Some(class);
        d.subsystem_vendor = Some(id.0);
        d.subsystem_device = Some(0x1234);
        d.driver = Some(driver.into());
        d.iommu_group = group;
        if let Some(g) = group {
            self.f.topology.groups.entry(g).or_default().push(address);
        }
        self.f.topology.devices.insert(address, d);
        self
    }

    /// dracut installed (and initramfs-tools not), as the package database says; `own_update`
    /// when dracut ships its own update-initramfs (107 and later).
    pub fn dracut(mut self, own_update: bool) -> Self {
        self.f.dpkg_status_found = true;
        self.f.installed_packages = names(&["dracut", "initramfs-tools-core"]);
        self.f.probe.packages = Some(self.f.installed_packages.clone());
        self.f.probe.update_initramfs = own_update;
        self.f.probe.dracut_bin = true;
        self.f.probe.dracut_conf_d = true;
        self
    }

    /// Every kernel builds vfio and vfio-pci in.
    pub fn vfio_built_in(mut self) -> Self {
        for k in &mut self.f.kernels {
            for m in ["vfio", "vfio_iommu_type1", "vfio_pci"] {
                k.modules.remove(m);
                k.builtin.insert(m.to_string());
            }
        }
        self
    }

    /// The files as `gpt full` left them for `args` and `modules` (a re-run).
    pub fn configured(mut self, grub: String, modules: String, modprobe: String) -> Self {
        self.f.grub_default = Some(grub);
        self.f.initramfs_modules = Some(modules);
        self.f.modprobe_conf = Some(modprobe);
        self
    }

    pub fn build(mut self) -> Facts {
        for members in self.f.topology.groups.values_mut() {
            members.sort();
        }
        self.f.boot = Some(boot::detect(&self.f.probe));
        self.f
    }
}
