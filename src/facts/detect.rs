//! Which boot stack a host has, decided once from what is installed. Pure: the facts reader
//! fills a [`Probe`]; [`detect`] decides.
//!
//! The initramfs generator comes from the package database (`initramfs-tools` or `dracut`
//! installed), and only where there is none (an image under `--root`) from the files the
//! packages ship. Never from `/etc/initramfs-tools` alone: `initramfs-tools-core` keeps that
//! folder on a host whose images dracut builds.
//!
//! The boot loader: every loader that could be booting is a candidate (GRUB: its settings
//! file, with a GRUB package where there is a database; systemd-boot: the `systemd-boot`
//! package or its kernel hook; Proxmox: `proxmox-boot-tool` with the ESPs it manages;
//! kernelstub: its configuration). The EFI variables the loader that booted sets
//! (`LoaderInfo`, `LoaderEntrySelected`; GRUB ≥ 2.12 sets LoaderInfo too) decide between
//! them; without them, a single candidate (or Proxmox or kernelstub, which manage the loader
//! the others' packages install) wins, and otherwise gpt refuses and names `--boot-loader`.

use crate::model::{Choice, InitramfsKind, LoaderKind, StackId};
use std::collections::BTreeSet;

/// The vendor GUID of the Boot Loader Interface's EFI variables.
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// What `kernel-install inspect` says (systemd 251 and later).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspect {
    /// `$BOOT`: where the entries go (`/boot/efi`, `/efi`, `/boot`).
    pub boot_root: String,
    /// `bls`, `uki`, `other` (or a name an administrator gave).
    pub layout: String,
    /// The entries' name prefix (the machine id, `debian`, …).
    pub entry_token: String,
    pub machine_id: Option<String>,
}

/// What detection looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// Installed packages; `None` without a package database.
    pub packages: Option<BTreeSet<String>>,
    /// `/etc/default/grub` exists.
    pub grub_default: bool,
    /// `/boot/grub/grub.cfg` exists.
    pub grub_cfg: bool,
    /// `/usr/sbin/update-initramfs` exists (initramfs-tools', or dracut's from 107 on).
    pub update_initramfs: bool,
    /// `/usr/bin/dracut` exists.
    pub dracut_bin: bool,
    /// `/etc/dracut.conf.d` exists.
    pub dracut_conf_d: bool,
    /// The string of the `LoaderInfo` EFI variable (`systemd-boot 257.9`, `GRUB 2.12`).
    pub loader_info: Option<String>,
    /// The string of `LoaderEntrySelected` (`proxmox-6.8.12-4-pve.conf`, `Pop_OS-current`).
    pub entry_selected: Option<String>,
    /// systemd-boot's kernel hook `/etc/kernel/postinst.d/zz-systemd-boot` exists.
    pub sdboot_hook: bool,
    /// `kernel-install` exists in the root.
    pub kernel_install: bool,
    /// `kernel-install inspect`, or why it could not be run.
    pub inspect: Option<Result<Inspect, String>>,
    /// `proxmox-boot-tool` exists, and the ESPs it manages are listed.
    pub proxmox_tool: bool,
    pub proxmox_uuids: bool,
    /// `/etc/kernelstub/configuration` exists.
    pub kernelstub_conf: bool,
    /// Ubuntu's TPM-backed full-disk encryption: snapd keeps the command line.
    pub snapd_fde: bool,
    /// The vfat file systems mounted at `/efi`, `/boot`, `/boot/efi`.
    pub vfat_mounts: Vec<String>,
    /// `--boot-loader`.
    pub chosen: Option<Choice>,
}

/// Parse an EFI variable of the Boot Loader Interface: 4 attribute bytes, then a
/// NUL-terminated UTF-16LE string.
pub fn efi_string(bytes: &[u8]) -> Option<String> {
    let body = bytes.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16(&units).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Parse `kernel-install inspect`: the shell version's `KERNEL_INSTALL_BOOT_ROOT: /boot/efi`,
/// the C version's environment list (`KERNEL_INSTALL_BOOT_ROOT=/boot/efi`), and the table
/// of newer versions (`Boot Root: /boot/efi`).
pub fn parse_inspect(out: &str) -> Result<Inspect, String> {
    let mut i = Inspect::default();
    for line in out.lines() {
        let line = line.trim();
        let (key, value) = match line.split_once([':', '=']) {
            Some((k, v)) => (k.trim(), v.trim()),
            None => continue,
        };
        // A table row may carry the environment list after its title.
        let (key, value) = match value.split_once('=') {
            Some((k2, v2)) if k2.starts_with("KERNEL_INSTALL_") => (k2.trim(), v2.trim()),
            _ => (key, value),
        };
        let slot = match key {
            "KERNEL_INSTALL_BOOT_ROOT" | "Boot Root" => &mut i.boot_root,
            "KERNEL_INSTALL_LAYOUT" | "Layout" => &mut i.layout,
            "KERNEL_INSTALL_ENTRY_TOKEN" | "Entry Token" => &mut i.entry_token,
            "KERNEL_INSTALL_MACHINE_ID" | "Machine ID" => {
                if i.machine_id.is_none() && !value.is_empty() {
                    i.machine_id = Some(value.to_string());
                }
                continue;
            }
            _ => continue,
        };
        if slot.is_empty() {
            *slot = value.to_string();
        }
    }
    if i.boot_root.is_empty() || i.layout.is_empty() || i.entry_token.is_empty() {
        return Err(
            "`kernel-install inspect` printed no boot root, layout or entry token (systemd 251 \
             or later is needed)"
                .into(),
        );
    }
    Ok(i)
}

/// The loader that booted, as its EFI variables tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Booted {
    Grub,
    SystemdBoot,
}

fn booted(p: &Probe) -> Option<Booted> {
    let info = p.loader_info.as_deref()?.to_ascii_lowercase();
    if info.starts_with("systemd-boot") {
        Some(Booted::SystemdBoot)
    } else if info.starts_with("grub") {
        Some(Booted::Grub)
    } else {
        None
    }
}

fn has(p: &Probe, names: &[&str]) -> bool {
    p.packages
        .as_ref()
        .is_some_and(|pk| names.iter().any(|n| pk.contains(*n)))
}

/// Which generators are installed: from the database where there is one, else from files.
fn generators(p: &Probe) -> Vec<InitramfsKind> {
    let mut found = Vec::new();
    match &p.packages {
        Some(pkgs) => {
            if pkgs.contains("initramfs-tools") {
                found.push(InitramfsKind::InitramfsTools);
            }
            if pkgs.contains("dracut") || pkgs.contains("dracut-core") {
                found.push(InitramfsKind::Dracut);
            }
        }
        None => {
            // dracut's package conflicts with initramfs-tools': with dracut's files present an
            // update-initramfs is dracut's own (107 and later ship one).
            if p.dracut_bin || p.dracut_conf_d {
                found.push(InitramfsKind::Dracut);
            } else if p.update_initramfs {
                found.push(InitramfsKind::InitramfsTools);
            }
        }
    }
    found
}

fn initramfs(p: &Probe) -> Result<InitramfsKind, String> {
    let source = if p.packages.is_some() {
        "the package database (/var/lib/dpkg/status)"
    } else {
        "the files (no package database)"
    };
    match generators(p).as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no initramfs generator found in {source}: gpt needs initramfs-tools or dracut to load \
             vfio-pci early; install one (`apt-get install initramfs-tools`) and run this again"
        )),
        _ => Err(format!(
            "both initramfs-tools and dracut are installed according to {source}, so gpt cannot \
             tell which one builds the images; remove the one you do not use and run this again"
        )),
    }
}

/// GRUB's packages: one of them installed means /etc/default/grub is GRUB's, not a leftover.
const GRUB_PACKAGES: [&str; 6] = [
    "grub-pc",
    "grub-efi-amd64",
    "grub-efi-amd64-signed",
    "grub-efi-arm64",
    "grub-common",
    "grub2-common",
];

/// The loaders that could be booting, strongest evidence only (GRUB's settings file left by
/// a removed package does not count here; see [`loader`]).
fn candidates(p: &Probe) -> Vec<Choice> {
    let mut c = Vec::new();
    if p.grub_default && (p.packages.is_none() || has(p, &GRUB_PACKAGES) || p.grub_cfg) {
        c.push(Choice::Grub);
    }
    if has(p, &["systemd-boot"]) || (p.packages.is_none() && p.sdboot_hook) {
        c.push(Choice::SystemdBoot);
    }
    if p.proxmox_tool && p.proxmox_uuids {
        c.push(Choice::Proxmox);
    }
    if p.kernelstub_conf || has(p, &["kernelstub"]) {
        c.push(Choice::Kernelstub);
    }
    c
}

const CHOOSE: &str =
    "say which one boots it with --boot-loader grub|systemd-boot|proxmox|kernelstub";

/// Which loader boots the host (before the checks of that loader's own layout).
fn pick(p: &Probe) -> Result<Choice, String> {
    if let Some(c) = p.chosen {
        return Ok(c);
    }
    let cands = candidates(p);
    let is = |c: Choice| cands.contains(&c);
    let selected = p.entry_selected.as_deref().unwrap_or_default();
    let info = p.loader_info.as_deref().unwrap_or_default();
    match booted(p) {
        Some(Booted::SystemdBoot) => {
            if selected.starts_with("proxmox-") || is(Choice::Proxmox) {
                Ok(Choice::Proxmox)
            } else if selected.starts_with("Pop_OS-") || is(Choice::Kernelstub) {
                Ok(Choice::Kernelstub)
            } else if is(Choice::SystemdBoot) {
                Ok(Choice::SystemdBoot)
            } else {
                Err(format!(
                    "systemd-boot booted this host (LoaderInfo says \"{info}\"), but neither the \
                     systemd-boot package nor Proxmox's or kernelstub's tools are installed, so gpt \
                     cannot tell what writes its entries; install systemd-boot, or {CHOOSE}"
                ))
            }
        }
        Some(Booted::Grub) => {
            if is(Choice::Proxmox) {
                Ok(Choice::Proxmox)
            } else if p.grub_default {
                Ok(Choice::Grub)
            } else {
                Err(format!(
                    "GRUB booted this host (LoaderInfo says \"{info}\"), but there is no \
                     /etc/default/grub to put the kernel arguments in; reinstall GRUB's package \
                     (grub-efi-amd64), or {CHOOSE}"
                ))
            }
        }
        None => {
            if is(Choice::Proxmox) {
                return Ok(Choice::Proxmox);
            }
            // kernelstub's entries are systemd-boot's, which would have set LoaderInfo: with
            // GRUB installed too (a Pop!_OS host moved to GRUB, whose GRUB before 2.12 sets no
            // LoaderInfo), what boots cannot be told, and the user says.
            if is(Choice::Kernelstub) && !is(Choice::Grub) {
                return Ok(Choice::Kernelstub);
            }
            match cands.as_slice() {
                [] if p.grub_default => Ok(Choice::Grub),
                [] => Err(format!(
                    "this host does not boot with GRUB (there is no /etc/default/grub), nor with \
                     another boot loader gpt knows (no systemd-boot package, no proxmox-boot-tool, \
                     no kernelstub); if one of them boots it, {CHOOSE}"
                )),
                [one] => Ok(*one),
                several => Err(format!(
                    "both {} are installed and the firmware does not say which one booted (no \
                     LoaderInfo EFI variable): {CHOOSE}",
                    several
                        .iter()
                        .map(|c| c.name())
                        .collect::<Vec<_>>()
                        .join(" and ")
                )),
            }
        }
    }
}

/// systemd-boot through kernel-install: only the `bls` layout on one ESP (or /boot).
fn systemd_boot(p: &Probe) -> Result<LoaderKind, String> {
    let i =
        match &p.inspect {
            None if !p.kernel_install => return Err(
                "systemd-boot boots this host, but kernel-install (which writes its entries) is \
                 not installed; install systemd (kernel-install) and run this again"
                    .into(),
            ),
            None => return Err("`kernel-install inspect` was not run".into()),
            Some(Err(why)) => {
                return Err(format!(
                    "{why}; gpt reads $BOOT and the layout of the boot entries from it"
                ))
            }
            Some(Ok(i)) => i,
        };
    match i.layout.as_str() {
        "bls" => {}
        "uki" => {
            return Err(format!(
                "kernel-install's layout is uki: the command line is built into the unified kernel \
                 images in {}/EFI/Linux (and under Secure Boot an embedded one ignores edits); gpt \
                 handles only the bls layout (entries in {}/loader/entries)",
                i.boot_root, i.boot_root
            ))
        }
        other => {
            return Err(format!(
                "kernel-install's layout is {other}: it writes no boot entries gpt can verify \
                 (${{BOOT}} is {}; is the ESP mounted? `findmnt /boot/efi`); mount it, or set \
                 layout=bls in /etc/kernel/install.conf, and run this again",
                i.boot_root
            ))
        }
    }
    if p.vfat_mounts.len() > 1 {
        return Err(format!(
            "{} are all mounted FAT partitions (an XBOOTLDR partition, or several ESPs): gpt \
             handles one ESP only; configure the kernel arguments in /etc/kernel/cmdline \
             yourself",
            p.vfat_mounts.join(" and ")
        ));
    }
    Ok(LoaderKind::SystemdBoot)
}

fn loader(p: &Probe) -> Result<LoaderKind, String> {
    if p.snapd_fde {
        return Err(
            "this Ubuntu host uses TPM-backed full-disk encryption, whose kernel command line \
             snapd manages (and seals to the TPM): gpt does not edit it; use `snap set system \
             system.kernel.cmdline-append=…` yourself"
                .into(),
        );
    }
    match pick(p)? {
        Choice::Grub if !p.grub_default => Err(
            "--boot-loader grub, but there is no /etc/default/grub to put the kernel arguments in"
                .into(),
        ),
        Choice::Grub => Ok(LoaderKind::Grub),
        Choice::SystemdBoot => systemd_boot(p),
        Choice::Proxmox => Ok(LoaderKind::Proxmox),
        Choice::Kernelstub => Ok(LoaderKind::Kernelstub),
    }
}

/// The host's boot stack, or why gpt cannot tell (a sentence naming what was found and what
/// to do).
pub fn detect(p: &Probe) -> Result<StackId, String> {
    let loader = loader(p)?;
    let initramfs = initramfs(p)?;
    Ok(StackId { loader, initramfs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkgs(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|s| s.to_string()).collect())
    }

    fn grub() -> Probe {
        Probe {
            grub_default: true,
            ..Probe::default()
        }
    }

    #[test]
    fn the_database_decides_the_generator() {
        let p = Probe {
            packages: pkgs(&["initramfs-tools", "grub-efi-amd64"]),
            ..grub()
        };
        assert_eq!(detect(&p).unwrap(), StackId::default());
        // dracut with initramfs-tools-core left behind (Ubuntu 26.04): dracut.
        let p = Probe {
            packages: pkgs(&["dracut", "initramfs-tools-core"]),
            update_initramfs: true,
            ..grub()
        };
        assert_eq!(detect(&p).unwrap().initramfs, InitramfsKind::Dracut);
        let both = Probe {
            packages: pkgs(&["dracut", "initramfs-tools"]),
            ..grub()
        };
        assert!(detect(&both)
            .unwrap_err()
            .contains("both initramfs-tools and dracut"));
        let neither = Probe {
            packages: pkgs(&["initramfs-tools-core"]),
            ..grub()
        };
        assert!(detect(&neither)
            .unwrap_err()
            .contains("no initramfs generator found in the package database"));
    }

    #[test]
    fn without_a_database_the_files_decide() {
        let p = Probe {
            update_initramfs: true,
            ..grub()
        };
        assert_eq!(detect(&p).unwrap().initramfs, InitramfsKind::InitramfsTools);
        let p = Probe {
            update_initramfs: true,
            dracut_bin: true,
            ..grub()
        };
        assert_eq!(detect(&p).unwrap().initramfs, InitramfsKind::Dracut);
        assert!(detect(&grub()).unwrap_err().contains("no package database"));
    }

    #[test]
    fn no_loader_at_all_is_refused_first() {
        let p = Probe {
            update_initramfs: true,
            ..Probe::default()
        };
        let e = detect(&p).unwrap_err();
        assert!(e.contains("does not boot with GRUB"), "{e}");
        assert!(e.contains("--boot-loader"), "{e}");
    }

    fn efi_var(s: &str) -> Vec<u8> {
        let mut v = vec![6, 0, 0, 0];
        for u in s.encode_utf16().chain([0]) {
            v.extend(u.to_le_bytes());
        }
        v
    }

    #[test]
    fn efi_strings_skip_the_attributes_and_stop_at_nul() {
        assert_eq!(
            efi_string(&efi_var("systemd-boot 257.9-1~deb13u1")).as_deref(),
            Some("systemd-boot 257.9-1~deb13u1")
        );
        let mut v = efi_var("GRUB 2.12");
        v.extend([b'x', 0, b'y', 0]);
        assert_eq!(efi_string(&v).as_deref(), Some("GRUB 2.12"));
        assert_eq!(efi_string(&[7, 0, 0]), None);
        assert_eq!(efi_string(&efi_var("")), None);
    }

    #[test]
    fn inspect_output_of_every_kernel_install_generation() {
        let shell = "KERNEL_INSTALL_MACHINE_ID: 0a1b\nKERNEL_INSTALL_ENTRY_TOKEN: 0a1b\n\
                     KERNEL_INSTALL_BOOT_ROOT: /boot/efi\nKERNEL_INSTALL_LAYOUT: bls\n\
                     KERNEL_INSTALL_INITRD_GENERATOR: \nENTRY_DIR_ABS: /boot/efi/0a1b/$KERNEL_VERSION\n";
        let c = "Plugins:\n  /usr/lib/kernel/install.d/90-loaderentry.install\n\nEnvironments:\n  \
                 LC_COLLATE=C\n  KERNEL_INSTALL_MACHINE_ID=0a1b\n  KERNEL_INSTALL_ENTRY_TOKEN=debian\n  \
                 KERNEL_INSTALL_BOOT_ROOT=/efi\n  KERNEL_INSTALL_LAYOUT=bls\n";
        let table = "          Machine ID: 0a1b\n   Kernel Image Type: unknown\n              Layout: uki\n\
                     \x20          Boot Root: /boot\n    Entry Token Type: machine-id\n         Entry Token: 0a1b\n";
        let i = parse_inspect(shell).unwrap();
        assert_eq!(
            (
                i.boot_root.as_str(),
                i.layout.as_str(),
                i.entry_token.as_str()
            ),
            ("/boot/efi", "bls", "0a1b")
        );
        assert_eq!(i.machine_id.as_deref(), Some("0a1b"));
        let i = parse_inspect(c).unwrap();
        assert_eq!(
            (i.boot_root.as_str(), i.entry_token.as_str()),
            ("/efi", "debian")
        );
        let i = parse_inspect(table).unwrap();
        assert_eq!((i.boot_root.as_str(), i.layout.as_str()), ("/boot", "uki"));
        assert!(parse_inspect("Usage: kernel-install add|remove\n").is_err());
    }

    fn sdboot(layout: &str) -> Probe {
        Probe {
            packages: pkgs(&["initramfs-tools", "systemd-boot"]),
            kernel_install: true,
            sdboot_hook: true,
            inspect: Some(Ok(Inspect {
                boot_root: "/boot/efi".into(),
                layout: layout.into(),
                entry_token: "0a1b".into(),
                machine_id: Some("0a1b".into()),
            })),
            vfat_mounts: vec!["/boot/efi".into()],
            ..Probe::default()
        }
    }

    #[test]
    fn systemd_boot_alone_is_detected_and_only_the_bls_layout_accepted() {
        let id = detect(&sdboot("bls")).unwrap();
        assert_eq!(id.loader, LoaderKind::SystemdBoot);
        assert_eq!(
            serde_json::to_string(&id.loader).unwrap(),
            "\"systemd-boot\""
        );
        let e = detect(&sdboot("uki")).unwrap_err();
        assert!(
            e.contains("layout is uki") && e.contains("/boot/efi/EFI/Linux"),
            "{e}"
        );
        let e = detect(&sdboot("other")).unwrap_err();
        assert!(
            e.contains("layout is other") && e.contains("ESP mounted"),
            "{e}"
        );
        let mut two = sdboot("bls");
        two.vfat_mounts = vec!["/boot".into(), "/efi".into()];
        assert!(detect(&two).unwrap_err().contains("XBOOTLDR"));
        let mut no_ki = sdboot("bls");
        no_ki.inspect = Some(Err("`kernel-install inspect` failed".into()));
        assert!(detect(&no_ki).unwrap_err().contains("inspect"));
    }

    #[test]
    fn grub_and_systemd_boot_installed_the_booted_one_wins() {
        let both = Probe {
            packages: pkgs(&["initramfs-tools", "systemd-boot", "grub-efi-amd64"]),
            grub_default: true,
            grub_cfg: true,
            ..sdboot("bls")
        };
        let e = detect(&both).unwrap_err();
        assert!(e.contains("grub and systemd-boot"), "{e}");
        assert!(e.contains("--boot-loader grub|systemd-boot"), "{e}");
        let by_sd = Probe {
            loader_info: Some("systemd-boot 257.9-1~deb13u1".into()),
            ..both.clone()
        };
        assert_eq!(detect(&by_sd).unwrap().loader, LoaderKind::SystemdBoot);
        let by_grub = Probe {
            loader_info: Some("GRUB 2.12".into()),
            ..both.clone()
        };
        assert_eq!(detect(&by_grub).unwrap().loader, LoaderKind::Grub);
        let chosen = Probe {
            chosen: Some(Choice::Grub),
            ..both.clone()
        };
        assert_eq!(detect(&chosen).unwrap().loader, LoaderKind::Grub);
        // A settings file GRUB's removed package left behind is no candidate.
        let leftover = Probe {
            packages: pkgs(&["initramfs-tools", "systemd-boot"]),
            grub_cfg: false,
            ..both
        };
        assert_eq!(detect(&leftover).unwrap().loader, LoaderKind::SystemdBoot);
    }

    #[test]
    fn proxmox_and_kernelstub_win_over_the_loader_files_snapd_fde_is_refused() {
        // A ZFS Proxmox host keeps an unused /etc/default/grub: never configured through it.
        let pve = Probe {
            proxmox_tool: true,
            proxmox_uuids: true,
            update_initramfs: true,
            ..grub()
        };
        assert_eq!(detect(&pve).unwrap().loader, LoaderKind::Proxmox);
        let by_sd = Probe {
            loader_info: Some("systemd-boot 252.33-1~deb12u1".into()),
            entry_selected: Some("proxmox-6.8.12-4-pve.conf".into()),
            ..pve.clone()
        };
        assert_eq!(detect(&by_sd).unwrap().loader, LoaderKind::Proxmox);
        // Without the ESP list, proxmox-boot-tool manages nothing: plain GRUB (ext4/LVM).
        let ext4 = Probe {
            proxmox_uuids: false,
            ..pve
        };
        assert_eq!(detect(&ext4).unwrap().loader, LoaderKind::Grub);
        let pop = Probe {
            kernelstub_conf: true,
            ..sdboot("bls")
        };
        assert_eq!(detect(&pop).unwrap().loader, LoaderKind::Kernelstub);
        // A Pop!_OS host moved to GRUB keeps kernelstub's configuration: without LoaderInfo
        // gpt cannot tell which boots, so the user says; GRUB 2.12 says it itself.
        let moved = Probe {
            kernelstub_conf: true,
            update_initramfs: true,
            ..grub()
        };
        let err = detect(&moved).unwrap_err();
        assert!(
            err.contains("grub and kernelstub") && err.contains("--boot-loader"),
            "{err}"
        );
        let grub212 = Probe {
            loader_info: Some("GRUB 2.12".into()),
            ..moved.clone()
        };
        assert_eq!(detect(&grub212).unwrap().loader, LoaderKind::Grub);
        let by_sd = Probe {
            loader_info: Some("systemd-boot 249".into()),
            ..moved
        };
        assert_eq!(detect(&by_sd).unwrap().loader, LoaderKind::Kernelstub);
        let fde = Probe {
            snapd_fde: true,
            ..grub()
        };
        assert!(detect(&fde).unwrap_err().contains("snapd"));
        let sd_without_package = Probe {
            loader_info: Some("systemd-boot 255".into()),
            ..grub()
        };
        assert!(detect(&sd_without_package)
            .unwrap_err()
            .contains("--boot-loader"));
    }
}
