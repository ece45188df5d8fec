//! Fuzz the `/etc/default/grub` editor (`gpt::edit::grub`) with arbitrary file contents.
//!
//! Input layout: byte 0 picks the variable (bit 0) and the tokens of the first edit (bits
//! 1-7), byte 1 the tokens of a re-run (bits 0-7); the rest, if UTF-8, is the file. Inputs
//! that are shorter or not UTF-8 are skipped.
//!
//! The laws checked are those of `tests/editors.rs` that hold for any file: the editor
//! never panics and never fails its own check; it refuses what `read_var` refuses; and
//! when it accepts a file, `reset` gives back what it gave before the edit, a second
//! identical edit changes nothing, the value carries every token, and the other variable
//! reads as before.

#![no_main]

use gpt::edit::{cmdline, grub};
use libfuzzer_sys::fuzz_target;

const VARS: [&str; 2] = ["GRUB_CMDLINE_LINUX_DEFAULT", "GRUB_CMDLINE_LINUX"];

const POOL: [&str; 8] = [
    "iommu=pt",
    "intel_iommu=on",
    "vfio-pci.ids=10de:1f08,10de:10f9",
    "vfio_pci.ids=1002:73bf",
    "amd_iommu=on",
    "quiet",
    "rd.driver.pre=vfio-pci",
    "vfio-pci.ids=8086:3e92",
];

fn pick(mask: u8) -> Vec<String> {
    POOL.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, t)| t.to_string())
        .collect()
}

fn carries(content: &str, var: &str, tokens: &[String]) {
    let v = grub::read_var(content, var)
        .unwrap_or_else(|e| panic!("read_var refuses apply's output: {e:#}\n{content:?}"))
        .unwrap_or_default();
    let have = cmdline::split(&v);
    for t in tokens {
        assert!(have.contains(&t.as_str()), "{t} missing from {v:?}");
    }
}

fn not_own_check_failure<E: std::fmt::Display>(r: &Result<String, E>) {
    if let Err(e) = r {
        assert!(!e.to_string().contains("its own check"), "{e:#}");
    }
}

fuzz_target!(|data: &[u8]| {
    let [b0, b1, rest @ ..] = data else { return };
    let Ok(x) = std::str::from_utf8(rest) else {
        return;
    };
    let var = VARS[(b0 & 1) as usize];
    let other = VARS[1 - (b0 & 1) as usize];
    let t1 = pick(b0 >> 1);
    let t2 = pick(*b1);

    let marks = grub::added_tokens(x);
    let base = grub::reverse(x);
    if marks.is_empty() {
        // No marker: nothing to undo, byte for byte.
        assert_eq!(
            base.as_deref().ok(),
            Some(x),
            "reverse changed a file without markers"
        );
    }
    if let Ok(b) = &base {
        assert!(grub::added_tokens(b).is_empty(), "reverse left a marker");
    }
    let before = grub::read_var(x, var);
    let before_other = grub::read_var(x, other);
    if let Ok(Some(v)) = &before {
        let toks = cmdline::split(v);
        let _ = cmdline::iommu_off(&toks);
    }

    // The legacy clean-up: refuses what read_var refuses, touches at most one line and
    // only takes tokens that match.
    let legacy = |t: &str| t.starts_with("iommu") || t == "quiet" || t.starts_with("vfio");
    match grub::remove_tokens(x, var, legacy) {
        Ok((r, removed)) => {
            assert!(
                before.is_ok(),
                "remove_tokens accepted what read_var refused"
            );
            assert!(removed.iter().all(|t| legacy(t)), "{removed:?}");
            let (xl, rl): (Vec<_>, Vec<_>) = (
                x.split_inclusive('\n').collect(),
                r.split_inclusive('\n').collect(),
            );
            assert_eq!(xl.len(), rl.len(), "remove_tokens changed the line count");
            assert!(xl.iter().zip(&rl).filter(|(p, q)| p != q).count() <= 1);
            let after = grub::read_var(&r, var)
                .unwrap_or_else(|e| panic!("remove_tokens' output is unreadable: {e:#}"));
            if removed.is_empty() {
                assert_eq!(r, x);
            }
            if marks.is_empty() {
                let left: Vec<String> = before
                    .as_ref()
                    .ok()
                    .and_then(|v| v.as_deref())
                    .map(cmdline::split)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| !legacy(t))
                    .map(String::from)
                    .collect();
                let now: Vec<String> = after
                    .as_deref()
                    .map(cmdline::split)
                    .unwrap_or_default()
                    .into_iter()
                    .map(String::from)
                    .collect();
                assert_eq!(now, left, "remove_tokens took the wrong tokens");
            }
        }
        Err(_) => assert!(before.is_err(), "remove_tokens refused what read_var read"),
    }

    let a = grub::apply(x, var, &t1);
    not_own_check_failure(&a);
    let Ok(a) = a else { return };
    assert!(before.is_ok(), "apply accepted what read_var refused");
    let base = base.unwrap_or_else(|e| panic!("apply accepted a file reset refuses: {e:#}"));
    assert_eq!(
        grub::reverse(&a).ok().as_deref(),
        Some(base.as_str()),
        "reverse(apply(x)) != reverse(x)"
    );
    let again = grub::apply(&a, var, &t1);
    not_own_check_failure(&again);
    assert_eq!(
        again.ok().as_deref(),
        Some(a.as_str()),
        "apply is not idempotent"
    );
    carries(&a, var, &t1);
    if t1.is_empty() {
        assert_eq!(a, x, "nothing to add must leave the bytes alone");
    }
    if let Ok(o) = &before_other {
        let now = grub::read_var(&a, other);
        assert_eq!(now.ok().as_ref(), Some(o), "editing {var} changed {other}");
    }

    // A re-run with another selection still undoes to the same file.
    let b = grub::apply(&a, var, &t2);
    not_own_check_failure(&b);
    if let Ok(b) = b {
        assert_eq!(
            grub::reverse(&b).ok().as_deref(),
            Some(base.as_str()),
            "reverse after a re-run"
        );
        let again = grub::apply(&b, var, &t2);
        assert_eq!(
            again.ok().as_deref(),
            Some(b.as_str()),
            "re-run is not idempotent"
        );
        carries(&b, var, &t2);
        // And the other variable too, then undoing everything.
        let c = grub::apply(&b, other, &t1);
        not_own_check_failure(&c);
        if let Ok(c) = c {
            assert_eq!(
                grub::reverse(&c).ok().as_deref(),
                Some(base.as_str()),
                "reverse with two variables"
            );
            carries(&c, other, &t1);
        }
    }
});
