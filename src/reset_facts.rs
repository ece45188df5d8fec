//! The facts reader's lazy part: reset and power attributes of the functions that matter (the
//! configured or selected ones), read on demand so that listing every device stays fast.
//! Reading `reset_method`, `power_state` and `d3cold_allowed` touches no hardware; config space
//! is read only before 5.15 (when the kernel does not list its reset methods), only as root,
//! and never for a device in D3cold.

use crate::facts::{Facts, VFIO_PCI};
use crate::host::Host;
use crate::pci::PciAddress;
use crate::resetability::devcap::{self, CONFIG_BYTES};
use crate::resetability::{self, reset_bug, DevcapFlr, Env, Function, ResetFacts};
use crate::sysfs::PCI_DEVICES;
use std::io::Read;
use std::path::Path;

/// Where udev reads rules from, highest precedence first (a file name in an earlier folder
/// hides the same name in a later one).
const UDEV_RULES: [&str; 4] = [
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
];

/// The reset and power facts of `addrs`, and what the host says beyond them.
pub fn read(host: &Host, facts: &Facts, addrs: &[PciAddress]) -> ResetFacts {
    let kernel = facts.running_kernel.as_deref();
    let version = kernel.and_then(major_minor);
    let mut functions: Vec<Function> = addrs.iter().map(|a| read_function(host, *a)).collect();
    let lists_methods =
        resetability::lists_methods(version, functions.iter().any(|f| f.reset_method.is_some()));
    if !lists_methods {
        for f in functions.iter_mut().filter(|f| f.reset_method.is_none()) {
            f.devcap_flr = devcap_flr(
                host,
                &format!("{PCI_DEVICES}/{}", f.address),
                f.power_state.as_deref(),
            );
        }
    }
    let bug_card = addrs.iter().any(|a| {
        facts
            .topology
            .device(a)
            .and_then(|d| reset_bug::family(d.vendor?, d.device?))
            .is_some()
    });
    let env = Env {
        lists_methods,
        running_kernel: kernel.map(str::to_string),
        vendor_reset_loaded: host.exists("/sys/module/vendor_reset"),
        vendor_reset_installed: kernel.and_then(|k| {
            let k = facts.kernels.iter().find(|x| x.version == k)?;
            Some(k.has("vendor_reset"))
        }),
        udev_rules: if bug_card {
            udev_rules(host)
        } else {
            Vec::new()
        },
        disable_idle_d3: disable_idle_d3(host),
    };
    ResetFacts { functions, env }
}

/// `6.1.0-13-amd64` → `(6, 1)`.
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// vfio-pci's `disable_idle_d3` as the loaded module has it (`Y`/`N`).
fn disable_idle_d3(host: &Host) -> Option<bool> {
    let path = format!("/sys/module/{VFIO_PCI}/parameters/disable_idle_d3");
    let text = host.read_optional(path).ok().flatten()?;
    Some(matches!(text.trim(), "Y" | "1"))
}

fn attr(host: &Host, abs: &str, name: &str) -> Option<String> {
    let text = host.read_optional(format!("{abs}/{name}")).ok().flatten()?;
    Some(text.trim().to_string())
}

fn read_function(host: &Host, addr: PciAddress) -> Function {
    let abs = format!("{PCI_DEVICES}/{addr}");
    let mut f = Function::new(addr);
    f.reset_method = attr(host, &abs, "reset_method")
        .map(|m| m.split_whitespace().map(str::to_string).collect());
    f.power_state = attr(host, &abs, "power_state");
    f.d3cold_allowed = attr(host, &abs, "d3cold_allowed");
    (f.root_bus, f.bus_peers) = bus_of(host, &abs, addr);
    f
}

/// FLR from config space, when it may be read.
fn devcap_flr(host: &Host, abs: &str, power_state: Option<&str>) -> DevcapFlr {
    let runtime = match power_state {
        Some(_) => None,
        None => attr(host, abs, "power/runtime_status"),
    };
    let euid_root = nix::unistd::geteuid().is_root();
    if let Err(why) = devcap::may_read_config(
        host.is_real_root(),
        euid_root,
        power_state,
        runtime.as_deref(),
    ) {
        return DevcapFlr::Unknown(why);
    }
    let mut bytes = Vec::with_capacity(CONFIG_BYTES);
    // Opened inside the root and without blocking: a tree's FIFO is no config space to wait on.
    let read = host
        .open_in_root(
            format!("{abs}/config"),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
        )
        .map(std::fs::File::from)
        .and_then(|f| f.take(CONFIG_BYTES as u64).read_to_end(&mut bytes));
    match (read, devcap::flr(&bytes)) {
        (Err(e), _) => DevcapFlr::Unknown(format!("cannot read config space: {e}")),
        (Ok(_), Some(true)) => DevcapFlr::Yes,
        (Ok(_), Some(false)) => DevcapFlr::No,
        (Ok(_), None) => DevcapFlr::Unknown("no PCIe capability in its config space".into()),
    }
}

/// Whether the function sits on a root bus, and the other functions on its bus and below.
fn bus_of(host: &Host, abs: &str, addr: PciAddress) -> (bool, Vec<PciAddress>) {
    let Ok(dir) = host.resolve(abs) else {
        return (false, Vec::new());
    };
    let Some(parent) = dir.parent() else {
        return (false, Vec::new());
    };
    let parent_name = parent.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if PciAddress::parse(parent_name).is_none() {
        // `/sys/devices/pci0000:00/ADDR`: no bridge above.
        return (parent_name.starts_with("pci"), Vec::new());
    }
    let mut peers = Vec::new();
    pci_children(parent, 0, &mut peers);
    peers.retain(|a| *a != addr);
    peers.sort();
    (false, peers)
}

/// The PCI functions in `dir` and, through bridges, below it (directories only: the
/// `driver`, `subsystem` and `iommu_group` links are never followed).
fn pci_children(dir: &Path, depth: usize, out: &mut Vec<PciAddress>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let name = e.file_name();
        if let (true, Some(a)) = (is_dir, name.to_str().and_then(PciAddress::parse)) {
            out.push(a);
            if depth < 8 {
                pci_children(&e.path(), depth + 1, out);
            }
        }
    }
}

/// Every `*.rules` file udev would read, as `(path, text)`.
fn udev_rules(host: &Host) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for dir in UDEV_RULES {
        for name in host.list_dir(dir).unwrap_or_default() {
            if !name.ends_with(".rules") || !seen.insert(name.clone()) {
                continue;
            }
            let path = format!("{dir}/{name}");
            if let Ok(Some(text)) = host.read_optional(&path) {
                out.push((path, text));
            }
        }
    }
    out
}
