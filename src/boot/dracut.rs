//! dracut (Ubuntu 25.10 and later, Debian with dracut): early modules in gpt's own
//! `/etc/dracut.conf.d/gpt-vfio.conf` (`force_drivers+=`, and `install_items+=` for gpt's
//! modprobe.d file, which a generic image would not carry). Images are rebuilt the way the
//! host's kernel updates do it: with dracut's own `update-initramfs` where the package ships
//! one (107 and later; it runs the post-update hooks), else as Debian's own dracut kernel
//! hook does, `dracut --force IMAGE KVER` for each kernel, naming the image: without an
//! output path dracut picks its own, and on a systemd-boot host (`$BOOT/loader/entries` and
//! `$BOOT/<machine-id>/` exist) that is `$BOOT/<machine-id>/<kver>/initrd`, which no entry
//! boots and which kernel-install does not copy. Images are listed with `lsinitrd`.
//!
//! The early binding step is a `pre-udev` hook: dracut's systemd initramfs runs those in
//! `dracut-pre-udev.service` (`Before=systemd-udevd.service dracut-pre-trigger.service`), its
//! shell initramfs in `init` before it starts udevd. dracut reads its modules only from
//! `/usr/lib/dracut/modules.d` (hooks from `/etc/dracut/hooks` only since dracut 110, and the
//! image's hook folder moved from `/lib/dracut/hooks` to `/var/lib/dracut/hooks` in dracut-ng),
//! so gpt writes a module of its own there, `90gpt-vfio`, whose `module-setup.sh` installs the
//! script with dracut's `inst_hook` (right for each version) and asks to be included only when
//! named: gpt's dracut.conf.d file names it (`add_dracutmodules+=`). Both files are gpt's and
//! journalled; reset removes them and the folder.

use super::initramfs_tools::depmod;
use super::{Generator, InitramfsKind};
use crate::edit::dracut;
use crate::edit::early::{self, EarlyBind, Flavour};
use crate::facts::Facts;
use crate::host::Host;
use crate::paths::{self, DRACUT_CONF, DRACUT_EARLY_HOOK, DRACUT_EARLY_SETUP, MODPROBE_CONF};
use crate::plan::{FileChange, Step};
use crate::runner::Runner;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub struct Dracut;

/// The image of `kver` as the host names it: Debian's `/boot/initrd.img-KVER`, or, where
/// only that one exists, Red Hat's `/boot/initramfs-KVER.img`.
fn image_name(f: &Facts, kver: &str) -> String {
    let redhat = format!("initramfs-{kver}.img");
    let debian = format!("initrd.img-{kver}");
    if !f.boot_names.contains(&debian) && f.boot_names.contains(&redhat) {
        return format!("{}/{redhat}", paths::BOOT);
    }
    paths::initrd(kver)
}

impl Generator for Dracut {
    fn kind(&self) -> InitramfsKind {
        InitramfsKind::Dracut
    }

    fn edit_modules(
        &self,
        f: &Facts,
        wanted: &[String],
        early: bool,
    ) -> Result<Option<FileChange>> {
        if let Some(e) = &f.dracut_conf_error {
            bail!("{e}");
        }
        if let Some(existing) = &f.dracut_conf {
            if !dracut::is_gpt_owned(existing) {
                bail!(
                    "{DRACUT_CONF} exists and was not written by gpt; move it aside and run this again"
                );
            }
        }
        let modules: &[&str] = if early { &[early::DRACUT_MODULE] } else { &[] };
        let after = dracut::render(wanted, &[MODPROBE_CONF], modules);
        Ok(Some(FileChange::new(
            DRACUT_CONF,
            f.dracut_conf.clone().map(String::into_bytes),
            after.map(String::into_bytes),
        )))
    }

    fn edit_early(&self, f: &Facts, bind: Option<&EarlyBind>) -> Result<Vec<FileChange>> {
        let hook = bind.map(|b| early::render(b, Flavour::DracutHook));
        let setup = bind.map(|_| early::dracut_module_setup());
        Ok(vec![
            super::early_change(f, DRACUT_EARLY_SETUP, setup, 0o755)?,
            super::early_change(f, DRACUT_EARLY_HOOK, hook, 0o755)?,
        ])
    }

    fn early_files(&self) -> Vec<&'static str> {
        vec![DRACUT_EARLY_SETUP, DRACUT_EARLY_HOOK]
    }

    fn early_how(&self) -> &'static str {
        "a dracut pre-udev hook (gpt's module 90gpt-vfio), which runs before udevd starts"
    }

    fn early_in_image(&self) -> &'static str {
        "dracut/hooks/pre-udev/00-gpt-vfio.sh"
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(DRACUT_CONF) || self.early_files().iter().any(|e| path == Path::new(e))
    }

    fn files(&self, _host: &Host) -> Result<Vec<PathBuf>> {
        let mut files = vec![PathBuf::from(DRACUT_CONF)];
        files.extend(self.early_files().into_iter().map(PathBuf::from));
        Ok(files)
    }

    fn has_marks(&self, text: &str) -> bool {
        dracut::is_gpt_owned(text) || early::is_gpt_script(text)
    }

    fn strip(&self, _path: &Path, text: &str) -> Result<Option<String>> {
        Ok((!self.has_marks(text)).then(|| text.to_string()))
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![
            DRACUT_CONF,
            MODPROBE_CONF,
            DRACUT_EARLY_SETUP,
            DRACUT_EARLY_HOOK,
        ]
    }

    fn regenerate(&self, f: &Facts) -> Vec<Step> {
        let versions: Vec<String> = f.kernels.iter().map(|k| k.version.clone()).collect();
        let mut steps = depmod(&versions);
        if f.probe.update_initramfs {
            steps.push(Step::new(
                "Rebuilding the initramfs images (dracut)",
                &["update-initramfs", "-u", "-k", "all"],
            ));
        } else {
            for k in &versions {
                let image = image_name(f, k);
                steps.push(Step::new(
                    &format!("Rebuilding the initramfs image of {k} (dracut)"),
                    &["dracut", "--force", &image, k],
                ));
            }
        }
        steps
    }

    fn regenerate_hint(&self) -> String {
        "sudo dracut --force /boot/initrd.img-KVER KVER (for each kernel)".into()
    }

    fn image(&self, host: &Host, kver: &str) -> String {
        let redhat = format!("{}/initramfs-{kver}.img", paths::BOOT);
        if !host.exists(paths::initrd(kver)) && host.exists(&redhat) {
            return redhat;
        }
        paths::initrd(kver)
    }

    fn images(&self, host: &Host) -> Vec<String> {
        host.list_dir(paths::BOOT)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                n.starts_with("initrd.img-") || (n.starts_with("initramfs-") && n.ends_with(".img"))
            })
            .map(|n| format!("{}/{n}", paths::BOOT))
            .collect()
    }

    fn list(&self, runner: &Runner, image: &str) -> Result<String> {
        super::list_image(runner, "lsinitrd", image)
    }
}
