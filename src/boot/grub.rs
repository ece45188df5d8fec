//! GRUB: the kernel arguments live in `GRUB_CMDLINE_LINUX_DEFAULT` of `/etc/default/grub` (or of
//! the last `/etc/default/grub.d/*.cfg` that sets it); `update-grub` writes them into
//! `/boot/grub/grub.cfg`.

use super::{ArgsEdit, Entries, Loader, LoaderKind};
use crate::edit::{cmdline, grub};
use crate::facts::Facts;
use crate::host::Host;
use crate::model::BindMode;
use crate::paths::{GRUB_CFG, GRUB_D, GRUB_DEFAULT};
use crate::plan::{FileChange, Step};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The variable gpt adds its arguments to (the normal boot entries, not recovery mode's).
pub const VAR: &str = "GRUB_CMDLINE_LINUX_DEFAULT";
const VARS: [&str; 2] = ["GRUB_CMDLINE_LINUX", VAR];

pub struct Grub;

/// `/etc/default/grub`, then `/etc/default/grub.d/*.cfg` in the order grub sources them.
fn sources(f: &Facts) -> Vec<(String, String)> {
    let mut files = vec![(
        GRUB_DEFAULT.to_string(),
        f.grub_default.clone().unwrap_or_default(),
    )];
    files.extend(f.grub_d.iter().cloned());
    files
}

/// The file whose assignment of `GRUB_CMDLINE_LINUX_DEFAULT` wins: the last one that sets it.
fn target(f: &Facts) -> Result<(String, String)> {
    let mut files = sources(f).into_iter();
    let mut target = files.next().expect("/etc/default/grub comes first");
    for (path, text) in files {
        if grub::read_var(&text, VAR)
            .map_err(|e| e.context(path.clone()))?
            .is_some()
        {
            target = (path, text);
        }
    }
    Ok(target)
}

/// The arguments of one `linux` line of grub.cfg: the kernel path and the arguments.
fn linux_lines(cfg: &str) -> Vec<Vec<&str>> {
    cfg.lines()
        .filter_map(|l| {
            let mut words = l.split_ascii_whitespace();
            matches!(words.next(), Some("linux" | "linuxefi" | "linux16"))
                .then(|| words.collect::<Vec<_>>())
        })
        .collect()
}

/// The tokens of `wanted` that `have` lacks (same key, same value, as the kernel compares).
pub fn missing(have: &[&str], wanted: &[String]) -> Vec<String> {
    let norm = |t: &str| (cmdline::key(t), cmdline::value(t).map(str::to_string));
    let have: std::collections::BTreeSet<_> = have.iter().map(|t| norm(t)).collect();
    wanted
        .iter()
        .filter(|w| !have.contains(&norm(w)))
        .cloned()
        .collect()
}

/// Empty when some `linux` line of grub.cfg carries every one of `wanted`; otherwise what the
/// closest entry lacks (everything, without entries).
pub fn missing_in_cfg(cfg: &str, wanted: &[String]) -> Vec<String> {
    linux_lines(cfg)
        .iter()
        .map(|words| missing(words, wanted))
        .min_by_key(Vec::len)
        .unwrap_or_else(|| wanted.to_vec())
}

impl Loader for Grub {
    fn kind(&self) -> LoaderKind {
        LoaderKind::Grub
    }

    fn user_args(&self, f: &Facts) -> Result<Vec<String>> {
        let (_, target_text) = target(f)?;
        let gpt: Vec<String> = grub::added_tokens(&target_text)
            .into_iter()
            .filter(|(var, _)| var == VAR)
            .flat_map(|(_, t)| t)
            .collect();
        let files = sources(f);
        let mut out = Vec::new();
        for var in VARS {
            let mut value = None;
            for (path, text) in &files {
                let v = grub::read_var(text, var).map_err(|e| e.context(path.clone()))?;
                if v.is_some() {
                    value = v;
                }
            }
            if let Some(v) = value {
                out.extend(cmdline::split(&v).into_iter().map(str::to_string));
            }
        }
        out.retain(|t| !gpt.contains(t));
        Ok(out)
    }

    fn edit_args(&self, f: &Facts, add: &[String]) -> Result<ArgsEdit> {
        let (file, text) = target(f)?;
        let new = grub::apply(&grub::reverse(&text)?, VAR, add)?;
        let mut notes = Vec::new();
        if file != GRUB_DEFAULT && new != text {
            notes.push(format!(
                "{file} sets {VAR} after {GRUB_DEFAULT}, so the arguments went there"
            ));
        }
        Ok(ArgsEdit {
            change: FileChange::new(&file, Some(text.into_bytes()), Some(new.into_bytes())),
            file,
            setting: VAR.to_string(),
            notes,
        })
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(GRUB_DEFAULT)
            || (path.parent() == Some(Path::new(GRUB_D))
                && path.extension().is_some_and(|e| e == "cfg"))
    }

    fn files(&self, host: &Host) -> Result<Vec<PathBuf>> {
        let mut out = vec![PathBuf::from(GRUB_DEFAULT)];
        for name in host.list_dir(GRUB_D)? {
            if name.ends_with(".cfg") {
                out.push(Path::new(GRUB_D).join(name));
            }
        }
        Ok(out)
    }

    fn has_marks(&self, text: &str) -> bool {
        !grub::added_tokens(text).is_empty()
    }

    fn strip(&self, _path: &Path, text: &str) -> Result<String> {
        grub::reverse(text)
    }

    fn regenerate(&self, _f: &Facts) -> Vec<Step> {
        vec![Step::new("Regenerating grub.cfg", &["update-grub"])]
    }

    fn regenerate_hint(&self) -> String {
        "sudo update-grub".into()
    }

    fn entries_name(&self) -> String {
        GRUB_CFG.into()
    }

    fn entries(&self, host: &Host, _f: &Facts, args: &[String]) -> Entries {
        match host.read_optional(GRUB_CFG) {
            Ok(Some(cfg)) => match missing_in_cfg(&cfg, args) {
                m if m.is_empty() => Entries::Carry,
                m => Entries::Lack(m),
            },
            Ok(None) => Entries::Unreadable(format!(
                "there is no {GRUB_CFG}: cannot tell whether update-grub ran (`sudo update-grub`)"
            )),
            Err(e) => Entries::Unreadable(format!("cannot read {GRUB_CFG}: {e:#}")),
        }
    }

    fn rescue(&self, bind: BindMode) -> String {
        let step = match bind {
            BindMode::Ids => "remove vfio-pci.ids=… from the line starting with `linux`",
            BindMode::Address => "add gpt.bind=off to the end of the line starting with `linux`",
        };
        format!("at the GRUB menu press `e`, {step}, boot with Ctrl-x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_compares_keys_like_the_kernel() {
        let have = ["vfio_pci.ids=10de:1f08", "iommu=pt"];
        assert!(missing(&have, &args(&["vfio-pci.ids=10de:1f08", "iommu=pt"])).is_empty());
        assert_eq!(
            missing(&have, &args(&["vfio-pci.ids=10de:1f09"])),
            ["vfio-pci.ids=10de:1f09"]
        );
    }

    #[test]
    fn grub_cfg_needs_one_entry_with_every_argument() {
        let cfg = "menuentry 'a' {\n\tlinux /vmlinuz root=/dev/sda1 iommu=pt\n}\n\
                   menuentry 'b' {\n\tlinux /vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt\n}\n";
        assert!(missing_in_cfg(cfg, &args(&["iommu=pt", "intel_iommu=on"])).is_empty());
        // Spread over two entries is not one entry that boots with both.
        let spread = "\tlinux /v iommu=pt\n\tlinux /v kvm.ignore_msrs=1\n";
        assert_eq!(
            missing_in_cfg(spread, &args(&["iommu=pt", "kvm.ignore_msrs=1"])).len(),
            1
        );
        assert_eq!(missing_in_cfg("", &args(&["iommu=pt"])), ["iommu=pt"]);
    }

    #[test]
    fn only_grub_files_are_grubs() {
        assert!(Grub.owns(Path::new("/etc/default/grub")));
        assert!(Grub.owns(Path::new("/etc/default/grub.d/50-cloud.cfg")));
        assert!(!Grub.owns(Path::new("/etc/default/grub.d/50-cloud.cfg.bak")));
        assert!(!Grub.owns(Path::new("/etc/default/grub.bak")));
    }
}
