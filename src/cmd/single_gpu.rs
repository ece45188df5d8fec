//! `gpt single-gpu`: give the host's only GPU to a libvirt VM while it runs.
//!
//! `enable VM`: read the host → the card (the only display) → refuse what cannot work (another
//! display, a card nothing resets, libvirt before 6.5) → warn without a way in → the hook file
//! (`single_gpu::hook_script`) as a plan → show → confirm → the transaction (journalled, so
//! `disable VM` and `gpt reset` remove it exactly). `release` / `restore` are what the hook
//! runs: the domain XML from standard input, the card's functions in it or nothing is done,
//! then `txn::display`'s steps, their record in /run.

use super::session::Session;
use crate::cli::{
    SingleGpuAction, SingleGpuArgs, SingleGpuDisable, SingleGpuEnable, SingleGpuHook,
};
use crate::facts::Facts;
use crate::host::Host;
use crate::pci::PciAddress;
use crate::plan::{FileChange, Plan};
use crate::refusal::Refusal;
use crate::runner::Runner;
use crate::runtime_bind::{self as rb, Function};
use crate::select::{self, Request};
use crate::single_gpu::{self as sg, Phase, Record};
use crate::txn::display::{self, Card, Display};
use crate::txn::live::Live;
use crate::txn::{self, Finish, State};
use crate::ui::Ui;
use anyhow::{bail, Result};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

pub fn run(host: &Host, ui: &Ui, args: &SingleGpuArgs) -> Result<u8> {
    match &args.action {
        SingleGpuAction::Enable(a) => enable(host, ui, a),
        SingleGpuAction::Disable(a) => disable(host, ui, a),
        SingleGpuAction::Release(h) => hook(host, ui, h, Phase::Release),
        SingleGpuAction::Restore(h) => hook(host, ui, h, Phase::Restore),
    }
}

fn check_names(vm: &str, units: &[String]) -> Result<()> {
    if !sg::valid_vm_name(vm) {
        crate::usage!(
            "'{}': give the libvirt domain's name (`virsh list --all`), of letters, digits, '.', '_', '+' and '-'",
            vm.escape_debug()
        );
    }
    if let Some(u) = units.iter().find(|u| !sg::valid_unit(u)) {
        crate::usage!(
            "--also-stop '{}': give a systemd unit name (`systemctl list-units`), or USER/UNIT for a unit of a user's own manager (`systemctl --user list-units`)",
            u.escape_debug()
        );
    }
    Ok(())
}

/// The card's functions (as `gpt full` selects them) and its display function. With
/// `refuse_second`, a card that is not the only display is refused: `gpt bind` is for it.
fn card(
    host: &Host,
    facts: &Facts,
    device: Option<&str>,
    refuse_second: bool,
) -> Result<(PciAddress, Vec<PciAddress>)> {
    let topo = facts.topology()?;
    if !topo.iommu_enabled() {
        bail!(
            "the IOMMU is not active (no groups in /sys/kernel/iommu_groups), so vfio-pci cannot take \
             the card: turn VT-d or AMD-Vi on in the firmware setup, run `sudo gpt full VENDOR` \
             (which adds the IOMMU arguments), reboot, and run this again; nothing was changed"
        );
    }
    let gpu = match device {
        Some(d) => topo.find(d)?.address,
        None => {
            let gpus = topo.gpus();
            sg::only_display(&gpus).map_err(|e| {
                Refusal::error(
                    "not_only_display",
                    gpus.clone(),
                    format!("refusing: {e}."),
                    "nothing was changed",
                )
            })?
        }
    };
    let names = crate::sysfs::load_names(host, topo);
    let mut req = Request {
        devices: vec![gpu.to_string()],
        cpu_maker: crate::pci::cpu_maker(facts.cpu_vendor.as_deref()),
        ..Request::default()
    };
    let sel = match select::select(topo, &names, &req, &facts.protected) {
        Ok(sel) if refuse_second => {
            let others: Vec<String> = select::kept_displays(topo, &sel.targets)
                .iter()
                .map(|a| a.to_string())
                .collect();
            return Err(Refusal::error(
                "not_only_display",
                [gpu],
                format!(
                    "refusing: {gpu} is not this host's only display ({} stays on the host), so \
                     single-GPU mode is not needed: `sudo gpt bind --device {gpu}` gives it to a VM \
                     while the host keeps its screen. Nothing was changed;",
                    others.join(", ")
                ),
                "use `gpt bind`",
            ));
        }
        Ok(sel) => sel,
        Err(e)
            if e.downcast_ref::<Refusal>()
                .is_some_and(|r| r.kind == "only_display") =>
        {
            req.force = true;
            select::select(topo, &names, &req, &facts.protected)?
        }
        Err(e) => return Err(e),
    };
    Ok((gpu, sel.targets))
}

/// Refuse a card whose host driver would not have it back after a VM.
fn refuse_reset(host: &Host, facts: &Facts, targets: &[PciAddress]) -> Result<()> {
    let topo = facts.topology()?;
    let rf = crate::reset_facts::read(host, facts, targets);
    let vfio: BTreeSet<PciAddress> = targets.iter().copied().collect();
    let reports = crate::resetability::judge_all(&rf, topo, &vfio);
    let bug: Vec<String> = targets
        .iter()
        .filter_map(|a| topo.device(a))
        .filter(|d| {
            d.vendor
                .zip(d.device)
                .is_some_and(|(v, dv)| crate::resetability::reset_bug::family(v, dv).is_some())
        })
        .map(|d| d.address.to_string())
        .collect();
    if let Some(why) = sg::cannot_come_back(&reports, &bug) {
        return Err(Refusal::error(
            "no_reset",
            targets.to_vec(),
            format!(
                "refusing: nothing resets this card between its host driver and the VM ({why}), so \
                 after the VM the host driver may not bring it up again and the host would stay \
                 without a screen until a reboot. Nothing was changed;"
            ),
            "`gpt check` shows the reset facts",
        ));
    }
    Ok(())
}

fn refuse_libvirt(host: &Host) -> Result<()> {
    let status = host
        .read_optional("/var/lib/dpkg/status")?
        .unwrap_or_default();
    let version = sg::LIBVIRT_PACKAGES
        .iter()
        .find_map(|p| sg::package_version(&status, p));
    if let Some(why) = sg::libvirt_refusal(version.as_deref()) {
        return Err(Refusal::error(
            "libvirt",
            Vec::<PciAddress>::new(),
            format!("refusing: {why}. Nothing was changed;"),
            "run this again afterwards",
        ));
    }
    Ok(())
}

/// The hook runs this very binary as root at every start of the domain: whoever could change
/// it (or a folder above it) would run code as root.
fn refuse_changeable_binary(exe: &Path, vm: &str) -> Result<()> {
    let Some((path, why)) = crate::tree_trust::changeable_on_the_way(exe) else {
        return Ok(());
    };
    Err(Refusal::error(
        "hook_binary",
        Vec::<PciAddress>::new(),
        format!(
            "refusing: {} {why}, and libvirt would run {} as root at every start of {vm}: \
             another user could change what runs. Nothing was changed;",
            path.display(),
            exe.display()
        ),
        "run `gpt single-gpu enable` from a gpt only root can change (the gpt-vfio package \
         installs /usr/bin/gpt)",
    ))
}

/// An enabled SSH server, a serial getty.
fn way_in(host: &Host, facts: &Facts) -> sg::WayIn {
    let wants = "/etc/systemd/system/multi-user.target.wants";
    let sshd = ["ssh.service", "sshd.service"]
        .into_iter()
        .find(|u| {
            host.exists(format!("{wants}/{u}")) || host.link_name(format!("{wants}/{u}")).is_some()
        })
        .map(str::to_string);
    let getty = host
        .list_dir("/etc/systemd/system/getty.target.wants")
        .unwrap_or_default()
        .into_iter()
        .find(|u| u.starts_with("serial-getty@"));
    let console = facts
        .cmdline
        .split_whitespace()
        .find(|w| w.starts_with("console=ttyS") || w.starts_with("console=ttyAMA"))
        .map(|w| format!("a serial getty on {}", &w["console=".len()..]));
    sg::WayIn {
        sshd,
        serial: getty.or(console),
    }
}

fn enable(host: &Host, ui: &Ui, a: &SingleGpuEnable) -> Result<u8> {
    check_names(&a.vm, &a.also_stop)?;
    let session = Session::start(
        host,
        ui,
        a.dry_run,
        a.yes,
        "installing a libvirt hook needs root: run it with sudo (or add --dry-run to see it)",
    )?;
    let facts = Facts::read(host)?;
    let (gpu, targets) = card(host, &facts, a.device.as_deref(), true)?;
    refuse_reset(host, &facts, &targets)?;
    refuse_libvirt(host)?;
    if let Some(w) = sg::way_in_warning(&way_in(host, &facts)) {
        ui.warn(w);
    }
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot tell where this gpt binary is: {e}"))?;
    refuse_changeable_binary(&exe, &a.vm)?;
    let hook = sg::Hook {
        vm: a.vm.clone(),
        gpt: exe.display().to_string(),
        root: (!host.is_real_root()).then(|| host.root().display().to_string()),
        device: gpu,
        also_stop: a.also_stop.clone(),
        timeout: a.timeout,
    };
    let path = sg::hook_path(&a.vm);
    let before = txn::fs::read(host, Path::new(&path))?.map(|c| c.bytes);
    let text = sg::hook_script(&hook).into_bytes();
    if before.is_some() && !journalled(host, &path)? {
        bail!("{path} exists and gpt did not write it: move it away first; nothing was changed");
    }
    let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    ui.step(format!(
        "Single-GPU mode for domain {}: {} ({})",
        a.vm,
        gpu,
        list.join(", ")
    ));
    if before.as_deref() == Some(text.as_slice()) {
        ui.ok(format!("{path} is installed already: nothing to change"));
        return Ok(0);
    }
    let mut change = FileChange::new(&path, before, Some(text));
    change.new_mode = 0o755;
    let d = libvirt_daemon(host);
    apply(host, &session, ui, change, "Install this hook?", || {
        ui.ok(format!(
            "installed {path}; restart {d} so that it sees the hook (`sudo systemctl restart {d}`), \
             then start {}: the host's desktop stops while it runs and comes back when it stops \
             (`gpt check` shows the last hand-over)",
            a.vm
        ))
    })
}

/// The daemon that runs the qemu driver's hooks: virtqemud where the modular daemons are
/// enabled, else the monolithic libvirtd (Debian's and Ubuntu's default).
fn libvirt_daemon(host: &Host) -> &'static str {
    let modular = [
        "/etc/systemd/system/sockets.target.wants/virtqemud.socket",
        "/etc/systemd/system/multi-user.target.wants/virtqemud.service",
    ]
    .iter()
    .any(|p| host.exists(p) || host.link_name(p).is_some());
    if modular {
        "virtqemud"
    } else {
        "libvirtd"
    }
}

/// Whether gpt's journal holds `path`.
fn journalled(host: &Host, path: &str) -> Result<bool> {
    Ok(State::load(host)?.is_some_and(|s| s.entry(Path::new(path)).is_some()))
}

/// Show the change, and apply it through the transaction (journalled) unless a dry run.
fn apply(
    host: &Host,
    session: &Session,
    ui: &Ui,
    change: FileChange,
    ask: &str,
    done: impl FnOnce(),
) -> Result<u8> {
    let plan = Plan {
        files: vec![change],
        ..Plan::default()
    };
    session.show(&plan.render());
    if session.dry_run() {
        ui.info("dry run: nothing was changed; run the same command without --dry-run to apply it");
        return Ok(0);
    }
    if !session.confirm(ask)? {
        ui.info("nothing was changed");
        return Ok(1);
    }
    let lock = session.lock().expect("a real run holds the lock");
    let runner = Runner::new(host, ui);
    txn::apply_with(&runner, lock, &plan, Finish::Files, &[])?;
    done();
    Ok(0)
}

fn disable(host: &Host, ui: &Ui, a: &SingleGpuDisable) -> Result<u8> {
    check_names(&a.vm, &[])?;
    let session = Session::start(
        host,
        ui,
        a.dry_run,
        a.yes,
        "removing a libvirt hook needs root: run it with sudo (or add --dry-run to see it)",
    )?;
    let path = sg::hook_path(&a.vm);
    let Some(cur) = txn::fs::read(host, Path::new(&path))? else {
        ui.ok(format!(
            "no single-GPU hook for domain {} ({path}): nothing to remove",
            a.vm
        ));
        return Ok(0);
    };
    if !journalled(host, &path)? {
        bail!("{path} is not in gpt's journal, so gpt did not write it: remove it yourself if it is yours; nothing was changed");
    }
    let change = FileChange::new(&path, Some(cur.bytes), None);
    let d = libvirt_daemon(host);
    apply(host, &session, ui, change, "Remove this hook?", || {
        ui.ok(format!(
            "removed {path}; restart {d} so that it forgets the hook (`sudo systemctl restart {d}`)"
        ))
    })
}

/// `release` or `restore`, as the hook runs them.
fn hook(host: &Host, ui: &Ui, h: &SingleGpuHook, phase: Phase) -> Result<u8> {
    check_names(&h.vm, &h.also_stop)?;
    let mut xml = String::new();
    std::io::stdin()
        .read_to_string(&mut xml)
        .map_err(|e| anyhow::anyhow!("cannot read the domain XML on standard input: {e}"))?;
    let facts = Facts::read(host)?;
    let (gpu, targets) = card(host, &facts, Some(&h.device), false)?;
    let held = sg::held(&xml, &targets);
    if held.is_empty() {
        ui.info(format!(
            "domain {} holds none of the functions of {gpu}: nothing to do",
            h.vm
        ));
        return Ok(0);
    }
    let session = Session::start(host, ui, false, true, "the hook runs as root")?;
    if phase == Phase::Release && !crate::txn::live::registered(host, rb::VFIO_PCI) {
        super::bind::trust_modprobe(host, &session)?;
    }
    let topo = facts.topology()?;
    let funcs: Vec<Function> = targets
        .iter()
        .filter_map(|a| topo.device(a).map(Function::of))
        .collect();
    let order = rb::bind_order(&funcs);
    let runner = Runner::new(host, ui);
    let live = Live {
        host,
        runner: &runner,
        timeout: Duration::from_secs(h.timeout),
        keep_override: BTreeSet::new(),
    };
    let disp = Display { live: &live };
    let card = Card {
        order: &order,
        also_stop: &h.also_stop,
        kernel: facts.running_kernel.as_deref(),
    };
    let mut rec = Record {
        phase,
        vm: h.vm.clone(),
        ok: false,
        at: 0,
        steps: Vec::new(),
        error: None,
        consoles: Vec::new(),
        stopped: None,
    };
    let result = match phase {
        Phase::Release => disp.release(&card, &mut rec),
        Phase::Restore => {
            let last = display::load_record(host).filter(|r| r.phase == Phase::Release);
            if last.as_ref().is_some_and(|r| !r.ok && r.vm == h.vm) {
                ui.info(format!(
                    "the release for domain {} failed and handed everything back: nothing to restore",
                    h.vm
                ));
                return Ok(0);
            }
            disp.restore(&card, gpu, last.as_ref(), &mut rec)
        }
    };
    rec.ok = result.is_ok();
    rec.error = result.as_ref().err().map(|e| format!("{e:#}"));
    rec.at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let saved = display::save_record(&live, &rec);
    match result {
        Ok(()) => {
            saved?;
            ui.ok(rec.summary());
            Ok(0)
        }
        Err(e) => bail!("single-gpu {} for domain {}: {e:#}", phase.name(), h.vm),
    }
}
