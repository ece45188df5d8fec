//! `gpt qemu`: print a ready-to-run QEMU command line (or libvirt `<hostdev>` XML) that passes
//! the configured GPU, with every function of its card, to a VM.
//!
//! Read-only. The command is sized from `<root>/proc` and names the OVMF firmware installed
//! under the root; stdout is a shell script (comments, a `cp` of the UEFI variables, the
//! command), so it can be pasted or piped to `sh` as is.

use crate::cli::QemuArgs;
use crate::describe::lspci_nn;
use crate::host::Host;
use crate::model::Phase;
use crate::paths::STATE_FILE;
use crate::pci::{PciAddress, Topology};
use crate::pciids::Names;
use crate::sysfs;
use crate::ui::Ui;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Firmware images, in order of preference: (code, variables template). `None` variables
/// means a combined image that goes to `-bios`.
const FIRMWARE: [(&str, Option<&str>); 3] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        Some("/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        Some("/usr/share/OVMF/OVMF_VARS.fd"),
    ),
    ("/usr/share/ovmf/OVMF.fd", None),
];

/// Where the printed command keeps everything the VM opens (the UEFI variables, the disk,
/// the display's socket): a folder only root can enter, as QEMU runs as root and no other
/// user may swap a file it opens or connect to its console. Absolute, so the folder the
/// command is run from does not matter.
pub const VM_DIR: &str = "/var/lib/gpt-vm";

/// NVIDIA: older GeForce drivers stop with "Code 43" when they see a hypervisor.
const NVIDIA: u16 = 0x10de;

/// One card to pass: its functions, in function order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub functions: Vec<PciAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: String,
    /// The variables template to copy, for split (pflash) firmware.
    pub vars: Option<String>,
    pub installed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smp {
    pub cpus: usize,
    pub cores: usize,
    pub threads: usize,
}

#[derive(Serialize)]
struct QemuJson {
    devices: Vec<String>,
    firmware: String,
    firmware_installed: bool,
    /// Commands to run once before the first start (the copy of the UEFI variables).
    setup: Vec<Vec<String>>,
    argv: Vec<String>,
}

#[derive(Serialize)]
struct LibvirtJson {
    devices: Vec<String>,
    xml: String,
}

pub fn run(host: &Host, ui: &Ui, args: &QemuArgs) -> Result<u8> {
    let topo = sysfs::read_topology(host)?;
    let names = sysfs::load_names(host, &topo);
    // Functions `gpt bind` put on vfio-pci at runtime.
    let runtime: Vec<PciAddress> = crate::txn::live::load_journal(host)?
        .map(|j| {
            j.functions
                .iter()
                .filter_map(|e| PciAddress::parse(&e.address))
                .collect()
        })
        .unwrap_or_default();
    let cards = if args.single_gpu && args.devices.is_empty() {
        chosen_cards(ui, &topo, &names, &[only_display(&topo)?])?
    } else if args.devices.is_empty() {
        configured_cards(ui, host, &topo, &runtime)?
    } else {
        chosen_cards(ui, &topo, &names, &args.devices)?
    };
    let rom = match &args.rom {
        Some(file) => Some(rom_for(&topo, &cards, file)?),
        None => None,
    };
    warn_unbound(ui, &topo, &cards);
    let devices: Vec<String> = cards
        .iter()
        .flat_map(|c| &c.functions)
        .map(|a| a.to_string())
        .collect();

    if args.libvirt {
        let single = args
            .single_gpu
            .then_some(if args.unmanaged { "no" } else { "yes" });
        let mut xml = libvirt_xml(&topo, &names, &cards, &runtime, single);
        if let Some((addr, file)) = &rom {
            xml = with_rom_element(&xml, addr, file);
        }
        if ui.json {
            ui.print_json(&LibvirtJson { devices, xml })?;
        } else {
            crate::ui::out(&xml);
        }
        return Ok(0);
    }

    let firmware = find_firmware(host);
    if !firmware.installed {
        ui.warn(format!(
            "no OVMF firmware under {}: install it with `sudo apt install ovmf` (the command below uses its standard path)",
            host.root().display()
        ));
    }
    let nvidia = cards
        .iter()
        .flat_map(|c| &c.functions)
        .any(|a| topo.device(a).and_then(|d| d.vendor) == Some(NVIDIA));
    let smp = smp(host.read_optional("/proc/cpuinfo")?.as_deref());
    let mem = memory_gib(host.read_optional("/proc/meminfo")?.as_deref());
    let mut argv = qemu_argv(&cards, &firmware, smp, mem, nvidia);
    if let Some((addr, file)) = &rom {
        with_romfile(&mut argv, addr, file);
    }
    let setup = setup_commands(&firmware);
    if ui.json {
        ui.print_json(&QemuJson {
            devices,
            firmware: firmware.code.clone(),
            firmware_installed: firmware.installed,
            setup,
            argv,
        })?;
    } else {
        crate::ui::out(&script(
            &topo, &names, &cards, &firmware, &setup, &argv, mem,
        ));
    }
    Ok(0)
}

/// The cards of the GPUs `gpt full` configured: the configured devices in a GPU's slot or
/// below the card's own switch (an Arc card's audio), grouped by slot. Other configured
/// devices (taken with `full --force`) stay out of the VM.
fn configured_cards(
    ui: &Ui,
    host: &Host,
    topo: &Topology,
    runtime: &[PciAddress],
) -> Result<Vec<Card>> {
    let config = crate::facts::recorded_config(host)?;
    let Some(config) = config.filter(|c| c.phase == Phase::Vfio && !c.devices.is_empty()) else {
        if !runtime.is_empty() {
            return Ok(cards_by_slot(runtime.to_vec()));
        }
        bail!("nothing configured; run `sudo gpt full VENDOR` or pass --device ADDR");
    };
    let parse = |list: &[String]| -> Result<Vec<PciAddress>> {
        list.iter()
            .map(|d| {
                d.parse::<PciAddress>().map_err(|e| {
                    anyhow::anyhow!("{}: bad device in the configuration: {e}", STATE_FILE)
                })
            })
            .collect()
    };
    let gpus = parse(&config.gpus)?;
    let (mut addrs, others): (Vec<PciAddress>, Vec<PciAddress>) =
        parse(&config.devices)?.into_iter().partition(|a| {
            gpus.is_empty()
                || gpus
                    .iter()
                    .any(|g| g.same_slot(a) || topo.card_of(g, None).contains(a))
        });
    addrs.extend(gpus);
    if !others.is_empty() {
        let list: Vec<String> = others.iter().map(|a| a.to_string()).collect();
        ui.warn(format!(
            "{} {} configured for vfio-pci but not a function of a GPU: left out of the VM",
            list.join(", "),
            if others.len() == 1 { "is" } else { "are" }
        ));
    }
    Ok(cards_by_slot(addrs))
}

/// The cards of GPUs given with `--device`: each GPU's IOMMU group, minus bridges and minus
/// devices of other slots (those must stay off host drivers, but need not go into the VM).
fn chosen_cards(ui: &Ui, topo: &Topology, names: &Names, wanted: &[String]) -> Result<Vec<Card>> {
    let mut addrs = Vec::new();
    for w in wanted {
        let gpu = topo.find(w)?;
        if !gpu.is_gpu() {
            bail!(
                "{} is not a GPU ({}); pass a display controller (class 03xx): `gpt iommu --gpu` lists them",
                gpu.address,
                lspci_nn(gpu, names)
            );
        }
        let Some((group, members)) = topo.group_of(&gpu.address) else {
            bail!(
                "{} is in no IOMMU group: the IOMMU is off, so it cannot be passed to a VM; `gpt check` says what to do",
                gpu.address
            );
        };
        for m in members {
            let Some(dev) = topo.device(m) else { continue };
            if dev.is_bridge() {
                continue;
            }
            if m.same_slot(&gpu.address) {
                addrs.push(*m);
            } else {
                ui.warn(format!(
                    "IOMMU group {group} also holds {m}, which is not a function of the GPU {}: it stays out of the VM, but must be bound to vfio-pci or to no driver for the group to be usable",
                    gpu.address
                ));
            }
        }
    }
    Ok(cards_by_slot(addrs))
}

/// The host's only display controller (single-GPU mode without --device).
fn only_display(topo: &Topology) -> Result<String> {
    crate::single_gpu::only_display(&topo.gpus())
        .map(|a| a.to_string())
        .map_err(|e| anyhow::anyhow!(e))
}

/// `--rom FILE`: the GPU it goes to and the file's absolute path, once the file checked clean
/// for that GPU's ids and starts at its first image (as QEMU needs).
fn rom_for(topo: &Topology, cards: &[Card], file: &Path) -> Result<(PciAddress, String)> {
    let gpus: Vec<&crate::pci::PciDevice> = cards
        .iter()
        .flat_map(|c| &c.functions)
        .filter_map(|a| topo.device(a))
        .filter(|d| d.is_gpu())
        .collect();
    let [gpu] = gpus[..] else {
        bail!(
            "--rom gives one GPU its ROM, and this VM gets {} GPUs; pass --device ADDR with the GPU the ROM is for",
            gpus.len()
        );
    };
    let (Some(v), Some(d)) = (gpu.vendor, gpu.device) else {
        bail!(
            "{}: sysfs gives no vendor or device id for it, so --rom cannot be checked",
            gpu.address
        );
    };
    let abs = std::path::absolute(file).map_err(|e| crate::ioerr::error("read", file, &e))?;
    let data = std::fs::read(&abs).map_err(|e| crate::ioerr::error("read", &abs, &e))?;
    let problems = crate::rom::parse(&data).verdict(Some((v, d)), false);
    if !problems.is_empty() {
        bail!(
            "--rom {}: not a clean ROM for {} ({v:04x}:{d:04x}): {}; `gpt rom --check {}` says more (and strips a flash tool's header)",
            abs.display(),
            gpu.address,
            problems.join("; "),
            abs.display()
        );
    }
    Ok((gpu.address, abs.display().to_string()))
}

/// Add `romfile=FILE` to the vfio-pci device of `addr` (a comma in an option value is doubled).
fn with_romfile(argv: &mut [String], addr: &PciAddress, file: &str) {
    let prefix = format!("vfio-pci,host={addr},");
    if let Some(dev) = argv.iter_mut().find(|a| a.starts_with(&prefix)) {
        dev.push_str(&format!(",romfile={}", file.replace(',', ",,")));
    }
}

/// Add `<rom file='FILE'/>` to the `<hostdev>` of `addr`.
fn with_rom_element(xml: &str, addr: &PciAddress, file: &str) -> String {
    let source = format!(
        "<address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>",
        addr.domain, addr.bus, addr.device, addr.function
    );
    let Some(at) = xml.find(&source) else {
        return xml.to_string();
    };
    let Some(end) = xml[at..].find("</hostdev>").map(|e| at + e) else {
        return xml.to_string();
    };
    let escaped = file
        .replace('&', "&amp;")
        .replace('\'', "&apos;")
        .replace('<', "&lt;");
    format!("{}  <rom file='{escaped}'/>\n{}", &xml[..end], &xml[end..])
}

/// Group addresses into cards (one per slot), in address order, without duplicates.
fn cards_by_slot(addrs: Vec<PciAddress>) -> Vec<Card> {
    let mut slots: BTreeMap<(u32, u8, u8), Vec<PciAddress>> = BTreeMap::new();
    for a in addrs {
        let f = slots.entry((a.domain, a.bus, a.device)).or_default();
        if !f.contains(&a) {
            f.push(a);
        }
    }
    slots
        .into_values()
        .map(|mut functions| {
            functions.sort();
            Card { functions }
        })
        .collect()
}

/// Say so when devices are not on vfio-pci yet: QEMU would fail to open them.
fn warn_unbound(ui: &Ui, topo: &Topology, cards: &[Card]) {
    let unbound: Vec<String> = cards
        .iter()
        .flat_map(|c| &c.functions)
        .filter_map(|a| topo.device(a))
        .filter(|d| d.driver.as_deref() != Some("vfio-pci"))
        .map(|d| {
            format!(
                "{} ({})",
                d.address,
                d.driver.as_deref().unwrap_or("no driver")
            )
        })
        .collect();
    if !unbound.is_empty() {
        ui.warn(format!(
            "not on vfio-pci yet: {}; QEMU cannot open them until they are (`gpt check` says why)",
            unbound.join(", ")
        ));
    }
}

/// Where each function goes in the guest: `(function, guest function number)`. Functions
/// keep their numbers when the card's function 0 is passed; otherwise they are packed from 0,
/// since a guest only scans a slot whose function 0 exists.
fn placement(card: &Card) -> Vec<(PciAddress, u8)> {
    let keep = card.functions.iter().any(|a| a.function == 0);
    card.functions
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, if keep { a.function } else { i as u8 }))
        .collect()
}

/// The firmware installed under the root, or the standard one when none is.
pub fn find_firmware(host: &Host) -> Firmware {
    for (code, vars) in FIRMWARE {
        if host.exists(code) && vars.is_none_or(|v| host.exists(v)) {
            return Firmware {
                code: code.to_string(),
                vars: vars.map(str::to_string),
                installed: true,
            };
        }
    }
    let (code, vars) = FIRMWARE[0];
    Firmware {
        code: code.to_string(),
        vars: vars.map(str::to_string),
        installed: false,
    }
}

/// The file name the writable copy of the UEFI variables gets, in the current directory.
fn vars_copy(template: &str) -> &str {
    template.rsplit('/').next().unwrap_or(template)
}

/// Where the copy of the variables template goes.
fn vars_path(template: &str) -> String {
    format!("{VM_DIR}/{}", vars_copy(template))
}

/// Run as root before the first start: the root-only folder, then the copy of the UEFI
/// variables into it.
fn setup_commands(fw: &Firmware) -> Vec<Vec<String>> {
    let mkdir = ["install", "-d", "-m", "0700", VM_DIR].map(str::to_string);
    let copies = fw
        .vars
        .iter()
        .map(|v| vec!["cp".to_string(), v.clone(), vars_path(v)]);
    std::iter::once(mkdir.to_vec()).chain(copies).collect()
}

/// Half the host's hardware threads (at least one), as one socket with the host's threads
/// per core. Without a readable cpuinfo: two cores.
pub fn smp(cpuinfo: Option<&str>) -> Smp {
    let Some(text) = cpuinfo else {
        return Smp {
            cpus: 2,
            cores: 2,
            threads: 1,
        };
    };
    let field = |name: &str| -> Option<usize> {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .and_then(|(_, v)| v.trim().parse().ok())
    };
    let logical = text
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.trim() == "processor")
        })
        .count()
        .max(1);
    let per_core = match (field("siblings"), field("cpu cores")) {
        (Some(s), Some(c)) if c > 0 && s >= c => (s / c).max(1),
        _ => 1,
    };
    let cpus = (logical / 2).max(1);
    if per_core >= 2 && cpus % 2 == 0 {
        Smp {
            cpus,
            cores: cpus / 2,
            threads: 2,
        }
    } else {
        Smp {
            cpus,
            cores: cpus,
            threads: 1,
        }
    }
}

/// A quarter of the host's RAM in whole GiB (rounded), at least 2 and at most 16. Without a
/// readable meminfo: 4.
pub fn memory_gib(meminfo: Option<&str>) -> u64 {
    let total_kib = meminfo.and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match total_kib {
        Some(kib) => ((kib / 4 + 512 * 1024) / (1024 * 1024)).clamp(2, 16),
        None => 4,
    }
}

pub fn qemu_argv(
    cards: &[Card],
    fw: &Firmware,
    smp: Smp,
    mem_gib: u64,
    nvidia: bool,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["qemu-system-x86_64".into()];
    let mut opt = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    opt("-machine", "q35,accel=kvm".into());
    opt(
        "-cpu",
        if nvidia {
            "host,kvm=off,hv_vendor_id=0123456789ab".into()
        } else {
            "host".into()
        },
    );
    opt(
        "-smp",
        format!(
            "{},sockets=1,cores={},threads={}",
            smp.cpus, smp.cores, smp.threads
        ),
    );
    opt("-m", format!("{mem_gib}G"));
    match &fw.vars {
        Some(vars) => {
            opt(
                "-drive",
                format!("if=pflash,format=raw,readonly=on,file={}", fw.code),
            );
            opt(
                "-drive",
                format!("if=pflash,format=raw,file={}", vars_path(vars)),
            );
        }
        None => opt("-bios", fw.code.clone()),
    }
    for (i, card) in cards.iter().enumerate() {
        let port = i + 1;
        opt(
            "-device",
            format!("pcie-root-port,id=rp{port},bus=pcie.0,chassis={port},slot={port}"),
        );
        let multi = card.functions.len() > 1;
        for (addr, func) in placement(card) {
            let mf = if multi && func == 0 {
                ",multifunction=on"
            } else {
                ""
            };
            opt(
                "-device",
                format!("vfio-pci,host={addr},bus=rp{port},addr=00.{func}{mf}"),
            );
        }
    }
    opt(
        "-drive",
        format!("if=virtio,format=qcow2,file={VM_DIR}/disk.qcow2"),
    );
    opt("-netdev", "user,id=net0".into());
    opt("-device", "virtio-net-pci,netdev=net0".into());
    opt("-device", "qemu-xhci".into());
    opt("-device", "usb-tablet".into());
    opt("-vga", "std".into());
    opt("-vnc", format!("unix:{VM_DIR}/vnc.sock"));
    a
}

/// `VGA compatible controller [0300]: NVIDIA …` for a comment, or nothing if unknown.
fn describe(topo: &Topology, names: &Names, addr: &PciAddress) -> String {
    topo.device(addr)
        .map(|d| format!(" {}", lspci_nn(d, names)))
        .unwrap_or_default()
}

fn script(
    topo: &Topology,
    names: &Names,
    cards: &[Card],
    fw: &Firmware,
    setup: &[Vec<String>],
    argv: &[String],
    mem_gib: u64,
) -> String {
    let mut s = String::from("# Pass to the VM:\n");
    for addr in cards.iter().flat_map(|c| &c.functions) {
        s.push_str(&format!("#   {addr}{}\n", describe(topo, names, addr)));
    }
    s.push_str(&format!(
        "# Firmware: {}{}\n",
        fw.code,
        if fw.installed {
            ""
        } else {
            " (not installed: sudo apt install ovmf)"
        }
    ));
    s.push_str(&format!(
        "# Everything the VM opens is in {VM_DIR}, which only root can enter: QEMU runs as root.\n\
         # Supply {VM_DIR}/disk.qcow2, the guest's disk: `sudo qemu-img create -f qcow2 {VM_DIR}/disk.qcow2 64G`\n\
         #   and add `-cdrom {VM_DIR}/INSTALLER.iso` (copied there) for the first boot, or a cloud image\n\
         #   (`sudo qemu-img create -f qcow2 -b CLOUD.qcow2 -F qcow2 {VM_DIR}/disk.qcow2 32G`, CLOUD.qcow2\n\
         #   copied there) with a cloud-init seed (`sudo cloud-localds {VM_DIR}/seed.img user-data`, then\n\
         #   add `-drive if=virtio,format=raw,file={VM_DIR}/seed.img`).\n\
         #   Windows guests need the virtio-win drivers for the virtio disk and network.\n"
    ));
    s.push_str(&format!(
        "# The guest's RAM ({mem_gib}G) is pinned for DMA, so it must be free. Its screen is VNC on the\n\
         #   Unix socket {VM_DIR}/vnc.sock, which only root can open (from another machine:\n\
         #   ssh -L 5900:{VM_DIR}/vnc.sock root@HOST, then a VNC viewer on localhost:5900), until the\n\
         #   GPU's own outputs take over; then `-vga none -display none` can replace `-vga std -vnc …`.\n\
         #   The network is QEMU's user mode, outgoing only; `hostfwd=tcp:127.0.0.1:2222-:22` on -netdev\n\
         #   would reach the guest's SSH, and every local user could connect to that port.\n"
    ));
    for cmd in setup {
        s.push_str(&setup_line(cmd));
    }
    s.push_str("sudo ");
    s.push_str(&continued(argv));
    s
}

/// A setup command as a line of the script, as root. The variables template is copied once
/// (later runs keep the guest's boot entries), tested as root since only root sees the folder.
fn setup_line(cmd: &[String]) -> String {
    let line = cmd.join(" ");
    match cmd {
        [cp, _, target] if cp == "cp" => format!("sudo test -e {target} || sudo {line}\n"),
        _ => format!("sudo {line}\n"),
    }
}

/// `prog \` then each option with its value on its own line, indented.
fn continued(argv: &[String]) -> String {
    let mut lines = vec![argv[0].clone()];
    let mut rest = argv[1..].iter();
    while let Some(k) = rest.next() {
        match rest.next() {
            Some(v) => lines.push(format!("  {k} {v}")),
            None => lines.push(format!("  {k}")),
        }
    }
    let mut out = lines.join(" \\\n");
    out.push('\n');
    out
}

/// `<!-- text -->` and a newline, the text made a valid XML comment: no `--` inside it and no
/// `-` at its end (libvirt's parser refuses both, and a whole domain with them).
fn comment(text: &str) -> String {
    let mut t = text.to_string();
    while t.contains("--") {
        t = t.replace("--", "- -");
    }
    if t.ends_with('-') {
        t.push(' ');
    }
    format!("<!-- {t} -->\n")
}

/// A function `gpt bind` bound (in `runtime`) is `managed='no'`: libvirt must not hand it back
/// to the host behind gpt's journal when the VM stops; `gpt unbind` does.
/// With `single` (single-GPU mode), every function is `managed=single`: with 'yes' libvirt
/// hands the card back before gpt's restore, which checks it; with 'no' gpt does both ways.
fn libvirt_xml(
    topo: &Topology,
    names: &Names,
    cards: &[Card],
    runtime: &[PciAddress],
    single: Option<&str>,
) -> String {
    let mut s = comment(
        "Add inside <devices> of a domain with UEFI firmware (<os firmware='efi'>) and a q35 machine (virsh edit NAME).",
    );
    if let Some(m) = single {
        s.push_str(&comment(&format!(
            "single-GPU mode: `sudo gpt single-gpu enable NAME` installs the hook that takes \
             the card from the host's desktop when the VM starts and gives it back when it stops; \
             managed='{m}': {}",
            if m == "yes" {
                "libvirt hands the card back to its host drivers at the stop, and gpt's hook checks that it did"
            } else {
                "gpt's hook hands the card to vfio-pci and back itself (gpt qemu's unmanaged choice)"
            }
        )));
    }
    for addr in cards.iter().flat_map(|c| &c.functions) {
        let managed = if let Some(m) = single {
            m
        } else if runtime.contains(addr) {
            s.push_str(&comment(
                "bound to vfio-pci by `gpt bind`: managed='no', so libvirt leaves it on \
                 vfio-pci when the VM stops; `sudo gpt unbind` gives it back to the host",
            ));
            "no"
        } else {
            "yes"
        };
        s.push_str(&comment(&format!("{addr}{}", describe(topo, names, addr))));
        s.push_str(&format!(
            "<hostdev mode='subsystem' type='pci' managed='{managed}'>\n  \
               <source>\n    \
                 <address domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'/>\n  \
               </source>\n\
             </hostdev>\n",
            addr.domain, addr.bus, addr.device, addr.function
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<PciAddress> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_comment_never_holds_a_double_hyphen_nor_ends_with_one() {
        assert_eq!(comment("plain"), "<!-- plain -->\n");
        assert_eq!(comment("a --flag b"), "<!-- a - -flag b -->\n");
        assert_eq!(comment("x---y"), "<!-- x- - -y -->\n");
        assert_eq!(comment("ends-"), "<!-- ends-  -->\n");
    }

    #[test]
    fn smp_takes_half_the_threads_keeping_smt() {
        let cpuinfo: String = (0..16)
            .map(|i| format!("processor\t: {i}\nsiblings\t: 16\ncpu cores\t: 8\n\n"))
            .collect();
        assert_eq!(
            smp(Some(&cpuinfo)),
            Smp {
                cpus: 8,
                cores: 4,
                threads: 2
            }
        );
        let no_smt: String = (0..6)
            .map(|i| format!("processor\t: {i}\nsiblings\t: 6\ncpu cores\t: 6\n\n"))
            .collect();
        assert_eq!(
            smp(Some(&no_smt)),
            Smp {
                cpus: 3,
                cores: 3,
                threads: 1
            }
        );
        assert_eq!(smp(Some("processor\t: 0\n")).cpus, 1);
        assert_eq!(smp(None).cpus, 2);
    }

    #[test]
    fn memory_is_a_quarter_within_bounds() {
        assert_eq!(memory_gib(Some("MemTotal:       32711880 kB\n")), 8);
        assert_eq!(memory_gib(Some("MemTotal:        4000000 kB\n")), 2);
        assert_eq!(memory_gib(Some("MemTotal:      263000000 kB\n")), 16);
        assert_eq!(memory_gib(Some("garbage")), 4);
        assert_eq!(memory_gib(None), 4);
    }

    #[test]
    fn cards_group_by_slot_and_keep_function_numbers() {
        let cards = cards_by_slot(addrs(&[
            "0000:03:00.1",
            "0000:02:00.0",
            "0000:03:00.0",
            "0000:02:00.0",
        ]));
        assert_eq!(
            cards,
            vec![
                Card {
                    functions: addrs(&["0000:02:00.0"])
                },
                Card {
                    functions: addrs(&["0000:03:00.0", "0000:03:00.1"])
                },
            ]
        );
        let no_zero = Card {
            functions: addrs(&["0000:05:00.1", "0000:05:00.2"]),
        };
        assert_eq!(
            placement(&no_zero).iter().map(|p| p.1).collect::<Vec<_>>(),
            [0, 1]
        );
    }

    #[test]
    fn continued_lines_pair_options_with_values() {
        let argv: Vec<String> = ["q", "-a", "1", "-b", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(continued(&argv), "q \\\n  -a 1 \\\n  -b 2\n");
    }
}
