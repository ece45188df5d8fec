//! Proxmox VE's proxmox-boot-tool (package proxmox-kernel-helper): it copies the kernels and
//! the command line to the ESPs listed in `/etc/kernel/proxmox-boot-uuids`, which are not kept
//! mounted. On each ESP it runs systemd-boot (UEFI without Secure Boot) or GRUB (Secure Boot,
//! legacy BIOS): GRUB where `EFI/proxmox/grubx64.efi` is, or on a BIOS boot.
//!
//! - systemd-boot: the arguments go into the **first line** of `/etc/kernel/cmdline` (the
//!   only one the tool reads; it must hold `root=`, else the refresh fails); without the file
//!   the tool uses `/proc/cmdline` less `initrd=`, from which gpt creates it.
//! - GRUB: the arguments go into `/etc/default/grub`, as on any GRUB host.
//!
//! Either way the regeneration is `proxmox-boot-tool refresh`, never only `update-grub`
//! (which would change nothing that boots). Which one the ESPs run is read from the ESPs
//! themselves ([`crate::facts::pve_esp`], in a private mount namespace); ESPs that run different
//! loaders are refused. Where they cannot be read (gpt not root, no `unshare`, no device for a
//! listed UUID), the LoaderInfo EFI variable decides (systemd-boot sets it; GRUB before 2.12 and
//! BIOS boots do not), and gpt says so. After the refresh, the same reading verifies that each
//! kernel the tool keeps bootable has its entry, with the arguments, on every systemd-boot ESP
//! (and GRUB's `grub/grub.cfg` on the others); a refresh that did not write them rolls back.

use super::grub::{missing, missing_in_cfg, Grub};
use super::systemd_boot::KERNEL_CMDLINE;
use super::{ArgsEdit, Entries, Loader, LoaderKind};
use crate::edit::cmdline;
use crate::edit::kernel_cmdline::{self, Reader};
use crate::facts::pve_esp::{self, Esp};
use crate::facts::Facts;
use crate::host::Host;
use crate::model::BindMode;
use crate::plan::{FileChange, Step};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub struct Proxmox;

/// The loader the managed ESPs boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    SystemdBoot,
    Grub,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::SystemdBoot => "systemd-boot",
            Mode::Grub => "GRUB",
        }
    }
}

/// The loader the LoaderInfo EFI variable names (GRUB when it is absent or not systemd-boot's).
fn by_loader_info(f: &Facts) -> Mode {
    if f.probe
        .loader_info
        .as_deref()
        .is_some_and(|i| i.starts_with("systemd-boot"))
    {
        Mode::SystemdBoot
    } else {
        Mode::Grub
    }
}

/// The ESPs that could not be read, as `UUID: why`.
fn unread(esps: &[Esp]) -> Vec<String> {
    esps.iter()
        .filter_map(|e| e.error.as_ref().map(|w| format!("{}: {w}", e.uuid)))
        .collect()
}

/// Which loader the managed ESPs boot and how gpt knows it (a note for the plan): from the
/// ESPs as read, else from LoaderInfo. ESPs that boot different loaders are refused.
pub fn mode(f: &Facts) -> Result<(Mode, String)> {
    let read: Vec<&Esp> = match &f.pve_esps {
        Some(Ok(esps)) => esps.iter().filter(|e| e.error.is_none()).collect(),
        _ => Vec::new(),
    };
    if read.is_empty() {
        let why = match &f.pve_esps {
            Some(Ok(esps)) => unread(esps).join("; "),
            Some(Err(why)) => why.clone(),
            None => "they were not read".into(),
        };
        let m = by_loader_info(f);
        let info = match m {
            Mode::SystemdBoot => "systemd-boot set it",
            Mode::Grub => "systemd-boot did not set it, so GRUB",
        };
        return Ok((
            m,
            format!(
                "gpt could not read the ESPs proxmox-boot-tool manages ({why}), so it goes by the \
                 LoaderInfo EFI variable: {info}"
            ),
        ));
    }
    let (grub, sd): (Vec<&Esp>, Vec<&Esp>) = read.iter().partition(|e| e.boots_grub(f.efi));
    let ids = |v: &[&Esp]| {
        v.iter()
            .map(|e| e.uuid.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !grub.is_empty() && !sd.is_empty() {
        bail!(
            "the ESPs proxmox-boot-tool manages boot different loaders: {} systemd-boot (its \
             entries take the first line of {KERNEL_CMDLINE}), {} GRUB (EFI/proxmox/grubx64.efi; \
             it takes /etc/default/grub); gpt edits one of these files, so the other ESPs would \
             boot without the arguments. Make them boot the same loader (`proxmox-boot-tool \
             status` shows them; `proxmox-boot-tool init PARTITION [grub]` sets one up) and run \
             this again; nothing was changed",
            ids(&sd),
            ids(&grub)
        );
    }
    let m = if grub.is_empty() {
        Mode::SystemdBoot
    } else {
        Mode::Grub
    };
    let how = match (m, f.efi) {
        (Mode::SystemdBoot, _) => "",
        (Mode::Grub, true) => " (EFI/proxmox/grubx64.efi is on them)",
        (Mode::Grub, false) => " (the host booted by BIOS)",
    };
    let mut note = format!(
        "the ESPs proxmox-boot-tool manages ({}) boot {}{how}, as read from them",
        ids(&read),
        m.name()
    );
    if let Some(Ok(esps)) = &f.pve_esps {
        let bad = unread(esps);
        if !bad.is_empty() {
            note.push_str(&format!("; not read: {}", bad.join("; ")));
        }
    }
    if let Some(info) = &f.probe.loader_info {
        if by_loader_info(f) != m && f.efi {
            note.push_str(&format!(
                "; the LoaderInfo EFI variable names {info}, which booted this time: the ESPs \
                 decide, they are what boots next"
            ));
        }
    }
    Ok((m, note))
}

/// The ESP-based mode, or LoaderInfo's where the ESPs disagree (for texts that cannot fail).
fn mode_or_info(f: &Facts) -> Mode {
    mode(f).map_or_else(|_| by_loader_info(f), |(m, _)| m)
}

/// The kernels proxmox-boot-tool keeps bootable that gpt can name, each with its image and
/// initrd in /boot (the tool skips a kernel without them): the running one (the tool always
/// keeps it), the newest Proxmox kernel (`…-pve`; the tool keeps the newest of its kernel
/// packages, not a Debian kernel installed beside them), and the pinned and manually added
/// ones. The tool keeps more (the second newest package, the newest of the older series):
/// their entries, where present, are checked like these.
fn kept_kernels(f: &Facts) -> Vec<String> {
    let has = |k: &str| {
        f.boot_names.iter().any(|n| *n == format!("vmlinuz-{k}"))
            && f.boot_names.iter().any(|n| *n == format!("initrd.img-{k}"))
    };
    let installed: Vec<&str> = f
        .kernels
        .iter()
        .map(|k| k.version.as_str())
        .filter(|k| has(k))
        .collect();
    let mut out: Vec<String> = Vec::new();
    if let Some(r) = &f.running_kernel {
        if installed.contains(&r.as_str()) {
            out.push(r.clone());
        }
    }
    let newest = installed
        .iter()
        .rev()
        .find(|k| k.ends_with("-pve"))
        .copied();
    let chosen = f
        .pve_chosen_kernels
        .iter()
        .map(String::as_str)
        .filter(|k| installed.contains(k));
    for k in newest.into_iter().chain(chosen) {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_string());
        }
    }
    out
}

/// `grub/grub.cfg`'s `linux` lines as a grub.cfg for [`missing_in_cfg`].
fn grub_cfg(esp: &Esp) -> String {
    esp.grub_linux
        .iter()
        .map(|l| format!("linux {l}\n"))
        .collect()
}

/// What the ESP lacks of `args` (the worst of its entries); `Err` names what is not there.
fn esp_lacks(f: &Facts, esp: &Esp, args: &[String]) -> Result<Vec<String>, String> {
    let u = &esp.uuid;
    if esp.boots_grub(f.efi) {
        if !esp.grub_cfg {
            return Err(format!("ESP {u} (GRUB) has no grub/grub.cfg"));
        }
        return Ok(missing_in_cfg(&grub_cfg(esp), args));
    }
    if esp.entries.is_empty() {
        return Err(format!("ESP {u} has no loader/entries/proxmox-*.conf"));
    }
    for k in kept_kernels(f) {
        if esp.entry_of(&k).is_none() {
            return Err(format!(
                "ESP {u} has no loader/entries/proxmox-{k}.conf (kernel {k})"
            ));
        }
    }
    let mut worst = Vec::new();
    for e in &esp.entries {
        let m = missing(&cmdline::split(&e.options), args);
        if m.len() > worst.len() {
            worst = m;
        }
    }
    Ok(worst)
}

/// The entries of an ESP that still carry some of `gone`, each with the ones it carries
/// (`ESP 4A1B-2C3D loader/entries/proxmox-6.8.12-4-pve.conf`, or its `grub/grub.cfg`).
fn carriers(f: &Facts, esp: &Esp, gone: &[String]) -> Vec<(String, Vec<String>)> {
    let carried = |line: &str| -> Vec<String> {
        let words = cmdline::split(line);
        gone.iter()
            .filter(|g| missing(&words, std::slice::from_ref(g)).is_empty())
            .cloned()
            .collect()
    };
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    if esp.boots_grub(f.efi) {
        let mut all: Vec<String> = Vec::new();
        for l in &esp.grub_linux {
            for t in carried(l) {
                if !all.contains(&t) {
                    all.push(t);
                }
            }
        }
        if !all.is_empty() {
            out.push((format!("ESP {} grub/grub.cfg", esp.uuid), all));
        }
        return out;
    }
    for e in &esp.entries {
        let c = carried(&e.options);
        if !c.is_empty() {
            out.push((format!("ESP {} loader/entries/{}", esp.uuid, e.name), c));
        }
    }
    out
}

fn unchecked(why: &str) -> String {
    format!(
        "gpt could not read the ESPs proxmox-boot-tool manages ({why}), so it did not verify \
         their entries; `sudo proxmox-boot-tool status` lists them, and after the reboot \
         /proc/cmdline shows what booted"
    )
}

/// The first line of `/etc/kernel/cmdline` and the rest of the file (from its first newline).
fn first_line(bytes: &[u8]) -> Result<(String, String)> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        bail!("{KERNEL_CMDLINE} is not text; fix it and run this again; nothing was changed");
    };
    let (line, rest) = match text.find('\n') {
        Some(k) => (&text[..k], &text[k..]),
        None => (text, ""),
    };
    if line.contains('\r') {
        bail!(
            "the first line of {KERNEL_CMDLINE} ends in a carriage return (CRLF): it would reach \
             the kernel inside an argument; save it with Unix line ends and run this again; \
             nothing was changed"
        );
    }
    if !cmdline::split(line)
        .iter()
        .any(|t| cmdline::key(t) == "root")
    {
        bail!(
            "the first line of {KERNEL_CMDLINE} has no root= ({line:?}), so `proxmox-boot-tool \
             refresh` would fail; put your kernel arguments, root=… included, on its first line \
             and run this again; nothing was changed"
        );
    }
    Ok((line.to_string(), rest.to_string()))
}

impl Proxmox {
    /// The first line now, the rest of the file, and whether the file exists.
    fn current(&self, f: &Facts) -> Result<(Option<Vec<u8>>, String, String)> {
        match &f.kernel_cmdline {
            Some(b) => {
                let (line, rest) = first_line(b)?;
                Ok((Some(b.clone()), line, rest))
            }
            None => {
                if !f.cmdline_read {
                    bail!("cannot read /proc/cmdline, from which {KERNEL_CMDLINE} would be created; nothing was changed");
                }
                let line = cmdline::split(&f.cmdline)
                    .into_iter()
                    .filter(|t| cmdline::key(t) != "initrd")
                    .collect::<Vec<_>>()
                    .join(" ");
                if !cmdline::split(&line)
                    .iter()
                    .any(|t| cmdline::key(t) == "root")
                {
                    bail!(
                        "/proc/cmdline has no root= ({line:?}): a rescue boot? gpt will not create \
                         {KERNEL_CMDLINE} from it; write it yourself (one line, root=… included) \
                         and run this again; nothing was changed"
                    );
                }
                Ok((None, line, "\n".into()))
            }
        }
    }
}

impl Loader for Proxmox {
    fn kind(&self) -> LoaderKind {
        LoaderKind::Proxmox
    }

    fn validate(&self, f: &Facts) -> Result<()> {
        match mode(f)?.0 {
            Mode::SystemdBoot => self.current(f).map(drop),
            Mode::Grub => Ok(()),
        }
    }

    fn user_args(&self, f: &Facts) -> Result<Vec<String>> {
        if mode(f)?.0 == Mode::Grub {
            return Grub.user_args(f);
        }
        let (_, line, _) = self.current(f)?;
        Ok(kernel_cmdline::user_args(&line, &f.gpt_added))
    }

    fn edit_args(&self, f: &Facts, add: &[String]) -> Result<ArgsEdit> {
        let (m, how) = mode(f)?;
        if m == Mode::Grub {
            let mut e = Grub.edit_args(f, add)?;
            e.notes.push(format!(
                "{how}: the arguments go into GRUB's file, and `proxmox-boot-tool refresh` copies \
                 them"
            ));
            return Ok(e);
        }
        let (before, line, rest) = self.current(f)?;
        let new = kernel_cmdline::with_args(&line, &f.gpt_added, add);
        let mut notes = vec![format!(
            "{how}: the arguments go into the first line of /etc/kernel/cmdline (the only one it \
             reads)"
        )];
        let after = match &before {
            Some(_) => Some(format!("{new}{rest}").into_bytes()),
            None if add.is_empty() => None,
            None => {
                notes.push(format!(
                    "{KERNEL_CMDLINE} did not exist: gpt creates it from /proc/cmdline (without \
                     initrd=), the line proxmox-boot-tool uses without it"
                ));
                Some(format!("{new}\n").into_bytes())
            }
        };
        Ok(ArgsEdit {
            change: FileChange::new(KERNEL_CMDLINE, before, after),
            file: KERNEL_CMDLINE.into(),
            setting: "the first line".into(),
            notes,
        })
    }

    fn marks_in_file(&self) -> bool {
        false
    }

    fn entries_source(&self) -> String {
        KERNEL_CMDLINE.into()
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(KERNEL_CMDLINE) || Grub.owns(path)
    }

    fn files(&self, host: &Host) -> Result<Vec<PathBuf>> {
        let mut v = vec![PathBuf::from(KERNEL_CMDLINE)];
        v.extend(Grub.files(host)?);
        Ok(v)
    }

    fn has_marks(&self, text: &str) -> bool {
        Grub.has_marks(text)
    }

    fn strip(&self, path: &Path, text: &str) -> Result<String> {
        if Grub.owns(path) {
            return Grub.strip(path, text);
        }
        Ok(text.to_string())
    }

    fn strip_args(&self, path: &Path, text: &str, added: &[String]) -> Result<String> {
        if Grub.owns(path) {
            return Grub.strip(path, text);
        }
        Ok(kernel_cmdline::strip_args(
            text,
            Reader::ProxmoxBootTool,
            added,
        ))
    }

    fn regenerate(&self, _f: &Facts) -> Vec<Step> {
        vec![Step::new(
            "Copying kernels and the command line to the ESPs",
            &["proxmox-boot-tool", "refresh"],
        )]
    }

    fn copies_images(&self) -> bool {
        true
    }

    fn regenerate_hint(&self) -> String {
        "sudo proxmox-boot-tool refresh".into()
    }

    fn entries_name(&self) -> String {
        "the entries on the ESPs proxmox-boot-tool manages".into()
    }

    fn entries(&self, host: &Host, f: &Facts, args: &[String]) -> Entries {
        let esps = match pve_esp::read(host) {
            Ok(e) => e,
            Err(why) => return Entries::Unchecked(unchecked(&why)),
        };
        let mut worst: Vec<String> = Vec::new();
        for esp in esps.iter().filter(|e| e.error.is_none()) {
            let m = esp_lacks(f, esp, args).unwrap_or_else(|_| args.to_vec());
            if m.len() > worst.len() {
                worst = m;
            }
        }
        let bad = unread(&esps);
        if !worst.is_empty() {
            Entries::Lack(worst)
        } else if !bad.is_empty() {
            let read = esps.len() - bad.len();
            Entries::Unchecked(format!(
                "{}{}",
                unchecked(&bad.join("; ")),
                if read > 0 {
                    format!("; the {read} ESP(s) read carry them")
                } else {
                    String::new()
                }
            ))
        } else {
            Entries::Carry
        }
    }

    fn confirm(&self, host: &Host, f: &Facts, want: &[String], gone: &[String]) -> Result<()> {
        // Not readable: [`Loader::entries`] says so where the run reports.
        let Ok(esps) = pve_esp::read(host) else {
            return Ok(());
        };
        let after = "after `proxmox-boot-tool refresh`";
        for esp in esps.iter().filter(|e| e.error.is_none()) {
            let lacks = esp_lacks(f, esp, want)
                .map_err(|what| anyhow::anyhow!("{after}, {what}: the refresh did not write it"))?;
            if !lacks.is_empty() {
                let place = if esp.boots_grub(f.efi) {
                    "grub/grub.cfg".to_string()
                } else {
                    esp.entries
                        .iter()
                        .find(|e| missing(&cmdline::split(&e.options), want) == lacks)
                        .map_or_else(String::new, |e| format!("loader/entries/{}", e.name))
                };
                bail!(
                    "{after}, ESP {} {place} still lacks {}: the refresh did not reach it",
                    esp.uuid,
                    lacks.join(" ")
                );
            }
            if let Some((place, tokens)) = carriers(f, esp, gone).into_iter().next() {
                bail!(
                    "{after}, {place} still carries {}: the refresh did not reach it",
                    tokens.join(" ")
                );
            }
        }
        Ok(())
    }

    fn carrying(&self, host: &Host, f: &Facts, key: &str) -> Option<Vec<String>> {
        let esps = pve_esp::read(host).ok()?;
        let mut out = Vec::new();
        for esp in esps.iter().filter(|e| e.error.is_none()) {
            let found = if esp.boots_grub(f.efi) {
                esp.grub_linux
                    .iter()
                    .any(|l| cmdline::split(l).iter().any(|t| cmdline::key(t) == key))
                    .then(|| format!("ESP {} grub/grub.cfg", esp.uuid))
                    .into_iter()
                    .collect::<Vec<_>>()
            } else {
                esp.entries
                    .iter()
                    .filter(|e| {
                        cmdline::split(&e.options)
                            .iter()
                            .any(|t| cmdline::key(t) == key)
                    })
                    .map(|e| format!("ESP {} loader/entries/{}", esp.uuid, e.name))
                    .collect()
            };
            out.extend(found);
        }
        Some(out)
    }

    fn falls_back_to_proc_cmdline(&self) -> Option<&'static str> {
        Some("proxmox-boot-tool")
    }

    fn rescue(&self, bind: BindMode) -> String {
        Grub.rescue(bind)
    }

    fn rescue_on(&self, f: &Facts, bind: BindMode) -> String {
        if mode_or_info(f) == Mode::SystemdBoot {
            super::systemd_boot::SystemdBoot.rescue(bind)
        } else {
            Grub.rescue(bind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(cmdline: Option<&[u8]>) -> Facts {
        let mut f = Facts {
            kernel_cmdline: cmdline.map(<[u8]>::to_vec),
            cmdline_read: true,
            cmdline: "initrd=\\EFI\\proxmox\\6.8.12-4-pve\\initrd.img-6.8.12-4-pve root=ZFS=rpool/ROOT/pve-1 boot=zfs".into(),
            ..Facts::default()
        };
        f.probe.loader_info = Some("systemd-boot 252.33-1~deb12u1".into());
        f
    }

    #[test]
    fn only_the_first_line_is_edited_and_the_rest_kept() {
        let f = sd(Some(b"root=ZFS=rpool/ROOT/pve-1 boot=zfs\n# old line\n"));
        let e = Proxmox.edit_args(&f, &["iommu=pt".to_string()]).unwrap();
        let after = e.change.after.unwrap();
        assert_eq!(
            after,
            b"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt\n# old line\n"
        );
        let back = Proxmox
            .strip_args(
                Path::new(KERNEL_CMDLINE),
                std::str::from_utf8(&after).unwrap(),
                &["iommu=pt".to_string()],
            )
            .unwrap();
        assert_eq!(back, "root=ZFS=rpool/ROOT/pve-1 boot=zfs\n# old line\n");
        let e = Proxmox
            .edit_args(&sd(Some(b"boot=zfs\nroot=x\n")), &[])
            .unwrap_err();
        assert!(e.to_string().contains("no root="), "{e}");
    }

    #[test]
    fn without_the_file_it_is_created_from_proc_cmdline_less_initrd() {
        let e = Proxmox
            .edit_args(&sd(None), &["iommu=pt".to_string()])
            .unwrap();
        assert_eq!(
            e.change.after.unwrap(),
            b"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt\n"
        );
    }

    #[test]
    fn grub_mode_edits_grubs_file_and_refreshes() {
        let f = Facts {
            grub_default: Some("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n".into()),
            ..Facts::default()
        };
        let e = Proxmox.edit_args(&f, &["iommu=pt".to_string()]).unwrap();
        assert_eq!(e.file, "/etc/default/grub");
        assert_eq!(
            Proxmox.regenerate(&f)[0].argv,
            ["proxmox-boot-tool", "refresh"]
        );
    }

    fn esp(uuid: &str, grub: bool, entries: &[(&str, &str)]) -> Esp {
        Esp {
            uuid: uuid.into(),
            grub_efi: grub,
            loader_conf: !grub,
            entries: entries
                .iter()
                .map(|(k, o)| pve_esp::EspEntry {
                    name: format!("proxmox-{k}.conf"),
                    options: o.to_string(),
                })
                .collect(),
            ..Esp::default()
        }
    }

    fn with_esps(esps: Vec<Esp>) -> Facts {
        let mut f = sd(Some(b"root=ZFS=rpool/ROOT/pve-1 boot=zfs\n"));
        f.efi = true;
        f.pve_esps = Some(Ok(esps));
        for k in ["6.8.12-4-pve", "6.8.12-5-pve", "6.12.9-amd64"] {
            f.kernels.push(crate::facts::Kernel {
                version: k.into(),
                ..Default::default()
            });
            f.boot_names.push(format!("vmlinuz-{k}"));
            f.boot_names.push(format!("initrd.img-{k}"));
        }
        f.running_kernel = Some("6.8.12-4-pve".into());
        f
    }

    #[test]
    fn the_esps_as_read_decide_and_loader_info_is_the_fallback() {
        // systemd-boot's LoaderInfo, but the ESP runs GRUB: the ESP decides, the note says both.
        let f = with_esps(vec![esp("4A1B-2C3D", true, &[])]);
        let (m, note) = mode(&f).unwrap();
        assert_eq!(m, Mode::Grub);
        assert!(
            note.contains("LoaderInfo EFI variable names systemd-boot"),
            "{note}"
        );
        // A BIOS boot is GRUB's on every ESP, whatever is on it.
        let mut bios = with_esps(vec![esp("4A1B-2C3D", false, &[])]);
        bios.efi = false;
        assert_eq!(mode(&bios).unwrap().0, Mode::Grub);
        // Nothing read: LoaderInfo, and why.
        let mut none = with_esps(vec![]);
        none.pve_esps = Some(Err("gpt is not running as root".into()));
        let (m, note) = mode(&none).unwrap();
        assert_eq!(m, Mode::SystemdBoot);
        assert!(note.contains("(gpt is not running as root)") && note.contains("LoaderInfo"));
        none.probe.loader_info = None;
        assert_eq!(mode(&none).unwrap().0, Mode::Grub);
        // Only unreadable ESPs: the same fallback, naming them.
        let bad = Esp {
            uuid: "B0C1-D2E3".into(),
            error: Some("/dev/disk/by-uuid/B0C1-D2E3 does not exist".into()),
            ..Esp::default()
        };
        let f = with_esps(vec![bad.clone()]);
        let (m, note) = mode(&f).unwrap();
        assert_eq!(m, Mode::SystemdBoot);
        assert!(note.contains("B0C1-D2E3: /dev/disk/by-uuid/B0C1-D2E3 does not exist"));
        // One read, one not: the read one decides, the other is named.
        let f = with_esps(vec![esp("4A1B-2C3D", false, &[]), bad]);
        let (m, note) = mode(&f).unwrap();
        assert_eq!(m, Mode::SystemdBoot);
        assert!(
            note.contains("as read from them; not read: B0C1-D2E3"),
            "{note}"
        );
    }

    #[test]
    fn esps_on_different_loaders_are_refused_by_every_entry_point() {
        let f = with_esps(vec![
            esp("4A1B-2C3D", false, &[]),
            esp("B0C1-D2E3", true, &[]),
        ]);
        for e in [
            Proxmox.validate(&f).unwrap_err(),
            Proxmox.user_args(&f).unwrap_err(),
            Proxmox.edit_args(&f, &["iommu=pt".into()]).unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(
                e.contains("4A1B-2C3D systemd-boot")
                    && e.contains("B0C1-D2E3 GRUB")
                    && e.contains("nothing was changed"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_esp_lacks_what_its_worst_entry_lacks_and_every_kept_kernel_needs_one() {
        let args = vec!["iommu=pt".to_string(), "vfio-pci.ids=10de:1f08".to_string()];
        let both = "root=ZFS=rpool/ROOT/pve-1 iommu=pt vfio-pci.ids=10de:1f08";
        let f = with_esps(vec![]);
        let good = esp(
            "4A1B-2C3D",
            false,
            &[("6.8.12-4-pve", both), ("6.8.12-5-pve", both)],
        );
        assert_eq!(esp_lacks(&f, &good, &args), Ok(vec![]));
        let stale = esp(
            "4A1B-2C3D",
            false,
            &[("6.8.12-4-pve", both), ("6.8.12-5-pve", "root=x iommu=pt")],
        );
        assert_eq!(
            esp_lacks(&f, &stale, &args),
            Ok(vec!["vfio-pci.ids=10de:1f08".to_string()])
        );
        // The newest Proxmox kernel has no entry: the refresh did not write it (a Debian kernel
        // beside it is not one the tool keeps, unless it runs).
        let old = esp("4A1B-2C3D", false, &[("6.8.12-4-pve", both)]);
        let e = esp_lacks(&f, &old, &args).unwrap_err();
        assert!(e.contains("proxmox-6.8.12-5-pve.conf"), "{e}");
        assert!(esp_lacks(&f, &esp("4A1B-2C3D", false, &[]), &args).is_err());
        let mut running_debian = with_esps(vec![]);
        running_debian.running_kernel = Some("6.12.9-amd64".into());
        let e = esp_lacks(&running_debian, &good, &args).unwrap_err();
        assert!(e.contains("proxmox-6.12.9-amd64.conf"), "{e}");
        // A pinned or manually added kernel needs its entry; one not installed does not.
        let mut pinned = with_esps(vec![]);
        pinned.pve_chosen_kernels = vec!["6.12.9-amd64".into(), "6.2.16-20-pve".into()];
        let e = esp_lacks(&pinned, &good, &args).unwrap_err();
        assert!(e.contains("proxmox-6.12.9-amd64.conf"), "{e}");
        pinned.pve_chosen_kernels = vec!["6.2.16-20-pve".into()];
        assert_eq!(esp_lacks(&pinned, &good, &args), Ok(vec![]));
        // GRUB: some linux line of grub/grub.cfg carries them all.
        let mut g = esp("B0C1-D2E3", true, &[]);
        assert!(esp_lacks(&f, &g, &args).is_err(), "no grub.cfg");
        g.grub_cfg = true;
        g.grub_linux = vec![
            "/vmlinuz-6.8.12-5-pve root=ZFS=rpool/ROOT/pve-1 ro quiet iommu=pt vfio-pci.ids=10de:1f08".into(),
        ];
        assert_eq!(esp_lacks(&f, &g, &args), Ok(vec![]));
        assert_eq!(
            carriers(&f, &g, &args),
            [("ESP B0C1-D2E3 grub/grub.cfg".to_string(), args.clone())]
        );
        assert_eq!(
            carriers(&f, &stale, &args[1..]),
            [(
                "ESP 4A1B-2C3D loader/entries/proxmox-6.8.12-4-pve.conf".to_string(),
                args[1..].to_vec()
            )]
        );
    }
}
