//! initramfs-tools (Debian, Ubuntu before 25.10): early modules in gpt's block of
//! `/etc/initramfs-tools/modules`; `depmod` per kernel, then `update-initramfs -u -k all`;
//! images listed with `lsinitramfs`.
//!
//! The early binding step is an `init-top` script in `/etc/initramfs-tools/scripts/init-top/`
//! (mkinitramfs copies `CONFDIR/scripts` into the image). Its order against initramfs-tools'
//! own `init-top/udev`, which starts udevd and triggers the coldplug events that load the
//! drivers: mkinitramfs writes each script folder's `ORDER` file once, at build time, from
//! `get_prereq_pairs | tsort` (hook-functions: `cache_run_scripts`), every script paired with
//! itself and after each of its `prereqs`. `udev` has none, nor has gpt's script; GNU tsort
//! puts the scripts that wait for nothing first, in byte order of their names. So
//! `gpt-vfio` (`g` < `u`) runs before `udev`, and `init` runs all of `init-top` before
//! `load_modules` reads `/etc/initramfs-tools/modules`.

use super::{Generator, InitramfsKind};
use crate::edit::early::{self, EarlyBind, Flavour};
use crate::edit::modules;
use crate::facts::Facts;
use crate::host::Host;
use crate::paths::{self, INITRAMFS_EARLY, INITRAMFS_MODULES, MODPROBE_CONF};
use crate::plan::{FileChange, Step};
use crate::runner::Runner;
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

    fn edit_modules(
        &self,
        f: &Facts,
        wanted: &[String],
        _early: bool,
    ) -> Result<Option<FileChange>> {
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

    fn edit_early(&self, f: &Facts, bind: Option<&EarlyBind>) -> Result<Vec<FileChange>> {
        // Executable: mkinitramfs leaves out a script that is not (hook-functions:
        // set_initlist), and it must pass `sh -n`.
        let text = bind.map(|b| early::render(b, Flavour::InitTop));
        Ok(vec![super::early_change(f, INITRAMFS_EARLY, text, 0o755)?])
    }

    fn early_files(&self) -> Vec<&'static str> {
        vec![INITRAMFS_EARLY]
    }

    fn early_how(&self) -> &'static str {
        "an init-top script, which runs before initramfs-tools' udev"
    }

    fn early_in_image(&self) -> &'static str {
        "scripts/init-top/gpt-vfio"
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(INITRAMFS_MODULES) || path == Path::new(INITRAMFS_EARLY)
    }

    fn files(&self, _host: &Host) -> Result<Vec<PathBuf>> {
        Ok(vec![
            PathBuf::from(INITRAMFS_MODULES),
            PathBuf::from(INITRAMFS_EARLY),
        ])
    }

    fn has_marks(&self, text: &str) -> bool {
        modules::has_block(text) || early::is_gpt_script(text)
    }

    fn strip(&self, path: &Path, text: &str) -> Result<Option<String>> {
        if path == Path::new(INITRAMFS_EARLY) {
            return Ok((!early::is_gpt_script(text)).then(|| text.to_string()));
        }
        Ok(Some(modules::reverse(text)))
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![INITRAMFS_MODULES, MODPROBE_CONF, INITRAMFS_EARLY]
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
        super::list_image(runner, "lsinitramfs", image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// mkinitramfs's order of an `init-top` folder (hook-functions: `cache_run_scripts`):
    /// `get_prereq_pairs | tsort`, each script with itself and after each of its prereqs.
    fn order(scripts: &[(&str, &[&str])]) -> Option<Vec<String>> {
        let mut pairs = String::new();
        for (name, prereqs) in scripts {
            pairs.push_str(&format!("{name} {name}\n"));
            for p in *prereqs {
                pairs.push_str(&format!("{p} {name}\n"));
            }
        }
        let mut child = Command::new("tsort")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pairs.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Some(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect(),
        )
    }

    #[test]
    fn the_init_top_script_sorts_before_udev() {
        let name = INITRAMFS_EARLY.rsplit('/').next().unwrap();
        assert_eq!(
            format!("scripts/init-top/{name}"),
            InitramfsTools.early_in_image()
        );
        // Debian 12's init-top scripts (initramfs-tools-core 0.142), none with prereqs, gpt's,
        // and one that waits for udev.
        let scripts: [(&str, &[&str]); 6] = [
            ("all_generic_ide", &[]),
            ("blacklist", &[]),
            ("keymap", &[]),
            ("udev", &[]),
            (name, &[]),
            ("after_udev", &["udev"]),
        ];
        let Some(order) = order(&scripts) else {
            eprintln!("no tsort: skipping the order check");
            return;
        };
        let at = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(at(name) < at("udev"), "{order:?}");
        assert!(at("udev") < at("after_udev"), "{order:?}");
        // The script answers `prereqs` (at build time, on the host) with nothing, and does
        // nothing else then.
        let bind = EarlyBind {
            targets: Vec::new(),
            gate: early::Gate::Address,
        };
        let script = early::render(&bind, Flavour::InitTop);
        let out = Command::new("sh")
            .args(["-c", &script, "gpt-vfio", "prereqs"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "\n");
    }
}
