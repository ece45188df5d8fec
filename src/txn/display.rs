//! Applying single-GPU mode's host steps (`single_gpu`): the display manager's unit, the wait
//! until nothing holds the card, the console (fbcon's vtconsoles, the firmware framebuffer),
//! the card's DRM node coming back, and the record of the last release or restore (under
//! /run, and one line to the system journal through `logger` when it is there).
//!
//! sysfs writes go through [`Live::step`], each in a child with a timeout; units through the
//! one command runner (`systemctl`).

use super::live::Live;
use crate::holders;
use crate::host::Host;
use crate::pci::PciAddress;
use crate::runtime_bind::{Action, Function, Hold, Journal, Step};
use crate::single_gpu::{releases_firmware_fb, Record, DISPLAY_MANAGER, RECORD};
use anyhow::{bail, Result};
use std::path::Path;
use std::time::{Duration, Instant};

pub const VTCONSOLES: &str = "/sys/class/vtconsole";
pub const EFIFB_DRIVER: &str = "/sys/bus/platform/drivers/efi-framebuffer";
pub const EFIFB_DEVICE: &str = "efi-framebuffer.0";

/// The vtconsoles fbcon draws on (`vtcon1`), bound now.
pub fn fb_consoles(host: &Host) -> Vec<String> {
    let mut out: Vec<String> = host
        .list_dir(VTCONSOLES)
        .unwrap_or_default()
        .into_iter()
        .filter(|vc| {
            let read = |f: &str| {
                host.read_to_string(format!("{VTCONSOLES}/{vc}/{f}"))
                    .unwrap_or_default()
            };
            read("name").contains("frame buffer") && read("bind").trim() == "1"
        })
        .collect();
    out.sort();
    out
}

/// Whether fbcon's vtconsole `vc` is bound.
pub fn console_bound(host: &Host, vc: &str) -> bool {
    host.read_to_string(format!("{VTCONSOLES}/{vc}/bind"))
        .is_ok_and(|t| t.trim() == "1")
}

/// Whether efifb drives the firmware framebuffer now.
pub fn efifb_bound(host: &Host) -> bool {
    host.exists(format!("{EFIFB_DRIVER}/{EFIFB_DEVICE}"))
}

/// The card's DRM card node, once its driver has made one (`card0`).
pub fn drm_card(host: &Host, a: &PciAddress) -> Option<String> {
    host.list_dir(format!("/sys/bus/pci/devices/{a}/drm"))
        .ok()?
        .into_iter()
        .find(|n| n.starts_with("card"))
}

fn write(path: String, value: &str) -> Step {
    Step {
        address: None,
        action: Action::Write {
            path,
            value: value.into(),
            blocker: None,
        },
    }
}

/// The host side of single-GPU mode, on one host.
pub struct Display<'a> {
    pub live: &'a Live<'a>,
}

impl Display<'_> {
    fn host(&self) -> &Host {
        self.live.host
    }

    /// `systemctl VERB UNIT`.
    pub fn unit(&self, verb: &str, unit: &str) -> Result<()> {
        let label = format!("{verb} {unit}");
        let argv = crate::single_gpu::systemctl_argv(verb, unit);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let step = crate::plan::Step::new(&label, &argv);
        self.live.runner.run(&step)?;
        Ok(())
    }

    /// Wait until no process holds the functions `addrs`; the error names who still does.
    pub fn wait_free(&self, addrs: &[PciAddress]) -> Result<()> {
        let deadline = Instant::now() + self.live.timeout;
        loop {
            let found = holders::read(self.host(), addrs, None);
            let procs: Vec<String> = found
                .holds
                .iter()
                .filter_map(|(a, h)| match h {
                    Hold::Process { pid, name, node } => {
                        Some(format!("{name} (pid {pid}) holds {node} of {a}"))
                    }
                    Hold::Console { .. } => None,
                })
                .collect();
            if procs.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the card is still in use {} s after the units were stopped: {}; stop it \
                     (a user session's compositor, pipewire: list its unit with --also-stop [USER/]UNIT in \
                     `gpt single-gpu enable`)",
                    self.live.timeout.as_secs(),
                    procs.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Unbind (`bind` 0) or bind (1) fbcon's vtconsole `vc`, and read it back.
    pub fn console(&self, vc: &str, bind: bool) -> Result<()> {
        let v = if bind { "1" } else { "0" };
        self.live
            .step(&write(format!("{VTCONSOLES}/{vc}/bind"), v))?;
        if !self.settles(|| console_bound(self.host(), vc) == bind) {
            bail!("{VTCONSOLES}/{vc}/bind does not read {v} after writing it");
        }
        Ok(())
    }

    /// Whether `done` holds now or within a short while (as `Live` reads a driver link back:
    /// what a write changes may show a moment after the write returns).
    fn settles(&self, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + self.live.timeout.min(Duration::from_secs(2));
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unbind or bind the firmware framebuffer (efifb), before Linux 6.0.
    pub fn efifb(&self, bind: bool) -> Result<()> {
        let what = if bind { "bind" } else { "unbind" };
        self.live
            .step(&write(format!("{EFIFB_DRIVER}/{what}"), EFIFB_DEVICE))?;
        if !self.settles(|| efifb_bound(self.host()) == bind) {
            bail!("efifb did not {what} {EFIFB_DEVICE}");
        }
        Ok(())
    }

    /// Wait for the card's DRM node after its driver took it back.
    pub fn wait_drm(&self, a: &PciAddress) -> Result<String> {
        let deadline = Instant::now() + self.live.timeout;
        loop {
            if let Some(c) = drm_card(self.host(), a) {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{a} has no DRM node {} s after its driver took it back: the driver did not \
                     bring the card up again (`dmesg` says why); a reboot brings it back",
                    self.live.timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `unit` is active (`systemctl is-active`).
    pub fn active(&self, unit: &str) -> bool {
        let argv = crate::single_gpu::systemctl_argv("is-active", unit);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let step = crate::plan::Step::new("is-active", &argv);
        self.live.runner.run(&step).is_ok()
    }
}

/// The last release or restore (`None`: none this boot).
pub fn load_record(host: &Host) -> Option<Record> {
    let text = host.read_optional(RECORD).ok().flatten()?;
    serde_json::from_str(&text).ok()
}

/// Save the record, and send its summary to the system journal when `logger` is there.
pub fn save_record(live: &Live, r: &Record) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(r)?;
    text.push(b'\n');
    super::fs::write_with(live.host, Path::new(RECORD), &text, None, 0o600, false)?;
    let summary = r.summary();
    let line = crate::printable::clean(&summary);
    let step = crate::plan::Step::new("logging", &["logger", "-t", "gpt", &line]);
    if live.runner.command_line(&step.argv).is_ok() {
        let _ = live.runner.run(&step);
    }
    Ok(())
}

/// What a release needs to know of the host.
pub struct Card<'c> {
    /// Every function of the card, in the order to take them (`runtime_bind::bind_order`).
    pub order: &'c [Function],
    /// Units to stop besides the display manager.
    pub also_stop: &'c [String],
    /// The running kernel's release (before 6.0, gpt releases the firmware framebuffer).
    pub kernel: Option<&'c str>,
}

/// What a release did, for handing it back.
#[derive(Default)]
struct Done {
    stopped: Vec<String>,
    consoles: Vec<String>,
    efifb: bool,
}

impl Display<'_> {
    /// Take the card from the host: stop the units, wait until nothing holds the card, unbind
    /// fbcon (and efifb before 6.0), move every function to vfio-pci. On any failure,
    /// everything is handed back and the display manager started again; the error says both.
    pub fn release(&self, card: &Card, rec: &mut Record) -> Result<()> {
        let mut done = Done::default();
        let result = self.take(card, rec, &mut done);
        rec.consoles = done.consoles.clone();
        rec.stopped = Some(done.stopped.clone());
        let Err(e) = result else {
            return Ok(());
        };
        let mut problems = Vec::new();
        if done.efifb {
            if let Err(e) = self.efifb(true) {
                problems.push(format!("efifb: {e:#}"));
            }
        }
        for vc in done.consoles.iter().rev() {
            if let Err(e) = self.console(vc, true) {
                problems.push(format!("{vc}: {e:#}"));
            }
        }
        for u in done.stopped.iter().rev() {
            if let Err(e) = self.unit("start", u) {
                problems.push(format!("{u}: {e:#}"));
            }
        }
        rec.consoles.clear();
        rec.stopped = Some(Vec::new());
        let back = if problems.is_empty() {
            "the host has its display back".to_string()
        } else {
            format!("NOT ALL WENT BACK: {}", problems.join("; "))
        };
        bail!("{}; {back}", one_line(&format!("{e:#}")))
    }

    fn take(&self, card: &Card, rec: &mut Record, done: &mut Done) -> Result<()> {
        for u in card.also_stop.iter().chain([&DISPLAY_MANAGER.to_string()]) {
            if !self.active(u) {
                rec.steps.push(format!("{u} was not running"));
                continue;
            }
            self.unit("stop", u)?;
            done.stopped.push(u.clone());
            rec.steps.push(format!("stopped {u}"));
        }
        let addrs: Vec<PciAddress> = card.order.iter().map(|f| f.address).collect();
        self.wait_free(&addrs)?;
        rec.steps.push("nothing holds the card".into());
        for vc in fb_consoles(self.host()) {
            self.console(&vc, false)?;
            done.consoles.push(vc.clone());
            rec.steps.push(format!("unbound fbcon from {vc}"));
        }
        if releases_firmware_fb(card.kernel) && efifb_bound(self.host()) {
            self.efifb(false)?;
            done.efifb = true;
            rec.steps.push("unbound efifb".into());
        }
        let mut journal = super::live::load_journal(self.host())?.unwrap_or_else(|| Journal {
            boot_id: super::live::boot_id(self.host()),
            functions: Vec::new(),
        });
        self.live.bind(card.order, &mut journal)?;
        rec.steps.push(format!(
            "{} on vfio-pci",
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    }

    /// Give the card back: each function to its driver (or check that libvirt did, for
    /// `managed='yes'`), wait for the DRM node, bind fbcon, start the units the release
    /// stopped (`released`: its record; without one, the display manager and the listed
    /// units) and check they run. Every step is tried; the error lists what failed.
    pub fn restore(
        &self,
        card: &Card,
        display: PciAddress,
        released: Option<&Record>,
        rec: &mut Record,
    ) -> Result<()> {
        let consoles: &[String] = released.map(|r| r.consoles.as_slice()).unwrap_or(&[]);
        let units: Vec<String> = match released.and_then(|r| r.stopped.clone()) {
            Some(stopped) => stopped.into_iter().rev().collect(),
            None => [DISPLAY_MANAGER.to_string()]
                .into_iter()
                .chain(card.also_stop.iter().cloned())
                .collect(),
        };
        let mut problems: Vec<String> = Vec::new();
        let mut journal = super::live::load_journal(self.host())?.unwrap_or_default();
        let back: Vec<PciAddress> = card.order.iter().rev().map(|f| f.address).collect();
        for a in &back {
            let now = super::live::driver_of(self.host(), a);
            if journal.entry(a).is_none() {
                if now.as_deref() == Some(crate::runtime_bind::VFIO_PCI) {
                    problems.push(format!("{a} is on vfio-pci but not in gpt's binding journal: `sudo gpt unbind --device {a}`"));
                }
                continue;
            }
            let p = self.live.hand_back(&[*a], &mut journal);
            match p.is_empty() {
                true => rec.steps.push(format!(
                    "{a} back on {}",
                    super::live::driver_of(self.host(), a).unwrap_or("no driver".into())
                )),
                false => problems.extend(p),
            }
        }
        match self.wait_drm(&display) {
            Ok(c) => rec.steps.push(format!("{display} has /dev/dri/{c}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
        let vcs: Vec<String> = if consoles.is_empty() {
            self.unbound_fb_consoles()
        } else {
            consoles.to_vec()
        };
        for vc in &vcs {
            match self.console(vc, true) {
                Ok(()) => rec.steps.push(format!("bound fbcon to {vc}")),
                Err(e) => problems.push(format!("{vc}: {e:#}")),
            }
        }
        for u in &units {
            let started = self.unit("start", u).and_then(|()| {
                if self.active(u) {
                    Ok(())
                } else {
                    bail!("{u} is not active after its start (`systemctl status {u}` says why)")
                }
            });
            match started {
                Ok(()) => rec.steps.push(format!("started {u}")),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        bail!("{}", one_line(&problems.join("; ")))
    }

    /// fbcon's vtconsoles not bound now.
    fn unbound_fb_consoles(&self) -> Vec<String> {
        self.host()
            .list_dir(VTCONSOLES)
            .unwrap_or_default()
            .into_iter()
            .filter(|vc| {
                self.host()
                    .read_to_string(format!("{VTCONSOLES}/{vc}/name"))
                    .is_ok_and(|n| n.contains("frame buffer"))
                    && !console_bound(self.host(), vc)
            })
            .collect()
    }
}

/// An error's text on one line (a log and a hook's stderr).
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
