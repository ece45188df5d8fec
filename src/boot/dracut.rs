//! dracut (Ubuntu 25.10 and later, Debian with dracut): early modules in gpt's own
//! `/etc/dracut.conf.d/gpt-vfio.conf` (`force_drivers+=`, and `install_items+=` for gpt's
//! modprobe.d file, which a generic image would not carry). Images are rebuilt the way the
//! host's kernel updates do it: with dracut's own `update-initramfs` where the package ships
//! one (107 and later; it runs the post-update hooks), else `dracut --force --regenerate-all`.
//! Images are listed with `lsinitrd`.

use super::initramfs_tools::depmod;
use super::{Generator, InitramfsKind};
use crate::edit::dracut;
use crate::facts::Facts;
use crate::host::Host;
use crate::paths::{self, DRACUT_CONF, MODPROBE_CONF};
use crate::plan::{FileChange, Step};
use crate::txn::Runner;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub struct Dracut;

impl Generator for Dracut {
    fn kind(&self) -> InitramfsKind {
        InitramfsKind::Dracut
    }

    fn edit_modules(&self, f: &Facts, wanted: &[String]) -> Result<Option<FileChange>> {
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
        let after = dracut::render(wanted, &[MODPROBE_CONF]);
        Ok(Some(FileChange::new(
            DRACUT_CONF,
            f.dracut_conf.clone().map(String::into_bytes),
            after.map(String::into_bytes),
        )))
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(DRACUT_CONF)
    }

    fn files(&self, _host: &Host) -> Result<Vec<PathBuf>> {
        Ok(vec![PathBuf::from(DRACUT_CONF)])
    }

    fn has_marks(&self, text: &str) -> bool {
        dracut::is_gpt_owned(text)
    }

    fn strip(&self, _path: &Path, text: &str) -> Result<Option<String>> {
        Ok((!dracut::is_gpt_owned(text)).then(|| text.to_string()))
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![DRACUT_CONF, MODPROBE_CONF]
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
            steps.push(Step::new(
                "Rebuilding the initramfs images (dracut)",
                &["dracut", "--force", "--regenerate-all"],
            ));
        }
        steps
    }

    fn regenerate_hint(&self) -> String {
        "sudo dracut --force --regenerate-all".into()
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
        Ok(runner.query(&["lsinitrd", image])?.stdout_str())
    }
}
