//! From what the host is (`Facts`) and which devices were chosen (`Selection`), compute the
//! configuration and the plan that gets the host there. No I/O: every file's new content comes
//! from the pure editors in `edit`.

use crate::edit::{cmdline, grub, modprobe, modules};
use crate::facts::{self, Facts, GRUB_DEFAULT, INITRAMFS_MODULES, MODPROBE_CONF};
use crate::pci::PciDevice;
use crate::plan::{FileChange, Plan, Step};
use crate::select::Selection;
use crate::state::{BindMode, Config, Phase};
use anyhow::{bail, Result};
use std::collections::BTreeSet;

pub const GRUB_VAR: &str = "GRUB_CMDLINE_LINUX_DEFAULT";
pub const PACKAGES: [&str; 7] = [
    "qemu-system-x86",
    "qemu-utils",
    "ovmf",
    "bridge-utils",
    "virtinst",
    "cloud-image-utils",
    "curl",
];
/// The kernel argument that switches off gpt's bind-by-address hook (the rescue step then).
pub const BIND_OFF: &str = "gpt.bind=off";

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub no_ignore_msrs: bool,
    pub no_deps: bool,
    pub no_update: bool,
    /// Working on a tree under --root: packages are listed, never installed.
    pub foreign_root: bool,
}

/// The plan, the configuration it leads to, and what to tell the user.
#[derive(Debug, Clone)]
pub struct Planned {
    pub plan: Plan,
    pub config: Config,
    /// Commands gpt did not put in the plan (`--no-update`, packages under `--root`).
    pub manual: Vec<String>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Which IOMMU arguments this host needs: `intel_iommu=on` when the firmware's IOMMU is Intel
/// VT-d (ACPI DMAR), none for AMD-Vi (IVRS; `amd_iommu=on` is not a valid option); only without
/// either table does the CPU vendor decide.
pub fn iommu_args(f: &Facts) -> Vec<String> {
    let intel = if f.dmar || f.ivrs {
        f.dmar
    } else {
        f.cpu_vendor.as_deref() == Some("GenuineIntel")
    };
    let mut args = vec!["iommu=pt".to_string()];
    if intel {
        args.push("intel_iommu=on".to_string());
    }
    args
}

/// The file whose assignment of `GRUB_CMDLINE_LINUX_DEFAULT` wins: grub sources
/// /etc/default/grub, then /etc/default/grub.d/*.cfg in order.
fn grub_target(f: &Facts) -> Result<(String, String)> {
    let mut target = (
        GRUB_DEFAULT.to_string(),
        f.grub_default.clone().unwrap_or_default(),
    );
    for (path, text) in &f.grub_d {
        if grub::read_var(text, GRUB_VAR)
            .map_err(|e| e.context(path.clone()))?
            .is_some()
        {
            target = (path.clone(), text.clone());
        }
    }
    Ok(target)
}

/// Every kernel argument the grub files give, with where it comes from.
fn effective_args(f: &Facts) -> Result<Vec<String>> {
    let mut files = vec![(
        GRUB_DEFAULT.to_string(),
        f.grub_default.clone().unwrap_or_default(),
    )];
    files.extend(f.grub_d.iter().cloned());
    let mut out = Vec::new();
    for var in ["GRUB_CMDLINE_LINUX", GRUB_VAR] {
        let mut value = None;
        for (path, text) in &files {
            let v = grub::read_var(text, var).map_err(|e| e.context(path.clone()))?;
            if v.is_some() {
                value = v;
            }
        }
        if let Some(v) = value {
            out.extend(cmdline::split(&v).into_iter().map(str::to_string));
        }
    }
    Ok(out)
}

/// The modules that would claim a device if vfio-pci did not come first.
fn claimants(f: &Facts, dev: &PciDevice, warnings: &mut Vec<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(drv) = dev.driver.as_deref().filter(|d| *d != "vfio-pci") {
        match f.driver_modules.get(drv) {
            Some(Some(module)) => {
                out.insert(module.replace('-', "_"));
            }
            _ => warnings.push(format!(
                "{} is driven by {drv}, which is built into the kernel: a softdep cannot hold it off; \
                 vfio-pci.ids= on the command line must win the race, so check with `gpt check` after \
                 the reboot",
                dev.address
            )),
        }
    }
    if let (Some(v), Some(d), Some(class)) = (dev.vendor, dev.device, dev.class) {
        let modalias = format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
            v,
            d,
            dev.subsystem_vendor.unwrap_or(0),
            dev.subsystem_device.unwrap_or(0),
            class >> 16,
            (class >> 8) & 0xff,
            class & 0xff
        );
        for (pattern, module) in &f.aliases {
            if facts::glob_match(pattern, &modalias) {
                out.insert(module.clone());
            }
        }
        let known: &[&str] = match (v, class >> 16, class >> 8) {
            (0x10de, 0x03, _) => &["nouveau", "nvidia", "nvidiafb"],
            (0x1002, 0x03, _) => &["amdgpu", "radeon"],
            (0x10de, _, 0x0c80) => &["i2c_nvidia_gpu", "ucsi_ccg"],
            (_, _, 0x0403) => &["snd_hda_intel"],
            (_, _, 0x0c03) if class & 0xff == 0x30 => &["xhci_pci"],
            _ => &[],
        };
        out.extend(known.iter().map(|s| s.to_string()));
    }
    for never in ["vfio_pci", "pcieport", "vfio_pci_core"] {
        out.remove(never);
    }
    out
}

/// update-grub when the kernel arguments changed; depmod per kernel and update-initramfs when
/// the initramfs inputs changed (depmod first: the initramfs uses its output).
pub fn update_commands(f: &Facts, grub: bool, initramfs: bool) -> Vec<Step> {
    let mut commands = Vec::new();
    if grub {
        commands.push(Step::new("Regenerating grub.cfg", &["update-grub"]));
    }
    if initramfs {
        for k in &f.kernels {
            commands.push(Step::new(
                &format!("Updating module dependencies for {}", k.version),
                &["depmod", "-a", &k.version],
            ));
        }
        commands.push(Step::new(
            "Rebuilding the initramfs images",
            &["update-initramfs", "-u", "-k", "all"],
        ));
    }
    commands
}

pub fn plan(f: &Facts, sel: Option<&Selection>, opts: &Options) -> Result<Planned> {
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    let phase = if sel.is_some() {
        Phase::Vfio
    } else {
        Phase::Iommu
    };
    let (grub_file, grub_text) = grub_target(f)?;
    let gpt_tokens: Vec<String> = grub::added_tokens(&grub_text)
        .into_iter()
        .filter(|(var, _)| var == GRUB_VAR)
        .flat_map(|(_, t)| t)
        .collect();

    // The user's own arguments must not fight the configuration.
    let current = effective_args(f)?;
    for t in &current {
        if gpt_tokens.contains(t) {
            continue;
        }
        let off = ["intel_iommu=off", "iommu=off", "amd_iommu=off"];
        if off.contains(&t.as_str()) {
            bail!(
                "the kernel command line in the grub configuration has {t}, which turns the IOMMU off; \
                 remove it from GRUB_CMDLINE_LINUX/GRUB_CMDLINE_LINUX_DEFAULT yourself (gpt will not \
                 override your setting) and run this again"
            );
        }
        if cmdline::key(t) == "vfio_pci.ids" {
            bail!(
                "the grub configuration already has {t}, which gpt did not write (the old setup.sh \
                 added one; `gpt reset --legacy` removes it); remove it and run this again"
            );
        }
    }

    let mut args = iommu_args(f);
    let mut initramfs_modules = Vec::new();
    let mut softdeps = BTreeSet::new();
    let mut conf_text = None;
    let (mut devices, mut ids, mut gpus) = (Vec::new(), Vec::new(), Vec::new());
    let mut bind = BindMode::Ids;
    if let Some(sel) = sel {
        bind = sel.bind;
        devices = sel.targets.iter().map(|a| a.to_string()).collect();
        gpus = sel.gpus.iter().map(|a| a.to_string()).collect();
        ids = sel.ids.clone();
        if bind == BindMode::Ids {
            args.push(format!("vfio-pci.ids={}", sel.ids.join(",")));
        }
        if !opts.no_ignore_msrs {
            args.push("kvm.ignore_msrs=1".into());
            args.push("kvm.report_ignored_msrs=0".into());
        }
        let boot_vga = sel
            .targets
            .iter()
            .filter_map(|a| f.topology.device(a))
            .any(|d| d.boot_vga);
        let old_kernel = f
            .kernels
            .iter()
            .any(|k| k.major_minor().is_some_and(|v| v < (6, 0)));
        if boot_vga && old_kernel {
            args.push("video=efifb:off".into());
        }
        for m in ["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci"] {
            let loadable = f.kernels.iter().any(|k| k.modules.contains(m));
            let builtin_everywhere =
                !f.kernels.is_empty() && f.kernels.iter().all(|k| k.builtin.contains(m));
            if m == "vfio_virqfd" && !loadable {
                continue; // merged into vfio in 6.2
            }
            if builtin_everywhere {
                continue;
            }
            initramfs_modules.push(m.to_string());
        }
        for a in &sel.targets {
            if let Some(dev) = f.topology.device(a) {
                softdeps.extend(claimants(f, dev, &mut warnings));
            }
        }
        let bind_targets: Vec<modprobe::BindTarget> = if bind == BindMode::Address {
            sel.targets
                .iter()
                .filter_map(|a| f.topology.device(a))
                .filter_map(|d| {
                    Some(modprobe::BindTarget {
                        address: d.address.to_string(),
                        vendor: d.vendor?,
                        device: d.device?,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let softdeps: Vec<String> = softdeps.iter().cloned().collect();
        conf_text = Some(modprobe::render(&softdeps, &bind_targets));
    }

    let mut plan = Plan::default();
    // Kernel arguments: undo gpt's earlier additions, then add the current set, so a re-run
    // with another GPU replaces the ids and a re-run with the same one changes nothing.
    let base = grub::reverse(&grub_text)?;
    let already: Vec<&String> = current.iter().filter(|t| !gpt_tokens.contains(t)).collect();
    let to_add: Vec<String> = args
        .iter()
        .filter(|a| !already.contains(a))
        .cloned()
        .collect();
    let new_grub = grub::apply(&base, GRUB_VAR, &to_add)?;
    if grub_file != GRUB_DEFAULT && new_grub != grub_text {
        notes.push(format!(
            "{grub_file} sets {GRUB_VAR} after /etc/default/grub, so the arguments went there"
        ));
    }
    plan.push_file(FileChange::new(
        &grub_file,
        Some(grub_text.clone().into_bytes()),
        Some(new_grub.into_bytes()),
    ));

    let modules_before = f.initramfs_modules.clone();
    let base = modules::reverse(modules_before.as_deref().unwrap_or(""));
    let names: Vec<&str> = initramfs_modules.iter().map(String::as_str).collect();
    let modules_after = modules::apply(&base, &names);
    let modules_after = match &modules_before {
        None if modules_after.is_empty() => None,
        _ => Some(modules_after.into_bytes()),
    };
    plan.push_file(FileChange::new(
        INITRAMFS_MODULES,
        modules_before.map(String::into_bytes),
        modules_after,
    ));

    if let Some(existing) = &f.modprobe_conf {
        if !modprobe::is_gpt_owned(existing) {
            bail!(
                "{MODPROBE_CONF} exists and was not written by gpt; move it aside and run this again"
            );
        }
    }
    plan.push_file(FileChange::new(
        MODPROBE_CONF,
        f.modprobe_conf.clone().map(String::into_bytes),
        conf_text.map(String::into_bytes),
    ));

    let grub_changed = plan
        .files
        .iter()
        .any(|c| c.path.to_string_lossy() == grub_file);
    let initramfs_changed = plan.files.iter().any(|c| {
        let p = c.path.to_string_lossy();
        p == INITRAMFS_MODULES || p == MODPROBE_CONF
    });
    let mut commands = Vec::new();
    if phase == Phase::Vfio && !opts.no_deps {
        let missing: Vec<&str> = PACKAGES
            .iter()
            .copied()
            .filter(|p| !f.installed_packages.contains(*p))
            .collect();
        if !missing.is_empty() && f.dpkg_status_found && opts.foreign_root {
            notes.push(format!(
                "packages missing under the root, not installed there: {}",
                missing.join(" ")
            ));
        } else if !missing.is_empty() && f.dpkg_status_found {
            let mut install = vec![
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-q",
            ];
            install.extend(&missing);
            commands.push(Step::new(
                "Refreshing package lists",
                &["apt-get", "update", "-q"],
            ));
            commands.push(Step::new("Installing packages", &install));
        }
    }
    commands.extend(update_commands(f, grub_changed, initramfs_changed));
    let mut manual = Vec::new();
    if opts.no_update {
        manual.extend(
            commands
                .iter()
                .filter(|c| !c.argv.iter().any(|a| a == "apt-get"))
                .map(|c| c.shell_line()),
        );
        commands.retain(|c| c.argv.iter().any(|a| a == "apt-get"));
    }
    plan.commands = commands;

    let config = Config {
        phase,
        gpus,
        devices,
        ids,
        bind,
        grub_file,
        grub_var: GRUB_VAR.to_string(),
        args,
        initramfs_modules,
        softdeps: softdeps.into_iter().collect(),
        kernels: f.kernels.iter().map(|k| k.version.clone()).collect(),
    };
    Ok(Planned {
        plan,
        config,
        manual,
        notes,
        warnings,
    })
}
