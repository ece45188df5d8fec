//! kernelstub (Pop!_OS): the kernel arguments are the list `user.kernel_options` of the JSON
//! file `/etc/kernelstub/configuration`; kernelstub copies the kernel and initrd to the ESP and
//! writes `{esp}/loader/entries/Pop_OS-current.conf` (and `Pop_OS-oldkern.conf`).
//!
//! Every kernelstub run rewrites the whole file (`json.dump`, indent 2, no final newline), and
//! its `-d` rebuilds the list from a set, reordering the user's options. So gpt edits the list
//! itself, in the text, keeping every other byte; runs `kernelstub` to write the entries; and
//! then puts its own bytes back ([`Loader::rewritten_by_regeneration`]). Reset does the same
//! with the bytes from before gpt (or, when the user edited the file since, with the current
//! text less exactly the options gpt added, in their order), so /etc comes back byte for byte.

use super::{ArgsEdit, Entries, Loader, LoaderKind};
use crate::edit::cmdline;
use crate::facts::Facts;
use crate::host::Host;
use crate::model::BindMode;
use crate::plan::{FileChange, Step};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "/etc/kernelstub/configuration";
const ENTRY: &str = "loader/entries/Pop_OS-current.conf";

pub struct Kernelstub;

fn parse(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{CONFIG} is not valid JSON (line {}, column {}: {e}); fix it (or run `sudo kernelstub` \
             to see its own complaint) and run this again; nothing was changed",
            e.line(),
            e.column()
        )
    })
}

/// `user.kernel_options` and `user.esp_path` of the configuration.
pub fn options(text: &str) -> Result<(Vec<String>, String)> {
    let v = parse(text)?;
    let Some(list) = v.pointer("/user/kernel_options").and_then(|l| l.as_array()) else {
        bail!("{CONFIG} has no user.kernel_options list; run `sudo kernelstub` once to set it up, then run this again; nothing was changed");
    };
    let mut out = Vec::new();
    for o in list {
        match o.as_str() {
            Some(s) => out.push(s.to_string()),
            None => bail!("{CONFIG}: user.kernel_options holds {o}, which is not a string; fix it and run this again; nothing was changed"),
        }
    }
    let esp = v
        .pointer("/user/esp_path")
        .and_then(|e| e.as_str())
        .unwrap_or("/boot/efi")
        .to_string();
    Ok((out, esp))
}

/// Whether kernelstub writes systemd-boot's entries (`setup_loader`, the user's setting,
/// else the default's; kernelstub's own default is false).
pub fn sets_up_loader(text: &str) -> Result<bool> {
    let v = parse(text)?;
    Ok(v.pointer("/user/setup_loader")
        .or_else(|| v.pointer("/default/setup_loader"))
        .and_then(|b| b.as_bool())
        .unwrap_or(false))
}

/// The byte span of the value of `key` inside the object that spans `obj` (`{` … `}`).
fn member(text: &[u8], obj: (usize, usize), key: &str) -> Option<(usize, usize)> {
    let (mut i, end) = (obj.0 + 1, obj.1);
    let mut depth = 0;
    while i < end {
        match text[i] {
            b'"' => {
                let s = i;
                i += 1;
                while i < end && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                let name = &text[s + 1..i.min(end)];
                i += 1;
                if depth == 0 {
                    let mut j = i;
                    while j < end && text[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if j < end && text[j] == b':' && name == key.as_bytes() {
                        j += 1;
                        while j < end && text[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        return Some((j, value_end(text, j)?));
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// Where the value starting at `start` ends (exclusive).
fn value_end(text: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
        i += 1;
    }
    Some(i)
}

/// `text` with `user.kernel_options` set to `list`, written as kernelstub writes it (indent 2),
/// every other byte kept.
pub fn with_options(text: &str, list: &[String]) -> Result<String> {
    parse(text)?;
    let b = text.as_bytes();
    let start = b.iter().position(|c| *c == b'{').unwrap_or(0);
    let root = (start, value_end(b, start).unwrap_or(b.len()));
    let user = member(b, root, "user");
    let span = user.and_then(|u| member(b, u, "kernel_options"));
    let Some((s, e)) = span else {
        bail!("{CONFIG} has no user.kernel_options list; run `sudo kernelstub` once to set it up, then run this again; nothing was changed");
    };
    let rendered = if list.is_empty() {
        "[]".to_string()
    } else {
        let items: Vec<String> = list
            .iter()
            .map(|o| format!("      {}", serde_json::to_string(o).expect("a string")))
            .collect();
        format!("[\n{}\n    ]", items.join(",\n"))
    };
    let out = format!("{}{rendered}{}", &text[..s], &text[e..]);
    parse(&out)?;
    Ok(out)
}

/// `list` without each of `gone` (once each), the rest in order.
fn without(list: &[String], gone: &[String]) -> Vec<String> {
    let mut out = list.to_vec();
    for g in gone {
        if let Some(k) = out.iter().rposition(|o| o == g) {
            out.remove(k);
        }
    }
    out
}

fn text_of(f: &Facts) -> Result<String> {
    let Some(bytes) = &f.kernelstub_config else {
        bail!("{CONFIG} does not exist; run `sudo kernelstub` once to set it up, then run this again; nothing was changed");
    };
    String::from_utf8(bytes.clone()).map_err(|_| {
        anyhow::anyhow!("{CONFIG} is not text; fix it and run this again; nothing was changed")
    })
}

impl Loader for Kernelstub {
    fn kind(&self) -> LoaderKind {
        LoaderKind::Kernelstub
    }

    fn validate(&self, f: &Facts) -> Result<()> {
        let text = text_of(f)?;
        options(&text)?;
        if !sets_up_loader(&text)? {
            bail!(
                "kernelstub is not managing the boot entries on this host: {CONFIG} says \
                 \"setup_loader\": false, so kernelstub writes no systemd-boot entry (the kernel \
                 boots from an EFI boot entry whose options gpt cannot read or verify). Let \
                 kernelstub manage the loader (`sudo kernelstub --loader`, which sets it to true), \
                 or, if another loader boots this host, name it with --boot-loader; nothing was \
                 changed"
            );
        }
        Ok(())
    }

    fn user_args(&self, f: &Facts) -> Result<Vec<String>> {
        let (list, _) = options(&text_of(f)?)?;
        Ok(without(&list, &f.gpt_added))
    }

    fn edit_args(&self, f: &Facts, add: &[String]) -> Result<ArgsEdit> {
        let text = text_of(f)?;
        let (list, _) = options(&text)?;
        let mut new = without(&list, &f.gpt_added);
        new.extend(add.iter().cloned());
        let after = if new == list {
            text.clone()
        } else {
            with_options(&text, &new)?
        };
        Ok(ArgsEdit {
            change: FileChange::new(CONFIG, Some(text.into_bytes()), Some(after.into_bytes())),
            file: CONFIG.into(),
            setting: "user.kernel_options".into(),
            notes: Vec::new(),
        })
    }

    fn marks_in_file(&self) -> bool {
        false
    }

    fn entries_source(&self) -> String {
        CONFIG.into()
    }

    fn owns(&self, path: &Path) -> bool {
        path == Path::new(CONFIG)
    }

    fn files(&self, _host: &Host) -> Result<Vec<PathBuf>> {
        Ok(vec![PathBuf::from(CONFIG)])
    }

    /// JSON holds no comment: the journal holds what gpt added.
    fn has_marks(&self, _text: &str) -> bool {
        false
    }

    fn strip(&self, _path: &Path, text: &str) -> Result<String> {
        Ok(text.to_string())
    }

    fn strip_args(&self, _path: &Path, text: &str, added: &[String]) -> Result<String> {
        let (list, _) = options(text)?;
        let new = without(&list, added);
        if new == list {
            return Ok(text.to_string());
        }
        with_options(text, &new)
    }

    fn regenerate(&self, _f: &Facts) -> Vec<Step> {
        vec![Step::new(
            "Writing the boot entries (kernelstub)",
            &["kernelstub"],
        )]
    }

    fn copies_images(&self) -> bool {
        true
    }

    fn rewritten_by_regeneration(&self) -> bool {
        true
    }

    fn regenerate_hint(&self) -> String {
        "sudo kernelstub".into()
    }

    fn entries_name(&self) -> String {
        format!("{{esp}}/{ENTRY}")
    }

    fn entries(&self, host: &Host, f: &Facts, args: &[String]) -> Entries {
        let esp = f
            .kernelstub_config
            .as_ref()
            .and_then(|b| options(&String::from_utf8_lossy(b)).ok())
            .map_or("/boot/efi".to_string(), |(_, e)| e);
        let path = format!("{esp}/{ENTRY}");
        match host.read_optional(&path) {
            Ok(Some(text)) => {
                let opts = crate::edit::cmdline::entry_options(&text);
                match super::grub::missing(&opts, args) {
                    m if m.is_empty() => Entries::Carry,
                    m => Entries::Lack(m),
                }
            }
            Ok(None) => Entries::Unreadable(format!(
                "there is no {path} (is the ESP mounted?); run `sudo kernelstub`"
            )),
            Err(e) => Entries::Unreadable(format!("{e:#}")),
        }
    }

    fn confirm(&self, host: &Host, f: &Facts, want: &[String], gone: &[String]) -> Result<()> {
        match self.entries(host, f, want) {
            Entries::Carry => {}
            Entries::Lack(m) => bail!(
                "after kernelstub, {ENTRY} on the ESP still lacks {}: the entries were not written (is the ESP mounted?)",
                m.join(" ")
            ),
            Entries::Unreadable(why) | Entries::Unchecked(why) => bail!("{why}"),
        }
        for g in gone {
            if let Entries::Carry = self.entries(host, f, std::slice::from_ref(g)) {
                if !want.contains(g) {
                    bail!("after kernelstub, {ENTRY} on the ESP still carries {g}: the entries were not written (is the ESP mounted?)");
                }
            }
        }
        Ok(())
    }

    fn carrying(&self, host: &Host, f: &Facts, key: &str) -> Option<Vec<String>> {
        let esp = f
            .kernelstub_config
            .as_ref()
            .and_then(|b| options(&String::from_utf8_lossy(b)).ok())?
            .1;
        let text = host.read_optional(format!("{esp}/{ENTRY}")).ok()??;
        Some(
            crate::edit::cmdline::entry_options(&text)
                .iter()
                .any(|t| cmdline::key(t) == key)
                .then(|| "Pop_OS-current.conf".to_string())
                .into_iter()
                .collect(),
        )
    }

    fn rescue(&self, bind: BindMode) -> String {
        super::systemd_boot::SystemdBoot.rescue(bind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POP: &str = "{\n  \"default\": {\n    \"kernel_options\": [\n      \"quiet\",\n      \"splash\"\n    ],\n    \"esp_path\": \"/boot/efi\"\n  },\n  \"user\": {\n    \"kernel_options\": [\n      \"quiet\",\n      \"loglevel=0\",\n      \"splash\"\n    ],\n    \"esp_path\": \"/boot/efi\",\n    \"setup_loader\": true,\n    \"config_rev\": 3\n  }\n}";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_users_list_is_edited_in_place_every_other_byte_kept() {
        let (list, esp) = options(POP).unwrap();
        assert_eq!(list, ["quiet", "loglevel=0", "splash"]);
        assert_eq!(esp, "/boot/efi");
        let mut new = list.clone();
        new.extend(s(&["iommu=pt", "vfio-pci.ids=10de:1f08"]));
        let out = with_options(POP, &new).unwrap();
        assert!(out.ends_with("}"), "no final newline added");
        assert!(
            out.contains(
                "      \"splash\",\n      \"iommu=pt\",\n      \"vfio-pci.ids=10de:1f08\"\n    ],"
            ),
            "{out}"
        );
        // The default section is untouched, and stripping gives the bytes back.
        assert!(out.starts_with(&POP[..POP.find("\"user\"").unwrap()]));
        let back = Kernelstub
            .strip_args(
                Path::new(CONFIG),
                &out,
                &s(&["iommu=pt", "vfio-pci.ids=10de:1f08"]),
            )
            .unwrap();
        assert_eq!(back, POP);
    }

    #[test]
    fn broken_json_is_refused_with_where() {
        let e = options("{\n  \"user\": {\n    \"kernel_options\": [\"quiet\",]\n").unwrap_err();
        assert!(e.to_string().contains("is not valid JSON (line 3"), "{e}");
        let e = options("{\"user\": {}}").unwrap_err();
        assert!(e.to_string().contains("no user.kernel_options"), "{e}");
    }
}
