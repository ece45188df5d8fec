//! Property tests for the pure file editors in `gpt::edit`.
//!
//! Each property runs 10,000 generated cases and prints one line with the number of cases
//! it really ran, e.g. `editor cases: grub 10000/10000` (see it with `-- --nocapture`).

use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "support/tally.rs"]
mod tally;

use gpt::edit::modprobe::{self, BindTarget};
use gpt::edit::{cmdline, grub, modules};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CASES: u32 = 10_000;

/// Run `test` on `CASES` values of `strategy`, then print the count of cases it ran.
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let count = AtomicUsize::new(0);
    let config = Config {
        cases: CASES,
        // Do not write regression files next to the sources.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |v| {
        count.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let ran = count.load(Ordering::Relaxed);
    assert!(ran >= CASES as usize, "{name}: only {ran} cases ran");
    println!("editor cases: {name} {ran}/{CASES}");
    tally::record("editor cases", name, ran, CASES as usize);
}

/// `n` characters of `alphabet`, picked by a small PRNG from `seed` (much faster than
/// regex strategies in unoptimized test builds).
fn pick(seed: u64, alphabet: &str, n: usize) -> String {
    let chars: Vec<char> = alphabet.chars().collect();
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chars[(x % chars.len() as u64) as usize]
        })
        .collect()
}

fn join_lines(lines: &[String], crlf: bool, final_newline: bool) -> String {
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut s = lines.join(eol);
    if final_newline && !lines.is_empty() {
        s.push_str(eol);
    }
    s
}

/// Lines with their endings, so comparisons see every byte.
fn split_keep(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

// ---------------------------------------------------------------------------------------
// grub

const VARS: [&str; 2] = ["GRUB_CMDLINE_LINUX_DEFAULT", "GRUB_CMDLINE_LINUX"];

const WANT_POOL: [&str; 10] = [
    "iommu=pt",
    "intel_iommu=on",
    "amd_iommu=on",
    "vfio-pci.ids=10de:1f08,10de:10f9",
    "vfio_pci.ids=1002:73bf",
    "vfio-pci.ids=8086:3e92",
    "quiet",
    "rd.driver.pre=vfio-pci",
    "video=efifb:off",
    "kvm.ignore_msrs=1",
];

fn value_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "quiet",
            "splash",
            "$GRUB_CMDLINE_LINUX_DEFAULT",
            "${EXTRA}",
            "iommu=pt",
            "intel_iommu=on",
            "vfio-pci.ids=10de:1f08,10de:10f9",
            "vfio_pci.ids=1002:73bf",
            "console=ttyS0,115200n8",
            "mitigations=off",
            "rd.driver.pre=vfio-pci",
        ])
        .prop_map(String::from),
        2 => (any::<u64>(), 0usize..13).prop_map(|(seed, n)| {
            let mut t = pick(seed, "abcdefghijklmnopqrstuvwxyz", 1);
            t.push_str(&pick(seed >> 5, "abcdefghijklmnopqrstuvwxyz0123456789_.=:,-", n));
            t
        }),
        1 => (100usize..400).prop_map(|n| format!("x={}", "a".repeat(n))),
    ]
}

/// A plain assignment of `var` in any of the supported shapes.
fn target_line(var: &'static str) -> impl Strategy<Value = String> {
    (
        select(vec!["", " ", "  ", "\t"]),
        select(vec!["", "export ", "export\t"]),
        0u8..3,
        prop::collection::vec((select(vec![" ", "  ", "\t", " \t"]), value_token()), 0..5),
        select(vec!["", " ", "\t"]),
        select(vec!["", " ", "\t"]),
        select(vec!["", "  # mine", "\t# don't touch", " #", " "]),
    )
        .prop_map(move |(lead, export, quote, toks, open, close, tail)| {
            let mut s = format!("{lead}{export}{var}=");
            if quote == 0 {
                if let Some((_, t)) = toks.first() {
                    s.push_str(t);
                }
            } else {
                let q = if quote == 1 { "\"" } else { "'" };
                s.push_str(q);
                s.push_str(open);
                for (i, (sep, t)) in toks.iter().enumerate() {
                    if i > 0 {
                        s.push_str(sep);
                    }
                    s.push_str(t);
                }
                s.push_str(close);
                s.push_str(q);
            }
            s.push_str(tail);
            s
        })
}

fn other_grub_line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec![
            "GRUB_DEFAULT=0",
            "GRUB_TIMEOUT=5",
            "GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`",
            "# If you change this file, run 'update-grub' afterwards to update",
            "#   info -f grub -n 'Simple configuration'",
            "#GRUB_CMDLINE_LINUX_DEFAULT=\"commented copy\"",
            "# GRUB_CMDLINE_LINUX=\"quiet splash\"",
            "  #GRUB_CMDLINE_LINUX_DEFAULT='x y'",
            "",
            "   ",
            "\t",
            "#GRUB_GFXMODE=640x480",
            "GRUB_TERMINAL=console",
            "GRUB_TIMEOUT_STYLE=hidden",
            "X=\"$(uname -r)\"",
            "export GRUB_CMDLINE_LINUX_DEFAULT",
            "if [ -e /etc/x ]; then Y=1; fi",
            "GRUB_DISABLE_OS_PROBER=false # don't probe",
            "GRUB_CMDLINE_XEN=\"$GRUB_CMDLINE_LINUX ${GRUB_CMDLINE_LINUX_DEFAULT}\"",
        ])
        .prop_map(String::from),
        1 => (any::<u64>(), 0usize..300).prop_map(|(seed, n)| {
            let printable: String = (b' '..=b'~').map(char::from).collect();
            format!("# {}", pick(seed, &printable, n))
        }),
    ]
}

fn grub_case() -> impl Strategy<Value = (String, &'static str, Vec<String>, Vec<String>)> {
    let line = prop_oneof![
        4 => other_grub_line(),
        1 => target_line(VARS[0]),
        1 => target_line(VARS[1]),
    ];
    let want = || prop::collection::vec(select(WANT_POOL.to_vec()).prop_map(String::from), 0..5);
    (
        prop::collection::vec(line, 0..14),
        any::<bool>(),
        any::<bool>(),
        select(VARS.to_vec()),
        want(),
        want(),
    )
        .prop_map(|(lines, crlf, fin, var, t1, t2)| (join_lines(&lines, crlf, fin), var, t1, t2))
}

fn is_var_line(body: &str, var: &str) -> bool {
    let t = body.trim_start_matches([' ', '\t']);
    let t = t
        .strip_prefix("export")
        .filter(|r| r.starts_with([' ', '\t']))
        .map_or(t, |r| r.trim_start_matches([' ', '\t']));
    t.starts_with(&format!("{var}="))
}

fn body(line: &str) -> &str {
    line.trim_end_matches('\n').trim_end_matches('\r')
}

/// Check, independently of the editor's own code, that `a` is `x` with only gpt's marker
/// line and tokens (and quotes, or a created line) added.
fn only_gpt_bytes_changed(
    x: &str,
    a: &str,
    var: &str,
    added: &[&str],
) -> Result<(), TestCaseError> {
    let xl = split_keep(x);
    let al: Vec<&str> = split_keep(a)
        .into_iter()
        .filter(|l| !l.starts_with("# gpt: "))
        .collect();
    let eff = xl.iter().rposition(|l| is_var_line(body(l), var));
    let Some(eff) = eff else {
        // A created line at the end.
        prop_assert_eq!(al.len(), xl.len() + 1);
        let n = xl.len();
        if let Some(last) = xl.last() {
            prop_assert!(al[n - 1].starts_with(last));
        }
        prop_assert_eq!(&xl[..n.saturating_sub(1)], &al[..n.saturating_sub(1)]);
        let want_created = format!("{var}=\"{}\"", added.join(" "));
        prop_assert_eq!(body(al[n]), want_created.as_str());
        return Ok(());
    };
    prop_assert_eq!(al.len(), xl.len());
    for i in 0..xl.len() {
        if i != eff {
            prop_assert_eq!(xl[i], al[i], "line {} changed", i + 1);
        }
    }
    let inner_x = grub::read_var(x, var).unwrap().unwrap();
    let inner_a = if inner_x.is_empty() {
        added.join(" ")
    } else {
        format!("{inner_x} {}", added.join(" "))
    };
    let line = xl[eff];
    let eq = line.find('=').unwrap() + 1;
    let (prefix, rest) = line.split_at(eq);
    let expected = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let suffix = &rest[inner_x.len() + 2..];
            format!("{prefix}{q}{inner_a}{q}{suffix}")
        }
        _ => format!("{prefix}\"{inner_a}\"{}", &rest[inner_x.len()..]),
    };
    prop_assert_eq!(al[eff], expected.as_str());
    // The marker sits right above the edited line.
    let with_markers = split_keep(a);
    let at = with_markers.iter().position(|l| *l == al[eff]).unwrap();
    prop_assert!(at > 0 && with_markers[at - 1].starts_with("# gpt: "));
    Ok(())
}

/// Which of `files` (shell scripts) `dash -n` rejects: dash is the /bin/sh that update-grub's
/// grub-mkconfig sources /etc/default/grub with. One dash runs the whole batch.
fn rejected_by_sh(files: &[String]) -> Vec<usize> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let p = dir.path().join(i.to_string());
            std::fs::write(&p, f).unwrap();
            p.display().to_string()
        })
        .collect();
    let out = std::process::Command::new("dash")
        .arg("-c")
        .arg(r#"i=0; for f; do dash -n "$f" 2>/dev/null || echo "$i"; i=$((i + 1)); done"#)
        .arg("sh")
        .args(&paths)
        .output()
        .expect("dash (Debian's /bin/sh) runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// One case in this many has its input and its edited output parsed by the shell.
const SHELL_SAMPLE: usize = 20;

#[test]
fn grub_properties() {
    let seen = AtomicUsize::new(0);
    let sampled = std::sync::Mutex::new(Vec::new());
    run("grub", grub_case(), |(x, var, t1, t2)| {
        let sample = seen.fetch_add(1, Ordering::Relaxed) % SHELL_SAMPLE == 0;
        let other = VARS.iter().find(|v| **v != var).unwrap();
        let before = grub::read_var(&x, var).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let present: Vec<String> = before
            .as_deref()
            .map(|v| cmdline::split(v).into_iter().map(String::from).collect())
            .unwrap_or_default();
        let mut added: Vec<&str> = Vec::new();
        for t in &t1 {
            if !present.contains(t) && !added.contains(&t.as_str()) {
                added.push(t);
            }
        }

        let a = grub::apply(&x, var, &t1).unwrap();
        prop_assert_eq!(&grub::reverse(&a).unwrap(), &x, "reverse(apply(x)) != x");
        prop_assert_eq!(
            &grub::apply(&a, var, &t1).unwrap(),
            &a,
            "apply is not idempotent"
        );
        let v = grub::read_var(&a, var).unwrap().unwrap_or_default();
        let have = cmdline::split(&v);
        for t in &t1 {
            prop_assert!(have.contains(&t.as_str()), "{} missing from {:?}", t, v);
        }
        prop_assert_eq!(
            grub::read_var(&a, other).unwrap(),
            grub::read_var(&x, other).unwrap(),
            "the other variable changed"
        );
        if added.is_empty() {
            prop_assert_eq!(&a, &x, "nothing to add must leave the bytes alone");
            prop_assert!(grub::added_tokens(&a).is_empty());
        } else {
            let want: Vec<String> = added.iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(grub::added_tokens(&a), vec![(var.to_string(), want)]);
            only_gpt_bytes_changed(&x, &a, var, &added)?;
        }
        // The user edits the file around gpt's lines: reset keeps their edits.
        let eol = if x.contains("\r\n") { "\r\n" } else { "\n" };
        let note = format!("# user note{eol}");
        prop_assert_eq!(
            grub::reverse(&format!("{note}{a}")).unwrap(),
            format!("{note}{x}")
        );
        if x.is_empty() || x.ends_with('\n') {
            let more = format!("GRUB_TIMEOUT=9{eol}");
            prop_assert_eq!(
                grub::reverse(&format!("{a}{more}")).unwrap(),
                format!("{x}{more}")
            );
        }
        // The legacy clean-up takes exactly the matching tokens, creates no double space,
        // and leaves every other line alone.
        let legacy = |t: &str| t.starts_with("iommu") || t == "quiet" || t.starts_with("vfio");
        let (r, removed) = grub::remove_tokens(&x, var, legacy).unwrap();
        let vr = grub::read_var(&r, var).unwrap();
        let left: Vec<&str> = present
            .iter()
            .map(String::as_str)
            .filter(|t| !legacy(t))
            .collect();
        let gone: Vec<&str> = present
            .iter()
            .map(String::as_str)
            .filter(|t| legacy(t))
            .collect();
        prop_assert_eq!(vr.as_deref().map(cmdline::split).unwrap_or_default(), left);
        prop_assert_eq!(removed, gone);
        if let (Some(before), Some(after)) = (before.as_deref(), vr.as_deref()) {
            prop_assert!(after.matches("  ").count() <= before.matches("  ").count());
        }
        let (xl, rl) = (split_keep(&x), split_keep(&r));
        prop_assert_eq!(xl.len(), rl.len());
        prop_assert!(xl.iter().zip(&rl).filter(|(p, q)| p != q).count() <= 1);
        // gpt's own tokens are not the legacy clean-up's to take.
        let (cleaned, _) = grub::remove_tokens(&a, var, |t| added.contains(&t)).unwrap();
        prop_assert_eq!(&cleaned, &a);

        // A re-run with another selection still undoes to the original.
        let b = grub::apply(&a, var, &t2).unwrap();
        prop_assert_eq!(&grub::reverse(&b).unwrap(), &x, "reverse after a re-run");
        prop_assert_eq!(&grub::apply(&b, var, &t2).unwrap(), &b);
        let v = grub::read_var(&b, var).unwrap().unwrap_or_default();
        for t in &t2 {
            prop_assert!(cmdline::split(&v).contains(&t.as_str()));
        }
        // Editing the other variable too, then undoing everything.
        let c = grub::apply(&b, other, &t1).unwrap();
        prop_assert_eq!(
            &grub::reverse(&c).unwrap(),
            &x,
            "reverse with two variables"
        );
        if sample {
            sampled.lock().unwrap().push((x, a, c));
        }
        Ok(())
    });
    // What grub-mkconfig would source still parses: every sampled output whose input parsed.
    let cases = sampled.into_inner().unwrap();
    let files: Vec<String> = cases
        .iter()
        .flat_map(|(x, a, c)| [x.clone(), a.clone(), c.clone()])
        .collect();
    let bad = rejected_by_sh(&files);
    let broken: Vec<&String> = bad
        .iter()
        .filter(|i| *i % 3 != 0 && !bad.contains(&(*i - *i % 3)))
        .map(|i| &files[*i])
        .collect();
    assert!(
        broken.is_empty(),
        "edits that the shell no longer parses: {broken:#?}"
    );
    let parsed = cases.len() - bad.iter().filter(|i| *i % 3 == 0).count();
    assert!(
        parsed * 2 > cases.len(),
        "most generated inputs must parse as shell"
    );
    println!(
        "editor cases: grub shell {parsed}/{} sampled inputs that parse still parse after the edits",
        cases.len()
    );
}

/// Shell-ish noise: whatever the input, no panic; when apply accepts a file, its laws hold.
#[test]
fn grub_never_guesses_on_noise() {
    let piece = select(vec![
        "GRUB_CMDLINE_LINUX_DEFAULT=",
        "GRUB_CMDLINE_LINUX_DEFAULT",
        "export ",
        "\"",
        "'",
        "`",
        "$(",
        "$",
        "\\",
        "#",
        "# ",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "quiet",
        "iommu=pt",
        ";",
        "if ",
        " fi",
        "=",
        "{",
        "}",
        "(",
        ")",
        "~",
        "X=1",
    ]);
    let case = (
        prop::collection::vec(piece, 0..40).prop_map(|v| v.concat()),
        prop::collection::vec(select(WANT_POOL.to_vec()).prop_map(String::from), 0..4),
    );
    let var = VARS[0];
    let accepted = AtomicUsize::new(0);
    run("grub-noise", case, |(x, t)| {
        prop_assert_eq!(&grub::reverse(&x).unwrap(), &x);
        let r = grub::read_var(&x, var);
        let a = grub::apply(&x, var, &t);
        match (&r, &a) {
            (Err(_), Ok(_)) => prop_assert!(false, "apply accepted what read_var refused"),
            (Ok(Some(_)), Err(e)) => prop_assert!(false, "apply refused a readable file: {e:#}"),
            (Ok(None), Err(e)) => {
                // Only refusing to append where the shell would not read a new line.
                prop_assert!(e.to_string().contains("at the end of the file"), "{e:#}");
            }
            _ => {}
        }
        if let Err(e) = &a {
            prop_assert!(!e.to_string().contains("its own check"), "{e:#}");
        }
        if let Ok(a) = a {
            accepted.fetch_add(1, Ordering::Relaxed);
            prop_assert_eq!(&grub::reverse(&a).unwrap(), &x);
            prop_assert_eq!(&grub::apply(&a, var, &t).unwrap(), &a);
            let v = grub::read_var(&a, var).unwrap().unwrap_or_default();
            for tok in &t {
                prop_assert!(cmdline::split(&v).contains(&tok.as_str()));
            }
        }
        let _ = grub::remove_tokens(&x, var, |t| t == "iommu=pt");
        Ok(())
    });
    println!(
        "  (grub-noise: apply accepted {} of the cases, refused the rest)",
        accepted.load(Ordering::Relaxed)
    );
}

/// Noise that also holds gpt's markers (stale, misplaced, repeated): apply either refuses
/// or keeps its laws relative to what reset would give back.
#[test]
fn grub_markers_in_noise() {
    let piece = select(vec![
        "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: iommu=pt (gpt reset removes them)\n",
        "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: vfio-pci.ids=8086:3e92 quiet (gpt reset removes them)\n",
        "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT and quoted it: iommu=pt (gpt reset removes them and the quotes)\n",
        "# gpt: created GRUB_CMDLINE_LINUX_DEFAULT with: iommu=pt (gpt reset removes this line)\n",
        "# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\n",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt\"\n",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt\"",
        "GRUB_CMDLINE_LINUX_DEFAULT=\"\"\n",
        "GRUB_CMDLINE_LINUX_DEFAULT=iommu=pt\n",
        "GRUB_CMDLINE_LINUX_DEFAULT='vfio-pci.ids=8086:3e92 quiet'\r\n",
        "GRUB_CMDLINE_LINUX=\"quiet\"\n",
        "GRUB_CMDLINE_LINUX=\"\"",
        "\n",
        "\r\n",
        "# comment\n",
        "X=1\n",
        "\"",
    ]);
    let case = (
        prop::collection::vec(piece, 0..12).prop_map(|v| v.concat()),
        prop::collection::vec(select(WANT_POOL.to_vec()).prop_map(String::from), 0..4),
    );
    let var = VARS[0];
    let accepted = AtomicUsize::new(0);
    run("grub-markers", case, |(x, t)| {
        let base = grub::reverse(&x);
        let a = grub::apply(&x, var, &t);
        if let Err(e) = &a {
            prop_assert!(!e.to_string().contains("its own check"), "{e:#}");
        }
        if let Ok(a) = a {
            accepted.fetch_add(1, Ordering::Relaxed);
            let base =
                base.map_err(|e| TestCaseError::fail(format!("apply ok, reset not: {e:#}")))?;
            prop_assert_eq!(&grub::reverse(&a).unwrap(), &base);
            prop_assert_eq!(&grub::apply(&a, var, &t).unwrap(), &a);
            let v = grub::read_var(&a, var).unwrap().unwrap_or_default();
            for tok in &t {
                prop_assert!(cmdline::split(&v).contains(&tok.as_str()));
            }
        }
        if let Ok(base) = grub::reverse(&x) {
            prop_assert!(grub::added_tokens(&base).is_empty());
        }
        Ok(())
    });
    println!(
        "  (grub-markers: apply accepted {} of the cases, refused the rest)",
        accepted.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------------------
// initramfs modules

const MODULE_POOL: [&str; 7] = [
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
    "vfio-pci",
    "kvmgt",
    "mdev",
    "vfio_virqfd",
];

fn norm(m: &str) -> String {
    m.replace('-', "_")
}

fn is_block_begin(l: &str) -> bool {
    body(l).starts_with("# BEGIN gpt")
}

fn is_block_end(l: &str) -> bool {
    body(l) == "# END gpt"
}

/// Lines outside `# BEGIN gpt` … `# END gpt`, found without the editor's code.
fn outside_blocks(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in split_keep(s) {
        if is_block_begin(l) {
            inside = true;
        } else if inside && is_block_end(l) {
            inside = false;
        } else if !inside {
            out.push(l);
        }
    }
    out
}

fn modules_case() -> impl Strategy<Value = (String, Vec<String>)> {
    let line = select(vec![
        "nvidia",
        "nvidia-drm modeset=1",
        "vfio",
        "vfio-pci ids=10de:1f08",
        "  vfio_iommu_type1",
        "# vfio_pci",
        "#vfio",
        "raid1",
        "",
        "  ",
        "# List of modules that you want to include in your initramfs.",
        "options vfio-pci ids=10de:1f08,10de:10f9",
        "i915 enable_guc=3",
        "\tkvmgt",
    ])
    .prop_map(String::from);
    let mods = || prop::collection::vec(select(MODULE_POOL.to_vec()).prop_map(String::from), 0..5);
    (
        prop::collection::vec(line, 0..10),
        any::<bool>(),
        any::<bool>(),
        prop::option::weighted(0.3, (any::<prop::sample::Index>(), mods())),
        mods(),
    )
        .prop_map(|(mut lines, crlf, fin, prior, want)| {
            if let Some((at, prior)) = prior {
                let pos = at.index(lines.len() + 1);
                let mut block = vec![modules::BEGIN.to_string()];
                block.extend(prior);
                block.push(modules::END.to_string());
                lines.splice(pos..pos, block);
            }
            (join_lines(&lines, crlf, fin), want)
        })
}

#[test]
fn modules_properties() {
    run("modules", modules_case(), |(x, want)| {
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let base = modules::reverse(&x);
        let had_block = modules::has_block(&x);
        prop_assert_eq!(had_block, base != x || x.contains("# BEGIN gpt"));
        let user: Vec<String> = outside_blocks(&x)
            .iter()
            .filter_map(|l| body(l).split_ascii_whitespace().next())
            .filter(|w| !w.starts_with('#'))
            .map(norm)
            .collect();
        let mut expected: Vec<&str> = Vec::new();
        for m in &want {
            if !user.contains(&norm(m)) && !expected.iter().any(|e| norm(e) == norm(m)) {
                expected.push(m);
            }
        }

        let a = modules::apply(&x, &want);
        prop_assert_eq!(
            &modules::reverse(&a),
            &base,
            "reverse(apply(x)) != reverse(x)"
        );
        prop_assert_eq!(&modules::apply(&a, &want), &a, "apply is not idempotent");
        prop_assert_eq!(modules::block_modules(&a), expected.clone());
        prop_assert_eq!(modules::has_block(&a), !expected.is_empty());
        if !had_block {
            prop_assert_eq!(&modules::reverse(&a), &x);
            if expected.is_empty() {
                prop_assert_eq!(&a, &x, "nothing to add must leave the bytes alone");
            } else {
                // Exactly the block, after an added newline only if x lacked one.
                let eol = if x.contains("\r\n") { "\r\n" } else { "\n" };
                let mut want_text = x.clone();
                let no_final = !x.is_empty() && !x.ends_with('\n');
                if no_final {
                    want_text.push_str(eol);
                }
                let mut block = vec![modules::BEGIN];
                block.extend(&expected);
                block.push(modules::END);
                want_text.push_str(&block.join(eol));
                if !no_final {
                    want_text.push_str(eol);
                }
                prop_assert_eq!(&a, &want_text);
            }
        }
        // No byte outside the block changes (ignoring only the newline gpt adds to a last
        // line that had none).
        let outside_a: String = outside_blocks(&a).concat();
        let gpt_newline = a.ends_with(modules::END)
            && (outside_a == format!("{base}\n") || outside_a == format!("{base}\r\n"));
        prop_assert!(
            outside_a == base || gpt_newline,
            "bytes outside the block changed: {:?} vs {:?}",
            outside_a,
            base
        );

        // The generic line remover keeps every other byte.
        let is_opt = |l: &str| l.starts_with("options ");
        let (kept, removed) = modules::remove_lines(&x, is_opt);
        prop_assert_eq!(
            removed.len(),
            split_keep(&x).iter().filter(|l| is_opt(body(l))).count()
        );
        let kept_expected: String = split_keep(&x)
            .into_iter()
            .filter(|l| !is_opt(body(l)))
            .collect();
        prop_assert_eq!(kept, kept_expected);
        prop_assert_eq!(modules::remove_lines(&x, |_| false).0, x.clone());
        prop_assert_eq!(
            modules::legacy_option_lines(&x).len(),
            split_keep(&x)
                .iter()
                .filter(|l| body(l).starts_with("options vfio-pci "))
                .count()
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// modprobe

fn modprobe_case() -> impl Strategy<Value = (Vec<String>, Vec<BindTarget>)> {
    let module = prop_oneof![
        3 => select(vec![
            "nouveau",
            "snd_hda_intel",
            "snd-hda-intel",
            "xhci_pci",
            "i2c_nvidia_gpu",
            "amdgpu",
            "radeon",
            "nvidia",
            "vfio_pci",
            "vfio-pci",
            "bad name",
            "",
        ])
        .prop_map(String::from),
        1 => "[a-z][a-z0-9_-]{0,10}",
    ];
    let address = prop_oneof![
        3 => (0u16..4, 0u8..8, 0u8..32, 0u8..8)
            .prop_map(|(d, b, s, f)| format!("{d:04x}:{b:02x}:{s:02x}.{f}")),
        1 => select(vec!["0000:0A:00.0", "01:00.0", "0000:01:00.8", "", "0000:01:00.0;x"])
            .prop_map(String::from),
    ];
    let target =
        (address, any::<u16>(), any::<u16>()).prop_map(|(address, vendor, device)| BindTarget {
            address,
            vendor,
            device,
        });
    (
        prop::collection::vec(module, 0..8),
        prop::collection::vec(target, 0..4),
    )
}

fn valid_address(a: &str) -> bool {
    let b = a.as_bytes();
    b.len() == 12
        && [4, 7].iter().all(|&i| b[i] == b':')
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|&i| b[i].is_ascii_hexdigit())
}

#[test]
fn modprobe_properties() {
    run("modprobe", modprobe_case(), |(mods, targets)| {
        let r = modprobe::render(&mods, &targets);
        // Deterministic whatever the order and duplicates.
        let mut mods2 = mods.clone();
        mods2.reverse();
        mods2.extend(mods.iter().take(2).cloned());
        let mut targets2 = targets.clone();
        targets2.reverse();
        targets2.extend(targets.iter().take(1).cloned());
        prop_assert_eq!(&modprobe::render(&mods2, &targets2), &r);

        prop_assert!(modprobe::is_gpt_owned(&r));
        prop_assert!(r.ends_with('\n') && !r.contains('\r'));
        let mut want_mods: Vec<String> = mods
            .iter()
            .map(|m| norm(m.trim()))
            .filter(|m| {
                !m.is_empty()
                    && !m.starts_with("vfio")
                    && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .collect();
        want_mods.sort();
        want_mods.dedup();
        prop_assert_eq!(modprobe::softdeps(&r), want_mods.clone());
        let mut want_targets: Vec<BindTarget> = targets
            .iter()
            .map(|t| BindTarget {
                address: t.address.to_ascii_lowercase(),
                ..t.clone()
            })
            .filter(|t| valid_address(&t.address))
            .collect();
        want_targets.sort();
        want_targets.dedup();
        prop_assert_eq!(modprobe::bind_targets(&r), want_targets.clone());
        for line in r.lines() {
            prop_assert!(
                line.starts_with('#')
                    || line.is_empty()
                    || line.starts_with("softdep ")
                    || line.starts_with("install "),
                "unexpected line {:?}",
                line
            );
            prop_assert!(!line.ends_with('\\'));
        }
        // With targets: one hook for vfio_pci and one for each held-off driver, each loading
        // its own module for real.
        let install: Vec<&str> = r.lines().filter(|l| l.starts_with("install ")).collect();
        let hooked = if want_targets.is_empty() {
            0
        } else {
            1 + want_mods.len()
        };
        prop_assert_eq!(install.len(), hooked);
        for line in &install {
            let module = line.split_whitespace().nth(1).unwrap();
            prop_assert!(module == "vfio_pci" || want_mods.iter().any(|m| m == module));
            let tail = format!("esac; exec /sbin/modprobe --ignore-install {module} $CMDLINE_OPTS");
            prop_assert!(line.ends_with(&tail));
            prop_assert!(line.contains("*\" gpt.bind=off \"*) ;;"));
            prop_assert!(!line.contains('#'));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// cmdline

#[test]
fn cmdline_properties() {
    let token = "[a-z_-]{1,8}(\\.[a-z_-]{1,6})?(=[a-z0-9=:,._-]{0,10})?";
    let ws = select(vec![" ", "  ", "\t", "\n", " \t "]);
    let case = prop::collection::vec((ws, token), 0..8);
    run("cmdline", case, |parts| {
        let line: String = parts.iter().map(|(w, t)| format!("{w}{t}")).collect();
        let toks: Vec<&str> = parts.iter().map(|(_, t)| t.as_str()).collect();
        prop_assert_eq!(cmdline::split(&line), toks.clone());
        for t in toks {
            let k = cmdline::key(t);
            prop_assert!(!k.contains('-') && !k.contains('='));
            let (name, value) = match t.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (t, None),
            };
            prop_assert_eq!(&k, &name.replace('-', "_"));
            prop_assert_eq!(cmdline::value(t), value);
            let respelled = match value {
                Some(v) => format!("{}={v}", name.replace('_', "-")),
                None => name.replace('_', "-"),
            };
            prop_assert_eq!(cmdline::key(&respelled), k);
        }
        Ok(())
    });
}
