//! Reading a PCI function's expansion ROM from sysfs, and where gpt keeps a saved copy.
//!
//! `/sys/bus/pci/devices/ADDR/rom` (Linux `Documentation/ABI/testing/sysfs-bus-pci`): the kernel
//! shows it only for a function with a ROM; reading it fails until `1` is written to it, and
//! writing `0` turns reading off again. gpt writes `1`, reads, and always writes `0` after.
//! The kernel returns the chain of images up to the last one (`pci_get_rom_size`), or an I/O
//! error when the card shows no valid ROM.
//!
//! Under `--root` the attribute is a plain file of the tree: it is read as it is, and the
//! enable and disable writes are made only where the open file is sysfs's own (`fstatfs`), so
//! a test tree's bytes are never overwritten.

use crate::host::Host;
use crate::pci::{PciAddress, PciDevice};
use anyhow::{anyhow, Result};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where `gpt rom` saves a card's ROM: one file per card model and board.
pub const ROM_DIR: &str = "/var/lib/gpt/rom";

/// The sysfs attribute of `addr`'s ROM.
pub fn attribute(addr: &PciAddress) -> PathBuf {
    Path::new(crate::sysfs::PCI_DEVICES)
        .join(addr.to_string())
        .join("rom")
}

/// Whether the kernel shows a ROM for `addr` (the attribute exists).
pub fn has_rom(host: &Host, addr: &PciAddress) -> bool {
    host.exists(attribute(addr))
}

/// The file a function's ROM is saved in: `VENDOR-DEVICE-SUBVENDOR-SUBDEVICE.rom` (lowercase
/// hex), without the subsystem part when sysfs does not say it. `None` without ids.
pub fn saved_path(dev: &PciDevice) -> Option<PathBuf> {
    let (v, d) = (dev.vendor?, dev.device?);
    let name = match (dev.subsystem_vendor, dev.subsystem_device) {
        (Some(sv), Some(sd)) => format!("{v:04x}-{d:04x}-{sv:04x}-{sd:04x}.rom"),
        _ => format!("{v:04x}-{d:04x}.rom"),
    };
    Some(Path::new(ROM_DIR).join(name))
}

/// The ROM of `addr` as the kernel gives it. The attribute is opened once, inside the root
/// (`Host::open_in_root`), and every switch and read goes through that descriptor: nothing is
/// walked twice between the check that it is sysfs's and the writes.
pub fn read(host: &Host, addr: &PciAddress) -> Result<Vec<u8>> {
    use rustix::fs::OFlags;
    let abs = attribute(addr);
    // Non-blocking: a FIFO planted in a tree answers at once instead of hanging the read.
    let file = host
        .open_in_root(&abs, OFlags::RDWR | OFlags::NONBLOCK)
        .map(std::fs::File::from)
        .map_err(|e| match crate::ioerr::advice(&e) {
            Some(a) => anyhow!("cannot open {}: {a}", abs.display()),
            None => crate::ioerr::error("open", &abs, &e),
        })?;
    if !is_sysfs(&file) {
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(anyhow!(
                "{} is neither sysfs's attribute nor a regular file (a FIFO or a device in the tree): not reading it",
                abs.display()
            ));
        }
        return read_all(&file).map_err(|e| read_error(addr, &abs, &e));
    }
    switch(&file, &abs, b"1\n")?;
    let bytes = read_all(&file);
    // Always switched off again, even when the read failed.
    let off = switch(&file, &abs, b"0\n");
    let bytes = bytes.map_err(|e| read_error(addr, &abs, &e))?;
    off?;
    Ok(bytes)
}

fn is_sysfs(file: &std::fs::File) -> bool {
    nix::sys::statfs::fstatfs(file)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::SYSFS_MAGIC)
}

/// Write `what` to the attribute at offset 0, in place (it is a switch, not a file's bytes).
fn switch(file: &std::fs::File, abs: &Path, what: &[u8]) -> Result<()> {
    let verb = if what[0] == b'1' { "enable" } else { "disable" };
    file.write_all_at(what, 0)
        .map_err(|e| match crate::ioerr::advice(&e) {
            Some(a) => anyhow!("cannot {verb} reading {}: {a}", abs.display()),
            None => anyhow!("cannot {verb} reading {}: {e}", abs.display()),
        })
}

/// Every byte from offset 0 (the switch writes moved no shared position that matters).
fn read_all(file: &std::fs::File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read_at(&mut chunk, bytes.len() as u64)?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

fn read_error(addr: &PciAddress, abs: &Path, e: &io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        Some(nix::libc::EIO) => anyhow!(
            "the kernel could not read the ROM of {addr} ({}: input/output error): the card shows no valid ROM right now. \
             This is common while a driver uses the card, for the boot GPU, or for a card in a low-power state; \
             read it while the card is on vfio-pci (after `gpt full` and a reboot) or without a driver",
            abs.display()
        ),
        _ => crate::ioerr::error("read", abs, e),
    }
}
