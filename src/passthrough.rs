//! Passthrough configuration gpt did not write: what a guide left in modprobe.d, the modules
//! lists and the kernel command line. Pure: finds it in the texts the facts reader read.
//!
//! gpt leaves these lines alone (they are the user's) and says what each one does to gpt's
//! configuration and to its rescue: a guide's `options vfio-pci ids=` or `pci-stub.ids=` keeps
//! the card from its host driver even after the rescue switch, and a blacklisted driver leaves
//! the card without one.

use crate::edit::cmdline;
use serde::Serialize;
use std::collections::BTreeSet;

/// One line (or one kernel argument) of someone else's passthrough setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    /// The file (as on the host) and the 1-based line.
    pub path: String,
    pub line: usize,
    /// The line or argument as written.
    pub text: String,
    /// What it does here, in words.
    pub effect: String,
    /// Whether gpt's rescue (booting without gpt's binding) leaves the card away from its
    /// host driver until this is undone too.
    pub defeats_rescue: bool,
}

fn norm(m: &str) -> String {
    m.trim().replace('-', "_")
}

/// Ids in `ids=10de:1f08,10de:10f9` style values, lowercased.
fn id_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn listed<'a>(found: &'a [String], ids: &[String]) -> Vec<&'a String> {
    found
        .iter()
        .filter(|i| ids.iter().any(|w| i.starts_with(w.as_str())))
        .collect()
}

/// Search modprobe.d files (`/etc/modprobe.d/*.conf` but gpt's), module lists (`/etc/modules`,
/// `/etc/modules-load.d/*.conf`) and the user's kernel arguments (`(file, argument)`).
/// `ids` are the vendor:device ids gpt passes, `claimants` the host drivers it holds off.
pub fn find(
    modprobe_d: &[(String, String)],
    module_lists: &[(String, String)],
    kernel_args: &[(String, String)],
    ids: &[String],
    claimants: &BTreeSet<String>,
) -> Vec<Found> {
    let mut out = Vec::new();
    let claims = |m: &str| claimants.contains(&norm(m));
    for (path, text) in modprobe_d {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut push = |effect: String, defeats_rescue: bool| {
                out.push(Found {
                    path: path.clone(),
                    line: i + 1,
                    text: raw.trim().to_string(),
                    effect,
                    defeats_rescue,
                })
            };
            match words.as_slice() {
                ["options", m, opts @ ..] if norm(m) == "vfio_pci" => {
                    for o in opts {
                        if let Some(v) = o.strip_prefix("ids=") {
                            let all = id_list(v);
                            let ours = listed(&all, ids);
                            let effect = if ours.is_empty() {
                                format!(
                                    "vfio-pci takes {} whenever it loads (not the devices gpt passes)",
                                    all.join(",")
                                )
                            } else {
                                format!(
                                    "vfio-pci takes {} whenever it loads, with or without gpt's configuration",
                                    all.join(",")
                                )
                            };
                            push(effect, !ours.is_empty());
                        }
                    }
                }
                ["blacklist", m] if claims(m) => push(
                    format!("{m} is not loaded by its alias: without gpt, the card is left without a host driver"),
                    true,
                ),
                ["install", m, cmd @ ..] if norm(m) == "vfio_pci" || claims(m) => {
                    let cmd = cmd.join(" ");
                    let disabled = cmd.contains("/bin/false") || cmd.contains("/bin/true");
                    // kmod reads the files in name order and keeps the first install
                    // command of a module.
                    let first = path.rsplit('/').next().unwrap_or("") < "gpt-vfio.conf";
                    push(
                        if disabled {
                            format!("{m} never loads: without gpt, the card is left without a host driver")
                        } else if first {
                            format!(
                                "kmod runs only the first install command of {m}, and this file is read before \
                                 gpt's: where gpt binds by address, its hook for {m} does not run"
                            )
                        } else {
                            format!(
                                "kmod runs only the first install command of {m}: where gpt binds by address, \
                                 gpt's file is read first and this line no longer runs"
                            )
                        },
                        disabled,
                    );
                }
                _ => {}
            }
        }
    }
    for (path, text) in module_lists {
        for (i, raw) in text.lines().enumerate() {
            let m = raw.split('#').next().unwrap_or("").trim();
            let name = m.split_whitespace().next().unwrap_or("");
            if norm(name).starts_with("vfio") || norm(name) == "pci_stub" {
                out.push(Found {
                    path: path.clone(),
                    line: i + 1,
                    text: raw.trim().to_string(),
                    effect: format!("{name} is loaded at every boot"),
                    defeats_rescue: false,
                });
            }
        }
    }
    for (path, arg) in kernel_args {
        let key = cmdline::key(arg);
        let value = cmdline::value(arg).unwrap_or("");
        let (effect, defeats) = match key.as_str() {
            "pci_stub.ids" => {
                let all = id_list(value);
                let ours = !listed(&all, ids).is_empty();
                (
                    format!("pci-stub holds {} from boot on", all.join(",")),
                    ours,
                )
            }
            "modprobe.blacklist" | "module_blacklist" => {
                let hit: Vec<&str> = value.split(',').filter(|m| claims(m)).collect();
                if hit.is_empty() {
                    continue;
                }
                (
                    format!(
                        "{} never loads: without gpt, the card is left without a host driver",
                        hit.join(", ")
                    ),
                    true,
                )
            }
            "rd.driver.pre" | "rd.driver.blacklist" if norm(value).contains("vfio") => {
                (format!("the initramfs acts on {value}"), false)
            }
            _ => continue,
        };
        out.push(Found {
            path: path.clone(),
            line: 0,
            text: arg.clone(),
            effect,
            defeats_rescue: defeats,
        });
    }
    out
}

/// `file:line: `text`: effect` for the plan and `gpt check`.
pub fn describe(f: &Found) -> String {
    let at = if f.line > 0 {
        format!("{}:{}", f.path, f.line)
    } else {
        format!("{} (kernel argument)", f.path)
    };
    format!("{at}: `{}`: {}", f.text, f.effect)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_guides_lines_are_found_with_what_they_do() {
        let conf = vec![(
            "/etc/modprobe.d/vfio.conf".to_string(),
            "# from a guide\noptions vfio-pci ids=10DE:1F08,10de:10f9 disable_vga=1\n\
             softdep nouveau pre: vfio-pci\nblacklist nouveau\nblacklist pcspkr\n\
             install snd_hda_intel /bin/false\n"
                .to_string(),
        )];
        let lists = vec![(
            "/etc/modules".to_string(),
            "vfio\nvfio_pci # guide\nloop\n".to_string(),
        )];
        let args = vec![
            (
                "/etc/default/grub".to_string(),
                "pci-stub.ids=10de:1f08".to_string(),
            ),
            ("/etc/default/grub".to_string(), "quiet".to_string()),
        ];
        let claimants: BTreeSet<String> = ["nouveau", "snd_hda_intel"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        let found = find(&conf, &lists, &args, &s(&["10de:1f08"]), &claimants);
        let lines: Vec<(usize, bool)> = found.iter().map(|f| (f.line, f.defeats_rescue)).collect();
        assert_eq!(
            lines,
            [
                (2, true),
                (4, true),
                (6, true),
                (1, false),
                (2, false),
                (0, true)
            ],
            "{found:#?}"
        );
        assert!(
            found[0].effect.contains("10de:1f08,10de:10f9"),
            "{:?}",
            found[0]
        );
        assert_eq!(
            describe(&found[5]),
            "/etc/default/grub (kernel argument): `pci-stub.ids=10de:1f08`: pci-stub holds 10de:1f08 from boot on"
        );
    }

    #[test]
    fn ids_of_other_devices_do_not_defeat_the_rescue() {
        let conf = vec![(
            "/etc/modprobe.d/nic.conf".to_string(),
            "options vfio_pci ids=8086:1539\n".to_string(),
        )];
        let found = find(&conf, &[], &[], &s(&["10de:1f08"]), &BTreeSet::new());
        assert_eq!(found.len(), 1);
        assert!(!found[0].defeats_rescue);
        assert!(find(&[], &[], &[], &s(&["10de:1f08"]), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn another_install_line_is_said_with_which_one_kmod_runs() {
        let line = "install nouveau /sbin/modprobe --ignore-install nouveau; echo hi\n";
        let conf = vec![
            ("/etc/modprobe.d/a-guide.conf".to_string(), line.to_string()),
            (
                "/etc/modprobe.d/zz-local.conf".to_string(),
                line.to_string(),
            ),
        ];
        let claimants: BTreeSet<String> = ["nouveau".to_string()].into();
        let found = find(&conf, &[], &[], &[], &claimants);
        assert_eq!(found.len(), 2);
        assert!(
            found[0].effect.contains("read before gpt's"),
            "{:?}",
            found[0]
        );
        assert!(
            found[1].effect.contains("gpt's file is read first"),
            "{:?}",
            found[1]
        );
        assert!(!found[0].defeats_rescue && !found[1].defeats_rescue);
    }
}
