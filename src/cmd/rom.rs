//! `gpt rom`: read a card's expansion ROM (video BIOS), check it and save a clean copy for
//! QEMU's `romfile=`; or, with `--check FILE`, check a ROM file from elsewhere and strip a
//! flash tool's header from it. Read only towards the card: gpt never writes a ROM to one.
//!
//! The parsing and the checks are `crate::rom`'s; reading sysfs is `crate::rom_read`'s.

use crate::cli::RomArgs;
use crate::describe::lspci_nn;
use crate::host::Host;
use crate::pci::{PciAddress, PciDevice};
use crate::rom::{self, Chain, ImageJson};
use crate::rom_read;
use crate::sysfs;
use crate::txn::{fs as tfs, Lock};
use crate::ui::{Refusal, Ui};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Drivers that leave a card idle: its ROM reads as the card has it.
const IDLE_DRIVERS: [&str; 2] = ["vfio-pci", "pci-stub"];

#[derive(Serialize)]
struct RomJson<'a> {
    ok: bool,
    /// The function read (`gpt rom ADDR`), or the card `--device` named.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// The file checked (`--check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    /// Bytes before the first image.
    header: usize,
    /// Bytes after the last image (not saved).
    trailing: usize,
    images: Vec<ImageJson>,
    /// Empty when the ROM is clean.
    problems: &'a [String],
    /// The file written (or already there with the same bytes); `null` when none.
    file: Option<String>,
    /// `created`, `replaced`, `unchanged`, or `null`.
    action: Option<&'static str>,
}

pub fn run(host: &Host, ui: &Ui, args: &RomArgs) -> Result<u8> {
    match (&args.check, &args.address) {
        (Some(file), _) => check_file(host, ui, file, args.device.as_deref()),
        (None, Some(addr)) => read_card(host, ui, addr, args),
        (None, None) => crate::usage!("give the PCI function to read (gpt rom ADDR) or a file to check (gpt rom --check FILE)"),
    }
}

/// `gpt rom ADDR`.
fn read_card(host: &Host, ui: &Ui, wanted: &str, args: &RomArgs) -> Result<u8> {
    let topo = sysfs::read_topology(host)?;
    let names = sysfs::load_names(host, &topo);
    let dev = topo.find(wanted)?;
    let addr = dev.address;
    let what = lspci_nn(dev, &names);
    let (Some(vendor), Some(device)) = (dev.vendor, dev.device) else {
        bail!("{addr}: sysfs gives no vendor or device id for it, so its ROM cannot be checked; `gpt iommu` shows what gpt reads");
    };
    if !rom_read::has_rom(host, &addr) {
        return Err(Refusal::error(
            "no_rom",
            [addr],
            format!("{addr} ({what}) has no ROM: the kernel shows no `rom` attribute for it (no expansion ROM); nothing to read"),
            "",
        ));
    }
    in_use(ui, dev, args.force)?;
    if dev.boot_vga {
        ui.warn(format!("{addr} is the boot GPU: the kernel may give the copy the firmware shadowed at 0xC0000 (already run, possibly changed) instead of the card's own ROM; a read while another card drives the display is safer"));
    }
    if host.is_real_root() && !nix::unistd::geteuid().is_root() {
        bail!("reading a card's ROM needs root (only root may switch on its sysfs `rom` attribute): run `sudo gpt rom {wanted}`");
    }
    let data = rom_read::read(host, &addr)?;
    let chain = rom::parse(&data);
    let mut problems = chain.verdict(Some((vendor, device)), false);
    if chain.images.is_empty() {
        if let Some(p) = power_note(host, &addr) {
            problems.push(p);
        }
    }
    let report = Report {
        device: Some(addr.to_string()),
        source: None,
        chain: &chain,
        problems: &problems,
    };
    if !ui.json {
        crate::ui::out(&format!(
            "{addr} {what}\nROM: {} bytes read\n{}",
            data.len(),
            rom::describe(&chain)
        ));
    }
    if !problems.is_empty() {
        return report.refuse(ui, &format!("the ROM of {addr} is not a clean ROM for {vendor:04x}:{device:04x}, so gpt saved nothing"));
    }
    let (file, lock) = match &args.out {
        Some(out) => (user_path(out)?, None),
        None => {
            let rel = rom_read::saved_path(dev).expect("the ids are known");
            if host.is_real_root() && !nix::unistd::geteuid().is_root() {
                bail!(
                    "saving to {} needs root: run with sudo, or give --out FILE",
                    rel.display()
                );
            }
            (rel, Some(Lock::acquire(host)?))
        }
    };
    let on = if lock.is_some() {
        host.clone()
    } else {
        Host::new("/")
    };
    let action = save(&on, &file, chain.bytes(&data), lock.is_some())?;
    drop(lock);
    let shown = if args.out.is_some() {
        file.clone()
    } else {
        host.path(&file)
    };
    report.done(ui, &shown, Some(action))?;
    if !ui.json {
        ui.ok(format!(
            "{} {} bytes of ROM to {}{}; give it to the guest with `gpt qemu --rom {}` (QEMU: -device vfio-pci,host={addr},romfile=FILE)",
            action_verb(action),
            chain.bytes(&data).len(),
            shown.display(),
            trailing_note(&chain),
            shown.display()
        ));
    }
    Ok(0)
}

/// Refuse a card a driver uses, unless `--force` (then only warn).
fn in_use(ui: &Ui, dev: &PciDevice, force: bool) -> Result<()> {
    let Some(driver) = dev.driver.as_deref().filter(|d| !IDLE_DRIVERS.contains(d)) else {
        return Ok(());
    };
    let why = format!(
        "{} is in use by its driver {driver}: while a driver runs the card, reading its ROM can fail, return a copy the driver changed, or disturb the driver",
        dev.address
    );
    if force {
        ui.warn(format!("{why}; reading anyway (--force)"));
        return Ok(());
    }
    Err(Refusal::error(
        "driver_in_use",
        [dev.address],
        format!("{why}."),
        "Read it while the card is on vfio-pci (after `sudo gpt full` and a reboot) or without a driver, or pass --force to read it now.",
    ))
}

/// Why a card gave no image, when its power state says: a card in D3 does not answer.
fn power_note(host: &Host, addr: &PciAddress) -> Option<String> {
    let state = host
        .read_optional(
            Path::new(sysfs::PCI_DEVICES)
                .join(addr.to_string())
                .join("power_state"),
        )
        .ok()??;
    let state = state.trim();
    (state.starts_with("D3")).then(|| {
        format!("{addr} is in {state}, where a card does not answer reads of its ROM: read it while the card is awake (a VM using it, or vfio-pci's disable_idle_d3=1: `gpt full --no-idle-d3`)")
    })
}

/// `gpt rom --check FILE [--device ADDR]`.
fn check_file(host: &Host, ui: &Ui, file: &Path, device: Option<&str>) -> Result<u8> {
    let file = user_path(file)?;
    let data = std::fs::read(&file).map_err(|e| crate::ioerr::error("read", &file, &e))?;
    let card = match device {
        Some(wanted) => {
            let topo = sysfs::read_topology(host)?;
            let names = sysfs::load_names(host, &topo);
            let dev = topo.find(wanted)?;
            let (Some(v), Some(d)) = (dev.vendor, dev.device) else {
                bail!("{}: sysfs gives no vendor or device id for it; `gpt iommu` shows what gpt reads", dev.address);
            };
            Some((dev.address, (v, d), lspci_nn(dev, &names)))
        }
        None => None,
    };
    let chain = rom::parse(&data);
    let problems = chain.verdict(card.as_ref().map(|c| c.1), true);
    let report = Report {
        device: card.as_ref().map(|c| c.0.to_string()),
        source: Some(file.display().to_string()),
        chain: &chain,
        problems: &problems,
    };
    if !ui.json {
        let mut s = format!("{}: {} bytes\n", file.display(), data.len());
        if chain.header > 0 {
            s.push_str(&format!(
                "header: {} bytes before the first image (a flash tool's)\n",
                chain.header
            ));
        }
        s.push_str(&rom::describe(&chain));
        crate::ui::out(&s);
    }
    let whose = match &card {
        Some((a, (v, d), _)) => format!("{a} ({v:04x}:{d:04x})"),
        None => "any card".into(),
    };
    if !problems.is_empty() {
        return report.refuse(
            ui,
            &format!("{} is not a clean ROM for {whose}", file.display()),
        );
    }
    let (v, d) = chain.ids().expect("a clean chain has an image");
    if chain.header == 0 {
        report.done(ui, &file, None)?;
        if !ui.json {
            ui.ok(format!(
                "{} is a clean ROM for {v:04x}:{d:04x}{}{}; QEMU can use it as it is (`gpt qemu --rom {}`)",
                file.display(),
                card.as_ref().map(|c| format!(" ({})", c.2)).unwrap_or_default(),
                trailing_note(&chain),
                file.display()
            ));
        }
        return Ok(0);
    }
    let stripped = stripped_name(&file);
    let action = save(&Host::new("/"), &stripped, chain.bytes(&data), false)?;
    report.done(ui, &stripped, Some(action))?;
    if !ui.json {
        ui.ok(format!(
            "{} is a ROM for {v:04x}:{d:04x} behind a {}-byte header; {} the {} bytes of the chain to {}: give QEMU that file (`gpt qemu --rom {}`)",
            file.display(),
            chain.header,
            action_verb(action),
            chain.bytes(&data).len(),
            stripped.display(),
            stripped.display()
        ));
    }
    Ok(0)
}

/// What a run found, for the JSON document and the refusal.
struct Report<'a> {
    device: Option<String>,
    source: Option<String>,
    chain: &'a Chain,
    problems: &'a [String],
}

impl Report<'_> {
    fn json(&self, file: Option<&Path>, action: Option<&'static str>) -> RomJson<'_> {
        RomJson {
            ok: self.problems.is_empty(),
            device: self.device.clone(),
            source: self.source.clone(),
            header: self.chain.header,
            trailing: self.chain.trailing,
            images: self.chain.images.iter().map(ImageJson::new).collect(),
            problems: self.problems,
            file: file.map(|f| f.display().to_string()),
            action,
        }
    }

    fn done(&self, ui: &Ui, file: &Path, action: Option<&'static str>) -> Result<()> {
        if ui.json {
            ui.print_json(&self.json(Some(file), action))?;
        }
        Ok(())
    }

    /// A bad ROM: the problems, one per line, and no file. Under `--json` the document holds
    /// the images and the problems (`"ok": false`, `"kind": "bad_rom"`).
    fn refuse(&self, ui: &Ui, what: &str) -> Result<u8> {
        let message = format!("{what}: {}.", self.problems.join("; "));
        let todo = "Read the ROM again while the card is idle, or get a ROM for exactly this card; nothing was written.";
        if ui.json {
            let mut doc = serde_json::to_value(self.json(None, None))?;
            doc["kind"] = "bad_rom".into();
            doc["message"] = message.clone().into();
            doc["todo"] = todo.into();
            ui.print_json(&doc)?;
        }
        Err(Refusal::error("bad_rom", self.device.iter(), message, todo))
    }
}

/// A path the user gave, made absolute from the current folder.
fn user_path(p: &Path) -> Result<PathBuf> {
    if p.as_os_str().is_empty() {
        crate::usage!("an empty file name; give a path");
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot tell the current folder")?
            .join(p)
    };
    Ok(abs)
}

/// `card.rom` → `card.stripped.rom` beside it.
fn stripped_name(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rom".into());
    file.with_file_name(format!("{stem}.stripped.rom"))
}

/// Write `bytes` to `abs` on `host` atomically (0644), unless it holds them already. A file
/// there with other bytes is not replaced: it may be the only copy of another ROM. Missing
/// folders are made only for gpt's own (`make_dirs`), never for a path the user gave.
fn save(host: &Host, abs: &Path, bytes: &[u8], make_dirs: bool) -> Result<&'static str> {
    match tfs::read(host, abs)? {
        Some(c) if c.bytes == bytes => return Ok("unchanged"),
        Some(_) => bail!(
            "{} already exists and holds other bytes; move it aside (it may be another ROM) or give another file with --out",
            abs.display()
        ),
        None => {}
    }
    let parent = abs.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent.filter(|_| !make_dirs) {
        if !parent.is_dir() {
            bail!(
                "{}: the folder {} does not exist; create it or give another path",
                abs.display(),
                parent.display()
            );
        }
    }
    tfs::write(host, abs, bytes, None, 0o644)?;
    Ok("created")
}

fn action_verb(action: &str) -> &'static str {
    match action {
        "unchanged" => "already saved:",
        _ => "saved",
    }
}

fn trailing_note(chain: &Chain) -> String {
    match chain.trailing {
        0 => String::new(),
        n => format!(" (the {n} bytes after the last image, padding, left out)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stripped_copy_sits_beside_the_file() {
        assert_eq!(
            stripped_name(Path::new("/tmp/x/GP104.rom")),
            PathBuf::from("/tmp/x/GP104.stripped.rom")
        );
        assert_eq!(
            stripped_name(Path::new("/tmp/dump")),
            PathBuf::from("/tmp/dump.stripped.rom")
        );
    }
}
