//! What gpt reads from the host reaches the terminal without its control characters
//! (issue 27, item 6): an escape sequence in os-release's PRETTY_NAME, in a pci.ids name or in
//! a file shown in a diff could set the window title, clear the screen or hide a warning.

use crate::support::hosts::{rocketlake, PCI_IDS};
use crate::support::{gpt, gpt_with_fakes, run};
use std::fs;
use std::path::Path;

/// Title, bell, clear screen, an 8-bit CSI and a carriage return.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\u{9b}8m\r";

fn assert_printable(what: &str, text: &str) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| c.is_control() && c != '\n' && c != '\t')
        .collect();
    assert!(
        bad.is_empty(),
        "{what} holds control characters {bad:?}:\n{text}"
    );
}

fn hostile_pci_ids(root: &Path) {
    let ids = PCI_IDS.replace(
        "TU106 [GeForce RTX 2060 Rev. A]",
        &format!("TU106{HOSTILE} [GeForce RTX 2060 Rev. A]"),
    );
    assert_ne!(ids, PCI_IDS);
    fs::write(root.join("usr/share/misc/pci.ids"), ids).unwrap();
}

#[test]
fn pci_ids_names_are_printed_without_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rocketlake(root);
    hostile_pci_ids(root);
    let (code, out, err) = run(gpt(root).arg("iommu"));
    assert_eq!(code, 0, "{err}");
    assert_printable("iommu's stdout", &out);
    assert_printable("iommu's stderr", &err);
    assert!(
        out.contains("TU106]0;pwned[2J8m [GeForce RTX 2060 Rev. A]"),
        "{out}"
    );
    let (code, out, err) = run(gpt_with_fakes(root).args(["full", "nvidia", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert_printable("full's stdout", &out);
    assert_printable("full's stderr", &err);
    assert!(err.contains("TU106]0;pwned"), "{err}");
    // JSON keeps the name as it is, escaped.
    let (code, out, _) = run(gpt(root).args(["iommu", "--json"]));
    assert_eq!(code, 0);
    assert!(out.contains("TU106\\u001b]0;pwned\\u0007"), "{out}");
}

#[test]
fn os_release_names_are_printed_without_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rocketlake(root);
    fs::write(
        root.join("etc/os-release"),
        format!("ID=arch\nPRETTY_NAME=\"Arch{HOSTILE} Linux\"\n"),
    )
    .unwrap();
    let (code, out, err) = run(gpt_with_fakes(root).args(["full", "nvidia", "--dry-run"]));
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_printable("full's error", &err);
    assert!(
        err.contains("this host is Arch]0;pwned[2J8m Linux"),
        "{err}"
    );
}

#[test]
fn a_diff_of_a_file_is_printed_without_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rocketlake(root);
    let grub = root.join("etc/default/grub");
    let text = fs::read_to_string(&grub).unwrap().replace(
        "GRUB_CMDLINE_LINUX_DEFAULT=",
        &format!("# note{HOSTILE}\nGRUB_CMDLINE_LINUX_DEFAULT="),
    );
    fs::write(&grub, text).unwrap();
    let (code, out, err) = run(gpt_with_fakes(root).args(["full", "nvidia", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# note]0;pwned"), "{out}");
    assert_printable("full's diff", &out);
}
