//! systemd-boot through kernel-install (Debian's `systemd-boot` package): the kernel arguments
//! live in `/etc/kernel/cmdline`, one line; `kernel-install add KVER /boot/vmlinuz-KVER
//! [initrd]` writes each kernel's entry, `$BOOT/loader/entries/<token>-<kver>.conf`, whose
//! `options` line is what boots.
//!
//! - The file holds one line and no comment (dracut's install plugin does not skip `#`
//!   lines), so it can carry no mark of gpt's: gpt's journal records the arguments it added
//!   (`added_args`), and reset takes out exactly those.
//! - Without the file kernel-install uses `/usr/lib/kernel/cmdline`, else `/proc/cmdline`
//!   less `BOOT_IMAGE=` and `initrd=`: gpt creates the file from that same line.
//! - The entries carry copies of the images, so they are regenerated after the images.
//! - A regeneration that wrote nothing (the ESP not mounted) fails inside the transaction
//!   and rolls back; so does a reset whose entries still carry gpt's arguments.

use super::{ArgsEdit, Entries, Loader, LoaderKind};
use crate::edit::cmdline;
use crate::edit::kernel_cmdline::{self, Reader};
use crate::facts::Facts;
use crate::host::Host;
use crate::model::BindMode;
use crate::plan::{FileChange, Step};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";
const USR_CMDLINE: &str = "/usr/lib/kernel/cmdline";

pub struct SystemdBoot;

/// The line of `/etc/kernel/cmdline` (without its newline), refused when kernel-install would
/// not read it as gpt does: not text, several lines, a CR, empty, or without `root=`.
pub fn parse_line(path: &str, bytes: &[u8]) -> Result<String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        bail!("{path} is not text; fix it (one line of kernel arguments) and run this again; nothing was changed");
    };
    if text.contains('\r') {
        bail!(
            "{path} has a carriage return (CRLF line end): kernel-install would pass it to the \
             kernel inside an argument; save it with Unix line ends (`sed -i 's/\\r$//' {path}`) \
             and run this again; nothing was changed"
        );
    }
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.contains('\n') {
        bail!(
            "{path} has more than one line: kernel-install joins them, and gpt edits only a \
             one-line file; put every argument on one line and run this again; nothing was changed"
        );
    }
    if line.trim().is_empty() {
        bail!(
            "{path} is empty: the entries would boot without root=; write the kernel arguments \
             into it (see /proc/cmdline), or remove it, and run this again; nothing was changed"
        );
    }
    require_root(path, line)?;
    Ok(line.to_string())
}

fn require_root(from: &str, line: &str) -> Result<()> {
    if !cmdline::split(line)
        .iter()
        .any(|t| cmdline::key(t) == "root")
    {
        bail!(
            "{from} has no root= ({line:?}): a rescue or hand-edited boot? gpt will not build the \
             boot entries' command line from it; write /etc/kernel/cmdline with your kernel \
             arguments (root=… included) and run this again; nothing was changed"
        );
    }
    Ok(())
}

/// The line kernel-install uses without `/etc/kernel/cmdline`, and where it came from.
fn fallback_line(f: &Facts) -> Result<(String, &'static str)> {
    if let Some(bytes) = &f.usr_kernel_cmdline {
        let text = String::from_utf8_lossy(bytes);
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        require_root(USR_CMDLINE, &line)?;
        return Ok((line, USR_CMDLINE));
    }
    if !f.cmdline_read {
        bail!("cannot read /proc/cmdline, from which {KERNEL_CMDLINE} would be created; nothing was changed");
    }
    let line = cmdline::split(&f.cmdline)
        .into_iter()
        .filter(|t| !matches!(cmdline::key(t).as_str(), "BOOT_IMAGE" | "initrd"))
        .collect::<Vec<_>>()
        .join(" ");
    require_root("/proc/cmdline", &line)?;
    Ok((line, "/proc/cmdline"))
}

/// Every installed kernel (one with `/boot/vmlinuz-KVER`).
fn kernels(f: &Facts) -> Vec<String> {
    f.kernels
        .iter()
        .map(|k| k.version.clone())
        .filter(|v| f.boot_names.iter().any(|n| *n == format!("vmlinuz-{v}")))
        .collect()
}

/// `$BOOT` and the entry token, from `kernel-install inspect`.
fn inspected(f: &Facts) -> Option<&crate::facts::detect::Inspect> {
    match &f.probe.inspect {
        Some(Ok(i)) => Some(i),
        _ => None,
    }
}

/// One installed kernel and its entries (file name, text), the newest first.
type KernelEntries = (String, Vec<(String, String)>);

/// The name kernel-install gives the entry it writes for `kver`: `TOKEN-KVER.conf`, or with
/// boot counting (`/etc/kernel/tries`) `TOKEN-KVER+TRIES.conf`. The entries of earlier
/// installs (counted, or blessed to `TOKEN-KVER.conf`) stay as they are.
fn written_name(f: &Facts, token: &str, kver: &str) -> String {
    match f.kernel_tries.as_deref().filter(|t| !t.is_empty()) {
        Some(tries) => format!("{token}-{kver}+{tries}.conf"),
        None => format!("{token}-{kver}.conf"),
    }
}

/// The entry of a kernel that counts: the one kernel-install writes now, else (a counted
/// entry renamed by systemd-boot and blessed since) the newest.
fn current<'e>(
    f: &Facts,
    kver: &str,
    entries: &'e [(String, String)],
) -> Option<&'e (String, String)> {
    let token = inspected(f)
        .map(|i| i.entry_token.as_str())
        .unwrap_or_default();
    let written = written_name(f, token, kver);
    entries
        .iter()
        .find(|(n, _)| *n == written)
        .or(entries.first())
}

/// The argument file as it is: its bytes (`None`: absent), its line (without the file, the
/// one kernel-install falls back to) and, without the file, where that line came from.
type Current = (Option<Vec<u8>>, String, Option<&'static str>);

/// Each installed kernel's entries; dracut's `0-rescue` entry and other OSes' entries are not
/// among them (nothing rewrites the rescue entry: it keeps the line it was made with).
fn kernel_entries(host: &Host, f: &Facts) -> Result<Vec<KernelEntries>, String> {
    let Some(i) = inspected(f) else {
        return Err("kernel-install inspect did not say where the entries are".into());
    };
    let dir = format!("{}/loader/entries", i.boot_root);
    let names = host
        .list_dir(&dir)
        .map_err(|e| format!("cannot list {dir}: {e:#}"))?;
    let mut out = Vec::new();
    for kver in kernels(f) {
        let stem = format!("{}-{kver}", i.entry_token);
        let mut found = Vec::new();
        for n in &names {
            let Some(rest) = n.strip_suffix(".conf").and_then(|r| r.strip_prefix(&stem)) else {
                continue;
            };
            // `<token>-<kver>.conf`, or with boot counting `<token>-<kver>+3-0.conf`.
            if rest.is_empty() || rest.starts_with('+') {
                let path = format!("{dir}/{n}");
                let text = host
                    .read_optional(&path)
                    .map_err(|e| format!("{e:#}"))?
                    .unwrap_or_default();
                found.push((n.clone(), text));
            }
        }
        // Newest first: the entry kernel-install wrote last, whatever its counter says now.
        found.sort_by_key(|(name, _)| {
            let modified = host
                .resolve(format!("{dir}/{name}"))
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| m.modified().ok());
            (
                std::cmp::Reverse(modified),
                name.contains('+'),
                name.clone(),
            )
        });
        out.push((kver, found));
    }
    Ok(out)
}

impl SystemdBoot {
    /// The current line and the file's bytes (`None`: no file, the line is the fallback).
    fn current(&self, f: &Facts) -> Result<Current> {
        match &f.kernel_cmdline {
            Some(bytes) => Ok((
                Some(bytes.clone()),
                parse_line(KERNEL_CMDLINE, bytes)?,
                None,
            )),
            None => {
                let (line, from) = fallback_line(f)?;
                Ok((None, line, Some(from)))
            }
        }
    }

    fn entries_dir(&self, f: &Facts) -> String {
        inspected(f).map_or("$BOOT/loader/entries".to_string(), |i| {
            format!("{}/loader/entries", i.boot_root)
        })
    }
}

impl Loader for SystemdBoot {
    fn kind(&self) -> LoaderKind {
        LoaderKind::SystemdBoot
    }

    fn validate(&self, f: &Facts) -> Result<()> {
        self.current(f).map(drop)
    }

    fn user_args(&self, f: &Facts) -> Result<Vec<String>> {
        let (_, line, _) = self.current(f)?;
        Ok(kernel_cmdline::user_args(&line, &f.gpt_added))
    }

    fn edit_args(&self, f: &Facts, add: &[String]) -> Result<ArgsEdit> {
        let (before, line, from) = self.current(f)?;
        let new = kernel_cmdline::with_args(&line, &f.gpt_added, add);
        let mut notes = Vec::new();
        let after = match (&before, from) {
            (Some(b), _) => {
                let nl = if b.ends_with(b"\n") { "\n" } else { "" };
                Some(format!("{new}{nl}").into_bytes())
            }
            (None, _) if add.is_empty() => None,
            (None, Some(from)) => {
                notes.push(format!(
                    "{KERNEL_CMDLINE} did not exist: gpt creates it from {from}{}, the line \
                     kernel-install uses without it",
                    if from == "/proc/cmdline" {
                        " (without BOOT_IMAGE= and initrd=)"
                    } else {
                        ""
                    }
                ));
                Some(format!("{new}\n").into_bytes())
            }
            (None, None) => None,
        };
        Ok(ArgsEdit {
            change: FileChange::new(KERNEL_CMDLINE, before, after),
            file: KERNEL_CMDLINE.to_string(),
            setting: "the line".to_string(),
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
        path == Path::new(KERNEL_CMDLINE)
    }

    fn files(&self, _host: &Host) -> Result<Vec<PathBuf>> {
        Ok(vec![PathBuf::from(KERNEL_CMDLINE)])
    }

    /// One line, no comment: no mark of gpt's can be there (the journal holds what gpt added).
    fn has_marks(&self, _text: &str) -> bool {
        false
    }

    fn strip(&self, _path: &Path, text: &str) -> Result<String> {
        Ok(text.to_string())
    }

    fn strip_args(&self, _path: &Path, text: &str, added: &[String]) -> Result<String> {
        Ok(kernel_cmdline::strip_args(
            text,
            Reader::KernelInstall,
            added,
        ))
    }

    fn regenerate(&self, f: &Facts) -> Vec<Step> {
        kernels(f)
            .into_iter()
            .map(|k| {
                let vmlinuz = format!("/boot/vmlinuz-{k}");
                let initrd = format!("initrd.img-{k}");
                let mut argv = vec!["kernel-install", "add", &k, &vmlinuz];
                let initrd_path = format!("/boot/{initrd}");
                if f.boot_names.contains(&initrd) {
                    argv.push(&initrd_path);
                }
                Step::new(&format!("Writing the boot entry of {k}"), &argv)
            })
            .collect()
    }

    fn copies_images(&self) -> bool {
        true
    }

    fn regenerate_hint(&self) -> String {
        "sudo kernel-install add KVER /boot/vmlinuz-KVER /boot/initrd.img-KVER (for each kernel)"
            .into()
    }

    fn entries_name(&self) -> String {
        "the systemd-boot entries (loader/entries)".into()
    }

    fn entries(&self, host: &Host, f: &Facts, args: &[String]) -> Entries {
        let all = match kernel_entries(host, f) {
            Ok(a) => a,
            Err(why) => return Entries::Unreadable(why),
        };
        let mut worst: Vec<String> = Vec::new();
        for (kver, entries) in &all {
            if entries.is_empty() {
                return Entries::Unreadable(format!(
                    "there is no entry of kernel {kver} in {} (is the ESP mounted?); run `{}`",
                    self.entries_dir(f),
                    self.regenerate_hint()
                ));
            }
            if let Some((_, text)) = current(f, kver, entries) {
                let m = super::grub::missing(&cmdline::entry_options(text), args);
                if m.len() > worst.len() {
                    worst = m;
                }
            }
        }
        if worst.is_empty() {
            Entries::Carry
        } else {
            Entries::Lack(worst)
        }
    }

    fn confirm(&self, host: &Host, f: &Facts, want: &[String], gone: &[String]) -> Result<()> {
        let dir = self.entries_dir(f);
        let all = kernel_entries(host, f).map_err(anyhow::Error::msg)?;
        for (kver, entries) in &all {
            let token = inspected(f)
                .map(|i| i.entry_token.as_str())
                .unwrap_or_default();
            let written = written_name(f, token, kver);
            let Some((name, text)) = entries.iter().find(|(n, _)| *n == written) else {
                bail!(
                    "kernel-install wrote no entry {written} of kernel {kver} in {dir}: the \
                     regeneration did nothing (is the ESP mounted, does `bootctl is-installed` \
                     succeed?)"
                );
            };
            let options = cmdline::entry_options(text);
            let lacks = super::grub::missing(&options, want);
            if !lacks.is_empty() {
                bail!(
                    "after kernel-install, {dir}/{name} still lacks {}: the regeneration did \
                     not reach the entries (is the ESP mounted?)",
                    lacks.join(" ")
                );
            }
            let kept: Vec<&String> = gone
                .iter()
                .filter(|g| super::grub::missing(&options, std::slice::from_ref(g)).is_empty())
                .collect();
            if !kept.is_empty() {
                bail!(
                    "after kernel-install, {dir}/{name} still carries {}: the regeneration did \
                     not reach the entries (is the ESP mounted?)",
                    kept.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        Ok(())
    }

    fn falls_back_to_proc_cmdline(&self) -> Option<&'static str> {
        Some("kernel-install")
    }

    fn stale_entries(&self, host: &Host, f: &Facts, planned: bool) -> Vec<String> {
        let Ok(all) = kernel_entries(host, f) else {
            return Vec::new();
        };
        let token = inspected(f)
            .map(|i| i.entry_token.as_str())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (kver, entries) in &all {
            let keep = if planned {
                Some(written_name(f, token, kver))
            } else {
                current(f, kver, entries).map(|(n, _)| n.clone())
            };
            out.extend(
                entries
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| Some(*n) != keep.as_ref())
                    .map(|n| format!("{}/{n}", self.entries_dir(f))),
            );
        }
        out
    }

    fn carrying(&self, host: &Host, f: &Facts, key: &str) -> Option<Vec<String>> {
        let all = kernel_entries(host, f).ok()?;
        Some(
            all.into_iter()
                .flat_map(|(_, entries)| entries)
                .filter(|(_, text)| {
                    cmdline::entry_options(text)
                        .iter()
                        .any(|t| cmdline::key(t) == key)
                })
                .map(|(name, _)| name)
                .collect(),
        )
    }

    fn rescue(&self, bind: BindMode) -> String {
        let step = match bind {
            BindMode::Ids => "delete vfio-pci.ids=…",
            BindMode::Address => "add gpt.bind=off at the end",
        };
        format!(
            "hold Space while systemd-boot starts to show its menu, press `e` on the entry, {step}, boot with Enter"
        )
    }

    fn rescue_on(&self, f: &Facts, bind: BindMode) -> String {
        if !f.editor_off {
            return self.rescue(bind);
        }
        let what = match bind {
            BindMode::Ids => "without vfio-pci.ids=…",
            BindMode::Address => "with gpt.bind=off added",
        };
        format!(
            "systemd-boot's editor is off (`editor no` in loader.conf), so the command line cannot \
             be edited at boot: before rebooting, copy this kernel's entry in {} to a new .conf \
             with its `options` {what} and a title of its own, then hold Space at boot and pick it",
            self.entries_dir(f)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::kernel_cmdline::remove_tokens;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn tokens_go_with_their_separator_and_other_bytes_stay() {
        assert_eq!(
            remove_tokens(
                "root=UUID=1 ro  quiet iommu=pt x=1",
                &s(&["iommu=pt", "x=1"])
            ),
            "root=UUID=1 ro  quiet"
        );
        assert_eq!(remove_tokens("a b\tc", &s(&["b"])), "a\tc");
        assert_eq!(
            remove_tokens("iommu=pt root=/dev/sda", &s(&["iommu=pt"])),
            "root=/dev/sda"
        );
        // One occurrence each, the last one: the user's own copy before gpt's stays.
        assert_eq!(remove_tokens("root=x a a", &s(&["a"])), "root=x a");
        assert_eq!(remove_tokens("root=x", &s(&["absent"])), "root=x");
    }

    #[test]
    fn only_a_one_line_file_with_root_is_accepted() {
        let p = KERNEL_CMDLINE;
        assert_eq!(
            parse_line(p, b"root=/dev/sda1 ro quiet\n").unwrap(),
            "root=/dev/sda1 ro quiet"
        );
        assert_eq!(parse_line(p, b"root=/dev/sda1").unwrap(), "root=/dev/sda1");
        for (bad, why) in [
            (&b"root=/dev/sda1 ro\r\n"[..], "carriage return"),
            (b"root=/dev/sda1\nquiet\n", "more than one line"),
            (b"\n", "empty"),
            (b"ro quiet\n", "no root="),
            (b"root=\xff\n", "not text"),
        ] {
            let e = parse_line(p, bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("nothing was changed"), "{e}");
        }
    }

    #[test]
    fn options_lines_are_joined_and_other_keys_ignored() {
        let e = "title Debian\noptions root=/dev/sda1 ro\noptions iommu=pt\nlinux /x/linux\noptionsx no\n";
        assert_eq!(
            cmdline::entry_options(e),
            ["root=/dev/sda1", "ro", "iommu=pt"]
        );
    }

    #[test]
    fn edit_then_strip_gives_the_file_back() {
        let f = Facts {
            kernel_cmdline: Some(b"root=/dev/sda1 ro quiet\n".to_vec()),
            ..Facts::default()
        };
        let add = s(&["iommu=pt", "vfio-pci.ids=10de:1f08"]);
        let e = SystemdBoot.edit_args(&f, &add).unwrap();
        let after = String::from_utf8(e.change.after.clone().unwrap()).unwrap();
        assert_eq!(
            after,
            "root=/dev/sda1 ro quiet iommu=pt vfio-pci.ids=10de:1f08\n"
        );
        let back = SystemdBoot
            .strip_args(Path::new(KERNEL_CMDLINE), &after, &add)
            .unwrap();
        assert_eq!(back, "root=/dev/sda1 ro quiet\n");
        // A re-run replaces gpt's earlier additions.
        let again = Facts {
            kernel_cmdline: Some(after.into_bytes()),
            gpt_added: add,
            ..Facts::default()
        };
        let e = SystemdBoot
            .edit_args(&again, &s(&["iommu=pt", "vfio-pci.ids=1002:73bf"]))
            .unwrap();
        assert_eq!(
            e.change.after.unwrap(),
            b"root=/dev/sda1 ro quiet iommu=pt vfio-pci.ids=1002:73bf\n"
        );
    }

    #[test]
    fn a_missing_file_is_created_from_proc_cmdline_without_boot_image_and_initrd() {
        let f = Facts {
            cmdline_read: true,
            cmdline: "initrd=\\0a1b\\6.12\\initrd.img BOOT_IMAGE=/vmlinuz root=UUID=9 ro quiet"
                .into(),
            ..Facts::default()
        };
        let e = SystemdBoot.edit_args(&f, &s(&["iommu=pt"])).unwrap();
        assert_eq!(e.change.before, None);
        assert_eq!(e.change.after.unwrap(), b"root=UUID=9 ro quiet iommu=pt\n");
        assert!(e.notes[0].contains("/proc/cmdline"), "{:?}", e.notes);
        let rescue = Facts {
            cmdline_read: true,
            cmdline: "BOOT_IMAGE=/vmlinuz single".into(),
            ..Facts::default()
        };
        let err = SystemdBoot
            .edit_args(&rescue, &s(&["iommu=pt"]))
            .unwrap_err();
        assert!(err.to_string().contains("no root="), "{err}");
    }
}
