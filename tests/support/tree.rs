//! Build host trees shaped like the kernel's sysfs and a Debian root, for tests, the bundled
//! example host and the benchmark's synthetic hosts.
//!
//! Device directories live under `sys/devices/pci<domain>:<bus>/…`, and `bus/pci/devices/ADDR`,
//! `driver`, `iommu_group`, `kernel/iommu_groups/N/devices/ADDR`, `bus/pci/drivers/D/module`,
//! `class/block/X` and `class/net/X` are relative symlinks, as on a real host. Each device has
//! the attributes gpt and lspci read (`vendor`, `device`, `class`, `revision`, `subsystem_*`,
//! `boot_vga` for VGA, the 64-byte `config`) and a `uevent` as the kernel writes it.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Dev {
    pub addr: String,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub rev: u8,
    pub subsys: (u16, u16),
    pub driver: Option<String>,
    pub group: Option<u32>,
    pub boot_vga: bool,
    /// The bridge this device sits behind (its directory nests inside the bridge's).
    pub parent: Option<String>,
    /// `reset_method`, `power_state`, `d3cold_allowed` (absent, as before 5.11/5.15, when
    /// `None`).
    pub reset_method: Option<String>,
    pub power_state: Option<String>,
    pub d3cold_allowed: Option<bool>,
    /// A 256-byte config space with a PCIe capability whose DevCap has FLR or not (`None`:
    /// the 64-byte header only).
    pub pcie_flr: Option<bool>,
}

impl Dev {
    pub fn new(addr: &str, id: (u16, u16), class: u32) -> Dev {
        let addr = if addr.matches(':').count() == 1 {
            format!("0000:{addr}")
        } else {
            addr.to_string()
        };
        Dev {
            addr,
            vendor: id.0,
            device: id.1,
            class,
            rev: 0,
            subsys: (id.0, 0),
            driver: None,
            group: None,
            boot_vga: false,
            parent: None,
            reset_method: None,
            power_state: None,
            d3cold_allowed: None,
            pcie_flr: None,
        }
    }
    pub fn reset_method(mut self, m: &str) -> Dev {
        self.reset_method = Some(m.to_string());
        self
    }
    pub fn power_state(mut self, p: &str) -> Dev {
        self.power_state = Some(p.to_string());
        self
    }
    pub fn d3cold_allowed(mut self, allowed: bool) -> Dev {
        self.d3cold_allowed = Some(allowed);
        self
    }
    pub fn pcie_flr(mut self, flr: bool) -> Dev {
        self.pcie_flr = Some(flr);
        self
    }
    pub fn rev(mut self, rev: u8) -> Dev {
        self.rev = rev;
        self
    }
    pub fn subsys(mut self, v: u16, d: u16) -> Dev {
        self.subsys = (v, d);
        self
    }
    pub fn driver(mut self, d: &str) -> Dev {
        self.driver = Some(d.to_string());
        self
    }
    pub fn group(mut self, g: u32) -> Dev {
        self.group = Some(g);
        self
    }
    pub fn boot_vga(mut self) -> Dev {
        self.boot_vga = true;
        self
    }
    pub fn behind(mut self, bridge: &str) -> Dev {
        let bridge = if bridge.matches(':').count() == 1 {
            format!("0000:{bridge}")
        } else {
            bridge.to_string()
        };
        self.parent = Some(bridge);
        self
    }
}

/// The module that provides a sysfs driver name (they differ: xhci_hcd is xhci_pci).
pub fn module_of(driver: &str) -> Option<&'static str> {
    Some(match driver {
        "nouveau" => "nouveau",
        "nvidia" => "nvidia",
        "snd_hda_intel" => "snd_hda_intel",
        "xhci_hcd" => "xhci_pci",
        "nvidia-gpu" => "i2c_nvidia_gpu",
        "i915" => "i915",
        "amdgpu" => "amdgpu",
        "radeon" => "radeon",
        "ahci" => "ahci",
        "nvme" => "nvme",
        "iwlwifi" => "iwlwifi",
        "mei_me" => "mei_me",
        "intel-lpss" => "intel_lpss_pci",
        "i801_smbus" => "i2c_i801",
        "intel-spi" => "spi_intel_pci",
        "bochs-drm" => "bochs",
        "vfio-pci" => "vfio_pci",
        "igb" => "igb",
        "e1000e" => "e1000e",
        "r8169" => "r8169",
        "ucsi_ccg" => "ucsi_ccg",
        "i2c-designware-pci" => "i2c_designware_pci",
        "ccp" => "ccp",
        _ => return None,
    })
}

pub struct HostTree {
    pub root: PathBuf,
    devices: Vec<Dev>,
}

fn write(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A relative symlink at `link` (under root) pointing at `target` (under root).
fn rel_link(root: &Path, link: &str, target: &str) {
    let depth = link.trim_matches('/').split('/').count() - 1;
    let rel = format!("{}{}", "../".repeat(depth), target.trim_start_matches('/'));
    let at = root.join(link.trim_start_matches('/'));
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&at);
    symlink(rel, at).unwrap();
}

/// The device's `uevent` as the kernel writes it (driver core, then `pci_uevent`): `DRIVER=`
/// only when a driver is bound, the class in hex without leading zeros (`%04X`).
pub fn uevent(d: &Dev) -> String {
    let mut s = String::new();
    if let Some(drv) = &d.driver {
        s.push_str(&format!("DRIVER={drv}\n"));
    }
    s.push_str(&format!(
        "PCI_CLASS={:04X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={}\n",
        d.class, d.vendor, d.device, d.subsys.0, d.subsys.1, d.addr
    ));
    s.push_str(&format!(
        "MODALIAS=pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}\n",
        d.vendor,
        d.device,
        d.subsys.0,
        d.subsys.1,
        d.class >> 16,
        (d.class >> 8) & 0xff,
        d.class & 0xff
    ));
    s
}

/// Set the `DRIVER=` line of the `uevent` in device directory `dir` (none for `None`), as the
/// kernel does when a driver binds or unbinds.
pub fn set_uevent_driver(dir: &Path, driver: Option<&str>) {
    let path = dir.join("uevent");
    let Ok(old) = fs::read_to_string(&path) else {
        return;
    };
    let mut s: String = driver.map(|d| format!("DRIVER={d}\n")).unwrap_or_default();
    for line in old.lines().filter(|l| !l.starts_with("DRIVER=")) {
        s.push_str(line);
        s.push('\n');
    }
    fs::write(path, s).unwrap();
}

/// The first 64 bytes of a type-0 (or type-1 for bridges) config space, as lspci reads them.
pub fn config_space(d: &Dev) -> Vec<u8> {
    let mut c = vec![0u8; 64];
    c[0..2].copy_from_slice(&d.vendor.to_le_bytes());
    c[2..4].copy_from_slice(&d.device.to_le_bytes());
    c[8] = d.rev;
    c[9] = d.class as u8;
    c[10] = (d.class >> 8) as u8;
    c[11] = (d.class >> 16) as u8;
    let bridge = d.class >> 8 == 0x0604;
    c[14] = if bridge { 1 } else { 0 };
    if !bridge {
        c[0x2c..0x2e].copy_from_slice(&d.subsys.0.to_le_bytes());
        c[0x2e..0x30].copy_from_slice(&d.subsys.1.to_le_bytes());
    }
    if let Some(flr) = d.pcie_flr {
        // Capability list: PM at 0x40, then PCIe at 0x60 with DevCap bit 28 (FLR).
        c.resize(256, 0);
        c[6] = 0x10;
        c[0x34] = 0x40;
        c[0x40] = 0x01;
        c[0x41] = 0x60;
        c[0x60] = 0x10;
        let devcap: u32 = 0x8fc0 | if flr { 1 << 28 } else { 0 };
        c[0x64..0x68].copy_from_slice(&devcap.to_le_bytes());
    }
    c
}

impl HostTree {
    pub fn new(root: &Path) -> HostTree {
        fs::create_dir_all(root).unwrap();
        HostTree {
            root: root.to_path_buf(),
            devices: Vec::new(),
        }
    }

    /// The absolute (in-root) path of a device's directory.
    pub fn dev_dir(&self, addr: &str) -> String {
        let d = self
            .devices
            .iter()
            .find(|d| d.addr == addr)
            .unwrap_or_else(|| panic!("no device {addr} in the tree"));
        match &d.parent {
            Some(p) => format!("{}/{}", self.dev_dir(p), d.addr),
            None => {
                let (domain, rest) = d.addr.split_once(':').unwrap();
                let bus = &rest[..2];
                format!("/sys/devices/pci{domain}:{bus}/{}", d.addr)
            }
        }
    }

    pub fn device(&mut self, d: Dev) -> &mut Self {
        self.devices.push(d.clone());
        let dir = self.dev_dir(&d.addr);
        let p = self.root.join(dir.trim_start_matches('/'));
        fs::create_dir_all(&p).unwrap();
        let hex16 = |v: u16| format!("0x{v:04x}\n");
        write(&p.join("vendor"), hex16(d.vendor).as_bytes());
        write(&p.join("device"), hex16(d.device).as_bytes());
        write(&p.join("class"), format!("0x{:06x}\n", d.class).as_bytes());
        write(&p.join("revision"), format!("0x{:02x}\n", d.rev).as_bytes());
        write(&p.join("subsystem_vendor"), hex16(d.subsys.0).as_bytes());
        write(&p.join("subsystem_device"), hex16(d.subsys.1).as_bytes());
        write(&p.join("config"), &config_space(&d));
        write(&p.join("uevent"), uevent(&d).as_bytes());
        if let Some(m) = &d.reset_method {
            write(&p.join("reset_method"), format!("{m}\n").as_bytes());
        }
        if let Some(ps) = &d.power_state {
            write(&p.join("power_state"), format!("{ps}\n").as_bytes());
        }
        if let Some(allowed) = d.d3cold_allowed {
            write(
                &p.join("d3cold_allowed"),
                if allowed { b"1\n" } else { b"0\n" },
            );
        }
        if d.class >> 8 == 0x0300 {
            write(
                &p.join("boot_vga"),
                if d.boot_vga { b"1\n" } else { b"0\n" },
            );
        }
        rel_link(
            &self.root,
            &format!("/sys/bus/pci/devices/{}", d.addr),
            &dir,
        );
        if let Some(drv) = &d.driver {
            self.driver_dir(drv);
            rel_link(
                &self.root,
                &format!("{dir}/driver"),
                &format!("/sys/bus/pci/drivers/{drv}"),
            );
            rel_link(
                &self.root,
                &format!("/sys/bus/pci/drivers/{drv}/{}", d.addr),
                &dir,
            );
        }
        if let Some(g) = d.group {
            let gdir = format!("/sys/kernel/iommu_groups/{g}");
            fs::create_dir_all(self.root.join(&gdir[1..]).join("devices")).unwrap();
            rel_link(&self.root, &format!("{dir}/iommu_group"), &gdir);
            rel_link(&self.root, &format!("{gdir}/devices/{}", d.addr), &dir);
        }
        self
    }

    /// `sys/bus/pci/drivers/D`, with its `module` link when the driver comes from a module.
    pub fn driver_dir(&mut self, drv: &str) -> &mut Self {
        let ddir = format!("/sys/bus/pci/drivers/{drv}");
        for f in ["bind", "unbind", "new_id"] {
            write(&self.root.join(&ddir[1..]).join(f), b"");
        }
        if let Some(m) = module_of(drv) {
            // Real module folders hold attributes; a file also keeps the folder in git.
            write(
                &self.root.join("sys/module").join(m).join("initstate"),
                b"live\n",
            );
            rel_link(
                &self.root,
                &format!("{ddir}/module"),
                &format!("/sys/module/{m}"),
            );
        }
        self
    }

    pub fn file(&mut self, abs: &str, content: &str) -> &mut Self {
        write(
            &self.root.join(abs.trim_start_matches('/')),
            content.as_bytes(),
        );
        self
    }

    pub fn symlink(&mut self, link: &str, target: &str) -> &mut Self {
        let at = self.root.join(link.trim_start_matches('/'));
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(target, at).unwrap();
        self
    }

    /// A block device `name` (with partitions `name` + suffix) on the controller at `addr`.
    pub fn block(&mut self, addr: &str, sub: &str, name: &str, partitions: &[&str]) -> &mut Self {
        let disk = format!("{}/{sub}/{name}", self.dev_dir(addr));
        write(&self.root.join(&disk[1..]).join("dev"), b"259:0\n");
        rel_link(&self.root, &format!("/sys/block/{name}"), &disk);
        rel_link(&self.root, &format!("/sys/class/block/{name}"), &disk);
        for (i, p) in partitions.iter().enumerate() {
            let part = format!("{disk}/{p}");
            let pdir = self.root.join(&part[1..]);
            write(&pdir.join("partition"), format!("{}\n", i + 1).as_bytes());
            write(&pdir.join("dev"), format!("259:{}\n", i + 1).as_bytes());
            rel_link(&self.root, &format!("/sys/class/block/{p}"), &part);
        }
        self
    }

    /// A network interface on the device at `addr`.
    pub fn net(&mut self, addr: &str, iface: &str) -> &mut Self {
        let dir = format!("{}/net/{iface}", self.dev_dir(addr));
        fs::create_dir_all(self.root.join(&dir[1..])).unwrap();
        rel_link(&self.root, &format!("/sys/class/net/{iface}"), &dir);
        rel_link(&self.root, &format!("{dir}/device"), &self.dev_dir(addr));
        self
    }

    /// An installed kernel: `lib/modules/KVER` with the given module files (paths relative
    /// to the kernel folder), `modules.builtin` and a `modules.alias`.
    pub fn kernel(
        &mut self,
        kver: &str,
        modules: &[&str],
        builtin: &[&str],
        alias: &str,
    ) -> &mut Self {
        let base = format!("/lib/modules/{kver}");
        for m in modules {
            self.file(&format!("{base}/{m}"), "");
        }
        let builtin_text: String = builtin.iter().map(|b| format!("{b}\n")).collect();
        self.file(&format!("{base}/modules.builtin"), &builtin_text);
        self.file(&format!("{base}/modules.alias"), alias);
        self.file(&format!("/boot/vmlinuz-{kver}"), "");
        self.file(&format!("/boot/config-{kver}"), "");
        self
    }

    /// Every file and link under the root, for byte-for-byte comparisons.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        snapshot(&self.root)
    }
}

/// `(relative path, content or "-> link target" or "<dir>")` for everything under `root`,
/// with mode bits, sorted.
pub fn snapshot(root: &Path) -> Vec<(String, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .display()
            .to_string();
        let meta = entry.path().symlink_metadata().unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(entry.path()).unwrap().display())
        } else if meta.is_dir() {
            format!("<dir {:o}>", meta.mode() & 0o7777)
        } else {
            let bytes = fs::read(entry.path()).unwrap();
            format!(
                "{:o} {}:{} {}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                String::from_utf8_lossy(&bytes)
            )
        };
        out.push((rel, what));
    }
    out
}
