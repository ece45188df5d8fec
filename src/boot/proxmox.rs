//! Proxmox VE's proxmox-boot-tool (package proxmox-kernel-helper): it copies the kernels and
//! the command line to the ESPs listed in `/etc/kernel/proxmox-boot-uuids`, which are not kept
//! mounted. On each ESP it runs systemd-boot (UEFI without Secure Boot) or GRUB (Secure Boot,
//! legacy BIOS).
//!
//! - systemd-boot: the arguments go into the **first line** of `/etc/kernel/cmdline` (the
//!   only one the tool reads; it must hold `root=`, else the refresh fails); without the file
//!   the tool uses `/proc/cmdline` less `initrd=`, from which gpt creates it.
//! - GRUB: the arguments go into `/etc/default/grub`, as on any GRUB host.
//!
//! Either way the regeneration is `proxmox-boot-tool refresh`, never only `update-grub`
//! (which would change nothing that boots). Which one the ESPs run is told by the LoaderInfo
//! EFI variable: systemd-boot sets it; GRUB before 2.12 and legacy BIOS boots do not.
//! The entries on the ESPs are not verified (they are not mounted): gpt says so.

use super::grub::Grub;
use super::systemd_boot::{remove_tokens, KERNEL_CMDLINE};
use super::{ArgsEdit, Entries, Loader, LoaderKind};
use crate::edit::cmdline;
use crate::facts::Facts;
use crate::host::Host;
use crate::plan::{FileChange, Step};
use crate::state::BindMode;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub struct Proxmox;

/// Whether the managed ESPs boot systemd-boot (else GRUB).
pub fn systemd_boot_mode(f: &Facts) -> bool {
    f.probe
        .loader_info
        .as_deref()
        .is_some_and(|i| i.starts_with("systemd-boot"))
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
        if systemd_boot_mode(f) {
            self.current(f).map(drop)
        } else {
            Ok(())
        }
    }

    fn user_args(&self, f: &Facts) -> Result<Vec<String>> {
        if !systemd_boot_mode(f) {
            return Grub.user_args(f);
        }
        let (_, line, _) = self.current(f)?;
        Ok(cmdline::split(&remove_tokens(&line, &f.gpt_added))
            .into_iter()
            .map(str::to_string)
            .collect())
    }

    fn edit_args(&self, f: &Facts, add: &[String]) -> Result<ArgsEdit> {
        if !systemd_boot_mode(f) {
            let mut e = Grub.edit_args(f, add)?;
            e.notes.push(
                "the ESPs proxmox-boot-tool manages boot GRUB (no LoaderInfo from systemd-boot): \
                 the arguments go into GRUB's file, and `proxmox-boot-tool refresh` copies them"
                    .into(),
            );
            return Ok(e);
        }
        let (before, line, rest) = self.current(f)?;
        let mut new = remove_tokens(&line, &f.gpt_added);
        for a in add {
            if !new.is_empty() && !new.ends_with([' ', '\t']) {
                new.push(' ');
            }
            new.push_str(a);
        }
        let mut notes = vec![
            "the ESPs proxmox-boot-tool manages boot systemd-boot: the arguments go into the first \
             line of /etc/kernel/cmdline (the only one it reads)"
                .to_string(),
        ];
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
        let (line, rest) = match text.find('\n') {
            Some(k) => (&text[..k], &text[k..]),
            None => (text, ""),
        };
        Ok(format!("{}{rest}", remove_tokens(line, added)))
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

    fn entries(&self, _host: &Host, _f: &Facts, _args: &[String]) -> Entries {
        Entries::Unchecked(
            "the ESPs proxmox-boot-tool manages are not mounted, so gpt did not read their entries; \
             `sudo proxmox-boot-tool status` lists them, and after the reboot /proc/cmdline shows \
             what booted"
                .into(),
        )
    }

    fn remove_after_regeneration(&self) -> bool {
        true
    }

    fn rescue(&self, bind: BindMode) -> String {
        Grub.rescue(bind)
    }

    fn rescue_on(&self, f: &Facts, bind: BindMode) -> String {
        if systemd_boot_mode(f) {
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
}
