//! Read what gpt needs to know about a host, once, into plain data: the one reader of the
//! host's facts, used by every command. All the I/O of reading is here; the decisions are
//! made on the result.

pub mod detect;
pub mod pve_esp;

use crate::host::Host;
use crate::model::{Choice, Distro, LoaderKind, StackId};
use crate::paths::{
    DPKG_STATUS, DRACUT_CONF, DRACUT_CONF_D, GRUB_D, GRUB_DEFAULT, INITRAMFS_MODULES,
    MODPROBE_CONF, MODPROBE_D, MODULES_DIR, OS_RELEASE, PROC_CMDLINE,
};
use crate::pci::{PciAddress, Topology};
use crate::sysfs;
use anyhow::{anyhow, Context, Result};
use detect::Probe;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The module that must claim the devices (names in `_` spelling, as kmod compares them).
pub const VFIO_PCI: &str = "vfio_pci";

/// One installed kernel (`/lib/modules/KVER`).
#[derive(Debug, Clone, Default)]
pub struct Kernel {
    pub version: String,
    /// Loadable modules, names normalised to underscores (`vfio_pci`).
    pub modules: BTreeSet<String>,
    /// Built-in modules (`modules.builtin`), normalised likewise.
    pub builtin: BTreeSet<String>,
}

impl Kernel {
    pub fn has(&self, module: &str) -> bool {
        let m = module.replace('-', "_");
        self.modules.contains(&m) || self.builtin.contains(&m)
    }

    /// `(major, minor)` of the version, `6.1.0-13-amd64` → `(6, 1)`.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut it = self.version.split(|c: char| !c.is_ascii_digit());
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub topology: Topology,
    /// Why the PCI devices or IOMMU groups could not be read (`topology` is then empty).
    pub topology_error: Option<String>,
    /// What the boot stack was detected from, and the stack or why it is not known.
    pub probe: Probe,
    pub boot: Option<Result<StackId, String>>,
    pub cpuinfo: Option<String>,
    pub interrupts: Option<String>,
    /// The running kernel's release (`uname -r`), when it can be told.
    pub running_kernel: Option<String>,
    /// `/proc/cmdline` could be read.
    pub cmdline_read: bool,
    /// `/sys/module/vfio_pci` exists: the module is loaded (or built in).
    pub vfio_pci_loaded: bool,
    /// `ID` and `ID_LIKE` words of /etc/os-release, and its `PRETTY_NAME`.
    pub os_ids: Vec<String>,
    pub os_pretty: String,
    pub dmar: bool,
    pub ivrs: bool,
    pub cpu_vendor: Option<String>,
    pub cmdline: String,
    pub kernels: Vec<Kernel>,
    pub grub_default: Option<String>,
    /// `/etc/default/grub.d/*.cfg`, in the order grub sources them.
    pub grub_d: Vec<(String, String)>,
    pub initramfs_modules: Option<String>,
    pub dracut_conf: Option<String>,
    /// Why gpt's dracut file could not be read (only a dracut host cares).
    pub dracut_conf_error: Option<String>,
    pub modprobe_conf: Option<String>,
    /// The files of gpt's early binding step that exist (every generator's), path → bytes.
    pub early_files: BTreeMap<String, Vec<u8>>,
    /// The other `/etc/modprobe.d/*.conf` files, in name order (path, text).
    pub modprobe_d: Vec<(String, String)>,
    /// `/etc/modules` and `/etc/modules-load.d/*.conf` (path, text).
    pub module_lists: Vec<(String, String)>,
    /// sysfs driver name → the module that provides it (`xhci_hcd` → `xhci_pci`); drivers
    /// without a module link are built in.
    pub driver_modules: BTreeMap<String, Option<String>>,
    /// `modules.alias` of the newest kernel, as read (a real one has tens of thousands of
    /// lines; [`pci_alias_modules`] scans it only for the devices that matter).
    pub aliases: String,
    /// Devices the host cannot live without, and why.
    pub protected: BTreeMap<PciAddress, String>,
    /// Mount sources gpt could not map to a PCI device (said in a warning).
    pub unmapped: Vec<String>,
    pub installed_packages: BTreeSet<String>,
    pub dpkg_status_found: bool,
    /// Free bytes on the filesystem holding /boot, and the size of the largest initrd there.
    pub boot_free: Option<u64>,
    pub largest_initrd: u64,
    /// The names in /boot (`vmlinuz-KVER`, `initrd.img-KVER`, …).
    pub boot_names: Vec<String>,
    /// `/etc/kernel/cmdline` and `/usr/lib/kernel/cmdline` (kernel-install's command line),
    /// as bytes: a file that is not text is refused with its name.
    pub kernel_cmdline: Option<Vec<u8>>,
    pub usr_kernel_cmdline: Option<Vec<u8>>,
    /// kernel-install's boot counting: the first line of `/etc/kernel/tries`, trimmed.
    pub kernel_tries: Option<String>,
    /// kernelstub's `/etc/kernelstub/configuration`.
    pub kernelstub_config: Option<Vec<u8>>,
    /// The kernel arguments gpt added to the argument file in its last run (from its state):
    /// for files that can hold no mark of gpt's.
    pub gpt_added: Vec<String>,
    /// systemd-boot's `loader.conf` says `editor no`: the command line cannot be edited at boot.
    pub editor_off: bool,
    /// `/sys/firmware/efi` exists: the host booted by UEFI.
    pub efi: bool,
    /// On a Proxmox VE host, the ESPs proxmox-boot-tool manages as read (in a private mount
    /// namespace), or why they could not be read; `None` on other hosts.
    pub pve_esps: Option<Result<Vec<pve_esp::Esp>, String>>,
    /// On a Proxmox VE host, the kernels the user told proxmox-boot-tool to keep: the lines
    /// of `/etc/kernel/proxmox-boot-manual-kernels` and the first line of each pin file.
    pub pve_chosen_kernels: Vec<String>,
}

impl Facts {
    /// Everything, in one pass. The PCI devices not being readable is kept in
    /// `topology_error` (`gpt check` reports it; [`Facts::topology`] makes it an error).
    pub fn read(host: &Host) -> Result<Facts> {
        Facts::read_for(host, None)
    }

    /// [`Facts::read`], with the boot loader the user named (`--boot-loader`).
    pub fn read_for(host: &Host, chosen: Option<Choice>) -> Result<Facts> {
        let mut f = Facts::default();
        match sysfs::read_topology(host) {
            Ok(t) => f.topology = t,
            Err(e) => f.topology_error = Some(format!("{e:#}")),
        }
        if let Some(os) = host.read_optional(OS_RELEASE)? {
            let vars = parse_os_release(&os);
            for key in ["ID", "ID_LIKE"] {
                if let Some(v) = vars.get(key) {
                    f.os_ids.extend(v.split_whitespace().map(str::to_lowercase));
                }
            }
            f.os_pretty = vars
                .get("PRETTY_NAME")
                .or_else(|| vars.get("ID"))
                .cloned()
                .unwrap_or_default();
        }
        f.dmar = host.exists("/sys/firmware/acpi/tables/DMAR");
        f.ivrs = host.exists("/sys/firmware/acpi/tables/IVRS");
        f.cpuinfo = host.read_optional("/proc/cpuinfo").ok().flatten();
        f.cpu_vendor = f.cpuinfo.as_deref().and_then(cpu_vendor);
        f.interrupts = host.read_optional("/proc/interrupts").ok().flatten();
        let cmdline = host.read_optional(PROC_CMDLINE).ok().flatten();
        f.cmdline_read = cmdline.is_some();
        f.cmdline = cmdline.unwrap_or_default().trim().to_string();
        f.kernels = read_kernels(host)?;
        f.running_kernel = running_kernel(host, &f.cmdline, &f.kernels);
        f.vfio_pci_loaded = host.exists(format!("/sys/module/{VFIO_PCI}"));
        if let Some(newest) = f.kernels.last() {
            f.aliases = host
                .read_optional(format!("/lib/modules/{}/modules.alias", newest.version))?
                .unwrap_or_default();
        }
        f.grub_default = host.read_optional(GRUB_DEFAULT)?;
        for name in host.list_dir(GRUB_D)? {
            if name.ends_with(".cfg") {
                let path = format!("{GRUB_D}/{name}");
                if let Some(text) = host.read_optional(&path)? {
                    f.grub_d.push((path, text));
                }
            }
        }
        f.initramfs_modules = host.read_optional(INITRAMFS_MODULES)?;
        f.modprobe_conf = host.read_optional(MODPROBE_CONF)?;
        for path in crate::paths::EARLY_FILES {
            if let Some(bytes) = read_bytes(host, path)? {
                f.early_files.insert(path.to_string(), bytes);
            }
        }
        for name in host.list_dir(MODPROBE_D)? {
            let path = format!("{MODPROBE_D}/{name}");
            if name.ends_with(".conf") && path != MODPROBE_CONF {
                if let Some(text) = host.read_optional(&path).ok().flatten() {
                    f.modprobe_d.push((path, text));
                }
            }
        }
        if let Some(text) = host.read_optional("/etc/modules").ok().flatten() {
            f.module_lists.push(("/etc/modules".into(), text));
        }
        for name in host.list_dir("/etc/modules-load.d")? {
            let path = format!("/etc/modules-load.d/{name}");
            if name.ends_with(".conf") {
                if let Some(text) = host.read_optional(&path).ok().flatten() {
                    f.module_lists.push((path, text));
                }
            }
        }
        for drv in host.list_dir("/sys/bus/pci/drivers")? {
            let module = host.link_name(format!("/sys/bus/pci/drivers/{drv}/module"));
            f.driver_modules.insert(drv, module);
        }
        let (protected, unmapped) = boot_critical(host)?;
        f.protected = protected;
        f.unmapped = unmapped;
        if let Some(status) = host.read_optional(DPKG_STATUS)? {
            f.dpkg_status_found = true;
            f.installed_packages = installed_packages(&status);
        }
        f.probe = Probe {
            packages: f.dpkg_status_found.then(|| f.installed_packages.clone()),
            grub_default: f.grub_default.is_some(),
            update_initramfs: host.exists("/usr/sbin/update-initramfs")
                || host.exists("/sbin/update-initramfs"),
            dracut_bin: host.exists("/usr/bin/dracut") || host.exists("/bin/dracut"),
            dracut_conf_d: host.resolve(DRACUT_CONF_D)?.is_dir(),
            ..Probe::default()
        };
        read_loader_probe(host, &mut f, chosen)?;
        f.boot = Some(detect::detect(&f.probe));
        f.efi = host.exists("/sys/firmware/efi");
        if let Some(Ok(id)) = &f.boot {
            if id.loader == LoaderKind::Proxmox {
                f.pve_esps = Some(pve_esp::read(host));
                f.pve_chosen_kernels = pve_esp::chosen_kernels(host);
            }
        }
        if host.exists(DRACUT_CONF_D) {
            // Kept as an error for the dracut stack to report: other stacks never read it.
            match host.read_optional(DRACUT_CONF) {
                Ok(text) => f.dracut_conf = text,
                Err(e) => f.dracut_conf_error = Some(format!("{e:#}")),
            }
        }
        let boot = host.resolve("/boot")?;
        if boot.is_dir() {
            f.boot_free = nix::sys::statvfs::statvfs(&boot)
                .ok()
                .map(|s| s.blocks_available() * s.fragment_size());
            f.boot_names = host.list_dir("/boot")?;
            for name in &f.boot_names {
                if name.starts_with("initrd.img-") {
                    let size = std::fs::metadata(boot.join(name))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    f.largest_initrd = f.largest_initrd.max(size);
                }
            }
        }
        Ok(f)
    }

    /// The running kernel's arguments (`/proc/cmdline`), split as the kernel splits them.
    pub fn cmdline_args(&self) -> Vec<&str> {
        crate::edit::cmdline::split(&self.cmdline)
    }

    /// Whether the running kernel has `key=value` among its arguments.
    pub fn cmdline_has(&self, key: &str, value: &str) -> bool {
        self.cmdline_args().iter().any(|t| {
            crate::edit::cmdline::key(t) == key && crate::edit::cmdline::value(t) == Some(value)
        })
    }

    /// The installed kernels that build `module` in (`_` spelling), by version.
    pub fn built_in_by(&self, module: &str) -> Vec<&str> {
        self.kernels
            .iter()
            .filter(|k| k.builtin.contains(module))
            .map(|k| k.version.as_str())
            .collect()
    }

    /// The PCI devices and IOMMU groups, or why they could not be read.
    pub fn topology(&self) -> Result<&Topology> {
        match &self.topology_error {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(&self.topology),
        }
    }

    /// The host's boot stack, or why gpt cannot tell (nothing was changed).
    pub fn stack_id(&self) -> Result<StackId> {
        match &self.boot {
            Some(Ok(id)) => Ok(*id),
            Some(Err(why)) => Err(anyhow!("{why}; nothing was changed")),
            None => Err(anyhow!("the boot stack was not read")),
        }
    }

    /// The distribution family gpt knows, from os-release (`ubuntu` before `debian`: Ubuntu
    /// derivatives list both).
    pub fn distro(&self) -> Option<Distro> {
        if self.os_ids.iter().any(|i| i == "ubuntu") {
            Some(Distro::Ubuntu)
        } else if self.os_ids.iter().any(|i| i == "debian") {
            Some(Distro::Debian)
        } else {
            None
        }
    }
}

/// What tells the boot loaders apart: the EFI variables of the loader that booted, the files
/// of systemd-boot, Proxmox and kernelstub, and what `kernel-install inspect` says.
fn read_loader_probe(host: &Host, f: &mut Facts, chosen: Option<Choice>) -> Result<()> {
    use detect::{efi_string, parse_inspect, LOADER_GUID};
    let p = &mut f.probe;
    p.chosen = chosen;
    let efivar = |name: &str| {
        host.read(format!("/sys/firmware/efi/efivars/{name}-{LOADER_GUID}"))
            .ok()
            .and_then(|b| efi_string(&b))
    };
    p.loader_info = efivar("LoaderInfo");
    p.entry_selected = efivar("LoaderEntrySelected");
    p.grub_cfg = host.exists(crate::paths::GRUB_CFG);
    p.sdboot_hook = host.exists("/etc/kernel/postinst.d/zz-systemd-boot");
    p.kernel_install = host.exists("/usr/bin/kernel-install") || host.exists("/bin/kernel-install");
    p.proxmox_tool = host.exists("/usr/sbin/proxmox-boot-tool");
    p.proxmox_uuids = host
        .read_optional("/etc/kernel/proxmox-boot-uuids")?
        .is_some_and(|t| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        });
    p.kernelstub_conf = host.exists("/etc/kernelstub/configuration");
    p.snapd_fde = host.exists("/var/lib/snapd/device/fde")
        || crate::edit::cmdline::split(&f.cmdline)
            .iter()
            .any(|t| crate::edit::cmdline::key(t) == "snapd_recovery_mode");
    let mounts = host.read_optional("/proc/mounts")?.unwrap_or_default();
    for line in mounts.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let [_, target, "vfat", ..] = cols.as_slice() {
            if ["/efi", "/boot", "/boot/efi"].contains(target)
                && !p.vfat_mounts.contains(&target.to_string())
            {
                p.vfat_mounts.push(target.to_string());
            }
        }
    }
    let sdboot_possible = p
        .packages
        .as_ref()
        .is_some_and(|k| k.contains("systemd-boot"))
        || p.sdboot_hook
        || p.loader_info
            .as_deref()
            .is_some_and(|i| i.starts_with("systemd-boot"))
        || chosen == Some(Choice::SystemdBoot);
    if p.kernel_install && sdboot_possible && !host.is_real_root() {
        // A tree under --root is not gpt's to run: its kernel-install could do anything as
        // root. What `inspect` would say comes from the tree's files instead.
        f.probe.inspect = Some(inspect_from_files(host));
    } else if p.kernel_install && sdboot_possible {
        let runner = crate::runner::Runner::new(host, &crate::progress::Quiet);
        let image = inspect_image(host, f.running_kernel.as_deref(), &f.kernels);
        let mut argv = vec!["kernel-install", "inspect"];
        argv.extend(image.as_deref());
        let p = &mut f.probe;
        p.inspect = Some(match runner.query(&argv) {
            Ok(c) if c.status.success() => parse_inspect(&c.stdout_str()),
            Ok(c) => Err(format!(
                "`kernel-install inspect` failed: {}",
                String::from_utf8_lossy(&c.stderr).trim()
            )),
            Err(e) => Err(format!("{e:#}")),
        });
    }
    f.kernel_cmdline = read_bytes(host, "/etc/kernel/cmdline")?;
    f.usr_kernel_cmdline = read_bytes(host, "/usr/lib/kernel/cmdline")?;
    f.kernel_tries = host
        .read_optional("/etc/kernel/tries")?
        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()));
    f.kernelstub_config = read_bytes(host, "/etc/kernelstub/configuration")?;
    if let Some(Ok(i)) = &f.probe.inspect {
        let conf = host
            .read_optional(format!("{}/loader/loader.conf", i.boot_root))
            .ok()
            .flatten()
            .unwrap_or_default();
        f.editor_off = !editor_on(&conf);
    }
    if let Ok(Some(c)) = crate::facts::recorded_config(host) {
        f.gpt_added = c.added_args;
    }
    Ok(())
}

/// What `gpt full` configured on this host, as its journal records it (`None`: gpt has not
/// configured it). Read-only: the journal is the transaction's; this is the reader's view of it.
pub fn recorded_config(host: &Host) -> Result<Option<crate::model::Config>> {
    match host.read(crate::paths::STATE_FILE) {
        Ok(raw) => Ok(crate::model::State::parse(&raw)?.config),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::ioerr::error(
            "read",
            Path::new(crate::paths::STATE_FILE),
            &e,
        )),
    }
}

/// Whether systemd-boot lets a person edit an entry's command line (`e` at the menu), as its
/// `loader.conf` says: the last `editor` line with a value systemd-boot can parse wins (its
/// booleans: `1 yes y true t on` and `0 no n false f off`, any case, quotes taken off); an
/// unparsable value is ignored, as systemd-boot ignores it; without one, the editor is on.
fn editor_on(conf: &str) -> bool {
    let mut on = true;
    for line in conf.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once(|c: char| c.is_ascii_whitespace()) else {
            continue;
        };
        if key != "editor" {
            continue;
        }
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        match value.to_ascii_lowercase().as_str() {
            "1" | "yes" | "y" | "true" | "t" | "on" => on = true,
            "0" | "no" | "n" | "false" | "f" | "off" => on = false,
            _ => {}
        }
    }
    on
}

/// What `kernel-install inspect` says, read from a tree's files as kernel-install decides it
/// (systemd 251 to 257): `BOOT_ROOT=` and `layout=` of `/etc/kernel/install.conf` (the last
/// one wins); else `$BOOT` is the first of /efi, /boot, /boot/efi that holds an `EFI` or
/// `loader` folder. The entry token: `/etc/kernel/entry-token`, else the machine id. The
/// layout: `bls` when `$BOOT/loader/entries.srel` says `type1`, or without it when
/// `$BOOT/TOKEN` exists; else `other`.
fn inspect_from_files(host: &Host) -> Result<detect::Inspect, String> {
    let read = |p: &str| host.read_optional(p).ok().flatten().unwrap_or_default();
    let conf = read("/etc/kernel/install.conf");
    let setting = |key: &str| {
        conf.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
            .filter(|v| !v.is_empty())
    };
    let machine_id = Some(read("/etc/machine-id").trim().to_string()).filter(|m| !m.is_empty());
    let boot_root = setting("BOOT_ROOT")
        .or_else(|| {
            ["/efi", "/boot", "/boot/efi"]
                .into_iter()
                .find(|d| host.exists(format!("{d}/EFI")) || host.exists(format!("{d}/loader")))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "/boot".to_string());
    let entry_token = Some(read("/etc/kernel/entry-token").trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| machine_id.clone())
        .ok_or("under --root gpt reads kernel-install's settings from the tree, and it has neither /etc/kernel/entry-token nor /etc/machine-id")?;
    let srel = read(&format!("{boot_root}/loader/entries.srel"));
    let layout = setting("layout").unwrap_or_else(|| {
        let bls = match srel.lines().next() {
            Some(first) => first.trim() == "type1",
            None => host.exists(format!("{boot_root}/{entry_token}")),
        };
        if bls { "bls" } else { "other" }.to_string()
    });
    Ok(detect::Inspect {
        boot_root,
        layout,
        entry_token,
        machine_id,
    })
}

/// The kernel image `kernel-install inspect` is given: the running kernel's `/boot/vmlinuz-KVER`,
/// else the newest installed kernel's. Without an image, systemd 256 and later take
/// `/usr/lib/modules/$(uname -r)/vmlinuz`, which Debian's kernel packages do not ship: there
/// `inspect` alone fails ("Kernel image not installed to …"). One argument is the image path
/// for every version that has `inspect` (the shell version of 251/252 ignores it).
fn inspect_image(host: &Host, running: Option<&str>, kernels: &[Kernel]) -> Option<String> {
    running
        .into_iter()
        .chain(kernels.iter().rev().map(|k| k.version.as_str()))
        .map(|v| format!("/boot/vmlinuz-{v}"))
        .find(|path| host.exists(path))
}

fn read_bytes(host: &Host, abs: &str) -> Result<Option<Vec<u8>>> {
    match host.read(abs) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::ioerr::error("read", Path::new(abs), &e)),
    }
}

/// `KEY=value` lines of os-release, quotes removed.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

pub fn cpu_vendor(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The module a file name holds, `_` spelling: `vfio-pci.ko.zst` → `vfio_pci`.
pub fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let stem = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// `uname -r` of the running kernel: `/proc/sys/kernel/osrelease`, else the `BOOT_IMAGE` on
/// the command line, else the only installed kernel.
fn running_kernel(host: &Host, cmdline: &str, kernels: &[Kernel]) -> Option<String> {
    if let Some(r) = host
        .read_optional("/proc/sys/kernel/osrelease")
        .ok()
        .flatten()
    {
        return Some(r.trim().to_string()).filter(|r| !r.is_empty());
    }
    let from_image = crate::edit::cmdline::split(cmdline)
        .into_iter()
        .find(|t| crate::edit::cmdline::key(t) == "BOOT_IMAGE")
        .and_then(crate::edit::cmdline::value)
        .and_then(|v| v.rsplit('/').next())
        .and_then(|f| f.strip_prefix("vmlinuz-"))
        .map(str::to_string);
    if from_image.is_some() {
        return from_image;
    }
    match kernels {
        [only] => Some(only.version.clone()),
        _ => None,
    }
}

fn read_kernels(host: &Host) -> Result<Vec<Kernel>> {
    let mut kernels = Vec::new();
    for version in host.list_dir(MODULES_DIR)? {
        let base = format!("{MODULES_DIR}/{version}");
        if !host.resolve(&base)?.is_dir() {
            continue;
        }
        let mut k = Kernel {
            version: version.clone(),
            ..Kernel::default()
        };
        // modules.dep lists every module in one file; walk the tree only without it.
        if let Some(dep) = host.read_optional(format!("{base}/modules.dep"))? {
            k.modules = dep
                .lines()
                .filter_map(|l| l.split(':').next())
                .filter_map(module_name)
                .collect();
        } else {
            let dir = host.resolve(format!("{base}/kernel"))?;
            for entry in walkdir::WalkDir::new(&dir).into_iter().flatten() {
                if let Some(n) = module_name(&entry.file_name().to_string_lossy()) {
                    k.modules.insert(n);
                }
            }
        }
        if let Some(builtin) = host.read_optional(format!("{base}/modules.builtin"))? {
            k.builtin = builtin.lines().filter_map(module_name).collect();
        }
        kernels.push(k);
    }
    kernels.sort_by_key(|k| version_key(&k.version));
    Ok(kernels)
}

/// Sort key for kernel versions: numbers compare as numbers.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-'])
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

/// The modules whose `alias pci:…` patterns match `modalias` (`pci:v000010DEd00001F08sv…`).
/// Only lines for the device's vendor or any vendor are glob-matched.
pub fn pci_alias_modules(aliases: &str, modalias: &str) -> Vec<String> {
    let vendor = modalias.get(..13).unwrap_or(modalias); // "pci:v000010DE"
    aliases
        .lines()
        .filter_map(|l| l.strip_prefix("alias "))
        .filter(|l| l.starts_with(vendor) || l.starts_with("pci:v*"))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(pat, _)| glob_match(pat, modalias))
        .map(|(_, module)| module.trim().replace('-', "_"))
        .collect()
}

/// Glob match with `*` (and `?`), as modprobe matches aliases.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Package names with `Status: install ok installed` in dpkg's status database.
pub fn installed_packages(status: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for para in status.split("\n\n") {
        let mut name = None;
        let mut installed = false;
        for line in para.lines() {
            if let Some(n) = line.strip_prefix("Package: ") {
                name = Some(n.trim());
            } else if let Some(s) = line.strip_prefix("Status: ") {
                installed = s.trim().ends_with(" installed");
            }
        }
        if let (Some(n), true) = (name, installed) {
            out.insert(n.to_string());
        }
    }
    out
}

/// PCI addresses in a resolved sysfs path (every controller and bridge on the way).
fn pci_addresses_in(path: &Path) -> Vec<PciAddress> {
    path.components()
        .filter_map(|c| PciAddress::parse(c.as_os_str().to_str()?))
        .collect()
}

/// The devices that carry `/`, `/boot`, the EFI system partition, swap (and the disks under an
/// LVM/LUKS volume holding them), and the NIC of the default route.
fn boot_critical(host: &Host) -> Result<(BTreeMap<PciAddress, String>, Vec<String>)> {
    let mut protected = BTreeMap::new();
    let mut unmapped = Vec::new();
    let mut add = |addrs: Vec<PciAddress>, why: String| {
        for a in addrs {
            protected.entry(a).or_insert_with(|| why.clone());
        }
    };
    let mounts = host.read_optional("/proc/mounts")?.unwrap_or_default();
    let mut sources: Vec<(String, String)> = Vec::new();
    for line in mounts.lines() {
        let mut it = line.split_whitespace();
        let (Some(src), Some(target)) = (it.next(), it.next()) else {
            continue;
        };
        if ["/", "/boot", "/boot/efi", "/efi", "/usr"].contains(&target) && src.starts_with("/dev/")
        {
            sources.push((src.to_string(), format!("holds {target} ({src})")));
        }
    }
    let swaps = host.read_optional("/proc/swaps")?.unwrap_or_default();
    for line in swaps.lines().skip(1) {
        if let Some(src) = line.split_whitespace().next() {
            if src.starts_with("/dev/") {
                sources.push((src.to_string(), format!("holds swap ({src})")));
            }
        }
    }
    for (src, why) in sources {
        let addrs = block_device_pci(host, &src, 0)?;
        if addrs.is_empty() {
            unmapped.push(src);
        } else {
            add(addrs, why);
        }
    }
    let route = host.read_optional("/proc/net/route")?.unwrap_or_default();
    for line in route.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 2 && cols[1] == "00000000" {
            let dir = host.resolve(format!("/sys/class/net/{}", cols[0]))?;
            add(
                pci_addresses_in(&dir),
                format!("carries the default route ({})", cols[0]),
            );
        }
    }
    Ok((protected, unmapped))
}

/// The PCI devices under a block device, following device-mapper (LVM, LUKS) to its disks.
fn block_device_pci(host: &Host, dev: &str, depth: usize) -> Result<Vec<PciAddress>> {
    if depth > 8 {
        return Ok(Vec::new());
    }
    let mut name = dev.trim_start_matches("/dev/").to_string();
    if let Some(mapper) = name.strip_prefix("mapper/") {
        // /dev/mapper/NAME is dm-N whose dm/name is NAME.
        let wanted = mapper.to_string();
        name = host
            .list_dir("/sys/block")?
            .into_iter()
            .find(|b| {
                b.starts_with("dm-")
                    && host
                        .read_optional(format!("/sys/block/{b}/dm/name"))
                        .ok()
                        .flatten()
                        .is_some_and(|n| n.trim() == wanted)
            })
            .unwrap_or(name);
    }
    let sys = host
        .resolve(format!("/sys/class/block/{name}"))
        .with_context(|| format!("cannot resolve /sys/class/block/{name}"))?;
    if !sys.exists() {
        return Ok(Vec::new());
    }
    let mut addrs = pci_addresses_in(&sys);
    if addrs.is_empty() {
        // A virtual device (dm, md): follow its slaves.
        let slaves_dir = format!("/sys/class/block/{name}/slaves");
        for slave in host.list_dir(&slaves_dir)? {
            addrs.extend(block_device_pci(host, &format!("/dev/{slave}"), depth + 1)?);
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_editor_line_with_a_boolean_decides() {
        assert!(editor_on(""));
        assert!(!editor_on("timeout 3\neditor f\n"));
        assert!(!editor_on("editor FALSE\n"));
        assert!(!editor_on("editor\t\"no\"\n"));
        assert!(editor_on("editor no\neditor yes\n"));
        assert!(!editor_on("editor yes\neditor 0\n"));
        // A value systemd-boot cannot parse is ignored; a commented line is no setting.
        assert!(!editor_on("editor no\neditor maybe\n"));
        assert!(editor_on("#editor no\n"));
    }

    #[test]
    fn os_release_values_lose_their_quotes() {
        let v = parse_os_release(
            "ID=ubuntu\nID_LIKE=debian\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nX='y'\n",
        );
        assert_eq!(v["ID"], "ubuntu");
        assert_eq!(v["PRETTY_NAME"], "Ubuntu 24.04.1 LTS");
        assert_eq!(v["X"], "y");
    }

    #[test]
    fn aliases_match_like_modprobe() {
        let a = "alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\nalias usb:v1234* foo\n\
                 alias pci:v*d*sv*sd*bc0Csc03i30* xhci-pci\nalias pci:v00001002d*sv*sd*bc03sc*i* amdgpu\n";
        let gpu = "pci:v000010DEd00001F08sv00001043sd000086F0bc03sc00i00";
        assert_eq!(pci_alias_modules(a, gpu), ["nouveau"]);
        let usb = "pci:v000010DEd00001ADAsv00001043sd000086F0bc0Csc03i30";
        assert_eq!(pci_alias_modules(a, usb), ["xhci_pci"]);
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn dpkg_status_installed_only() {
        let s = "Package: ovmf\nStatus: install ok installed\n\nPackage: curl\nStatus: deinstall ok config-files\n\nPackage: qemu-utils\nStatus: install ok installed\n";
        let p = installed_packages(s);
        assert!(p.contains("ovmf") && p.contains("qemu-utils") && !p.contains("curl"));
    }

    #[test]
    fn kernel_versions_and_module_names() {
        let k = Kernel {
            version: "6.10.3-amd64".into(),
            ..Kernel::default()
        };
        assert_eq!(k.major_minor(), Some((6, 10)));
        assert_eq!(
            module_name("kernel/drivers/vfio/pci/vfio-pci.ko.zst").as_deref(),
            Some("vfio_pci")
        );
        assert_eq!(module_name("modules.dep"), None);
        let mut v = vec!["6.10.0", "6.9.2", "5.15.0-91-generic"];
        v.sort_by_key(|a| version_key(a));
        assert_eq!(v, ["5.15.0-91-generic", "6.9.2", "6.10.0"]);
    }
}
