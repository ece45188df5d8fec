//! What the old setup.sh left behind, and the file changes that remove it.
//!
//! `gpt check` reports these leftovers; `gpt reset --legacy` shows each one and applies its
//! changes when asked. The parsing is done by the pure editors in [`crate::edit`]; this
//! module only reads the files and turns the editors' answers into [`FileChange`]s.
//!
//! Never proposed for removal: the kernel arguments gpt's markers say gpt added, and those
//! the current configuration needs (`config.args`; gpt does not add a token that was
//! already there, so an `intel_iommu=on` the old script wrote may be what keeps gpt's
//! configuration working).

use crate::edit::{cmdline, grub, modules};
use crate::host::Host;
use crate::plan::{FileChange, Plan};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use crate::paths::{GRUB_BAK, GRUB_DEFAULT as GRUB};
/// Where `reset --legacy` moves `grub.bak` (a numeric suffix is added if that is taken).
pub const GRUB_BAK_ASIDE: &str = "/etc/default/grub.bak.gpt-legacy";
pub const XHCI_CONF: &str = "/etc/modprobe.d/xhci_hcd.conf";
/// Files where the old script put `options vfio-pci ids=…`.
pub const OPTION_FILES: [&str; 3] = [
    "/etc/initramfs-tools/modules",
    "/etc/modprobe.d/blacklist.conf",
    "/etc/modprobe.d/local.conf",
];
const GRUB_VARS: [&str; 2] = ["GRUB_CMDLINE_LINUX_DEFAULT", "GRUB_CMDLINE_LINUX"];

/// The kernel arguments the old script appended (`vfio-pci.ids=` with any value).
const LEGACY_ARGS: [&str; 8] = [
    "amd_iommu=on",
    "i915.enable_gvt=1",
    "rd.driver.pre=vfio-pci",
    "video=efifb:off",
    "kvm.ignore_msrs=1",
    "kvm.report_ignored_msrs=0",
    "preempt=voluntary",
    "intel_iommu=on",
];

/// One thing the old script left, and how to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// One line: the path and what is wrong with it, and what removing it does.
    pub description: String,
    /// Applied in order, they remove the leftover. Each leftover touches its own files, so
    /// any subset of leftovers can be applied. Moving `grub.bak` aside is two changes: the
    /// copy is created, then the original removed.
    pub changes: Vec<FileChange>,
}

/// Whether a kernel argument is one the old script appended. Names compare with `-` and
/// `_` alike, as the kernel does.
pub fn is_legacy_arg(token: &str) -> bool {
    let key = cmdline::key(token);
    if key == "vfio_pci.ids" {
        return true;
    }
    let value = cmdline::value(token).map(|v| v.replace('-', "_"));
    LEGACY_ARGS
        .iter()
        .any(|l| cmdline::key(l) == key && cmdline::value(l).map(|v| v.replace('-', "_")) == value)
}

/// What the scan looks at, read from the host (or as a plan will leave it).
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// The text of each file the old script wrote to, by path (absent files left out).
    pub texts: BTreeMap<String, String>,
    /// `grub.bak`'s bytes and mode, as on the real host.
    pub grub_bak: Option<(Vec<u8>, u32)>,
    /// The paths `grub.bak` could be moved to that are taken.
    pub taken: Vec<String>,
    /// The kernel arguments gpt's configuration needs (never proposed for removal).
    pub keep: Vec<String>,
}

impl Files {
    /// Read the files from the host, each as `plan` will leave it where the plan changes it.
    pub fn read(host: &Host, plan: &Plan) -> Result<Files> {
        let planned = |p: &str| plan.files.iter().find(|f| f.path == Path::new(p));
        let mut files = Files {
            keep: crate::facts::recorded_config(host)?
                .map(|c| c.args)
                .unwrap_or_default(),
            ..Files::default()
        };
        for path in [GRUB, XHCI_CONF].into_iter().chain(OPTION_FILES) {
            let text = match planned(path) {
                Some(c) => c
                    .after
                    .clone()
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                None => host.read_optional(path)?,
            };
            if let Some(t) = text {
                files.texts.insert(path.to_string(), t);
            }
        }
        files.grub_bak = read_grub_bak(host)?;
        if let Some(c) = planned(GRUB_BAK) {
            files.grub_bak = c
                .after
                .clone()
                .map(|b| (b, files.grub_bak.map_or(0o644, |g| g.1)));
        }
        files.taken = (1..)
            .map(aside_name)
            .take_while(|p| host.exists(p))
            .collect();
        Ok(files)
    }

    fn text(&self, path: &str) -> Option<&String> {
        self.texts.get(path)
    }
}

/// `grub.bak`'s bytes and mode (the real file's: it is moved aside with the same mode).
fn read_grub_bak(host: &Host) -> Result<Option<(Vec<u8>, u32)>> {
    let path = host.path(GRUB_BAK);
    let bytes = match host.read(GRUB_BAK) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mode = std::fs::metadata(host.resolve(GRUB_BAK)?)
        .with_context(|| format!("cannot read the mode of {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    Ok(Some((bytes, mode)))
}

fn aside_name(n: u32) -> String {
    match n {
        1 => GRUB_BAK_ASIDE.to_string(),
        n => format!("{GRUB_BAK_ASIDE}.{n}"),
    }
}

/// Every leftover of the old setup.sh on this host, in a fixed order.
pub fn scan(host: &Host) -> Result<Vec<Leftover>> {
    find(&Files::read(host, &Plan::default())?)
}

/// Every leftover in `files`, in a fixed order. Pure.
pub fn find(files: &Files) -> Result<Vec<Leftover>> {
    let mut out = Vec::new();
    out.extend(grub_args(files.text(GRUB), &files.keep)?);
    out.extend(grub_bak(files));
    out.extend(xhci_blacklist(files.text(XHCI_CONF)));
    for path in OPTION_FILES {
        out.extend(vfio_options(files.text(path), path));
    }
    Ok(out)
}

fn grub_args(before: Option<&String>, keep: &[String]) -> Result<Option<Leftover>> {
    let Some(before) = before.cloned() else {
        return Ok(None);
    };
    let mut after = before.clone();
    let mut removed = Vec::new();
    for var in GRUB_VARS {
        let (next, gone) = grub::remove_tokens(&after, var, |t| {
            is_legacy_arg(t) && !keep.iter().any(|k| k == t)
        })
        .with_context(|| format!("cannot look for the old setup.sh's arguments in {GRUB}"))?;
        after = next;
        removed.extend(gone.into_iter().map(|t| format!("{t} ({var})")));
    }
    if removed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Leftover {
        description: format!(
            "{GRUB}: kernel arguments the old setup.sh appended: {}",
            removed.join(", ")
        ),
        changes: vec![FileChange::new(
            GRUB,
            Some(before.into_bytes()),
            Some(after.into_bytes()),
        )],
    }))
}

fn grub_bak(files: &Files) -> Option<Leftover> {
    let (bytes, mode) = files.grub_bak.clone()?;
    let aside = (1..)
        .map(aside_name)
        .find(|p| !files.taken.contains(p))
        .expect("some name is free");
    let mut copy = FileChange::new(&aside, None, Some(bytes.clone()));
    copy.new_mode = mode;
    Some(Leftover {
        description: format!(
            "{GRUB_BAK}: a stale copy of {GRUB} saved by the old setup.sh (its reset restored it over later changes); moved aside to {aside}"
        ),
        changes: vec![copy, FileChange::new(GRUB_BAK, Some(bytes), None)],
    })
}

fn xhci_blacklist(before: Option<&String>) -> Option<Leftover> {
    let before = before?.clone();
    let (after, removed) = modules::remove_lines(&before, |l| {
        l.split_ascii_whitespace().collect::<Vec<_>>() == ["blacklist", "xhci_hcd"]
    });
    if removed.is_empty() {
        return None;
    }
    let (after, what) = drop_if_empty(after);
    Some(Leftover {
        description: format!(
            "{XHCI_CONF}: `blacklist xhci_hcd` keeps every USB 3 controller of the host from its driver; {what}"
        ),
        changes: vec![FileChange::new(XHCI_CONF, Some(before.into_bytes()), after)],
    })
}

fn vfio_options(before: Option<&String>, path: &str) -> Option<Leftover> {
    let before = before?.clone();
    let lines: Vec<String> = modules::legacy_option_lines(&before)
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.split_ascii_whitespace().any(|w| w.starts_with("ids=")))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let (after, removed) = modules::remove_lines(&before, |l| lines.iter().any(|x| x == l));
    let in_modules = path == OPTION_FILES[0];
    let (after, what) = if in_modules {
        (Some(after.into_bytes()), "the line is removed".to_string())
    } else {
        drop_if_empty(after)
    };
    let why = if in_modules {
        "does nothing there (it takes module names; options belong in modprobe.d)"
    } else {
        "binds devices to vfio-pci outside gpt's configuration"
    };
    let shown: Vec<String> = removed.iter().map(|l| format!("`{}`", l.trim())).collect();
    Some(Leftover {
        description: format!("{path}: {} {why}; {what}", shown.join(", ")),
        changes: vec![FileChange::new(path, Some(before.into_bytes()), after)],
    })
}

/// A modprobe.d file the old script's line was all of goes away; otherwise only the line.
fn drop_if_empty(after: String) -> (Option<Vec<u8>>, String) {
    if after.trim().is_empty() {
        (None, "the file is removed".to_string())
    } else {
        (Some(after.into_bytes()), "the line is removed".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::FileAction;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let at = dir.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, c).unwrap();
        }
        dir
    }

    fn text(c: &FileChange) -> Option<String> {
        c.after
            .as_ref()
            .map(|b| String::from_utf8(b.clone()).unwrap())
    }

    #[test]
    fn legacy_args_match_by_key_and_value() {
        for t in [
            "vfio-pci.ids=10de:1f08,10de:10f9",
            "vfio_pci.ids=1002:73bf",
            "amd_iommu=on",
            "intel_iommu=on",
            "rd.driver.pre=vfio-pci",
            "rd.driver.pre=vfio_pci",
            "video=efifb:off",
            "kvm.ignore_msrs=1",
            "kvm.report_ignored_msrs=0",
            "preempt=voluntary",
            "i915.enable_gvt=1",
        ] {
            assert!(is_legacy_arg(t), "{t}");
        }
        for t in [
            "quiet",
            "iommu=pt",
            "intel_iommu=off",
            "preempt=full",
            "kvm.ignore_msrs=0",
            "video=vesafb:off",
        ] {
            assert!(!is_legacy_arg(t), "{t}");
        }
    }

    #[test]
    fn a_clean_host_has_no_leftovers() {
        let dir = tree(&[
            (
                GRUB,
                "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX=\"\"\n",
            ),
            ("/etc/initramfs-tools/modules", "# List of modules\n"),
        ]);
        assert!(scan(&Host::new(dir.path())).unwrap().is_empty());
        let empty = tempfile::tempdir().unwrap();
        assert!(scan(&Host::new(empty.path())).unwrap().is_empty());
    }

    #[test]
    fn everything_the_old_script_wrote_is_found_and_removed() {
        let grub = "GRUB_DEFAULT=0\n\
                    GRUB_CMDLINE_LINUX_DEFAULT=\"quiet preempt=voluntary iommu=pt amd_iommu=on intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9 rd.driver.pre=vfio-pci video=efifb:off kvm.ignore_msrs=1 kvm.report_ignored_msrs=0\"\n\
                    GRUB_CMDLINE_LINUX=\"i915.enable_gvt=1\"\n";
        let modules =
            "# List of modules\nvfio\nvfio_pci\noptions vfio-pci ids=10de:1f08,10de:10f9\n";
        let dir = tree(&[
            (GRUB, grub),
            (GRUB_BAK, "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n"),
            (XHCI_CONF, "blacklist xhci_hcd\n"),
            ("/etc/initramfs-tools/modules", modules),
            (
                "/etc/modprobe.d/blacklist.conf",
                "blacklist nouveau\noptions vfio-pci ids=10de:1f08,10de:10f9\n",
            ),
            (
                "/etc/modprobe.d/local.conf",
                "options vfio-pci ids=10de:1f08,10de:10f9\n",
            ),
        ]);
        std::fs::set_permissions(
            dir.path().join("etc/default/grub.bak"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let found = scan(&Host::new(dir.path())).unwrap();
        let paths: Vec<Vec<String>> = found
            .iter()
            .map(|l| {
                l.changes
                    .iter()
                    .map(|c| c.path.display().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            paths,
            [
                vec![GRUB.to_string()],
                vec![GRUB_BAK_ASIDE.to_string(), GRUB_BAK.to_string()],
                vec![XHCI_CONF.to_string()],
                vec!["/etc/initramfs-tools/modules".to_string()],
                vec!["/etc/modprobe.d/blacklist.conf".to_string()],
                vec!["/etc/modprobe.d/local.conf".to_string()],
            ]
        );
        assert_eq!(
            text(&found[0].changes[0]).unwrap(),
            "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt\"\nGRUB_CMDLINE_LINUX=\"\"\n"
        );
        assert!(found[0].description.starts_with("/etc/default/grub: kernel arguments the old setup.sh appended: preempt=voluntary (GRUB_CMDLINE_LINUX_DEFAULT), amd_iommu=on"), "{}", found[0].description);
        assert!(found[0]
            .description
            .ends_with("i915.enable_gvt=1 (GRUB_CMDLINE_LINUX)"));
        // grub.bak: copied aside with its mode, then removed.
        let bak = &found[1].changes;
        assert_eq!(bak[0].action(), FileAction::Created);
        assert_eq!(bak[0].new_mode, 0o600);
        assert_eq!(bak[0].after, bak[1].before);
        assert_eq!(bak[1].action(), FileAction::Removed);
        // xhci_hcd.conf held only the blacklist: removed whole.
        assert_eq!(found[2].changes[0].action(), FileAction::Removed);
        assert!(found[2].description.ends_with("the file is removed"));
        assert_eq!(
            text(&found[3].changes[0]).unwrap(),
            "# List of modules\nvfio\nvfio_pci\n"
        );
        assert_eq!(text(&found[4].changes[0]).unwrap(), "blacklist nouveau\n");
        assert_eq!(
            found[4].description,
            "/etc/modprobe.d/blacklist.conf: `options vfio-pci ids=10de:1f08,10de:10f9` binds devices to vfio-pci outside gpt's configuration; the line is removed"
        );
        assert_eq!(found[5].changes[0].action(), FileAction::Removed);
    }

    #[test]
    fn gpt_own_arguments_stay() {
        // gpt's marker owns iommu=pt and kvm.ignore_msrs=1; the configuration needs
        // intel_iommu=on, which the old script had put there before gpt ran.
        let base = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet intel_iommu=on video=efifb:off\"\n";
        let edited = grub::apply(
            base,
            "GRUB_CMDLINE_LINUX_DEFAULT",
            &[
                "iommu=pt".into(),
                "intel_iommu=on".into(),
                "kvm.ignore_msrs=1".into(),
            ],
        )
        .unwrap();
        let state = r#"{"version":1,"config":{"phase":"vfio","gpus":["0000:02:00.0"],"devices":["0000:02:00.0"],"ids":["10de:1f08"],"bind":"ids","grub_file":"/etc/default/grub","grub_var":"GRUB_CMDLINE_LINUX_DEFAULT","args":["iommu=pt","intel_iommu=on","kvm.ignore_msrs=1"],"initramfs_modules":[],"softdeps":[],"kernels":[]},"files":[]}"#;
        let dir = tree(&[(GRUB, &edited), (crate::paths::STATE_FILE, state)]);
        let found = scan(&Host::new(dir.path())).unwrap();
        assert_eq!(found.len(), 1);
        let after = text(&found[0].changes[0]).unwrap();
        assert_eq!(
            grub::read_var(&after, "GRUB_CMDLINE_LINUX_DEFAULT")
                .unwrap()
                .unwrap(),
            "quiet intel_iommu=on iommu=pt kvm.ignore_msrs=1"
        );
        // ... and gpt's reverse still works on what is left.
        assert_eq!(
            grub::reverse(&after).unwrap(),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet intel_iommu=on\"\n"
        );
    }

    #[test]
    fn user_lines_in_shared_files_are_kept() {
        let dir = tree(&[
            (
                XHCI_CONF,
                "# mine\nblacklist xhci_hcd\noptions xhci_hcd quirks=0x1\n",
            ),
            (
                "/etc/modprobe.d/local.conf",
                "options vfio-pci disable_vga=1\n",
            ),
            (GRUB_BAK, "x\n"),
            (GRUB_BAK_ASIDE, "older\n"),
        ]);
        let found = scan(&Host::new(dir.path())).unwrap();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(
            found[0].changes[0].path.display().to_string(),
            "/etc/default/grub.bak.gpt-legacy.2"
        );
        assert_eq!(
            text(&found[1].changes[0]).unwrap(),
            "# mine\noptions xhci_hcd quirks=0x1\n"
        );
    }

    #[test]
    fn an_unparsable_grub_is_an_error_naming_the_file() {
        let dir = tree(&[(
            GRUB,
            "GRUB_CMDLINE_LINUX_DEFAULT=\"$(cat /x) amd_iommu=on\"\n",
        )]);
        let err = format!("{:#}", scan(&Host::new(dir.path())).unwrap_err());
        assert!(err.contains("/etc/default/grub"), "{err}");
    }
}
