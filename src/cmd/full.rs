//! `gpt full`: configure the host so the GPU and its IOMMU group go to vfio-pci on the next boot.
//!
//! Read the host → decide → plan → show → confirm → apply (journalled, rolled back on error)
//! → verify.

use super::session::{FileJson, Session};
use crate::boot::{Stack, StackId};
use crate::cli::{Distro, FullArgs};
use crate::describe::lspci_nn;
use crate::facts::Facts;
use crate::host::Host;
use crate::pci::vendor_by_name;
use crate::plan::FileChange;
use crate::planner::{self, Options, Planned};
use crate::resetability::{self, Level, Report};
use crate::runner::Runner;
use crate::select::{self, Request, Selection};
use crate::sysfs;
use crate::ui::Ui;
use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Serialize)]
struct FullJson<'a> {
    ok: bool,
    changed: bool,
    dry_run: bool,
    phase: crate::model::Phase,
    boot: StackId,
    devices: &'a [String],
    ids: &'a [String],
    /// How vfio-pci gets the devices: `ids` (vfio-pci.ids=) or `address` (driver_override).
    binding: crate::model::BindMode,
    /// Devices taken from the host that are not functions of the card (`--force`).
    taken_from_host: Vec<String>,
    /// Functions of the card left on the host (`--gpu-group-only`).
    left_on_host: Vec<String>,
    files: Vec<FileJson>,
    commands: Vec<Vec<String>>,
    /// Commands the user still has to run before rebooting (`--no-update`).
    manual_commands: &'a [String],
    /// Passthrough configuration gpt did not write, and whether the rescue must undo it.
    existing_passthrough: &'a [crate::passthrough::Found],
    warnings: Vec<String>,
    reboot_required: bool,
    /// Per device for vfio-pci: can the guest reset it, will it wake up (empty when only the
    /// IOMMU is configured).
    reset: &'a [Report],
}

/// VENDOR and DISTRO: a vendor name or 4-digit hex id, then optionally a distribution.
/// A lone distribution is allowed when `--device` picks the GPU.
pub fn parse_positionals(args: &[String]) -> Result<(Option<u16>, Option<Distro>)> {
    let distro_of = |s: &str| match s.to_ascii_lowercase().as_str() {
        "debian" => Some(Distro::Debian),
        "ubuntu" => Some(Distro::Ubuntu),
        _ => None,
    };
    let vendor_of = |s: &str| -> Option<u16> {
        vendor_by_name(s).or_else(|| {
            let hex = s.strip_prefix("0x").unwrap_or(s);
            (hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(hex, 16).ok())
                .flatten()
        })
    };
    let bad_vendor = |s: &str| -> anyhow::Error {
        anyhow::Error::new(crate::cli::UsageError(format!(
            "'{}' is not a GPU vendor: give nvidia, amd, intel or a 4-digit hex vendor id such as 10de \
             (`gpt iommu --gpu` shows the ids)",
            s.escape_debug()
        )))
    };
    let bad_distro = |s: &str| -> anyhow::Error {
        anyhow::Error::new(crate::cli::UsageError(format!(
            "'{}' is not a distribution gpt supports: give debian or ubuntu, or leave it out to use /etc/os-release",
            s.escape_debug()
        )))
    };
    match args {
        [] => Ok((None, None)),
        [one] => match (vendor_of(one), distro_of(one)) {
            (Some(v), _) => Ok((Some(v), None)),
            (None, Some(d)) => Ok((None, Some(d))),
            _ => Err(bad_vendor(one)),
        },
        [v, d] => Ok((
            Some(vendor_of(v).ok_or_else(|| bad_vendor(v))?),
            Some(distro_of(d).ok_or_else(|| bad_distro(d))?),
        )),
        _ => crate::usage!("too many arguments: gpt full [VENDOR] [DISTRO]"),
    }
}

pub fn run(host: &Host, ui: &Ui, args: &FullArgs) -> Result<u8> {
    let positional: Vec<String> = args.vendor.iter().chain(&args.distro).cloned().collect();
    let (vendor, distro) = parse_positionals(&positional)?;
    for d in &args.devices {
        if let Err(e) = d.parse::<crate::pci::PciAddress>() {
            crate::usage!("--device {e}");
        }
    }
    if vendor.is_none() && args.devices.is_empty() {
        crate::usage!(
            "give a VENDOR (nvidia, amd, intel or a hex id such as 10de) or --device ADDR; \
             `gpt iommu --gpu` lists the GPUs"
        );
    }
    let session = Session::start(
        host,
        ui,
        args.dry_run,
        args.yes,
        "changing this host's boot configuration needs root: run it with sudo (or add --dry-run to see the plan)",
    )?;
    let facts = Facts::read_for(host, args.boot_loader.map(|b| b.choice()))?;
    check_distro(&facts, distro)?;
    let stack = crate::boot::Stack::of_facts(&facts)?;
    stack.loader.validate(&facts)?;
    facts.topology()?;
    ui.info(format!("boot stack: {}", stack.id()));
    let names = sysfs::load_names(host, &facts.topology);
    let selection = select_devices(ui, &facts, &names, args, vendor)?;
    for u in &facts.unmapped {
        ui.warn(format!(
            "could not tell which controller backs {u}; make sure it is not one of the devices above"
        ));
    }
    let opts = Options {
        no_ignore_msrs: args.no_ignore_msrs,
        no_deps: args.no_deps,
        vm_tools: args.vm_tools,
        no_update: args.no_update,
        foreign_root: !host.is_real_root(),
        no_idle_d3: args.no_idle_d3,
    };
    let reset = reset_verdicts(host, ui, &facts, selection.as_ref());
    let mut planned = planner::plan(&facts, selection.as_ref(), &opts)?;
    if !args.no_update && crate::txn::update_needed(host)? {
        owe_updates(ui, &facts, &stack, &mut planned);
    }
    for w in selection
        .iter()
        .flat_map(|s| &s.warnings)
        .chain(&planned.warnings)
    {
        ui.warn(w);
    }
    for n in &planned.notes {
        ui.info(format!("note: {n}"));
    }
    check_boot_space(&facts, &stack, &planned)?;

    if planned.plan.is_empty() {
        let pending = pending(host, &facts, &stack, &planned, args.no_update)?;
        if pending.is_empty() {
            ui.ok("already configured: nothing to change");
        } else {
            ui.ok("already configured in /etc: nothing to write");
            for p in &pending {
                ui.warn(format!("still to do: {p}"));
            }
        }
        if ui.json {
            print_json(
                ui,
                selection.as_ref(),
                &planned,
                &reset,
                false,
                args.dry_run,
                Vec::new(),
            )?;
        }
        return Ok(0);
    }
    warn_stale_entries(ui, host, &facts, &stack, &planned);
    session.trust_tree(host, &planned.plan)?;
    if session.dry_run() {
        dry_run(ui, selection.as_ref(), &planned, &reset)?;
        return Ok(0);
    }
    session.show(&planned.plan.render());
    if !session.confirm("Apply these changes?")? {
        ui.info("nothing was changed");
        return Ok(1);
    }
    let lock = session.lock().expect("a real run holds the lock");
    let outcome = apply(host, ui, lock, &facts, &stack, &planned)?;
    let files: Vec<FileJson> = outcome
        .files
        .iter()
        .map(|(path, action)| FileJson::new(path, *action))
        .collect();
    print_manual(ui, &planned);
    if ui.json {
        print_json(ui, selection.as_ref(), &planned, &reset, true, false, files)?;
    }
    finish_message(ui, &facts, &stack, &planned);
    Ok(0)
}

/// Apply the plan in one transaction, verified before the commit: the loader's own check
/// that the entries were regenerated, then [`verify`]. A loader whose regeneration rewrites
/// the argument file (kernelstub) gets gpt's bytes back after it.
fn apply(
    host: &Host,
    ui: &Ui,
    lock: &crate::txn::Lock,
    facts: &Facts,
    stack: &Stack,
    planned: &Planned,
) -> Result<crate::txn::Outcome> {
    let regenerates_entries = planned.plan.commands.iter().any(|c| {
        stack
            .loader
            .regenerate(facts)
            .iter()
            .any(|r| r.argv == c.argv)
    });
    let check = |runner: &Runner| -> Result<()> {
        if regenerates_entries {
            stack
                .loader
                .confirm(host, facts, &planned.config.args, &[])?;
        }
        let problems = verify(runner, facts, stack, planned);
        if problems.is_empty() {
            return Ok(());
        }
        bail!(
            "the regenerated boot files do not carry the configuration: {}",
            problems.join("; ")
        )
    };
    let mut plan = planned.plan.clone();
    if stack.loader.rewritten_by_regeneration() && regenerates_entries {
        for c in planned
            .plan
            .files
            .iter()
            .filter(|c| stack.loader.owns(&c.path))
        {
            plan.after_commands
                .push(FileChange::new(&c.path, c.after.clone(), c.after.clone()));
        }
    }
    crate::txn::apply_verified(
        &Runner::new(host, ui),
        lock,
        &plan,
        crate::txn::Finish::Record(Some(&planned.config)),
        &[],
        &check,
    )
}

/// The devices for vfio-pci; `None` when the IOMMU is not on yet (this run then only adds
/// the IOMMU arguments).
fn select_devices(
    ui: &Ui,
    facts: &Facts,
    names: &crate::pciids::Names,
    args: &FullArgs,
    vendor: Option<u16>,
) -> Result<Option<Selection>> {
    let req = Request {
        vendor,
        devices: args.devices.clone(),
        all: args.all,
        force: args.force,
        gpu_group_only: args.gpu_group_only,
        cpu_maker: crate::pci::cpu_maker(facts.cpu_vendor.as_deref()),
    };
    if facts.topology.iommu_enabled() {
        let sel = select::select(&facts.topology, names, &req, &facts.protected)?;
        describe_selection(ui, facts, names, &sel);
        return Ok(Some(sel));
    }
    select::pick_gpus(&facts.topology, names, &req, &mut Vec::new())?;
    let needed = planner::iommu_args(facts);
    let on_cmdline = facts.cmdline_args();
    if needed.iter().all(|a| on_cmdline.contains(&a.as_str())) {
        bail!(
            "the kernel runs with {} but there are still no IOMMU groups: VT-d (Intel) or AMD-Vi/IOMMU \
             (AMD) is off in the firmware setup. Turn it on there, boot, and run this again; nothing was changed",
            needed.join(" ")
        );
    }
    ui.warn(
        "the IOMMU is not active yet (no groups in /sys/kernel/iommu_groups): this run only adds the \
         IOMMU kernel arguments. Reboot, then run the same command again to configure the GPU.",
    );
    Ok(None)
}

/// A run that was stopped, or --no-update, can leave /etc ahead of the boot files: then every
/// regeneration is due, whether or not this run writes anything (a run stopped after writing
/// the arguments but before regenerating leaves a re-run with files to write and stale boot
/// files).
/// What is still to do on a host whose /etc already holds the configuration: the
/// regeneration an earlier `--no-update` (or a stopped run) left owed, a reboot into the
/// arguments, the second run after the IOMMU phase.
fn pending(
    host: &Host,
    facts: &Facts,
    stack: &Stack,
    planned: &Planned,
    no_update: bool,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if no_update && crate::txn::update_needed(host)? {
        let cmds: Vec<String> = stack
            .regenerate(facts, true, true)
            .iter()
            .map(|s| format!("`sudo {}`", s.shell_line()))
            .collect();
        out.push(format!(
            "the boot files do not carry it yet (--no-update): run {}, then reboot",
            cmds.join(", ")
        ));
    }
    let on = facts.cmdline_args();
    let reboot = facts.cmdline_read
        && planned
            .config
            .args
            .iter()
            .any(|a| !on.contains(&a.as_str()));
    match planned.config.phase {
        crate::model::Phase::Iommu => out.push(
            "a reboot, so that the kernel turns the IOMMU on; then run the same command again to \
             configure the GPU"
                .into(),
        ),
        crate::model::Phase::Vfio if reboot => {
            out.push("a reboot: the running kernel does not have gpt's arguments yet".into())
        }
        crate::model::Phase::Vfio => {}
    }
    Ok(out)
}

fn owe_updates(ui: &Ui, facts: &Facts, stack: &Stack, planned: &mut Planned) {
    planned.plan.commands.retain(|c| !c.regenerates);
    planned
        .plan
        .commands
        .extend(stack.regenerate(facts, true, true));
    ui.warn("an earlier run did not finish the update commands; running them all now");
}

fn dry_run(ui: &Ui, sel: Option<&Selection>, planned: &Planned, reset: &[Report]) -> Result<()> {
    if ui.json {
        let files = planned
            .plan
            .files
            .iter()
            .map(|c| FileJson::new(&c.path, c.action()))
            .collect();
        print_json(ui, sel, planned, reset, false, true, files)?;
    } else {
        crate::ui::out(&planned.plan.render());
        print_manual(ui, planned);
    }
    ui.info("dry run: nothing was changed; run the same command without --dry-run to apply it");
    Ok(())
}

/// After the commands ran, before the commit: the regenerated boot entries carry the
/// arguments, and each initramfs image holds vfio-pci (unless that kernel builds it in).
fn verify(runner: &Runner, f: &Facts, stack: &Stack, planned: &Planned) -> Vec<String> {
    let ran = &planned.plan.commands;
    let regenerated =
        |steps: Vec<crate::plan::Step>| steps.iter().any(|s| ran.iter().any(|r| r.argv == s.argv));
    let host = runner.host();
    let mut problems = Vec::new();
    if regenerated(stack.loader.regenerate(f)) {
        if let crate::boot::Entries::Unchecked(why) =
            stack.loader.entries(host, f, &planned.config.args)
        {
            runner.progress().info(&format!("note: {why}"));
        }
        problems.extend(stack.verify(host, runner, f, &planned.config.args, false));
    }
    let images = regenerated(stack.initramfs.regenerate(f))
        && planned
            .config
            .initramfs_modules
            .iter()
            .any(|m| m == crate::facts::VFIO_PCI);
    if images {
        problems.extend(stack.images_lacking(host, runner, &f.kernels, crate::facts::VFIO_PCI));
    }
    if regenerated(stack.initramfs.regenerate(f)) && planned.early.is_some() {
        problems.extend(stack.images_lacking_early(host, runner, &f.kernels));
    }
    problems
}

fn check_distro(f: &Facts, wanted: Option<Distro>) -> Result<()> {
    let detected = f.distro();
    match (wanted, detected) {
        (_, None) if f.os_ids.is_empty() => bail!(
            "cannot tell the distribution: /etc/os-release is missing or has no ID; gpt supports Debian and Ubuntu"
        ),
        (_, None) => bail!(
            "gpt supports Debian and Ubuntu, and this host is {} (ID {}); nothing was changed",
            f.os_pretty,
            f.os_ids.join(", ")
        ),
        (Some(w), Some(d)) if w != d => bail!(
            "you asked for {} but /etc/os-release says this host is {} ({}); leave DISTRO out or fix it",
            w.name(),
            d.name(),
            f.os_pretty
        ),
        _ => Ok(()),
    }
}

fn describe_selection(ui: &Ui, f: &Facts, names: &crate::pciids::Names, sel: &Selection) {
    ui.step(format!(
        "Devices for vfio-pci (bound by {}):",
        match sel.bind {
            crate::model::BindMode::Ids => "vfio-pci.ids=",
            crate::model::BindMode::Address => "address",
        }
    ));
    for a in &sel.targets {
        if let Some(d) = f.topology.device(a) {
            ui.info(format!(
                "    {} {} (group {}, driver {})",
                a,
                lspci_nn(d, names),
                d.iommu_group.map(|g| g.to_string()).unwrap_or_default(),
                d.driver.as_deref().unwrap_or("none")
            ));
        }
    }
    let kept = select::kept_displays(&f.topology, &sel.targets);
    match kept.as_slice() {
        [] => ui.info("The host keeps no display controller."),
        _ => {
            ui.info("The host keeps:");
            for a in &kept {
                if let Some(d) = f.topology.device(a) {
                    let role = if d.boot_vga { ", boot display" } else { "" };
                    ui.info(format!(
                        "    {a} {} (driver {}{role})",
                        lspci_nn(d, names),
                        d.driver.as_deref().unwrap_or("none")
                    ));
                }
            }
        }
    }
    for n in &sel.notes {
        ui.info(format!("note: {n}"));
    }
}

/// Before the reboot: for each device going to vfio-pci, can the guest reset it, will it wake
/// up (the facts are there already).
fn reset_verdicts(host: &Host, ui: &Ui, f: &Facts, sel: Option<&Selection>) -> Vec<Report> {
    let Some(sel) = sel else {
        return Vec::new();
    };
    let facts = crate::reset_facts::read(host, f, &sel.targets);
    let vfio = sel.targets.iter().copied().collect();
    let reports = resetability::judge_all(&facts, &f.topology, &vfio);
    ui.step("Reset by the guest, and waking up:");
    for (addrs, r) in resetability::by_card(&reports) {
        let word = match r.verdict {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
        };
        ui.info(format!("    {} {word}: {}", addrs.join(", "), r.reason));
        ui.info(format!("        {}", r.facts_line()));
    }
    reports
}

/// The generator writes each new image beside the old one: /boot needs room for one more.
fn check_boot_space(f: &Facts, stack: &Stack, planned: &Planned) -> Result<()> {
    let rebuild = stack.initramfs.regenerate(f).pop();
    let rebuilds = planned
        .plan
        .commands
        .iter()
        .any(|c| rebuild.as_ref().is_some_and(|r| r.argv == c.argv));
    const MARGIN: u64 = 16 << 20;
    if let (true, Some(free)) = (rebuilds, f.boot_free) {
        let need = f.largest_initrd + MARGIN;
        if f.largest_initrd > 0 && free < need {
            bail!(
                "/boot has {} MiB free, and rebuilding the initramfs needs about {} MiB; remove old kernels \
                 (`sudo apt autoremove`) and run this again; nothing was changed",
                free >> 20,
                need >> 20
            );
        }
    }
    Ok(())
}

/// Boot entries the regeneration leaves with their old options (boot counting's entries of
/// earlier installs): said before anything is written.
fn warn_stale_entries(ui: &Ui, host: &Host, facts: &Facts, stack: &Stack, planned: &Planned) {
    if !planned.plan.commands.iter().any(|c| c.regenerates) {
        return;
    }
    let stale = stack.loader.stale_entries(host, facts, true);
    if !stale.is_empty() {
        ui.warn(format!(
            "the regeneration leaves these boot entries of earlier installs as they are, with their \
             old options (boot counting keeps them): {}; the boot menu may still offer them: delete \
             them once the new entry has booted",
            stale.join(", ")
        ));
    }
}

fn print_manual(ui: &Ui, planned: &Planned) {
    if !planned.manual.is_empty() {
        ui.info("Run these yourself before rebooting:");
        for m in &planned.manual {
            ui.info(format!("    {m}"));
        }
    }
}

fn finish_message(ui: &Ui, facts: &Facts, stack: &Stack, planned: &Planned) {
    use crate::model::Phase;
    match planned.config.phase {
        Phase::Iommu => ui.ok("IOMMU arguments added. Reboot, then run the same command again."),
        Phase::Vfio => {
            ui.ok("configured. Reboot, then run `gpt check`.");
            let undo: Vec<String> = planned
                .existing
                .iter()
                .filter(|e| e.defeats_rescue)
                .map(|e| format!("`{}` ({})", e.text, e.path))
                .collect();
            ui.info(format!(
                "If the host does not come up right: {}, then run `sudo gpt reset`.",
                stack.loader.rescue_on(facts, planned.config.bind)
            ));
            if !undo.is_empty() {
                let regenerate: Vec<String> = stack
                    .regenerate(facts, true, true)
                    .iter()
                    .map(|s| format!("`sudo {}`", s.shell_line()))
                    .collect();
                ui.warn(format!(
                    "that rescue alone does not give the card back to the host here: this host has \
                     passthrough configuration gpt did not write. Also take out {}, then run {}, \
                     and reboot",
                    undo.join(", "),
                    regenerate.join(" and ")
                ));
            }
        }
    }
}

fn print_json(
    ui: &Ui,
    sel: Option<&Selection>,
    planned: &Planned,
    reset: &[Report],
    changed: bool,
    dry_run: bool,
    files: Vec<FileJson>,
) -> Result<()> {
    let commands = planned
        .plan
        .commands
        .iter()
        .map(|c| c.argv.clone())
        .collect();
    let list = |v: &[crate::pci::PciAddress]| v.iter().map(|a| a.to_string()).collect();
    ui.print_json(&FullJson {
        ok: true,
        changed,
        dry_run,
        phase: planned.config.phase,
        boot: planned.config.boot,
        devices: &planned.config.devices,
        ids: &planned.config.ids,
        binding: planned.config.bind,
        taken_from_host: sel.map(|s| list(&s.taken)).unwrap_or_default(),
        left_on_host: sel.map(|s| list(&s.left)).unwrap_or_default(),
        files,
        commands,
        manual_commands: &planned.manual,
        existing_passthrough: &planned.existing,
        warnings: sel
            .iter()
            .flat_map(|s| s.warnings.iter())
            .chain(&planned.warnings)
            .cloned()
            .collect(),
        reboot_required: changed,
        reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<(Option<u16>, Option<Distro>)> {
        parse_positionals(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn vendors_and_distros() {
        assert_eq!(
            p(&["NVIDIA", "debian"]).unwrap(),
            (Some(0x10de), Some(Distro::Debian))
        );
        assert_eq!(p(&["1234"]).unwrap(), (Some(0x1234), None));
        assert_eq!(p(&["ubuntu"]).unwrap(), (None, Some(Distro::Ubuntu)));
        for bad in ["", "nvidia;reboot", "10de0", "ñvidia", "$(id)"] {
            let e = p(&[bad]).unwrap_err();
            assert!(
                e.downcast_ref::<crate::cli::UsageError>().is_some(),
                "{bad}"
            );
            assert!(e.to_string().contains("is not a GPU vendor"), "{e}");
        }
        let e = p(&["amd", "fedora"]).unwrap_err();
        assert!(
            e.to_string().contains("'fedora' is not a distribution"),
            "{e}"
        );
    }
}
