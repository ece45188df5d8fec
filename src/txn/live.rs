//! Applying runtime binding steps (`runtime_bind`) to the running kernel's sysfs, through the
//! host's paths (so `--root` trees work), each write with a timeout, each step verified.
//!
//! A write that a driver can block on (an unbind: nvidia waits forever while anything holds
//! the GPU) runs in a child process, this gpt binary's hidden `__sysfs-write`, which gpt
//! abandons when it does not return in time: the write stays pending in the kernel, gpt does
//! not. The child closes every inherited descriptor first, so a write stuck for good does not
//! keep gpt's lock held. Every function's move ends with the `driver` link read back: a probe
//! that binds nothing is an error, not success.
//!
//! The binding journal (`/run/gpt/bind.json`) is written before a function's first write and
//! each function leaves it once it is back, so `gpt unbind` after a crash knows the drivers.

use crate::host::Host;
use crate::pci::PciAddress;
use crate::runner::Runner;
use crate::runtime_bind::{self as rb, Action, Entry, Function, Journal, Step};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A write that did not return in time: the function it was for stays where it is.
#[derive(Debug)]
pub struct Stuck {
    pub address: Option<PciAddress>,
    pub message: String,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stuck {}

/// The kernel of one host, as gpt moves functions on it.
pub struct Live<'a> {
    pub host: &'a Host,
    pub runner: &'a Runner<'a>,
    /// How long a write may take before gpt gives up on it.
    pub timeout: Duration,
    /// Functions whose `driver_override` must keep naming their driver after a hand-back
    /// (`vfio-pci.ids=` would take them straight back on a probe).
    pub keep_override: BTreeSet<PciAddress>,
}

/// The driver bound to `a` now.
pub fn driver_of(host: &Host, a: &PciAddress) -> Option<String> {
    host.link_name(format!("{}/driver", rb::device_dir(a)))
}

/// The module of a registered driver (`None`: built in, or not registered).
pub fn module_of(host: &Host, driver: &str) -> Option<String> {
    host.link_name(format!("/sys/bus/pci/drivers/{driver}/module"))
}

pub fn registered(host: &Host, driver: &str) -> bool {
    host.exists(format!("/sys/bus/pci/drivers/{driver}"))
}

/// `driver_override` of `a` now (`None`: empty).
pub fn override_of(host: &Host, a: &PciAddress) -> Option<String> {
    host.read_to_string(rb::override_path(a))
        .ok()
        .and_then(|t| rb::parse_override(&t))
}

/// The journal entry for a function about to move.
pub fn entry(host: &Host, f: &Function) -> Entry {
    Entry {
        address: f.address.to_string(),
        driver: f.driver.clone(),
        module: f.driver.as_deref().and_then(|d| module_of(host, d)),
        override_before: override_of(host, &f.address),
    }
}

/// This boot's id (empty when the host does not say).
pub fn boot_id(host: &Host) -> String {
    host.read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The journal of this boot; one left by another boot (a tree whose /run survived) is void.
pub fn load_journal(host: &Host) -> Result<Option<Journal>> {
    let Some(text) = host.read_optional(rb::JOURNAL)? else {
        return Ok(None);
    };
    let j: Journal = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a binding journal gpt can read; look at it, and remove it if no function \
             is bound at runtime",
            rb::JOURNAL
        )
    })?;
    Ok((j.boot_id == boot_id(host)).then_some(j))
}

/// Save the journal (or remove it once it is empty). /run is a tmpfs: not synced.
pub fn save_journal(host: &Host, j: &Journal) -> Result<()> {
    let abs = Path::new(rb::JOURNAL);
    if j.functions.is_empty() {
        super::fs::remove(host, abs)?;
        return Ok(());
    }
    let mut text = serde_json::to_vec_pretty(j)?;
    text.push(b'\n');
    super::fs::write_with(host, abs, &text, None, 0o600, false)?;
    Ok(())
}

impl Live<'_> {
    /// Run one step.
    pub fn step(&self, s: &Step) -> Result<()> {
        match &s.action {
            Action::Load { module } => self.load(module),
            Action::Write {
                path,
                value,
                blocker,
            } => self.write(s.address, path, value, blocker.as_deref()),
            Action::Verify { expect } => {
                let a = s.address.expect("a verify step is for a function");
                self.verify(&a, expect.as_deref())
            }
        }
    }

    /// Make sure `driver` is registered, loading `module` when it is not.
    pub fn ensure_driver(&self, driver: &str, module: Option<&str>) -> Result<()> {
        if registered(self.host, driver) {
            return Ok(());
        }
        let Some(module) = module else {
            bail!("the driver {driver} is not loaded, and gpt does not know its module: load it and run this again");
        };
        self.load(module)?;
        if !registered(self.host, driver) {
            bail!("`modprobe {module}` ran but the driver {driver} is not registered (/sys/bus/pci/drivers/{driver}); check `dmesg`");
        }
        Ok(())
    }

    pub fn load(&self, module: &str) -> Result<()> {
        let step = crate::plan::Step::new(&format!("loading {module}"), &["modprobe", module]);
        self.runner.run(&step)?;
        Ok(())
    }

    /// Write `value` to `path` in a child gpt, waiting at most the timeout.
    fn write(
        &self,
        a: Option<PciAddress>,
        path: &str,
        value: &str,
        blocker: Option<&str>,
    ) -> Result<()> {
        let exe = std::env::current_exe().context("cannot tell where this gpt binary is")?;
        let shown = Step {
            address: a,
            action: Action::Write {
                path: path.into(),
                value: value.into(),
                blocker: None,
            },
        }
        .describe();
        let mut child = Command::new(exe)
            .arg("--root")
            .arg(self.host.root())
            .arg("__sysfs-write")
            .arg(path)
            .arg(value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the writer for `{shown}`"))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                let err = err.trim().trim_start_matches("error: ");
                bail!("`{shown}` failed: {err}");
            }
            if Instant::now() >= deadline {
                return Err(anyhow::Error::new(stuck(
                    a,
                    &shown,
                    blocker,
                    self.timeout,
                    child.id(),
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `driver` link of `a` must name `expect`; a probe may finish a moment after its write
    /// returns (drivers that probe asynchronously), so it is read again for a short while.
    fn verify(&self, a: &PciAddress, expect: Option<&str>) -> Result<()> {
        let settle = self.timeout.min(Duration::from_secs(2));
        let deadline = Instant::now() + settle;
        loop {
            let now = driver_of(self.host, a);
            if now.as_deref() == expect {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let now = now
                    .map(|d| format!("bound to {d}"))
                    .unwrap_or("bound to no driver".into());
                match expect {
                    Some(d) => bail!(
                        "{a} is {now} after the probe, not to {d}: the probe bound {}; `dmesg` says why",
                        if now.contains("no driver") { "nothing" } else { "another driver" }
                    ),
                    None => bail!("{a} is still {now}"),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Move `order` (in that order) to vfio-pci, journalled. On a failure, the functions moved
    /// so far are handed back (the one stuck in a write stays) and the error says both.
    pub fn bind(&self, order: &[Function], journal: &mut Journal) -> Result<Vec<PciAddress>> {
        self.ensure_driver(rb::VFIO_PCI, Some(rb::VFIO_PCI_MODULE))?;
        let mut moved: Vec<PciAddress> = Vec::new();
        #[cfg(feature = "failpoints")]
        let mut steps = 0;
        for f in order {
            if f.driver.as_deref() == Some(rb::VFIO_PCI) {
                continue;
            }
            journal.record(entry(self.host, f));
            save_journal(self.host, journal)?;
            moved.push(f.address);
            for s in rb::bind_steps(f) {
                if let Err(e) = self.step(&s) {
                    return Err(self.undo(&moved, journal, e));
                }
                #[cfg(feature = "failpoints")]
                {
                    steps += 1;
                    crate::failpoint!("bind-after-step:{}", steps);
                }
            }
            crate::failpoint!("bind-after-function:{}", moved.len());
        }
        Ok(moved)
    }

    /// After a failed bind: hand back `moved` (newest first) but a function stuck in a write.
    fn undo(&self, moved: &[PciAddress], journal: &mut Journal, e: anyhow::Error) -> anyhow::Error {
        let stuck = e.downcast_ref::<Stuck>().and_then(|s| s.address);
        let back: Vec<PciAddress> = moved
            .iter()
            .rev()
            .filter(|a| Some(**a) != stuck)
            .copied()
            .collect();
        let problems = self.hand_back(&back, journal);
        let mut msg = format!("{e:#}");
        if let Some(a) = stuck {
            msg.push_str(&format!(
                "\n{a} stays as it is, its driver_override naming vfio-pci; gpt's journal keeps it: \
                 once the write has ended (or after a reboot), `sudo gpt unbind --device {a}` hands it back"
            ));
        }
        if !back.is_empty() && problems.is_empty() {
            let list: Vec<String> = back.iter().map(|a| a.to_string()).collect();
            msg.push_str(&format!(
                "\nhanded back to their drivers: {}",
                list.join(", ")
            ));
        }
        for p in &problems {
            msg.push_str(&format!("\nnot handed back: {p}"));
        }
        anyhow::anyhow!(msg)
    }

    /// Give each of `addrs` (in that order) back to the driver its journal entry names; each
    /// one back leaves the journal. Returns what failed, one line each.
    pub fn hand_back(&self, addrs: &[PciAddress], journal: &mut Journal) -> Vec<String> {
        let mut problems = Vec::new();
        for a in addrs {
            let Some(e) = journal.entry(a).cloned() else {
                problems.push(format!("{a}: not in gpt's binding journal"));
                continue;
            };
            match self.give_back(a, e.driver.as_deref(), e.module.as_deref()) {
                Ok(()) => {
                    journal.forget(a);
                    if let Err(err) = save_journal(self.host, journal) {
                        problems.push(format!("{a}: {err:#}"));
                    }
                }
                Err(err) => problems.push(format!("{a}: {err:#}")),
            }
        }
        problems
    }

    /// Give `a` to `driver` (`None`: leave it without one) from wherever it is now.
    pub fn give_back(
        &self,
        a: &PciAddress,
        driver: Option<&str>,
        module: Option<&str>,
    ) -> Result<()> {
        if let Some(d) = driver {
            self.ensure_driver(d, module)?;
        }
        let current = driver_of(self.host, a);
        let keep = self.keep_override.contains(a);
        for s in rb::restore_steps(*a, current.as_deref(), driver, keep) {
            self.step(&s)?;
        }
        Ok(())
    }
}

fn stuck(
    a: Option<PciAddress>,
    shown: &str,
    blocker: Option<&str>,
    t: Duration,
    pid: u32,
) -> Stuck {
    let who = blocker
        .map(|d| format!("the {d} driver"))
        .unwrap_or("the kernel".into());
    let what = match blocker {
        Some("nvidia") => "something still uses the GPU (nvidia-persistenced, a display server, a CUDA program: `sudo fuser -v /dev/nvidia*` lists them); stop it and the write may finish",
        Some(_) => "something may still use the device; stop what uses it and the write may finish",
        None => "the device may be busy",
    };
    Stuck {
        address: a,
        message: format!(
            "`{shown}` did not return within {} s: {who} does not let go ({what}). The write stays \
             pending in the kernel (process {pid}); if it never ends, only a reboot frees the device",
            t.as_secs_f32()
        ),
    }
}

/// `gpt __sysfs-write PATH VALUE`: write `VALUE` and a newline to the sysfs attribute PATH
/// (inside the root), as `echo VALUE > PATH` does. Every inherited descriptor but the standard
/// ones is closed first: a write that never returns must not hold gpt's lock.
pub fn write_helper(host: &Host, path: &str, value: &str) -> Result<()> {
    close_inherited();
    // Opened once inside the root, as every write of gpt's.
    let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::TRUNC;
    let mut f = std::fs::File::from(
        host.open_in_root(path, flags)
            .with_context(|| format!("cannot open {path}"))?,
    );
    use std::io::Write;
    f.write_all(format!("{value}\n").as_bytes())
        .with_context(|| format!("cannot write {value:?} to {path}"))?;
    Ok(())
}

fn close_inherited() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        let _ = nix::unistd::close(fd);
    }
}
