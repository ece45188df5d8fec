//! Which boot stack a host has, decided once from what is installed. Pure: the facts reader
//! fills a [`Probe`]; [`detect`] decides.
//!
//! The initramfs generator comes from the package database (`initramfs-tools` or `dracut`
//! installed), and only where there is none (an image under `--root`) from the files the
//! packages ship. Never from `/etc/initramfs-tools` alone: `initramfs-tools-core` keeps that
//! folder on a host whose images dracut builds.

use super::{InitramfsKind, LoaderKind, StackId};
use std::collections::BTreeSet;

/// What detection looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// Installed packages; `None` without a package database.
    pub packages: Option<BTreeSet<String>>,
    /// `/etc/default/grub` exists.
    pub grub_default: bool,
    /// `/usr/sbin/update-initramfs` exists (initramfs-tools', or dracut's from 107 on).
    pub update_initramfs: bool,
    /// `/usr/bin/dracut` exists.
    pub dracut_bin: bool,
    /// `/etc/dracut.conf.d` exists.
    pub dracut_conf_d: bool,
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

fn loader(p: &Probe) -> Result<LoaderKind, String> {
    if p.grub_default {
        return Ok(LoaderKind::Grub);
    }
    Err(
        "this host does not boot with GRUB (there is no /etc/default/grub), and gpt knows no \
         other boot loader yet"
            .into(),
    )
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
    fn no_grub_is_refused_first() {
        let p = Probe {
            update_initramfs: true,
            ..Probe::default()
        };
        assert!(detect(&p).unwrap_err().contains("/etc/default/grub"));
    }
}
