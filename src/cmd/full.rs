//! `gpt full`: configure the host so the GPU and its IOMMU group go to vfio-pci on the next boot.
//!
//! Read the host → decide → plan → show → confirm → apply (journalled, rolled back on error)
//! → verify.

use crate::cli::{Distro, FullArgs};
use crate::configure::{self, Options, Planned};
use crate::describe::lspci_nn;
use crate::facts::{self, Facts};
use crate::host::Host;
use crate::pci::vendor_by_name;
use crate::plan::FileAction;
use crate::select::{self, Request, Selection};
use crate::sysfs;
use crate::ui::Ui;
use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Serialize)]
struct FileJson {
    path: String,
    action: FileAction,
}

#[derive(Serialize)]
struct FullJson<'a> {
    changed: bool,
    dry_run: bool,
    phase: crate::state::Phase,
    devices: &'a [String],
    ids: &'a [String],
    files: Vec<FileJson>,
    commands: Vec<Vec<String>>,
    reboot_required: bool,
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
        anyhow::Error::new(crate::ui::UsageError(format!(
            "'{}' is not a GPU vendor: give nvidia, amd, intel or a 4-digit hex vendor id such as 10de \
             (`gpt iommu --gpu` shows the ids)",
            s.escape_debug()
        )))
    };
    let bad_distro = |s: &str| -> anyhow::Error {
        anyhow::Error::new(crate::ui::UsageError(format!(
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
    let (vendor, distro) = parse_positionals(&args.positional)?;
    if vendor.is_none() && args.devices.is_empty() {
        crate::usage!(
            "give a VENDOR (nvidia, amd, intel or a hex id such as 10de) or --device ADDR; \
             `gpt iommu --gpu` lists the GPUs"
        );
    }
    if !args.dry_run && host.is_real_root() && !nix::unistd::geteuid().is_root() {
        bail!("changing this host's boot configuration needs root: run it with sudo (or add --dry-run to see the plan)");
    }
    // The lock covers reading the host too: another gpt could change it under us.
    let lock = if args.dry_run {
        None
    } else {
        Some(crate::txn::Lock::acquire(host)?)
    };
    let facts = Facts::read(host)?;
    check_distro(&facts, distro)?;
    facts::check_supported(&facts)?;
    let names = sysfs::load_names(host, &facts.topology);

    let req = Request {
        vendor,
        devices: args.devices.clone(),
        all: args.all,
        force: args.force,
    };
    let selection = if facts.topology.iommu_enabled() {
        Some(select::select(
            &facts.topology,
            &names,
            &req,
            &facts.protected,
        )?)
    } else {
        select::pick_gpus(&facts.topology, &names, &req, &mut Vec::new())?;
        let needed = configure::iommu_args(&facts);
        let on_cmdline = crate::edit::cmdline::split(&facts.cmdline);
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
        None
    };
    if let Some(sel) = &selection {
        describe_selection(ui, &facts, &names, sel);
    }
    for u in &facts.unmapped {
        ui.warn(format!(
            "could not tell which controller backs {u}; make sure it is not one of the devices above"
        ));
    }
    let opts = Options {
        no_ignore_msrs: args.no_ignore_msrs,
        no_deps: args.no_deps,
        no_update: args.no_update,
        foreign_root: !host.is_real_root(),
    };
    let mut planned = configure::plan(&facts, selection.as_ref(), &opts)?;
    // A run that was stopped, or --no-update, can leave /etc ahead of grub.cfg and the
    // initramfs: then the update commands are due even with nothing to write.
    // This holds whether or not this run writes anything: a run stopped after writing grub
    // but before update-grub leaves a re-run with files to write and grub.cfg still stale.
    if !args.no_update && crate::txn::update_needed(host)? {
        let mut commands: Vec<_> = planned
            .plan
            .commands
            .iter()
            .filter(|c| !crate::txn::regenerates(c))
            .cloned()
            .collect();
        commands.extend(configure::update_commands(&facts, true, true));
        planned.plan.commands = commands;
        ui.warn("an earlier run did not finish the update commands; running them all now");
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
    check_boot_space(&facts, &planned)?;

    if planned.plan.is_empty() {
        ui.ok("already configured: nothing to change");
        if ui.json {
            print_json(ui, &planned, false, args.dry_run, Vec::new())?;
        }
        return Ok(0);
    }
    if args.dry_run {
        if ui.json {
            let files = planned
                .plan
                .files
                .iter()
                .map(|c| FileJson {
                    path: c.path.display().to_string(),
                    action: c.action(),
                })
                .collect();
            print_json(ui, &planned, false, true, files)?;
        } else {
            crate::ui::out(&planned.plan.render());
            print_manual(ui, &planned);
        }
        ui.info("dry run: nothing was changed");
        return Ok(0);
    }
    let lock = lock.expect("taken above unless --dry-run");
    if !args.yes {
        eprint!("{}", planned.plan.render());
        if !ui.interactive {
            bail!("no terminal to ask on: re-run with --yes to apply this plan, or --dry-run to only see it");
        }
        let go = dialoguer::Confirm::new()
            .with_prompt("Apply these changes?")
            .default(false)
            .interact()?;
        if !go {
            ui.info("nothing was changed");
            return Ok(1);
        }
    }
    let outcome = crate::txn::apply(host, ui, &lock, &planned.plan, Some(&planned.config))?;
    let files: Vec<FileJson> = outcome
        .files
        .iter()
        .map(|(path, action)| FileJson {
            path: path.display().to_string(),
            action: *action,
        })
        .collect();
    print_manual(ui, &planned);
    let problems = verify(host, ui, &facts, &planned, &outcome.commands);
    if ui.json {
        print_json(ui, &planned, true, false, files)?;
    }
    for p in &problems {
        ui.warn(p);
    }
    finish_message(ui, &planned);
    Ok(if problems.is_empty() { 0 } else { 1 })
}

/// After the commands ran: the regenerated grub.cfg carries the arguments, and each new
/// initramfs image holds vfio-pci (unless it is built into that kernel).
fn verify(host: &Host, ui: &Ui, f: &Facts, planned: &Planned, ran: &[Vec<String>]) -> Vec<String> {
    let mut problems = Vec::new();
    let ran_cmd = |name: &str| ran.iter().any(|c| c.first().is_some_and(|a| a == name));
    if ran_cmd("update-grub") {
        match host.read_optional("/boot/grub/grub.cfg") {
            Ok(Some(cfg)) => {
                let linux: Vec<Vec<&str>> = cfg
                    .lines()
                    .map(str::trim_start)
                    .filter(|l| l.starts_with("linux"))
                    .map(|l| l.split_whitespace().collect())
                    .collect();
                let missing: Vec<&String> = planned
                    .config
                    .args
                    .iter()
                    .filter(|a| !linux.iter().any(|l| l.contains(&a.as_str())))
                    .collect();
                if linux.is_empty() || !missing.is_empty() {
                    problems.push(format!(
                        "the regenerated /boot/grub/grub.cfg does not carry {}; check GRUB_CMDLINE_LINUX_DEFAULT and run update-grub",
                        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
                    ));
                }
            }
            _ => problems.push("update-grub ran but /boot/grub/grub.cfg cannot be read".into()),
        }
    }
    if ran_cmd("update-initramfs")
        && planned
            .config
            .initramfs_modules
            .iter()
            .any(|m| m == "vfio_pci")
    {
        let runner = crate::txn::Runner::new(host, ui);
        for k in &f.kernels {
            if k.builtin.contains("vfio_pci") {
                continue;
            }
            let image = format!("/boot/initrd.img-{}", k.version);
            match runner.query(&["lsinitramfs", &image]) {
                Ok(out) => {
                    let list = out.stdout_str();
                    if !list
                        .lines()
                        .any(|l| l.contains("/vfio-pci.ko") || l.contains("/vfio_pci.ko"))
                    {
                        problems.push(format!(
                            "{image} does not contain vfio-pci: vfio-pci will load late; run `update-initramfs -u -k {}` and check with lsinitramfs",
                            k.version
                        ));
                    }
                }
                Err(e) => problems.push(format!("could not list {image}: {e:#}")),
            }
        }
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
    ui.step("Devices for vfio-pci:");
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
}

/// update-initramfs writes each new image beside the old one: /boot needs room for one more.
fn check_boot_space(f: &Facts, planned: &Planned) -> Result<()> {
    let rebuilds = planned
        .plan
        .commands
        .iter()
        .any(|c| c.argv.first().is_some_and(|a| a == "update-initramfs"));
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

fn print_manual(ui: &Ui, planned: &Planned) {
    if !planned.manual.is_empty() {
        ui.info("Run these yourself before rebooting:");
        for m in &planned.manual {
            ui.info(format!("    {m}"));
        }
    }
}

fn finish_message(ui: &Ui, planned: &Planned) {
    use crate::state::{BindMode, Phase};
    match planned.config.phase {
        Phase::Iommu => ui.ok("IOMMU arguments added. Reboot, then run the same command again."),
        Phase::Vfio => {
            ui.ok("configured. Reboot, then run `gpt check`.");
            let rescue = match planned.config.bind {
                BindMode::Ids => "remove vfio-pci.ids=… from the line starting with `linux`",
                BindMode::Address => {
                    "add gpt.bind=off to the end of the line starting with `linux`"
                }
            };
            ui.info(format!(
                "If the host does not come up right: at the GRUB menu press `e`, {rescue}, boot with \
                 Ctrl-x, then run `sudo gpt reset`."
            ));
        }
    }
}

fn print_json(
    ui: &Ui,
    planned: &Planned,
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
    ui.print_json(&FullJson {
        changed,
        dry_run,
        phase: planned.config.phase,
        devices: &planned.config.devices,
        ids: &planned.config.ids,
        files,
        commands,
        reboot_required: changed,
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
            assert!(e.downcast_ref::<crate::ui::UsageError>().is_some(), "{bad}");
            assert!(e.to_string().contains("is not a GPU vendor"), "{e}");
        }
        let e = p(&["amd", "fedora"]).unwrap_err();
        assert!(
            e.to_string().contains("'fedora' is not a distribution"),
            "{e}"
        );
    }
}
