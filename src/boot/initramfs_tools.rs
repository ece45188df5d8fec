//! initramfs-tools (Debian, Ubuntu before 25.10): early modules in gpt's block of
//! `/etc/initramfs-tools/modules`; `depmod` per kernel, then `update-initramfs -u -k all`;
//! images listed with `lsinitramfs`.

use super::{Generator, InitramfsKind};
use crate::edit::modules;
use crate::facts::Facts;
use crate::host::Host;
use crate::paths::{self, INITRAMFS_MODULES, MODPROBE_CONF};
use crate::plan::{FileChange, Step};
use crate::txn::Runner;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct InitramfsTools;

/// depmod for each kernel first: the image is built from its output.
pub fn depmod(kernels: &[String]) -> Vec<Step> {
    kernels
        .iter()
        .map(|k| {
            Step::new(
                &format!("Updating module dependencies for {k}"),
                &["depmod", "-a", k],
            )
        })
        .collect()
}

impl Generator for InitramfsTools {
    fn kind(&self) -> InitramfsKind {
        InitramfsKind::InitramfsTools
    }

    fn edit_modules(&self, f: &Facts, wanted: &[String]) -> Result<Option<FileChange>> {
        let before = f.initramfs_modules.clone();
        let base = modules::reverse(before.as_deref().unwrap_or(""));
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let after = modules::apply(&base, &names);
        let after = match &before {
            None if after.is_empty() => None,
            _ => Some(after.into_bytes()),
        };
        Ok(Some(FileChange::new(
            INITRAMFS_MODULES,
            before.map(String::into_bytes),
            after,
        )))
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(INITRAMFS_MODULES)
    }

    fn files(&self, _host: &Host) -> Result<Vec<PathBuf>> {
        Ok(vec![PathBuf::from(INITRAMFS_MODULES)])
    }

    fn has_marks(&self, text: &str) -> bool {
        modules::has_block(text)
    }

    fn strip(&self, _path: &Path, text: &str) -> Result<Option<String>> {
        Ok(Some(modules::reverse(text)))
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![INITRAMFS_MODULES, MODPROBE_CONF]
    }

    fn regenerate(&self, f: &Facts) -> Vec<Step> {
        let versions: Vec<String> = f.kernels.iter().map(|k| k.version.clone()).collect();
        let mut steps = depmod(&versions);
        steps.push(Step::new(
            "Rebuilding the initramfs images",
            &["update-initramfs", "-u", "-k", "all"],
        ));
        steps
    }

    fn regenerate_hint(&self) -> String {
        "sudo update-initramfs -u -k all".into()
    }

    fn image(&self, _host: &Host, kver: &str) -> String {
        paths::initrd(kver)
    }

    fn images(&self, host: &Host) -> Vec<String> {
        host.list_dir(paths::BOOT)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("initrd.img-"))
            .map(|n| format!("{}/{n}", paths::BOOT))
            .collect()
    }

    fn list(&self, runner: &Runner, image: &str) -> Result<String> {
        Ok(runner.query(&["lsinitramfs", image])?.stdout_str())
    }
}
