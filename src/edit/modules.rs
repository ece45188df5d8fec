//! `/etc/initramfs-tools/modules`: one `module [args]` per line, `#` comments.
//!
//! gpt's modules go in one marked block at the end of the file:
//!
//! ```text
//! # BEGIN gpt: vfio-pci must claim the passthrough devices before any GPU driver ('gpt reset' removes this block)
//! vfio
//! vfio_iommu_type1
//! vfio_pci
//! # END gpt
//! ```
//!
//! When the file had no final newline, gpt puts a newline after its last line and leaves
//! the block's `# END gpt` line without one; that tells [`reverse`] to take the newline
//! back. (initramfs-tools skips comment lines, so an unterminated `# END gpt` is harmless.)
//!
//! The module also has line helpers to clean up after the old setup.sh, which put
//! `options vfio-pci ids=…` lines here and into `/etc/modprobe.d/*.conf`.

use super::text::{self, Line, OwnedLine};

/// The first line of gpt's block.
pub const BEGIN: &str = "# BEGIN gpt: vfio-pci must claim the passthrough devices before any GPU driver ('gpt reset' removes this block)";
/// The last line of gpt's block.
pub const END: &str = "# END gpt";

/// Add gpt's block with each of `modules` that no uncommented user line loads already
/// (names compared with `-` and `_` the same), in the given order. An existing block is
/// replaced in place; with nothing to add, the block is removed (input without a block
/// comes back unchanged).
///
/// Names that are not plain module names (letters, digits, `-`, `_`) are left out.
pub fn apply(content: &str, modules: &[&str]) -> String {
    let lines = text::split_lines(content);
    let blocks = blocks(&lines);
    let inside = |i: usize| blocks.iter().any(|&(b, e)| b <= i && i <= e);
    let user: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|&(i, _)| !inside(i))
        .filter_map(|(_, l)| loaded_module(l.body))
        .map(normalize)
        .collect();
    let mut add: Vec<&str> = Vec::new();
    for m in modules {
        let m = m.trim();
        let n = normalize(m);
        if valid_module(m) && !user.contains(&n) && !add.iter().any(|a| normalize(a) == n) {
            add.push(m);
        }
    }
    if add.is_empty() {
        return reverse(content);
    }
    let Some(&(b0, e0)) = blocks.first() else {
        let style = text::eol_style(content);
        let no_final_newline = !content.is_empty() && !content.ends_with('\n');
        let mut s = content.to_string();
        if no_final_newline {
            s.push_str(style);
        }
        for l in [BEGIN].iter().chain(&add) {
            s.push_str(l);
            s.push_str(style);
        }
        s.push_str(END);
        if !no_final_newline {
            s.push_str(style);
        }
        return s;
    };
    let mut out = text::owned(&lines);
    for &(b, e) in blocks[1..].iter().rev() {
        remove_block(&mut out, b, e);
    }
    // Same line endings as the block it replaces, so the final-newline note stays true.
    let eol = out[b0].eol.clone();
    let end_eol = out[e0].eol.clone();
    let mut new: Vec<OwnedLine> = [BEGIN]
        .iter()
        .chain(&add)
        .map(|l| OwnedLine {
            body: l.to_string(),
            eol: eol.clone(),
        })
        .collect();
    new.push(OwnedLine {
        body: END.to_string(),
        eol: end_eol,
    });
    out.splice(b0..=e0, new);
    text::join(&out)
}

/// Remove gpt's block(s) exactly.
pub fn reverse(content: &str) -> String {
    let lines = text::split_lines(content);
    let blocks = blocks(&lines);
    if blocks.is_empty() {
        return content.to_string();
    }
    let mut out = text::owned(&lines);
    for &(b, e) in blocks.iter().rev() {
        remove_block(&mut out, b, e);
    }
    text::join(&out)
}

/// Whether the file has a gpt block.
pub fn has_block(content: &str) -> bool {
    !blocks(&text::split_lines(content)).is_empty()
}

/// The modules gpt's block(s) load, in order.
pub fn block_modules(content: &str) -> Vec<String> {
    let lines = text::split_lines(content);
    blocks(&lines)
        .into_iter()
        .flat_map(|(b, e)| lines[b + 1..e].iter().filter_map(|l| loaded_module(l.body)))
        .map(str::to_string)
        .collect()
}

/// The uncommented `options vfio-pci …` (or `vfio_pci`) lines the old setup.sh wrote, with
/// their 1-based line numbers. In this file they are wrong (it lists modules, not options).
pub fn legacy_option_lines(content: &str) -> Vec<(usize, String)> {
    text::split_lines(content)
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let mut w = l.body.split_ascii_whitespace();
            w.next() == Some("options") && w.next().map(normalize).as_deref() == Some("vfio_pci")
        })
        .map(|(i, l)| (i + 1, l.body.to_string()))
        .collect()
}

/// Remove every line for which `pred` (given the line without its ending) is true; the
/// other lines keep their bytes and endings. Returns the removed lines, in order.
pub fn remove_lines(content: &str, pred: impl Fn(&str) -> bool) -> (String, Vec<String>) {
    let mut kept = String::with_capacity(content.len());
    let mut removed = Vec::new();
    for l in text::split_lines(content) {
        if pred(l.body) {
            removed.push(l.body.to_string());
        } else {
            kept.push_str(l.body);
            kept.push_str(l.eol);
        }
    }
    (kept, removed)
}

/// `-` and `_` are the same in module names.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn valid_module(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The module an uncommented line loads.
fn loaded_module(body: &str) -> Option<&str> {
    let first = body.split_ascii_whitespace().next()?;
    (!first.starts_with('#')).then_some(first)
}

fn is_begin(body: &str) -> bool {
    body == "# BEGIN gpt" || body.starts_with("# BEGIN gpt:") || body.starts_with("# BEGIN gpt ")
}

fn is_end(body: &str) -> bool {
    body.trim_end() == END
}

/// Each `# BEGIN gpt` … `# END gpt` pair as (begin, end) line indices. A BEGIN without an
/// END is not a block (gpt cannot tell where it would end), nor is an END without a BEGIN.
fn blocks(lines: &[Line<'_>]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut open = None;
    for (i, l) in lines.iter().enumerate() {
        if is_begin(l.body) {
            open = Some(i);
        } else if is_end(l.body) {
            if let Some(b) = open.take() {
                out.push((b, i));
            }
        }
    }
    out
}

fn remove_block(out: &mut Vec<OwnedLine>, b: usize, e: usize) {
    let was_last = out[e].eol.is_empty();
    let added = out[b].eol.clone();
    out.drain(b..=e);
    if was_last && b > 0 {
        text::strip_added_eol(&mut out[..b], &added);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VFIO: [&str; 3] = ["vfio", "vfio_iommu_type1", "vfio_pci"];

    const STOCK: &str = "\
# List of modules that you want to include in your initramfs.
# They will be loaded at boot time in the order below.
#
# Syntax:  module_name [args ...]
#
# You must run update-initramfs(8) to effect this change.
#
# Examples:
#
# raid1
# sd_mod
";

    fn block(mods: &[&str]) -> String {
        let mut s = format!("{BEGIN}\n");
        for m in mods {
            s.push_str(m);
            s.push('\n');
        }
        s.push_str("# END gpt\n");
        s
    }

    fn roundtrip(x: &str, mods: &[&str]) -> String {
        let a = apply(x, mods);
        assert_eq!(reverse(&a), x, "reverse(apply(x)) != x for {x:?}");
        assert_eq!(apply(&a, mods), a, "apply is not idempotent on {x:?}");
        a
    }

    #[test]
    fn stock_debian_file() {
        let a = roundtrip(STOCK, &VFIO);
        assert_eq!(a, format!("{STOCK}{}", block(&VFIO)));
        assert!(has_block(&a) && !has_block(STOCK));
        assert_eq!(block_modules(&a), VFIO);
    }

    #[test]
    fn user_modules_are_not_repeated() {
        let x = "vfio-pci ids=10de:1f08\n# vfio\n  vfio_iommu_type1\n";
        let a = roundtrip(x, &VFIO);
        assert_eq!(a, format!("{x}{}", block(&["vfio"])));
        let all = "vfio\nvfio_iommu_type1\nvfio_pci\n";
        assert_eq!(apply(all, &VFIO), all);
    }

    #[test]
    fn empty_no_final_newline_and_crlf() {
        assert_eq!(roundtrip("", &VFIO), block(&VFIO));
        let a = roundtrip("nvidia", &VFIO);
        assert_eq!(
            a,
            format!("nvidia\n{BEGIN}\nvfio\nvfio_iommu_type1\nvfio_pci\n# END gpt")
        );
        let a = roundtrip("a\r\nb\r\n", &VFIO);
        assert_eq!(
            a,
            format!("a\r\nb\r\n{}", block(&VFIO).replace('\n', "\r\n"))
        );
        roundtrip("a\r\nb", &VFIO);
        roundtrip("a\r", &VFIO);
        roundtrip("\n\n", &VFIO);
    }

    #[test]
    fn rerun_replaces_the_block_in_place_and_empties_remove_it() {
        let a = apply("a\n", &VFIO);
        let b = format!("{a}user_line\n");
        let c = apply(&b, &["vfio", "kvmgt"]);
        assert_eq!(c, format!("a\n{}user_line\n", block(&["vfio", "kvmgt"])));
        assert_eq!(reverse(&c), "a\nuser_line\n");
        // Nothing left to add: the block goes.
        let d = apply(&c, &[]);
        assert_eq!(d, "a\nuser_line\n");
        let e = apply(&format!("vfio\nkvmgt\n{c}"), &["vfio", "kvmgt"]);
        assert_eq!(e, "vfio\nkvmgt\na\nuser_line\n");
        // The no-final-newline note survives a re-run.
        let f = apply(&apply("x", &VFIO), &["vfio"]);
        assert_eq!(f, format!("x\n{BEGIN}\nvfio\n# END gpt"));
        assert_eq!(reverse(&f), "x");
    }

    #[test]
    fn invalid_names_and_duplicates_are_skipped() {
        let a = apply(
            "",
            &["vfio", "vfio", "", "a b", "x\ny", "vfio-pci", "vfio_pci"],
        );
        assert_eq!(a, block(&["vfio", "vfio-pci"]));
    }

    #[test]
    fn several_or_broken_blocks() {
        let two = format!("a\n{}b\n{}", block(&["x"]), block(&["y"]));
        assert_eq!(reverse(&two), "a\nb\n");
        assert_eq!(block_modules(&two), ["x", "y"]);
        assert_eq!(apply(&two, &["z"]), format!("a\n{}b\n", block(&["z"])));
        // A BEGIN without its END is not gpt's to remove.
        let broken = format!("{BEGIN}\nvfio\n");
        assert!(!has_block(&broken));
        assert_eq!(reverse(&broken), broken);
    }

    #[test]
    fn legacy_lines() {
        let x = "vfio\noptions vfio-pci ids=10de:1f08,10de:10f9\r\n#options vfio_pci ids=1\n  options  vfio_pci disable_vga=1\noptions snd-hda-intel x=1\nblacklist xhci_hcd";
        assert_eq!(
            legacy_option_lines(x),
            vec![
                (2, "options vfio-pci ids=10de:1f08,10de:10f9".to_string()),
                (4, "  options  vfio_pci disable_vga=1".to_string())
            ]
        );
        let (out, removed) = remove_lines(x, |l| {
            let mut w = l.split_ascii_whitespace();
            w.next() == Some("options")
                && w.next().is_some_and(|m| m.replace('-', "_") == "vfio_pci")
        });
        assert_eq!(
            out,
            "vfio\n#options vfio_pci ids=1\noptions snd-hda-intel x=1\nblacklist xhci_hcd"
        );
        assert_eq!(removed.len(), 2);
        let (out, removed) = remove_lines(x, |l| l.trim() == "blacklist xhci_hcd");
        assert_eq!(removed, ["blacklist xhci_hcd"]);
        assert!(out.ends_with("x=1\n"));
        let (out, removed) = remove_lines(x, |_| false);
        assert_eq!((out.as_str(), removed.len()), (x, 0));
    }
}
