//! Can the guest reset a function it was given, and will the function wake up? A verdict per
//! function from what the kernel exposes in sysfs (read by `crate::reset_facts`, only for the
//! functions that matter). Pure: no I/O.
//!
//! vfio-pci resets a function between guests with the first method of its `reset_method`;
//! without a per-function method it resets the whole bus (or slot), and only when every device
//! on it is owned by vfio and idle. So a function without FLR is a problem on a root bus, on a
//! bus shared with a device that stays on the host, or where the kernel offers no bus reset.

pub mod devcap;
pub mod reset_bug;

use crate::pci::{PciAddress, Topology};
use reset_bug::Rule;
use serde::Serialize;
use std::collections::BTreeSet;

/// FLR from PCIe DevCap (kernels before 5.15), or why config space was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevcapFlr {
    Yes,
    No,
    Unknown(String),
}

/// What sysfs says of one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub address: PciAddress,
    /// `reset_method` as listed (`None`: the attribute is absent).
    pub reset_method: Option<Vec<String>>,
    pub power_state: Option<String>,
    pub d3cold_allowed: Option<String>,
    /// The function sits on a root bus: no bridge above it to reset the bus.
    pub root_bus: bool,
    /// The other functions a reset of its bus resets too (same bus and below it).
    pub bus_peers: Vec<PciAddress>,
    pub devcap_flr: DevcapFlr,
}

impl Function {
    pub fn new(address: PciAddress) -> Function {
        Function {
            address,
            reset_method: None,
            power_state: None,
            d3cold_allowed: None,
            root_bus: false,
            bus_peers: Vec::new(),
            devcap_flr: DevcapFlr::Unknown("not read".into()),
        }
    }
}

/// What the host says beyond the functions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// The running kernel lists reset methods (5.15 and later): a function without
    /// `reset_method` then has none.
    pub lists_methods: bool,
    pub running_kernel: Option<String>,
    pub vendor_reset_loaded: bool,
    /// vendor-reset is a module of the running kernel (`None`: kernel unknown).
    pub vendor_reset_installed: Option<bool>,
    /// `(path, text)` of the udev rules files (read only for a reset-bug card).
    pub udev_rules: Vec<(String, String)>,
    /// `/sys/module/vfio_pci/parameters/disable_idle_d3` (`None`: not there).
    pub disable_idle_d3: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetFacts {
    pub functions: Vec<Function>,
    pub env: Env,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
}

/// One function's facts and verdict, as `gpt check` and `gpt full` show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub address: String,
    pub driver: Option<String>,
    /// The methods in the kernel's order; `[]` when the kernel has none, `null` when it does
    /// not say (before 5.15).
    pub reset_method: Option<Vec<String>>,
    pub power_state: Option<String>,
    pub d3cold_allowed: Option<String>,
    pub verdict: Level,
    pub reason: String,
}

impl Report {
    /// `driver vfio-pci, reset_method "flr bus", power_state D0, d3cold_allowed 1`.
    pub fn facts_line(&self) -> String {
        let rm = match &self.reset_method {
            None => "reset_method not reported before 5.15".to_string(),
            Some(m) if m.is_empty() => "reset_method none".to_string(),
            Some(m) => format!("reset_method \"{}\"", m.join(" ")),
        };
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "not reported".into());
        format!(
            "driver {}, {rm}, power_state {}, d3cold_allowed {}",
            self.driver.as_deref().unwrap_or("none"),
            or(&self.power_state),
            or(&self.d3cold_allowed)
        )
    }
}

/// Whether the running kernel lists reset methods (5.15 and later), so that a function without
/// `reset_method` has none. When the kernel's version is unknown, any function listing them
/// tells.
pub fn lists_methods(kernel: Option<(u32, u32)>, any_listed: bool) -> bool {
    match kernel {
        Some(v) => v >= (5, 15),
        None => any_listed,
    }
}

/// The verdict on every function of `facts`, in order. `vfio` holds the functions that go to
/// vfio-pci: any other device on a function's bus stays on the host.
pub fn judge_all(facts: &ResetFacts, topo: &Topology, vfio: &BTreeSet<PciAddress>) -> Vec<Report> {
    facts
        .functions
        .iter()
        .map(|f| judge(f, facts, topo, vfio))
        .collect()
}

pub fn judge(
    f: &Function,
    all: &ResetFacts,
    topo: &Topology,
    vfio: &BTreeSet<PciAddress>,
) -> Report {
    let dev = topo.device(&f.address);
    let bug = dev
        .and_then(|d| Some((d.vendor?, d.device?)))
        .and_then(|(v, d)| reset_bug::family(v, d).map(|fam| (fam, v, d)));
    let (mut level, mut reason) = match bug {
        Some((family, v, d)) => reset_bug_verdict(f, &all.env, family, v, d),
        None => reset_verdict(f, all, topo, vfio),
    };
    if let Some(why) = power_warning(f, &all.env) {
        level = Level::Warn;
        reason = format!("{reason}; {why}");
    }
    Report {
        address: f.address.to_string(),
        driver: dev.and_then(|d| d.driver.clone()),
        reset_method: reported_methods(f, &all.env),
        power_state: f.power_state.clone(),
        d3cold_allowed: f.d3cold_allowed.clone(),
        verdict: level,
        reason,
    }
}

/// The listed methods; none when the kernel lists them and this function has no attribute.
fn reported_methods(f: &Function, env: &Env) -> Option<Vec<String>> {
    match &f.reset_method {
        Some(m) => Some(m.clone()),
        None if env.lists_methods => Some(Vec::new()),
        None => None,
    }
}

fn has(methods: &Option<Vec<String>>, wanted: &[&str]) -> bool {
    methods
        .as_ref()
        .is_some_and(|m| m.iter().any(|x| wanted.contains(&x.as_str())))
}

fn first_is(methods: &Option<Vec<String>>, wanted: &str) -> bool {
    methods
        .as_ref()
        .and_then(|m| m.first())
        .is_some_and(|x| x == wanted)
}

fn reset_verdict(
    f: &Function,
    all: &ResetFacts,
    topo: &Topology,
    vfio: &BTreeSet<PciAddress>,
) -> (Level, String) {
    let methods = reported_methods(f, &all.env);
    if first_is(&methods, "device_specific") {
        return (Level::Pass, "a device-specific reset comes first".into());
    }
    if has(&methods, &["flr", "af_flr"]) {
        return (Level::Pass, "function-level reset (FLR)".into());
    }
    if first_is(&methods, "acpi") {
        return (Level::Pass, "the firmware's reset (ACPI _RST)".into());
    }
    let flr_note = match (&methods, &f.devcap_flr) {
        (None, DevcapFlr::Yes) => {
            return (
                Level::Pass,
                "function-level reset (FLR, from PCIe DevCap: the kernel lists its reset methods only from 5.15)".into(),
            )
        }
        (None, DevcapFlr::No) => "no function-level reset (PCIe DevCap)".to_string(),
        (None, DevcapFlr::Unknown(why)) => format!("FLR not known ({why})"),
        (Some(_), _) if has(&methods, &["pm"]) => {
            "no function-level reset, only a power-management reset (pm), which GPUs often ignore"
                .to_string()
        }
        (Some(_), _) => "no function-level reset".to_string(),
    };
    bus_verdict(f, all, topo, vfio, &flr_note)
}

/// What to do about a card nothing resets between VMs.
const AFTER_A_VM: &str = "shut the guest down cleanly (not a forced stop), and if the next VM start finds the card hung or its screen dark, reboot the host first";

/// The reports of one card's functions (same bus and slot) that say the same, as one: the
/// addresses and the shared report (its facts those of the first function). Others stay one
/// per function, in order.
pub fn by_card(reports: &[Report]) -> Vec<(Vec<String>, Report)> {
    let slot = |a: &str| {
        a.rsplit_once('.')
            .map(|(s, _)| s.to_string())
            .unwrap_or_default()
    };
    let mut out: Vec<(Vec<String>, Report)> = Vec::new();
    for r in reports {
        match out.iter_mut().find(|(_, g)| {
            slot(&g.address) == slot(&r.address) && g.verdict == r.verdict && g.reason == r.reason
        }) {
            Some((addrs, _)) => addrs.push(r.address.clone()),
            None => out.push((vec![r.address.clone()], r.clone())),
        }
    }
    out
}

/// Without a per-function reset, vfio resets the bus: only off a root bus, with every device
/// on it going to vfio-pci, and when the kernel offers a bus reset there.
fn bus_verdict(
    f: &Function,
    all: &ResetFacts,
    topo: &Topology,
    vfio: &BTreeSet<PciAddress>,
    flr_note: &str,
) -> (Level, String) {
    let bus = format!("{:04x}:{:02x}", f.address.domain, f.address.bus);
    if f.root_bus {
        return (
            Level::Warn,
            format!("{flr_note}, and it sits on a root bus, which vfio cannot reset: the guest may find the card as the last VM left it; {AFTER_A_VM}"),
        );
    }
    let blockers: Vec<String> = f
        .bus_peers
        .iter()
        .filter(|a| !vfio.contains(a))
        .map(|a| match topo.device(a).and_then(|d| d.driver.as_deref()) {
            Some(drv) => format!("{a} ({drv})"),
            None => a.to_string(),
        })
        .collect();
    if !blockers.is_empty() {
        return (
            Level::Warn,
            format!(
                "{flr_note}, and a reset of bus {bus} would also reset {}, which stays on the host: vfio will not reset the bus, so the guest may find the card as the last VM left it; move the card to a slot of its own, or {AFTER_A_VM}",
                blockers.join(", ")
            ),
        );
    }
    if !all.env.lists_methods {
        return (
            Level::Pass,
            format!("vfio resets bus {bus}, where every device goes to vfio-pci ({flr_note})"),
        );
    }
    // The kernel probes `bus` for each function as it is added, so one function of the bus
    // listing it is enough (the others often do not: they were not alone on the bus).
    let bus_listed = std::iter::once(&f.address)
        .chain(&f.bus_peers)
        .filter_map(|a| all.functions.iter().find(|g| g.address == *a))
        .any(|g| has(&g.reset_method, &["bus", "cxl_bus"]));
    if bus_listed {
        (
            Level::Pass,
            format!("vfio resets bus {bus}, where every device goes to vfio-pci ({flr_note})"),
        )
    } else {
        (
            Level::Warn,
            format!("{flr_note}, and the kernel offers no reset of bus {bus} (a no-bus-reset quirk, or its bridge cannot): the guest may find the card as the last VM left it; {AFTER_A_VM}"),
        )
    }
}

/// An AMD card with the reset bug: only vendor-reset resets it, loaded and (from 5.15) first
/// in `reset_method`, which its udev rule sees to.
fn reset_bug_verdict(f: &Function, env: &Env, family: &str, v: u16, d: u16) -> (Level, String) {
    let card = format!("{family} card with the AMD reset bug ({v:04x}:{d:04x})");
    let methods = reported_methods(f, env);
    let wired =
        env.vendor_reset_loaded && (!env.lists_methods || first_is(&methods, "device_specific"));
    if wired {
        return (Level::Pass, format!("{card}: vendor-reset resets it"));
    }
    let mut gaps = Vec::new();
    let kver = env
        .running_kernel
        .as_deref()
        .unwrap_or("the running kernel");
    match (env.vendor_reset_loaded, env.vendor_reset_installed) {
        (true, _) => {}
        (false, Some(false)) => gaps.push(format!("vendor-reset is not installed for {kver}")),
        (false, _) => gaps.push("vendor-reset is not loaded".to_string()),
    }
    if env.lists_methods {
        match reset_bug::rule_for(&env.udev_rules, v, d) {
            Rule::Matches(_) => {}
            Rule::WrongCase { path, written } => gaps.push(format!(
                "the udev rule in {path} names {written}, which never matches sysfs's lowercase {d:#06x}"
            )),
            Rule::None => gaps.push(format!(
                "no udev rule puts device_specific into its reset_method ({v:#06x}:{d:#06x})"
            )),
        }
        if !first_is(&methods, "device_specific") {
            let now = methods.map(|m| m.join(" ")).unwrap_or_default();
            gaps.push(format!(
                "reset_method is \"{now}\", and device_specific must come first"
            ));
        }
    }
    (
        Level::Warn,
        format!(
            "{card}: the guest cannot reset it without vendor-reset: {}",
            gaps.join("; ")
        ),
    )
}

/// A function in D3cold may not wake when the VM starts.
fn power_warning(f: &Function, env: &Env) -> Option<String> {
    if f.power_state.as_deref() != Some("D3cold") {
        return None;
    }
    Some(if env.disable_idle_d3 == Some(true) {
        "it is in D3cold although vfio-pci's disable_idle_d3 is on: something else powered it off; if the VM cannot start with it, write 0 to its d3cold_allowed".to_string()
    } else {
        "it is in D3cold (powered off); a card that does not wake from it fails at VM start: `sudo gpt full --no-idle-d3` keeps idle vfio-pci devices in D0 (options vfio-pci disable_idle_d3=1, after a reboot)".to_string()
    })
}

#[cfg(test)]
mod tests;
