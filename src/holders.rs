//! What holds a card's functions: processes with its device nodes open and the console drawn
//! on it. Read-only.
//!
//! The nodes of a function: its DRM nodes (`/sys/bus/pci/devices/ADDR/drm/card*`,
//! `renderD*`, and udev's `/dev/dri/by-path/pci-ADDR-card`, `-render`), `/dev/nvidiaN` with
//! N the `Device Minor:` of `/proc/driver/nvidia/gpus/ADDR/information`, and the
//! `/dev/snd` nodes of the sound card on an audio function. The processes are this machine's
//! (`/proc/*/fd`): under `--root` the nodes are files in the tree, so only a process that
//! holds the tree's files matches. A node is matched by what it is (the device number of a
//! device node, else the file's inode), not by the path a process opened it by.
//!
//! The console: fbcon bound (`/sys/class/vtconsole/*/bind` of a "frame buffer device") and
//! drawing on a framebuffer whose `device` is the function (`/sys/class/graphics/fb*/device`),
//! or, for the boot VGA, on a firmware framebuffer (efifb, simpledrm: not a PCI device), which
//! vfio-pci removes when it takes the card. A second card's own framebuffer (a DRM driver's
//! fbdev) does not make it the console.

use crate::host::Host;
use crate::pci::PciAddress;
use crate::runtime_bind::Hold;
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What was found, and how many processes could not be looked at (not root).
#[derive(Debug, Default)]
pub struct Holders {
    pub holds: Vec<(PciAddress, Hold)>,
    pub unreadable: usize,
}

/// Identity of an open file: a device number for device nodes, else device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ident {
    Dev(u64),
    Inode(u64, u64),
}

fn ident(meta: &std::fs::Metadata) -> Ident {
    let ft = meta.file_type();
    if ft.is_char_device() || ft.is_block_device() {
        Ident::Dev(meta.rdev())
    } else {
        Ident::Inode(meta.dev(), meta.ino())
    }
}

/// The device nodes of function `a` (absolute paths on the host), those that exist.
pub fn nodes(host: &Host, a: &PciAddress) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let dir = format!("/sys/bus/pci/devices/{a}");
    for name in host.list_dir(format!("{dir}/drm")).unwrap_or_default() {
        if name.starts_with("card") || name.starts_with("renderD") {
            out.push(format!("/dev/dri/{name}"));
        }
    }
    for kind in ["card", "render"] {
        out.push(format!("/dev/dri/by-path/pci-{a}-{kind}"));
    }
    let info = format!("/proc/driver/nvidia/gpus/{a}/information");
    if let Some(minor) = host.read_optional(&info).ok().flatten().and_then(|t| {
        t.lines().find_map(|l| {
            l.strip_prefix("Device Minor:")
                .map(|v| v.trim().to_string())
        })
    }) {
        out.push(format!("/dev/nvidia{minor}"));
    }
    // A VM (or any vfio user) with the function's group open.
    if let Some(g) = host.link_name(format!("{dir}/iommu_group")) {
        out.push(format!("/dev/vfio/{g}"));
    }
    for card in host.list_dir(format!("{dir}/sound")).unwrap_or_default() {
        let Some(n) = card.strip_prefix("card") else {
            continue;
        };
        for node in host.list_dir("/dev/snd").unwrap_or_default() {
            if sound_node_of(&node, n) {
                out.push(format!("/dev/snd/{node}"));
            }
        }
    }
    out.retain(|n| host.exists(n));
    out
}

/// `controlC1`, `pcmC1D3p`, `hwC1D0`, `midiC1D0` belong to sound card 1 (not 10).
fn sound_node_of(node: &str, card: &str) -> bool {
    ["controlC", "pcmC", "hwC", "midiC"].iter().any(|p| {
        node.strip_prefix(p)
            .and_then(|rest| rest.strip_prefix(card))
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('D'))
    })
}

/// Who holds the functions `funcs`; `boot_vga` is the host's boot VGA device.
pub fn read(host: &Host, funcs: &[PciAddress], boot_vga: Option<PciAddress>) -> Holders {
    let mut found = Holders::default();
    let mut wanted: BTreeMap<Ident, (PciAddress, String)> = BTreeMap::new();
    for a in funcs {
        for node in nodes(host, a) {
            if let Some(meta) = host
                .resolve(&node)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
            {
                wanted.entry(ident(&meta)).or_insert((*a, node));
            }
        }
    }
    if !wanted.is_empty() {
        processes(&wanted, &mut found);
    }
    for a in funcs {
        if let Some(fb) = console_on(host, a, boot_vga) {
            found.holds.push((*a, Hold::Console { fb }));
        }
    }
    found
}

/// This machine's processes with one of `wanted` open (not this gpt).
fn processes(wanted: &BTreeMap<Ident, (PciAddress, String)>, found: &mut Holders) {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|p| *p != me)
        .collect();
    pids.sort();
    for pid in pids {
        let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let Ok(fds) = std::fs::read_dir(&fd_dir) else {
            if Path::new(&format!("/proc/{pid}")).exists() {
                found.unreadable += 1;
            }
            continue;
        };
        let mut seen: Vec<Ident> = Vec::new();
        for fd in fds.flatten() {
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            let id = ident(&meta);
            if let (Some((a, node)), false) = (wanted.get(&id), seen.contains(&id)) {
                seen.push(id);
                found.holds.push((
                    *a,
                    Hold::Process {
                        pid,
                        name: comm(pid),
                        node: node.clone(),
                    },
                ));
            }
        }
    }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Whether fbcon is bound to a framebuffer device.
fn fbcon_bound(host: &Host) -> bool {
    host.list_dir("/sys/class/vtconsole")
        .unwrap_or_default()
        .iter()
        .any(|vc| {
            let base = format!("/sys/class/vtconsole/{vc}");
            let read = |f: &str| {
                host.read_to_string(format!("{base}/{f}"))
                    .unwrap_or_default()
            };
            read("bind").trim() == "1" && read("name").contains("frame buffer")
        })
}

/// Each framebuffer (`fbN`, by number) with the PCI function it belongs to (`None`: not a PCI
/// device, a firmware framebuffer such as efifb or simpledrm's).
fn framebuffers(host: &Host) -> Vec<(u32, String, Option<PciAddress>)> {
    let mut out: Vec<(u32, String, Option<PciAddress>)> = host
        .list_dir("/sys/class/graphics")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|fb| {
            let n: u32 = fb.strip_prefix("fb")?.parse().ok()?;
            let link = format!("/sys/class/graphics/{fb}/device");
            let pci = host
                .resolve(&link)
                .ok()
                .filter(|_| host.link_target(&link).is_some())
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .and_then(|n| PciAddress::parse(&n));
            Some((n, fb, pci))
        })
        .collect();
    out.sort();
    out
}

/// The framebuffer the console is drawn on, when it is `a`'s. fbcon draws on the boot VGA's
/// framebuffer when it has one (its own, or the firmware's that stands for it: the kernel's
/// primary-device detection, on in Debian's and Ubuntu's kernels), else on the first one.
fn console_on(host: &Host, a: &PciAddress, boot_vga: Option<PciAddress>) -> Option<String> {
    if !fbcon_bound(host) {
        return None;
    }
    let fbs = framebuffers(host);
    let primary = fbs.iter().find(|(_, _, pci)| match (pci, boot_vga) {
        (Some(p), Some(b)) => *p == b,
        (None, Some(_)) => true,
        _ => false,
    });
    let (_, fb, pci) = primary.or(fbs.first())?;
    match pci {
        Some(p) if p == a => Some(fb.clone()),
        None if boot_vga == Some(*a) => Some(format!("{fb}, the firmware framebuffer")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sound_nodes_belong_to_their_card_only() {
        assert!(sound_node_of("controlC1", "1"));
        assert!(sound_node_of("pcmC1D3p", "1"));
        assert!(sound_node_of("hwC1D0", "1"));
        assert!(!sound_node_of("pcmC10D3p", "1"));
        assert!(!sound_node_of("controlC10", "1"));
        assert!(!sound_node_of("timer", "1"));
    }

    #[test]
    fn the_console_is_on_the_boot_vga_even_through_a_firmware_framebuffer() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mk = |p: &str, c: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        };
        let link = |target: &str, p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        };
        mk(
            "sys/class/vtconsole/vtcon1/name",
            "(M) frame buffer device\n",
        );
        mk("sys/class/vtconsole/vtcon1/bind", "0\n");
        mk(
            "sys/devices/platform/efi-framebuffer.0/graphics/fb0/dev",
            "29:0\n",
        );
        link(
            "../../../efi-framebuffer.0",
            "sys/devices/platform/efi-framebuffer.0/graphics/fb0/device",
        );
        link(
            "../../devices/platform/efi-framebuffer.0/graphics/fb0",
            "sys/class/graphics/fb0",
        );
        mk(
            "sys/devices/pci0000:00/0000:01:00.0/graphics/fb1/dev",
            "29:1\n",
        );
        link(
            "../../../0000:01:00.0",
            "sys/devices/pci0000:00/0000:01:00.0/graphics/fb1/device",
        );
        link(
            "../../devices/pci0000:00/0000:01:00.0/graphics/fb1",
            "sys/class/graphics/fb1",
        );
        let host = Host::new(root);
        let vga = PciAddress::parse("00:01.0").unwrap();
        let second = PciAddress::parse("01:00.0").unwrap();
        assert_eq!(console_on(&host, &vga, Some(vga)), None, "fbcon not bound");
        mk("sys/class/vtconsole/vtcon1/bind", "1\n");
        assert_eq!(
            console_on(&host, &vga, Some(vga)).as_deref(),
            Some("fb0, the firmware framebuffer")
        );
        assert_eq!(
            console_on(&host, &second, Some(vga)),
            None,
            "its own fb1 is not the console"
        );
        // Without a boot VGA, the console is on the first framebuffer.
        std::fs::remove_file(root.join("sys/class/graphics/fb0")).unwrap();
        assert_eq!(console_on(&host, &second, None).as_deref(), Some("fb1"));
    }

    #[test]
    fn a_file_held_open_here_is_found_by_what_it_is() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let dev = root.join("sys/devices/pci0000:00/0000:02:00.0");
        std::fs::create_dir_all(dev.join("drm/card1")).unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:00/0000:02:00.0",
            root.join("sys/bus/pci/devices/0000:02:00.0"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("dev/dri/by-path")).unwrap();
        std::fs::write(root.join("dev/dri/card1"), "").unwrap();
        std::os::unix::fs::symlink(
            "../card1",
            root.join("dev/dri/by-path/pci-0000:02:00.0-card"),
        )
        .unwrap();
        let host = Host::new(root);
        let a = PciAddress::parse("02:00.0").unwrap();
        assert_eq!(
            nodes(&host, &a),
            ["/dev/dri/card1", "/dev/dri/by-path/pci-0000:02:00.0-card"]
        );
        // Another process holds it (this test's own fds are skipped as gpt's would be).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(root.join("dev/dri/card1")).unwrap())
            .spawn()
            .unwrap();
        let found = read(&host, &[a], None);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found.holds,
            [(
                a,
                Hold::Process {
                    pid: child.id(),
                    name: "sleep".into(),
                    node: "/dev/dri/card1".into()
                }
            )]
        );
    }
}
