//! Runtime binding: the sysfs steps that hand a card's functions to vfio-pci now, without a
//! reboot, and give them back; the verdict on what holds a card; the binding journal's model.
//! Pure: no I/O. The steps are applied by `txn::live`; the holders are read by `holders`.
//!
//! Per function, as libvirt does, but verified: load vfio-pci, write `vfio-pci` to
//! `driver_override`, the address to the old driver's `unbind`, the address to
//! `/sys/bus/pci/drivers_probe`, reading the `driver` link back after the unbind and after the
//! probe (a probe that binds nothing returns success). The card's other functions (HDA audio, USB, UCSI) go first and the
//! display function last, so the GPU's driver never sees its audio function on a driver while
//! it is gone (a stateless device link ties them: unbinding the GPU does not unbind the
//! audio); handing back goes in the reverse order.

use crate::pci::{PciAddress, PciDevice};
use crate::refusal::Refusal;
use serde::{Deserialize, Serialize};

pub const VFIO_PCI: &str = "vfio-pci";
/// The module that provides the vfio-pci driver.
pub const VFIO_PCI_MODULE: &str = "vfio_pci";
/// How a function came to vfio-pci, as `gpt check` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `gpt bind`, journalled in /run.
    Bind,
    /// `vfio-pci.ids=` at boot; `true` when gpt's configuration put the ids there.
    BootIds { gpts: bool },
    /// gpt's early step (binding by address at boot).
    EarlyStep,
    /// A driverctl override (its file).
    Driverctl(String),
    /// A `driver_override` gpt did not write (a script, libvirt's managed device).
    Override,
    /// Nothing gpt can see (modprobe.d ids, a tool run by hand).
    Other,
}

/// What gpt can see of a function on vfio-pci, in the order that decides.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub journalled: bool,
    pub driverctl: Option<String>,
    /// Its id is in `vfio-pci.ids=` on the running kernel's command line.
    pub on_cmdline_ids: bool,
    /// gpt's configuration passes it, and how.
    pub configured: Option<crate::model::BindMode>,
    pub override_vfio: bool,
}

pub fn origin(s: &Seen) -> Origin {
    use crate::model::BindMode;
    if s.journalled {
        return Origin::Bind;
    }
    if let Some(f) = &s.driverctl {
        return Origin::Driverctl(f.clone());
    }
    match (s.configured, s.on_cmdline_ids, s.override_vfio) {
        (Some(BindMode::Address), _, true) => Origin::EarlyStep,
        (conf, true, _) => Origin::BootIds {
            gpts: conf == Some(BindMode::Ids),
        },
        (_, false, true) => Origin::Override,
        _ => Origin::Other,
    }
}

impl Origin {
    /// Whether gpt set it up (and `gpt reset` or `gpt unbind` undoes it).
    pub fn gpts(&self) -> bool {
        matches!(
            self,
            Origin::Bind | Origin::EarlyStep | Origin::BootIds { gpts: true }
        )
    }

    /// The sentence for `gpt check`, with what it means for `gpt reset`.
    pub fn describe(&self, a: &PciAddress) -> String {
        match self {
            Origin::Bind => "by `gpt bind`, for this boot; `gpt unbind` gives it back, and `gpt reset` does so first".into(),
            Origin::BootIds { gpts: true } => "by vfio-pci.ids= at boot, from `gpt full`; `gpt reset` undoes it from the next boot on".into(),
            Origin::BootIds { gpts: false } => "by vfio-pci.ids= at boot, which gpt did not write; `gpt reset` leaves it".into(),
            Origin::EarlyStep => "by gpt's early step at boot, by address; `gpt reset` undoes it from the next boot on".into(),
            Origin::Driverctl(f) => format!("by a driverctl override, {f}, applied at every boot; `gpt reset` leaves it, `sudo driverctl unset-override {a}` removes it"),
            Origin::Override => "by a driver_override gpt did not write, from a script or from libvirt while a VM with managed='yes' runs; `gpt reset` leaves it".into(),
            Origin::Other => "by something gpt did not set up, such as options vfio-pci ids= in modprobe.d; `gpt reset` leaves it".into(),
        }
    }
}

/// The runtime binding journal: under /run, so it ends with the boot, as the binding does.
pub const JOURNAL: &str = "/run/gpt/bind.json";
pub const PROBE: &str = "/sys/bus/pci/drivers_probe";

/// One function of a card as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub address: PciAddress,
    /// The class code (`0x030000`).
    pub class: Option<u32>,
    /// The driver bound now (`None`: none).
    pub driver: Option<String>,
}

impl Function {
    /// The function as sysfs shows `d` now.
    pub fn of(d: &PciDevice) -> Function {
        Function {
            address: d.address,
            class: d.class,
            driver: d.driver.clone(),
        }
    }

    fn is_display(&self) -> bool {
        self.class.is_some_and(|c| c >> 16 == 0x03)
    }
}

/// What one step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Load a module (`modprobe`), when its driver is not registered.
    Load { module: String },
    /// Write `value` to the sysfs attribute `path`. `blocker` is the driver whose code runs
    /// during the write and may never return from it (an unbind, a probe).
    Write {
        path: String,
        value: String,
        blocker: Option<String>,
    },
    /// Read the function's `driver` link back: it must name `expect` (`None`: no driver).
    Verify { expect: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The function the step is for (`None` for loading a module).
    pub address: Option<PciAddress>,
    pub action: Action,
}

impl Step {
    fn write(a: PciAddress, path: String, value: &str, blocker: Option<&str>) -> Step {
        Step {
            address: Some(a),
            action: Action::Write {
                path,
                value: value.to_string(),
                blocker: blocker.map(str::to_string),
            },
        }
    }

    fn verify(a: PciAddress, expect: Option<&str>) -> Step {
        Step {
            address: Some(a),
            action: Action::Verify {
                expect: expect.map(str::to_string),
            },
        }
    }

    /// The step as a person would type it (`echo vfio-pci > …/driver_override`).
    pub fn describe(&self) -> String {
        let addr = self.address.map(|a| a.to_string()).unwrap_or_default();
        match &self.action {
            Action::Load { module } => format!("modprobe {module}"),
            Action::Write { path, value, .. } if value.is_empty() => {
                format!("echo > {path}")
            }
            Action::Write { path, value, .. } => format!("echo {value} > {path}"),
            Action::Verify { expect: Some(d) } => {
                format!("check that {addr} is bound to {d}")
            }
            Action::Verify { expect: None } => format!("check that {addr} has no driver"),
        }
    }
}

pub fn device_dir(a: &PciAddress) -> String {
    format!("/sys/bus/pci/devices/{a}")
}

pub fn override_path(a: &PciAddress) -> String {
    format!("{}/driver_override", device_dir(a))
}

pub fn unbind_path(driver: &str) -> String {
    format!("/sys/bus/pci/drivers/{driver}/unbind")
}

/// The card's functions in the order to take them from the host: every other function
/// first, the display function(s) last; by address within each. Hand back in reverse.
pub fn bind_order(funcs: &[Function]) -> Vec<Function> {
    let mut v = funcs.to_vec();
    v.sort_by_key(|f| (f.is_display(), f.address));
    v
}

/// The steps that move one function to vfio-pci; none when it is there already.
pub fn bind_steps(f: &Function) -> Vec<Step> {
    if f.driver.as_deref() == Some(VFIO_PCI) {
        return Vec::new();
    }
    let a = f.address;
    let mut steps = vec![Step::write(a, override_path(&a), VFIO_PCI, None)];
    if let Some(d) = &f.driver {
        steps.push(Step::write(a, unbind_path(d), &a.to_string(), Some(d)));
        steps.push(Step::verify(a, None));
    }
    steps.push(Step::write(a, PROBE.into(), &a.to_string(), Some(VFIO_PCI)));
    steps.push(Step::verify(a, Some(VFIO_PCI)));
    steps
}

/// The steps that give a function back to `original` (`None`: no driver) from where it is
/// now (`current`): vfio-pci after a bind, no driver after a probe that bound nothing, or
/// still the original driver (only `driver_override` to restore). The driver is named in
/// `driver_override` for the probe, so that `vfio-pci.ids=` cannot take it straight back;
/// afterwards `driver_override` is cleared, unless `keep_override` (the ids would take the
/// function back on the next probe: then it keeps naming the original driver).
pub fn restore_steps(
    a: PciAddress,
    current: Option<&str>,
    original: Option<&str>,
    keep_override: bool,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let ov = override_path(&a);
    if current == original {
        if !(keep_override && original.is_some()) {
            steps.push(Step::write(a, ov, "", None));
        }
        return steps;
    }
    steps.push(Step::write(a, ov.clone(), original.unwrap_or(""), None));
    if let Some(cur) = current {
        steps.push(Step::write(a, unbind_path(cur), &a.to_string(), Some(cur)));
        if original.is_some() {
            steps.push(Step::verify(a, None));
        }
    }
    if let Some(orig) = original {
        steps.push(Step::write(a, PROBE.into(), &a.to_string(), Some(orig)));
    }
    steps.push(Step::verify(a, original));
    if original.is_some() && !keep_override {
        steps.push(Step::write(a, ov, "", None));
    }
    steps
}

/// The value of `driver_override` as sysfs shows it: `(null)` or empty means none.
pub fn parse_override(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty() && t != "(null)").then(|| t.to_string())
}

/// The ids vfio-pci takes by itself at load (`vfio-pci.ids=` or `vfio_pci.ids=` on the
/// kernel command line, `options vfio-pci ids=` in modprobe.d), lowercased.
pub fn vfio_ids(cmdline: &str, modprobe_d: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut add = |v: &str| {
        ids.extend(
            v.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty()),
        )
    };
    for word in cmdline.split_whitespace() {
        if let Some(v) = word
            .strip_prefix("vfio-pci.ids=")
            .or_else(|| word.strip_prefix("vfio_pci.ids="))
        {
            add(v);
        }
    }
    for text in modprobe_d {
        for line in text.lines().map(str::trim) {
            let mut words = line.split_whitespace();
            if words.next() != Some("options") {
                continue;
            }
            if !matches!(words.next(), Some("vfio-pci" | "vfio_pci")) {
                continue;
            }
            for w in words {
                if let Some(v) = w.strip_prefix("ids=") {
                    add(v);
                }
            }
        }
    }
    ids
}

/// Whether an entry of `vfio-pci.ids` matches the device `id` (`10de:1f08`) with subsystem
/// `subsystem` (`1043:86f0`): `vendor:device` or `vendor:device:subvendor:subdevice`.
pub fn ids_match(ids: &[String], id: &str, subsystem: Option<&str>) -> bool {
    let long = subsystem.map(|s| format!("{id}:{s}"));
    ids.iter()
        .any(|i| i == id || long.as_deref().is_some_and(|l| l == i))
}

/// Something that holds a function: the reason the host driver would not let go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Hold {
    /// A process with one of the function's device nodes open.
    Process {
        pid: u32,
        name: String,
        node: String,
    },
    /// The console (fbcon) drawn on a framebuffer of the function.
    Console { fb: String },
}

/// The refusal for what holds the functions (`None` when nothing does): the console first
/// (a card that shows the console is the host's display), then the processes, `fuser`-style.
pub fn refuse_holders(holds: &[(PciAddress, Hold)], verb: &str) -> Option<anyhow::Error> {
    let console: Vec<(PciAddress, &str)> = holds
        .iter()
        .filter_map(|(a, h)| match h {
            Hold::Console { fb } => Some((*a, fb.as_str())),
            Hold::Process { .. } => None,
        })
        .collect();
    if let Some((a, fb)) = console.first() {
        return Some(Refusal::error(
            "console",
            console.iter().map(|(a, _)| *a),
            format!(
                "refusing: {a} shows this host's console (fbcon draws it on {fb}): it is the \
                 host's display, and `gpt {verb}` is for a second card. Nothing was changed;"
            ),
            "pass a card that is not the console (`gpt iommu --gpu` lists them)",
        ));
    }
    let mut lines: Vec<String> = Vec::new();
    let mut devices: Vec<PciAddress> = Vec::new();
    for (a, h) in holds {
        if let Hold::Process { pid, name, node } = h {
            lines.push(format!("  {node} ({a}): {name} (pid {pid})"));
            if !devices.contains(a) {
                devices.push(*a);
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    lines.dedup();
    Some(Refusal::error(
        "in_use",
        devices,
        format!(
            "refusing: processes have the card open, and its driver would wait for them (the \
             nvidia driver forever):\n{}\nNothing was changed;",
            lines.join("\n")
        ),
        "stop them (a VM with the card's /dev/vfio group open, a display server or compositor \
         on this card, nvidia-persistenced, a CUDA or audio program) and run this again",
    ))
}

/// The runtime binding journal (`/run/gpt/bind.json`): each function gpt moved, with the
/// driver it had, so that `gpt unbind` hands it back even after a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// `/proc/sys/kernel/random/boot_id` of the boot the binding belongs to.
    pub boot_id: String,
    pub functions: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub address: String,
    /// The driver it had (`None`: none).
    pub driver: Option<String>,
    /// The module providing that driver, to load it again if it was unloaded since.
    pub module: Option<String>,
    /// `driver_override` before gpt wrote it.
    pub override_before: Option<String>,
}

impl Journal {
    pub fn entry(&self, a: &PciAddress) -> Option<&Entry> {
        let s = a.to_string();
        self.functions.iter().find(|e| e.address == s)
    }

    /// Record a function about to move (before its first write), once.
    pub fn record(&mut self, e: Entry) {
        if !self.functions.iter().any(|x| x.address == e.address) {
            self.functions.push(e);
        }
    }

    pub fn forget(&mut self, a: &PciAddress) {
        let s = a.to_string();
        self.functions.retain(|e| e.address != s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> PciAddress {
        PciAddress::parse(s).unwrap()
    }

    fn func(a: &str, class: u32, drv: Option<&str>) -> Function {
        Function {
            address: addr(a),
            class: Some(class),
            driver: drv.map(str::to_string),
        }
    }

    fn shown(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::describe).collect()
    }

    #[test]
    fn the_display_function_moves_last_and_comes_back_first() {
        let card = [
            func("02:00.0", 0x030000, Some("nouveau")),
            func("02:00.1", 0x040300, Some("snd_hda_intel")),
            func("02:00.3", 0x0c8000, Some("nvidia-gpu")),
        ];
        let order: Vec<String> = bind_order(&card)
            .iter()
            .map(|f| f.address.short())
            .collect();
        assert_eq!(order, ["02:00.1", "02:00.3", "02:00.0"]);
    }

    #[test]
    fn bind_is_override_unbind_probe_verify() {
        let f = func("02:00.1", 0x040300, Some("snd_hda_intel"));
        assert_eq!(
            shown(&bind_steps(&f)),
            [
                "echo vfio-pci > /sys/bus/pci/devices/0000:02:00.1/driver_override",
                "echo 0000:02:00.1 > /sys/bus/pci/drivers/snd_hda_intel/unbind",
                "check that 0000:02:00.1 has no driver",
                "echo 0000:02:00.1 > /sys/bus/pci/drivers_probe",
                "check that 0000:02:00.1 is bound to vfio-pci",
            ]
        );
        let blockers: Vec<Option<String>> = bind_steps(&f)
            .into_iter()
            .filter_map(|s| match s.action {
                Action::Write { blocker, .. } => Some(blocker),
                _ => None,
            })
            .collect();
        assert_eq!(
            blockers,
            [None, Some("snd_hda_intel".into()), Some("vfio-pci".into())]
        );
        let unbound = func("02:00.2", 0x0c0330, None);
        assert_eq!(bind_steps(&unbound).len(), 3, "no unbind without a driver");
        assert!(bind_steps(&func("02:00.0", 0x030000, Some("vfio-pci"))).is_empty());
    }

    #[test]
    fn hand_back_names_the_driver_then_clears_the_override_unless_the_ids_take_it() {
        let a = addr("02:00.0");
        assert_eq!(
            shown(&restore_steps(a, Some("vfio-pci"), Some("nouveau"), false)),
            [
                "echo nouveau > /sys/bus/pci/devices/0000:02:00.0/driver_override",
                "echo 0000:02:00.0 > /sys/bus/pci/drivers/vfio-pci/unbind",
                "check that 0000:02:00.0 has no driver",
                "echo 0000:02:00.0 > /sys/bus/pci/drivers_probe",
                "check that 0000:02:00.0 is bound to nouveau",
                "echo > /sys/bus/pci/devices/0000:02:00.0/driver_override",
            ]
        );
        let kept = restore_steps(a, Some("vfio-pci"), Some("nouveau"), true);
        assert_eq!(kept.len(), 5, "the override keeps naming nouveau");
        // A probe that bound nothing: no unbind, straight to the probe.
        assert_eq!(
            shown(&restore_steps(a, None, Some("nouveau"), false))[1],
            "echo 0000:02:00.0 > /sys/bus/pci/drivers_probe"
        );
        // Failed before the unbind: only the override to take back.
        assert_eq!(
            shown(&restore_steps(a, Some("nouveau"), Some("nouveau"), false)),
            ["echo > /sys/bus/pci/devices/0000:02:00.0/driver_override"]
        );
        // It had no driver: unbind from vfio-pci, no probe, check it has none.
        assert_eq!(
            shown(&restore_steps(a, Some("vfio-pci"), None, false)),
            [
                "echo > /sys/bus/pci/devices/0000:02:00.0/driver_override",
                "echo 0000:02:00.0 > /sys/bus/pci/drivers/vfio-pci/unbind",
                "check that 0000:02:00.0 has no driver",
            ]
        );
    }

    #[test]
    fn ids_from_the_command_line_and_modprobe_d() {
        let ids = vfio_ids(
            "ro quiet vfio-pci.ids=10DE:1f08,10de:10f9 iommu=pt",
            &["# x\noptions vfio_pci ids=1002:73bf disable_vga=1\noptions snd ids=1:2\n".into()],
        );
        assert_eq!(ids, ["10de:1f08", "10de:10f9", "1002:73bf"]);
        assert!(ids_match(&ids, "10de:1f08", Some("1043:86f0")));
        assert!(!ids_match(&ids, "10de:1ada", None));
        let long = vec!["10de:1f08:1043:86f0".to_string()];
        assert!(ids_match(&long, "10de:1f08", Some("1043:86f0")));
        assert!(!ids_match(&long, "10de:1f08", Some("1458:0000")));
        assert_eq!(parse_override("(null)\n"), None);
        assert_eq!(parse_override("vfio-pci\n").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn holders_become_one_refusal_naming_each_process() {
        let a = addr("02:00.0");
        let b = addr("02:00.1");
        assert!(refuse_holders(&[], "bind").is_none());
        let holds = vec![
            (
                a,
                Hold::Process {
                    pid: 1234,
                    name: "Xorg".into(),
                    node: "/dev/dri/card1".into(),
                },
            ),
            (
                b,
                Hold::Process {
                    pid: 77,
                    name: "pipewire".into(),
                    node: "/dev/snd/pcmC1D3p".into(),
                },
            ),
        ];
        let e = refuse_holders(&holds, "bind").unwrap();
        let r = e.downcast_ref::<Refusal>().unwrap();
        assert_eq!(r.kind, "in_use");
        assert_eq!(r.devices, ["0000:02:00.0", "0000:02:00.1"]);
        assert!(
            r.message
                .contains("/dev/dri/card1 (0000:02:00.0): Xorg (pid 1234)"),
            "{}",
            r.message
        );
        assert!(r.message.contains("pipewire (pid 77)"), "{}", r.message);
        let mut with_console = holds.clone();
        with_console.push((a, Hold::Console { fb: "fb0".into() }));
        let e = refuse_holders(&with_console, "bind").unwrap();
        assert_eq!(e.downcast_ref::<Refusal>().unwrap().kind, "console");
    }

    #[test]
    fn the_origin_of_a_binding_goes_by_what_decides_it() {
        use crate::model::BindMode;
        let o = |s: Seen| origin(&s);
        assert_eq!(
            o(Seen {
                journalled: true,
                on_cmdline_ids: true,
                ..Seen::default()
            }),
            Origin::Bind
        );
        assert_eq!(
            o(Seen {
                driverctl: Some("/etc/driverctl.d/pci-0000:02:00.0".into()),
                override_vfio: true,
                ..Seen::default()
            }),
            Origin::Driverctl("/etc/driverctl.d/pci-0000:02:00.0".into())
        );
        let ids = Seen {
            on_cmdline_ids: true,
            ..Seen::default()
        };
        assert_eq!(o(ids.clone()), Origin::BootIds { gpts: false });
        assert_eq!(
            o(Seen {
                configured: Some(BindMode::Ids),
                ..ids
            }),
            Origin::BootIds { gpts: true }
        );
        assert_eq!(
            o(Seen {
                configured: Some(BindMode::Address),
                override_vfio: true,
                ..Seen::default()
            }),
            Origin::EarlyStep
        );
        assert_eq!(
            o(Seen {
                override_vfio: true,
                ..Seen::default()
            }),
            Origin::Override
        );
        assert_eq!(o(Seen::default()), Origin::Other);
        assert!(Origin::Bind.gpts() && !Origin::Override.gpts());
    }

    #[test]
    fn the_journal_records_each_function_once() {
        let mut j = Journal::default();
        let e = Entry {
            address: "0000:02:00.0".into(),
            driver: Some("nouveau".into()),
            module: Some("nouveau".into()),
            override_before: None,
        };
        j.record(e.clone());
        j.record(Entry {
            driver: Some("other".into()),
            ..e.clone()
        });
        assert_eq!(j.functions, std::slice::from_ref(&e));
        let text = serde_json::to_string(&j).unwrap();
        let back: Journal = serde_json::from_str(&text).unwrap();
        assert_eq!(back, j);
        assert_eq!(back.entry(&addr("02:00.0")), Some(&e));
        j.forget(&addr("02:00.0"));
        assert!(j.functions.is_empty());
    }
}
