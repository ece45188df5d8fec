//! Synthetic hosts of any size for the benchmark (`examples/gen_tree.rs`, `scripts/bench.sh`):
//! N PCI functions laid out the way a large server shows them in sysfs.
//!
//! Per PCI domain: a host bridge; in domain 0 an integrated GPU (the boot VGA) and a chipset
//! group of four functions; then PCIe root ports, each with a card behind it on its own bus,
//! and every eighth one leading to a four-port switch with a card behind each downstream port.
//! Root ports and switch ports are their own IOMMU groups (ACS); the functions of a card share
//! one group. The cards cycle through NVMe drives, NICs (single- and multi-function), USB and
//! SATA controllers and, a few times per cycle, GPUs: an NVIDIA card with audio, USB and UCSI
//! functions, an AMD card with audio, and an NVIDIA A100 (a 3D controller). Most functions
//! have a driver bound. Domains fill up to bus 255 and then the next domain starts, so a few
//! thousand functions span several domains.
//!
//! Ids are real ones, so names resolve from a full pci.ids. The tree is also a Debian 12 host
//! (os-release, grub, initramfs-tools, a kernel, /proc files) so that other commands run on it.
#![allow(dead_code)]

use super::hosts::{debian12_etc, debian_kernel, DEBIAN_KVER};
use super::tree::{Dev, HostTree};
use std::path::Path;

/// One function of a card: device id, class, driver, and the card's vendor/revision/subsystem.
struct Func {
    vendor: u16,
    device: u16,
    class: u32,
    rev: u8,
    driver: Option<&'static str>,
}

const fn f(vendor: u16, device: u16, class: u32, rev: u8, driver: &'static str) -> Func {
    Func {
        vendor,
        device,
        class,
        rev,
        driver: Some(driver),
    }
}

/// The cards behind root ports and switch ports, in the order they are used (then again).
const CARDS: &[&[Func]] = &[
    &[f(0x144d, 0xa808, 0x010802, 0x00, "nvme")],
    &[
        f(0x8086, 0x1521, 0x020000, 0x01, "igb"),
        f(0x8086, 0x1521, 0x020000, 0x01, "igb"),
        f(0x8086, 0x1521, 0x020000, 0x01, "igb"),
        f(0x8086, 0x1521, 0x020000, 0x01, "igb"),
    ],
    &[f(0x1912, 0x0014, 0x0c0330, 0x03, "xhci_hcd")],
    &[
        f(0x10de, 0x1f08, 0x030000, 0xa1, "nouveau"),
        f(0x10de, 0x10f9, 0x040300, 0xa1, "snd_hda_intel"),
        f(0x10de, 0x1ada, 0x0c0330, 0xa1, "xhci_hcd"),
        f(0x10de, 0x1adb, 0x0c8000, 0xa1, "nvidia-gpu"),
    ],
    &[f(0x1b21, 0x1062, 0x010601, 0x02, "ahci")],
    &[f(0x10ec, 0x8168, 0x020000, 0x15, "r8169")],
    &[f(0x1cc1, 0x8201, 0x010802, 0x03, "nvme")],
    &[
        f(0x1002, 0x73bf, 0x030000, 0xc1, "amdgpu"),
        f(0x1002, 0xab28, 0x040300, 0x00, "snd_hda_intel"),
    ],
    &[
        f(0x8086, 0x10d3, 0x020000, 0x00, "e1000e"),
        // A second port nobody uses: no driver bound.
        Func {
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            rev: 0x00,
            driver: None,
        },
    ],
    &[f(0x144d, 0xa808, 0x010802, 0x00, "nvme")],
    &[f(0x10de, 0x20b0, 0x030200, 0xa1, "nvidia")],
    &[f(0x1912, 0x0014, 0x0c0330, 0x03, "xhci_hcd")],
];

/// Root-port slots on bus 00 of a domain: devices 01..1b, eight functions each (in domain 0,
/// device 02 is the integrated GPU).
fn root_port_devices(domain: u32) -> impl Iterator<Item = u8> {
    (0x01..=0x1b).filter(move |d| domain != 0 || *d != 0x02)
}

/// Builds a synthetic host of exactly `n` PCI functions under `root`.
struct Synth {
    tree: HostTree,
    left: usize,
    group: u32,
    card: usize,
}

impl Synth {
    fn full(&self) -> bool {
        self.left == 0
    }

    /// Add one function; false (and nothing added) once `n` functions exist.
    fn add(&mut self, dev: Dev) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.tree.device(dev);
        true
    }

    fn next_group(&mut self) -> u32 {
        let g = self.group;
        self.group += 1;
        g
    }

    /// A bridge (root port or switch port) in its own group.
    fn bridge(&mut self, addr: &str, id: (u16, u16), parent: Option<&str>) -> bool {
        let g = self.next_group();
        let mut d = Dev::new(addr, id, 0x060400)
            .rev(0xf0)
            .group(g)
            .driver("pcieport");
        if let Some(p) = parent {
            d = d.behind(p);
        }
        self.add(d)
    }

    /// The next card of the cycle at `domain:bus:00.*`, behind `parent`, in one group.
    fn card(&mut self, domain: u32, bus: u8, parent: &str) {
        let funcs = CARDS[self.card % CARDS.len()];
        self.card += 1;
        let g = self.next_group();
        for (fn_no, func) in funcs.iter().enumerate() {
            let addr = format!("{domain:04x}:{bus:02x}:00.{fn_no}");
            let subsys = if func.vendor == 0x10de {
                (0x1043, 0x86f0)
            } else {
                (func.vendor, 0x0000)
            };
            let mut d = Dev::new(&addr, (func.vendor, func.device), func.class)
                .rev(func.rev)
                .subsys(subsys.0, subsys.1)
                .group(g)
                .behind(parent);
            if let Some(drv) = func.driver {
                d = d.driver(drv);
            }
            if !self.add(d) {
                return;
            }
        }
    }

    /// Fill one domain; returns when it has no bus or root port left, or `n` is reached.
    fn domain(&mut self, domain: u32) {
        let at = |bus: u8, dev: u8, func: u8| format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}");
        let g = self.next_group();
        self.add(
            Dev::new(&at(0, 0, 0), (0x8086, 0x4c43), 0x060000)
                .rev(1)
                .group(g),
        );
        if domain == 0 {
            let g = self.next_group();
            self.add(
                Dev::new(&at(0, 2, 0), (0x8086, 0x4c8a), 0x030000)
                    .rev(4)
                    .group(g)
                    .boot_vga()
                    .driver("i915"),
            );
            let g = self.next_group();
            for (func, id, class, drv) in [
                (0, 0x0684, 0x060100, None),
                (3, 0xf1c8, 0x040300, Some("snd_hda_intel")),
                (4, 0x06a3, 0x0c0500, Some("i801_smbus")),
                (5, 0x06a4, 0x0c8000, Some("intel-spi")),
            ] {
                let mut d = Dev::new(&at(0, 0x1f, func), (0x8086, id), class).group(g);
                if let Some(drv) = drv {
                    d = d.driver(drv);
                }
                self.add(d);
            }
        }
        let mut next_bus: u16 = 1;
        let mut port = 0usize;
        'slots: for dev in root_port_devices(domain) {
            for func in 0..8u8 {
                let with_switch = port % 8 == 7;
                port += 1;
                let buses_needed = if with_switch { 6 } else { 1 };
                if next_bus + buses_needed > 0x100 || self.full() {
                    break 'slots;
                }
                let rp = at(0, dev, func);
                if !self.bridge(&rp, (0x8086, 0x06ac), None) {
                    break 'slots;
                }
                let bus = next_bus as u8;
                next_bus += buses_needed;
                if !with_switch {
                    self.card(domain, bus, &rp);
                    continue;
                }
                // A PEX 8747: upstream port on `bus`, four downstream ports on `bus + 1`.
                let up = at(bus, 0, 0);
                if !self.bridge(&up, (0x10b5, 0x8747), Some(&rp)) {
                    break 'slots;
                }
                for i in 0..4u8 {
                    let down = at(bus + 1, 0x08 + i, 0);
                    if !self.bridge(&down, (0x10b5, 0x8747), Some(&up)) {
                        break 'slots;
                    }
                    self.card(domain, bus + 2 + i, &down);
                }
            }
        }
    }
}

/// A synthetic Debian 12 host with exactly `n` PCI functions. `pci_ids` is written to
/// `usr/share/misc/pci.ids` (pass a full database for realistic names and timings).
pub fn synth(root: &Path, n: usize, pci_ids: &str) -> HostTree {
    let mut s = Synth {
        tree: HostTree::new(root),
        left: n,
        group: 0,
        card: 0,
    };
    let mut domain = 0;
    while !s.full() {
        s.domain(domain);
        domain += 1;
    }
    let mut t = s.tree;
    debian12_etc(&mut t);
    debian_kernel(&mut t, DEBIAN_KVER);
    t.file("/usr/share/misc/pci.ids", pci_ids)
        .file(
            "/proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Synthetic\n\
             flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep vmx sse sse2 ht\n\n",
        )
        .file(
            "/proc/cmdline",
            &format!("BOOT_IMAGE=/boot/vmlinuz-{DEBIAN_KVER} root=/dev/nvme0n1p2 ro quiet\n"),
        )
        .file("/sys/firmware/acpi/tables/DMAR", "DMAR");
    t
}
