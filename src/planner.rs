//! The planner: from what the host is (`Facts`) and which devices were chosen (`Selection`),
//! compute the configuration and the plan that gets the host there. No I/O: the boot stack
//! (`crate::boot`) says where each part goes, and every file's new content comes from the pure
//! editors in `edit`.

use crate::boot::Stack;
use crate::edit::early::{EarlyBind, EarlyTarget, Gate};
use crate::edit::{cmdline, modprobe};
use crate::facts::{self, Facts, VFIO_PCI};
use crate::model::{BindMode, Config, Phase};
use crate::paths::MODPROBE_CONF;
use crate::pci::PciDevice;
use crate::plan::{FileChange, Plan, Step};
use crate::select::Selection;
use anyhow::{bail, Result};
use std::collections::BTreeSet;
/// What the boot configuration itself needs beyond the stack's own tools (modprobe, depmod).
pub const NEEDED: [&str; 1] = ["kmod"];
/// The tools to run the VM, installed only with `--vm-tools` and never on Proxmox VE.
pub const PACKAGES: [&str; 7] = [
    "qemu-system-x86",
    "qemu-utils",
    "ovmf",
    "bridge-utils",
    "virtinst",
    "cloud-image-utils",
    "curl",
];
/// The kernel argument of `--no-idle-d3`, for kernels that build vfio_pci in.
pub const NO_IDLE_D3_ARG: &str = "vfio_pci.disable_idle_d3=1";

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub no_ignore_msrs: bool,
    pub no_deps: bool,
    /// `--vm-tools`: install the VM tools ([`PACKAGES`]) too.
    pub vm_tools: bool,
    pub no_update: bool,
    /// Working on a tree under --root: packages are listed, never installed.
    pub foreign_root: bool,
    /// `--no-idle-d3`: vfio-pci keeps idle devices in D0.
    pub no_idle_d3: bool,
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
    /// Passthrough configuration gpt did not write (a guide's), found on this host.
    pub existing: Vec<crate::passthrough::Found>,
    /// gpt's early binding step in the initramfs, when the configuration has one.
    pub early: Option<EarlyBind>,
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

/// The modules that would claim a device if vfio-pci did not come first, and the driver that
/// holds it now when that driver is built into the running kernel (its folder in sysfs has no
/// module link).
fn claimants(
    f: &Facts,
    dev: &PciDevice,
    warnings: &mut Vec<String>,
) -> (BTreeSet<String>, Option<String>) {
    let mut out = BTreeSet::new();
    let mut running_builtin = None;
    if let Some(drv) = dev.driver.as_deref().filter(|d| *d != "vfio-pci") {
        match f.driver_modules.get(drv) {
            Some(Some(module)) => {
                out.insert(module.replace('-', "_"));
            }
            Some(None) => running_builtin = Some(drv.to_string()),
            None => warnings.push(format!(
                "{} is driven by {drv}, which is not among the PCI drivers in sysfs: gpt cannot tell \
                 its module, so check with `gpt check` after the reboot",
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
        out.extend(facts::pci_alias_modules(&f.aliases, &modalias));
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
    for never in [VFIO_PCI, "pcieport", "vfio_pci_core"] {
        out.remove(never);
    }
    (out, running_builtin)
}

/// Of a device's claimants, those built into a kernel, each with the kernels that build it
/// in (a driver built into the running kernel, with that kernel).
fn built_in_claimants(
    f: &Facts,
    claimants: &BTreeSet<String>,
    running_builtin: Option<&str>,
) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = claimants
        .iter()
        .map(|m| {
            let k: Vec<String> = f.built_in_by(m).into_iter().map(str::to_string).collect();
            (m.clone(), k)
        })
        .filter(|(_, k)| !k.is_empty())
        .collect();
    if let Some(drv) = running_builtin {
        let kernel = f
            .running_kernel
            .clone()
            .unwrap_or_else(|| "the running kernel".into());
        // Said once: modules.builtin may name it already (xhci_hcd is module xhci_pci).
        if !out.iter().any(|(_, k)| k.contains(&kernel)) {
            out.push((drv.to_string(), vec![kernel]));
        }
    }
    out
}

/// The kernels that do not build `module` in, as a phrase ("a module on kernel X").
fn modular_on(f: &Facts, module: &str) -> String {
    let modular: Vec<&str> = f
        .kernels
        .iter()
        .filter(|k| !k.builtin.contains(module))
        .map(|k| k.version.as_str())
        .collect();
    if modular.is_empty() {
        String::new()
    } else {
        format!(
            "; a module on kernel {} (held off by its softdep or install hook)",
            modular.join(", ")
        )
    }
}

/// What the configuration needs, before it is put into files.
#[derive(Debug, Default)]
struct Wanted {
    args: Vec<String>,
    initramfs_modules: Vec<String>,
    softdeps: BTreeSet<String>,
    /// gpt's modprobe.d file (`None`: no file).
    conf_text: Option<String>,
    bind: BindMode,
    devices: Vec<String>,
    gpus: Vec<String>,
    ids: Vec<String>,
    /// gpt's early binding step in the initramfs (`None`: not needed).
    early: Option<EarlyBind>,
}

/// The user's own kernel arguments must not fight the configuration.
fn refuse_conflicts(user_args: &[String], stack: &Stack) -> Result<()> {
    let where_ = stack.loader.kind().name();
    for t in user_args {
        if !cmdline::iommu_off(&[t.as_str()]).is_empty() {
            bail!(
                "the kernel command line in the {where_} configuration has {t}, which turns the IOMMU off; \
                 remove it yourself (gpt will not override your setting) and run this again"
            );
        }
        if cmdline::key(t) == "vfio_pci.ids" {
            return Err(crate::refusal::Refusal::error(
                "existing_vfio_ids",
                Vec::<String>::new(),
                format!(
                    "the {where_} configuration already has {t}, which gpt did not write (the old setup.sh \
                     or a guide added it; `gpt reset --legacy` removes setup.sh's);"
                ),
                "remove it and run this again",
            ));
        }
    }
    Ok(())
}

/// The modules the initramfs must load early: the vfio stack, less what every kernel builds
/// in (and `vfio_virqfd`, merged into vfio in 6.2, only where a kernel has it).
fn early_modules(f: &Facts) -> Vec<String> {
    ["vfio", "vfio_iommu_type1", "vfio_virqfd", VFIO_PCI]
        .into_iter()
        .filter(|m| *m != "vfio_virqfd" || f.kernels.iter().any(|k| k.modules.contains(*m)))
        .filter(|m| f.kernels.is_empty() || !f.kernels.iter().all(|k| k.builtin.contains(*m)))
        .map(str::to_string)
        .collect()
}

/// The kernel arguments, modules and softdeps the selection needs.
fn wanted(
    f: &Facts,
    sel: Option<&Selection>,
    opts: &Options,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Wanted {
    let mut w = Wanted {
        args: iommu_args(f),
        ..Wanted::default()
    };
    let Some(sel) = sel else {
        return w;
    };
    w.bind = sel.bind;
    w.devices = sel.targets.iter().map(|a| a.to_string()).collect();
    w.gpus = sel.gpus.iter().map(|a| a.to_string()).collect();
    w.ids = sel.ids.clone();
    if w.bind == BindMode::Ids {
        w.args
            .push(format!("vfio-pci.ids={}", sel.kernel_ids.join(",")));
    }
    if !opts.no_ignore_msrs {
        w.args.push("kvm.ignore_msrs=1".into());
        w.args.push("kvm.report_ignored_msrs=0".into());
    }
    let devices: Vec<&PciDevice> = sel
        .targets
        .iter()
        .filter_map(|a| f.topology.device(a))
        .collect();
    let old_kernel = f
        .kernels
        .iter()
        .any(|k| k.major_minor().is_some_and(|v| v < (6, 0)));
    if old_kernel && devices.iter().any(|d| d.boot_vga) {
        w.args.push("video=efifb:off".into());
    }
    w.initramfs_modules = early_modules(f);
    let mut early_targets = Vec::new();
    for d in &devices {
        let (c, running_builtin) = claimants(f, d, warnings);
        // A claimant built into a kernel binds its function before any userspace runs:
        // neither a softdep nor an install hook nor vfio-pci.ids= (with vfio-pci a module)
        // holds it off. The early step unbinds it there; never from the console's GPU.
        let built_in = built_in_claimants(f, &c, running_builtin.as_deref());
        let unbind = !built_in.is_empty() && !d.boot_vga;
        for (m, kernels) in &built_in {
            if d.boot_vga {
                warnings.push(format!(
                    "{m} is built into kernel {} and can take {}, the GPU that drives the console, at \
                     boot before vfio-pci does; gpt never unbinds the console's GPU, so check with \
                     `gpt check` after the reboot",
                    kernels.join(", "),
                    d.address
                ));
            } else {
                notes.push(format!(
                    "{m} is built into kernel {}: it holds {} before any userspace runs, so gpt's early \
                     step unbinds it there and hands it to vfio-pci{}",
                    kernels.join(", "),
                    d.address,
                    modular_on(f, m)
                ));
            }
        }
        if let (Some(vendor), Some(device)) = (d.vendor, d.device) {
            if unbind || w.bind == BindMode::Address {
                early_targets.push(EarlyTarget {
                    address: d.address.to_string(),
                    vendor,
                    device,
                    unbind,
                });
            }
        }
        w.softdeps.extend(c);
    }
    if w.bind == BindMode::Address {
        let builtin = f.built_in_by(VFIO_PCI);
        if !builtin.is_empty() {
            notes.push(format!(
                "vfio-pci is built into kernel {}: kmod never runs an install command for it there, so \
                 the early step and the hooks on the drivers that could claim the devices ({}) set the \
                 overrides and have the PCI core probe the devices again",
                builtin.join(", "),
                w.softdeps.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if !early_targets.is_empty() {
        w.early = Some(EarlyBind {
            targets: early_targets,
            gate: match w.bind {
                BindMode::Address => Gate::Address,
                BindMode::Ids => Gate::Ids,
            },
        });
    }
    let bind_targets: Vec<modprobe::BindTarget> = match w.bind {
        BindMode::Ids => Vec::new(),
        BindMode::Address => devices
            .iter()
            .filter_map(|d| {
                Some(modprobe::BindTarget {
                    address: d.address.to_string(),
                    vendor: d.vendor?,
                    device: d.device?,
                })
            })
            .collect(),
    };
    let softdeps: Vec<String> = w.softdeps.iter().cloned().collect();
    w.conf_text = Some(modprobe::render_with(
        &softdeps,
        &bind_targets,
        opts.no_idle_d3,
    ));
    if opts.no_idle_d3 && f.kernels.iter().any(|k| k.builtin.contains(VFIO_PCI)) {
        // modprobe.d options never reach a built-in vfio_pci: the kernel argument does.
        w.args.push(NO_IDLE_D3_ARG.into());
    }
    w
}

/// gpt's modprobe.d file: refused when someone else's file has its name.
fn modprobe_change(f: &Facts, text: Option<String>) -> Result<FileChange> {
    if let Some(existing) = &f.modprobe_conf {
        if !modprobe::is_gpt_owned(existing) {
            bail!("{MODPROBE_CONF} exists and was not written by gpt; move it aside and run this again");
        }
    }
    Ok(FileChange::new(
        MODPROBE_CONF,
        f.modprobe_conf.clone().map(String::into_bytes),
        text.map(String::into_bytes),
    ))
}

/// Whether the platform brings its own QEMU (Proxmox VE's pve-qemu-kvm, or any package that
/// provides one): then gpt installs no VM tools, which would fight the platform's packages.
fn platform_qemu(f: &Facts) -> Option<&'static str> {
    ["pve-qemu-kvm", "pve-manager", "qemu-system-x86", "qemu-kvm"]
        .into_iter()
        .find(|p| f.installed_packages.contains(*p))
}

/// apt-get for what the configuration needs and the host lacks (kmod), and, with
/// `--vm-tools`, the VM tools; otherwise the VM tools are suggested. Under `--root`
/// nothing is installed, only listed.
fn package_steps(f: &Facts, opts: &Options, notes: &mut Vec<String>) -> Vec<Step> {
    if !f.dpkg_status_found {
        return Vec::new();
    }
    let lacks = |list: &[&'static str]| -> Vec<&'static str> {
        list.iter()
            .copied()
            .filter(|p| !f.installed_packages.contains(*p))
            .collect()
    };
    let mut missing = lacks(&NEEDED);
    let vm = lacks(&PACKAGES);
    match platform_qemu(f) {
        Some(p) if opts.vm_tools && p.starts_with("pve") => notes.push(format!(
            "--vm-tools: Proxmox VE brings its own QEMU ({p}); gpt installs no VM tools here"
        )),
        _ if opts.vm_tools => missing.extend(vm),
        None if !vm.is_empty() => notes.push(format!(
            "to run the VM you may want: sudo apt-get install {} (or add --vm-tools)",
            vm.join(" ")
        )),
        _ => {}
    }
    if missing.is_empty() {
        return Vec::new();
    }
    if opts.foreign_root {
        notes.push(format!(
            "packages missing under the root, not installed there: {}",
            missing.join(" ")
        ));
        return Vec::new();
    }
    let mut install = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
    ];
    install.extend(&missing);
    vec![
        Step::new("Refreshing package lists", &["apt-get", "update", "-q"]),
        Step::new("Installing packages", &install),
    ]
}

pub fn plan(f: &Facts, sel: Option<&Selection>, opts: &Options) -> Result<Planned> {
    let stack = Stack::of_facts(f)?;
    let (mut warnings, mut notes) = (Vec::new(), Vec::new());
    let phase = if sel.is_some() {
        Phase::Vfio
    } else {
        Phase::Iommu
    };
    let user_args = stack.loader.user_args(f)?;
    refuse_conflicts(&user_args, &stack)?;
    let w = wanted(f, sel, opts, &mut warnings, &mut notes);
    if let Some(e) = &w.early {
        notes.push(format!(
            "early in the initramfs, {}: {}",
            stack.initramfs.early_how(),
            e.targets
                .iter()
                .map(|t| if t.unbind {
                    format!("{} (unbound first)", t.address)
                } else {
                    t.address.clone()
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let where_ = format!("{} configuration", stack.loader.kind().name());
    let existing = crate::passthrough::find(
        &f.modprobe_d,
        &f.module_lists,
        &user_args
            .iter()
            .map(|a| (where_.clone(), a.clone()))
            .collect::<Vec<_>>(),
        &w.ids,
        &w.softdeps,
    );
    for e in &existing {
        warnings.push(format!(
            "passthrough configuration gpt did not write: {}{}",
            crate::passthrough::describe(e),
            if e.defeats_rescue {
                " (gpt leaves it alone; the rescue must undo it too)"
            } else {
                ""
            }
        ));
    }

    // Kernel arguments: the loader takes gpt's earlier additions out and adds what the user
    // does not have already, so a re-run with another GPU replaces the ids and a re-run with
    // the same one changes nothing.
    let add: Vec<String> = w
        .args
        .iter()
        .filter(|a| !user_args.contains(a))
        .cloned()
        .collect();
    let args_edit = stack.loader.edit_args(f, &add)?;
    notes.extend(args_edit.notes.iter().cloned());
    let mut plan = Plan::default();
    plan.push_file(args_edit.change.clone());
    if let Some(change) =
        stack
            .initramfs
            .edit_modules(f, &w.initramfs_modules, w.early.is_some())?
    {
        plan.push_file(change);
    }
    for change in stack.initramfs.edit_early(f, w.early.as_ref())? {
        plan.push_file(change);
    }
    plan.push_file(modprobe_change(f, w.conf_text.clone())?);

    let args_changed = plan.files.iter().any(|c| stack.is_args_file(&c.path));
    let images_changed = plan.files.iter().any(|c| stack.is_initramfs_input(&c.path));
    let mut commands = Vec::new();
    if phase == Phase::Vfio && !opts.no_deps {
        commands.extend(package_steps(f, opts, &mut notes));
    }
    commands.extend(stack.regenerate(f, args_changed, images_changed));
    let mut manual = Vec::new();
    if opts.no_update {
        let (keep, later): (Vec<Step>, Vec<Step>) =
            commands.into_iter().partition(|c| !c.regenerates);
        manual.extend(later.iter().map(Step::shell_line));
        commands = keep;
    }
    plan.commands = commands;

    let config = Config {
        phase,
        gpus: w.gpus,
        devices: w.devices,
        ids: w.ids,
        bind: w.bind,
        grub_file: args_edit.file,
        grub_var: args_edit.setting,
        args: w.args,
        added_args: add,
        initramfs_modules: w.initramfs_modules,
        softdeps: w.softdeps.into_iter().collect(),
        kernels: f.kernels.iter().map(|k| k.version.clone()).collect(),
        boot: stack.id(),
        no_idle_d3: opts.no_idle_d3 && phase == Phase::Vfio,
    };
    let early = w.early;
    Ok(Planned {
        plan,
        config,
        manual,
        notes,
        warnings,
        existing,
        early,
    })
}

#[cfg(test)]
mod tests {
    //! Table: devices (and the host's kernels) in → kernel arguments and gpt's modprobe.d
    //! file out, through the selection policy and the planner.
    use super::*;
    use crate::boot::StackId;
    use crate::facts::Kernel;
    use crate::pci::{PciAddress, PciDevice, Topology};
    use crate::pciids::Names;
    use crate::select::{select, Request};

    /// `(address, vendor, device, class, group, driver, parent, subsystem)`
    type Row = (
        &'static str,
        u16,
        u16,
        u32,
        u32,
        &'static str,
        &'static str,
        (u16, u16),
    );

    fn topo(rows: &[Row]) -> Topology {
        let mut t = Topology::default();
        for &(a, v, d, class, g, drv, parent, sub) in rows {
            let addr: PciAddress = a.parse().unwrap();
            let mut dev = PciDevice::new(addr);
            (dev.vendor, dev.device, dev.class) = (Some(v), Some(d), Some(class));
            (dev.subsystem_vendor, dev.subsystem_device) = (Some(sub.0), Some(sub.1));
            dev.iommu_group = Some(g);
            dev.driver = (!drv.is_empty()).then(|| drv.to_string());
            dev.parent = (!parent.is_empty()).then(|| parent.parse().unwrap());
            dev.boot_vga = a == "0000:00:02.0";
            t.groups.entry(g).or_default().push(addr);
            t.devices.insert(addr, dev);
        }
        t
    }

    fn facts(rows: &[Row], vfio_builtin: bool) -> Facts {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let mut f = Facts {
            topology: topo(rows),
            boot: Some(Ok(StackId::default())),
            dmar: true,
            grub_default: Some(
                "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"\"\n".into(),
            ),
            initramfs_modules: Some(String::new()),
            kernels: vec![Kernel {
                version: "6.1.0-13-amd64".into(),
                modules: names(&["vfio", "vfio_iommu_type1", "nouveau", "snd_hda_intel"]),
                builtin: if vfio_builtin {
                    names(&["vfio_pci"])
                } else {
                    names(&[])
                },
            }],
            ..Facts::default()
        };
        for (drv, m) in [
            ("nouveau", "nouveau"),
            ("snd_hda_intel", "snd_hda_intel"),
            ("i915", "i915"),
            ("xhci_hcd", "xhci_pci"),
            ("ccp", "ccp"),
            ("amdgpu", "amdgpu"),
            ("pcieport", "pcieport"),
        ] {
            f.driver_modules.insert(drv.into(), Some(m.into()));
        }
        f
    }

    const IGPU: Row = (
        "0000:00:02.0",
        0x8086,
        0x4680,
        0x030000,
        0,
        "i915",
        "",
        (0x8086, 1),
    );
    const NO_SUB: (u16, u16) = (0x1043, 0x87f3);

    fn arc() -> Vec<Row> {
        vec![
            IGPU,
            (
                "0000:00:01.0",
                0x8086,
                0x460d,
                0x060400,
                1,
                "pcieport",
                "",
                NO_SUB,
            ),
            (
                "0000:01:00.0",
                0x8086,
                0x4fa1,
                0x060400,
                1,
                "pcieport",
                "0000:00:01.0",
                NO_SUB,
            ),
            (
                "0000:02:01.0",
                0x8086,
                0x4fa4,
                0x060400,
                1,
                "pcieport",
                "0000:01:00.0",
                NO_SUB,
            ),
            (
                "0000:02:04.0",
                0x8086,
                0x4fa4,
                0x060400,
                1,
                "pcieport",
                "0000:01:00.0",
                NO_SUB,
            ),
            (
                "0000:03:00.0",
                0x8086,
                0x56a0,
                0x030000,
                1,
                "i915",
                "0000:02:01.0",
                NO_SUB,
            ),
            (
                "0000:04:00.0",
                0x8086,
                0x4f90,
                0x040300,
                2,
                "snd_hda_intel",
                "0000:02:04.0",
                NO_SUB,
            ),
        ]
    }

    fn twins(second_sub: (u16, u16)) -> Vec<Row> {
        vec![
            IGPU,
            (
                "0000:01:00.0",
                0x10de,
                0x2504,
                0x030000,
                11,
                "nouveau",
                "",
                NO_SUB,
            ),
            (
                "0000:01:00.1",
                0x10de,
                0x228e,
                0x040300,
                11,
                "snd_hda_intel",
                "",
                NO_SUB,
            ),
            (
                "0000:02:00.0",
                0x10de,
                0x2504,
                0x030000,
                12,
                "nouveau",
                "",
                second_sub,
            ),
            (
                "0000:02:00.1",
                0x10de,
                0x228e,
                0x040300,
                12,
                "snd_hda_intel",
                "",
                second_sub,
            ),
        ]
    }

    fn laptop_apu() -> Vec<Row> {
        let port = "0000:00:08.1";
        vec![
            ("0000:00:08.0", 0x1022, 0x1632, 0x060000, 5, "", "", NO_SUB),
            (port, 0x1022, 0x1635, 0x060400, 5, "pcieport", "", NO_SUB),
            (
                "0000:05:00.0",
                0x1002,
                0x1636,
                0x030000,
                5,
                "amdgpu",
                port,
                NO_SUB,
            ),
            (
                "0000:05:00.1",
                0x1002,
                0x1637,
                0x040300,
                5,
                "snd_hda_intel",
                port,
                NO_SUB,
            ),
            (
                "0000:05:00.3",
                0x1022,
                0x1639,
                0x0c0330,
                5,
                "xhci_hcd",
                port,
                NO_SUB,
            ),
            (
                "0000:01:00.0",
                0x10de,
                0x1f15,
                0x030000,
                9,
                "nouveau",
                "",
                NO_SUB,
            ),
        ]
    }

    /// What the planner makes of `rows` for `--device gpu` (`force`), as (the vfio-pci.ids=
    /// argument or "-", the `install` lines' modules, the `softdep` lines' modules).
    fn out(
        rows: &[Row],
        builtin: bool,
        gpu: &str,
        force: bool,
    ) -> (String, Vec<String>, Vec<String>) {
        let f = facts(rows, builtin);
        let req = Request {
            devices: vec![gpu.into()],
            force,
            cpu_maker: Some(0x1022),
            ..Request::default()
        };
        let sel = select(&f.topology, &Names::default(), &req, &BTreeMap::new()).unwrap();
        let p = plan(&f, Some(&sel), &Options::default()).unwrap();
        let ids = p
            .config
            .args
            .iter()
            .find(|a| a.starts_with("vfio-pci.ids="))
            .cloned()
            .unwrap_or_else(|| "-".into());
        let conf = p
            .plan
            .files
            .iter()
            .find(|c| c.path == std::path::Path::new(MODPROBE_CONF))
            .and_then(|c| c.after.clone())
            .map(|b| String::from_utf8(b).unwrap())
            .unwrap();
        let word = |prefix: &str| -> Vec<String> {
            conf.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|l| l.split_whitespace().next().unwrap().to_string())
                .collect()
        };
        (ids, word("install "), word("softdep "))
    }

    use std::collections::BTreeMap;

    #[test]
    fn layouts_in_arguments_and_hooks_out() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // An Arc card behind its own switch, the audio in its own group: both, by id.
        assert_eq!(
            out(&arc(), false, "03:00.0", false),
            (
                "vfio-pci.ids=8086:56a0,8086:4f90".into(),
                s(&[]),
                s(&["i915", "snd_hda_intel"])
            )
        );
        // Twins of two board makers: subsystem ids on the command line, no hook.
        assert_eq!(
            out(&twins((0x3842, 0x3657)), true, "01:00.0", false),
            (
                "vfio-pci.ids=10de:2504:1043:87f3,10de:228e:1043:87f3".into(),
                s(&[]),
                s(&["nouveau", "nvidia", "nvidiafb", "snd_hda_intel"])
            )
        );
        // Identical twins, vfio-pci built in: hooks on vfio_pci and on every claimant.
        assert_eq!(
            out(&twins(NO_SUB), true, "01:00.0", false),
            (
                "-".into(),
                s(&["vfio_pci", "nouveau", "nvidia", "nvidiafb", "snd_hda_intel"]),
                s(&["nouveau", "nvidia", "nvidiafb", "snd_hda_intel"])
            )
        );
        // A laptop APU group with --force: the CPU's USB controller goes, the bridges never.
        assert_eq!(
            out(&laptop_apu(), false, "05:00.0", true),
            (
                "vfio-pci.ids=1002:1636,1002:1637,1022:1639".into(),
                s(&[]),
                s(&["amdgpu", "radeon", "snd_hda_intel", "xhci_pci"])
            )
        );
    }

    /// One card with a USB-C controller (xhci_hcd, a module in the running kernel) on
    /// `kernels` (version, builds xhci_pci in): the early step's functions, and the notes.
    fn usb_card(kernels: &[(&str, bool)], gpu_is_boot_vga: bool) -> (Option<EarlyBind>, Planned) {
        let mut rows = vec![
            IGPU,
            (
                "0000:01:00.0",
                0x10de,
                0x2504,
                0x030000,
                11,
                "nouveau",
                "",
                NO_SUB,
            ),
            (
                "0000:01:00.1",
                0x10de,
                0x228e,
                0x040300,
                11,
                "snd_hda_intel",
                "",
                NO_SUB,
            ),
            (
                "0000:01:00.2",
                0x10de,
                0x1ada,
                0x0c0330,
                11,
                "xhci_hcd",
                "",
                NO_SUB,
            ),
        ];
        if gpu_is_boot_vga {
            // The card's GPU drives the console (the iGPU is gone) and its claimant is built in.
            rows.remove(0);
        }
        let mut f = facts(&rows, false);
        f.kernels = kernels
            .iter()
            .map(|(v, xhci)| Kernel {
                version: v.to_string(),
                modules: ["vfio", "vfio_iommu_type1", "vfio_pci", "nouveau"]
                    .map(String::from)
                    .into(),
                builtin: if *xhci {
                    ["xhci_pci".to_string()].into()
                } else {
                    Default::default()
                },
            })
            .collect();
        if gpu_is_boot_vga {
            f.topology
                .devices
                .get_mut(&"0000:01:00.0".parse().unwrap())
                .unwrap()
                .boot_vga = true;
            for k in &mut f.kernels {
                k.builtin.insert("nouveau".into());
            }
        }
        let req = Request {
            devices: vec!["01:00.0".into()],
            force: gpu_is_boot_vga,
            ..Request::default()
        };
        let sel = select(&f.topology, &Names::default(), &req, &BTreeMap::new()).unwrap();
        let p = plan(&f, Some(&sel), &Options::default()).unwrap();
        (p.early.clone(), p)
    }

    #[test]
    fn a_claimant_built_into_one_kernel_gets_the_early_step_said_per_kernel() {
        // xhci_pci built into the newer kernel only: the USB-C function is unbound early,
        // gated by vfio-pci.ids= (bound by ids), and the notes name both kernels.
        let (early, p) = usb_card(
            &[("6.1.0-13-amd64", false), ("6.17.0-5-generic", true)],
            false,
        );
        let early = early.expect("an early step");
        assert_eq!(early.gate, Gate::Ids);
        assert_eq!(
            early.targets,
            [EarlyTarget {
                address: "0000:01:00.2".into(),
                vendor: 0x10de,
                device: 0x1ada,
                unbind: true
            }]
        );
        assert!(
            p.notes.iter().any(|n| n.starts_with(
                "xhci_pci is built into kernel 6.17.0-5-generic: it holds 0000:01:00.2"
            ) && n.ends_with(
                "a module on kernel 6.1.0-13-amd64 (held off by its softdep or install hook)"
            )),
            "{:?}",
            p.notes
        );
        // Every kernel builds it as a module: no early step, nothing said.
        let (early, p) = usb_card(&[("6.1.0-13-amd64", false)], false);
        assert_eq!(early, None);
        assert!(
            !p.notes.iter().any(|n| n.contains("early")),
            "{:?}",
            p.notes
        );
        // Built in everywhere: no "module on" clause.
        let (_, p) = usb_card(&[("6.17.0-5-generic", true)], false);
        assert!(
            p.notes.iter().any(|n| n.ends_with("hands it to vfio-pci")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn a_driver_built_into_the_running_kernel_counts_once() {
        // sysfs says xhci_hcd has no module (built into the running kernel), and the running
        // kernel's modules.builtin says xhci_pci: one note, one early unbind.
        let rows = [
            IGPU,
            (
                "0000:01:00.0",
                0x10de,
                0x2504,
                0x030000,
                11,
                "nouveau",
                "",
                NO_SUB,
            ),
            (
                "0000:01:00.2",
                0x10de,
                0x1ada,
                0x0c0330,
                11,
                "xhci_hcd",
                "",
                NO_SUB,
            ),
        ];
        for listed in [true, false] {
            let mut f = facts(&rows, false);
            f.driver_modules.insert("xhci_hcd".into(), None);
            f.running_kernel = Some("6.1.0-13-amd64".into());
            if listed {
                f.kernels[0].builtin.insert("xhci_pci".into());
            }
            let req = Request {
                devices: vec!["01:00.0".into()],
                ..Request::default()
            };
            let sel = select(&f.topology, &Names::default(), &req, &BTreeMap::new()).unwrap();
            let p = plan(&f, Some(&sel), &Options::default()).unwrap();
            let said: Vec<&String> = p
                .notes
                .iter()
                .filter(|n| {
                    n.contains("is built into kernel 6.1.0-13-amd64: it holds 0000:01:00.2")
                })
                .collect();
            assert_eq!(said.len(), 1, "{listed}: {:?}", p.notes);
            let want = if listed { "xhci_pci" } else { "xhci_hcd" };
            assert!(said[0].starts_with(want), "{said:?}");
            let early = p.early.unwrap();
            assert_eq!(early.targets.len(), 1);
            assert!(early.targets[0].unbind);
        }
    }

    #[test]
    fn the_console_gpu_is_never_unbound_early_and_gpt_says_so() {
        let (early, p) = usb_card(&[("6.17.0-5-generic", true)], true);
        let early = early.unwrap();
        let gpu = early.targets.iter().find(|t| t.address == "0000:01:00.0");
        // By ids, the console GPU is not in the step at all; its USB-C function is.
        assert_eq!(gpu, None, "{early:?}");
        assert!(early
            .targets
            .iter()
            .any(|t| t.address == "0000:01:00.2" && t.unbind));
        assert!(
            p.warnings.iter().any(
                |w| w.contains("0000:01:00.0, the GPU that drives the console")
                    && w.contains("gpt never unbinds the console's GPU")
            ),
            "{:?}",
            p.warnings
        );
    }
}
