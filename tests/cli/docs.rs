//! `gpt completions` and `gpt man`: generated from the command line, and usable by the real
//! bash and the real groff.

use assert_cmd::Command;
use std::process::Stdio;

fn gpt() -> Command {
    let mut cmd = Command::cargo_bin("gpt").unwrap();
    cmd.env("NO_COLOR", "1");
    cmd
}

fn stdout_of(args: &[&str]) -> String {
    let out = gpt().args(args).output().unwrap();
    assert!(out.status.success(), "gpt {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Run `program args` with `input` on stdin; its stdout and stderr. The tools are part of
/// Debian's base (bash, groff-base); `.ci/run` installs groff-base when it is missing.
fn pipe(input: &str, program: &str, args: &[&str]) -> (String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (install it: groff-base, bash): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What bash's completion offers for `words`, the last being the word being completed, with
/// the script `gpt completions bash` printed loaded.
fn bash_completes(script: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let cword = words.len() - 1;
    let prev = words[cword - 1];
    let cur = words[cword];
    let driver = format!(
        "{script}\nCOMP_WORDS=({}); COMP_CWORD={cword}; _gpt gpt '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        quoted.join(" ")
    );
    let (out, _) = pipe(&driver, "bash", &["-s"]);
    out.lines().map(str::to_string).collect()
}

#[test]
fn bash_completes_commands_options_and_values() {
    let script = stdout_of(&["completions", "bash"]);
    assert_eq!(bash_completes(&script, &["gpt", "re"]), ["reset"]);
    assert_eq!(
        bash_completes(&script, &["gpt", "full", "--dr"]),
        ["--dry-run"]
    );
    let commands = bash_completes(&script, &["gpt", ""]);
    for c in [
        "full",
        "reset",
        "iommu",
        "check",
        "qemu",
        "rom",
        "completions",
        "man",
    ] {
        assert!(
            commands.iter().any(|w| w == c),
            "{c} not offered: {commands:?}"
        );
    }
    let shells = bash_completes(&script, &["gpt", "completions", ""]);
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == s), "{s} not offered: {shells:?}");
    }
    // gpt's internal command (the Proxmox ESP reader) is offered by no shell.
    assert!(
        !commands.iter().any(|w| w.starts_with("__")),
        "{commands:?}"
    );
    assert!(
        bash_completes(&script, &["gpt", "--version"]) == ["--version"],
        "the version flag is still completed"
    );
    for shell in ["zsh", "fish"] {
        let s = stdout_of(&["completions", shell]);
        assert!(!s.contains("read-esps"), "{shell}");
        assert!(s.contains("dry-run") && s.contains("qemu"), "{shell}");
    }
}

#[test]
fn every_manual_page_is_clean_roff_with_its_options() {
    // gpt's own page lists the commands; each command's page has its title and options.
    let pages: [(Option<&str>, &str, &[&str]); 7] = [
        (
            None,
            "gpt(1)",
            &["full", "reset", "iommu", "check", "qemu", "rom", "--root"],
        ),
        (
            Some("full"),
            "gpt-full(1)",
            &["--dry-run", "--device", "vfio-pci.ids"],
        ),
        (Some("reset"), "gpt-reset(1)", &["--dry-run"]),
        (Some("iommu"), "gpt-iommu(1)", &["--gpu"]),
        (Some("check"), "gpt-check(1)", &["--json"]),
        (Some("qemu"), "gpt-qemu(1)", &["--json", "--rom"]),
        (
            Some("rom"),
            "gpt-rom(1)",
            &["--check", "--out", "--force", "romfile="],
        ),
    ];
    for (command, title, words) in pages {
        let mut args = vec!["man"];
        args.extend(command);
        let roff = stdout_of(&args);
        // groff with every warning on: a malformed page would warn on stderr.
        let (text, warnings) = pipe(&roff, "groff", &["-man", "-Tutf8", "-ww", "-P-cbou"]);
        assert_eq!(warnings, "", "gpt {args:?}: groff warns");
        let text = text.replace('\u{2010}', "-"); // groff's hyphen
        assert!(text.starts_with(title), "gpt {args:?}: {text}");
        for w in words {
            assert!(text.contains(w), "gpt {args:?}: no {w} in\n{text}");
        }
    }
}

#[test]
fn man_of_an_unknown_command_is_a_usage_error_that_names_the_commands() {
    let out = gpt().args(["man", "fulll"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: gpt man fulll: there is no such command; give one of full, reset"),
        "{err}"
    );
}

#[test]
fn json_is_refused_as_they_print_no_json() {
    for args in [["completions", "bash"], ["man", "full"]] {
        let out = gpt().arg("--json").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: --json: `gpt completions` and `gpt man` print a script"),
            "{err}"
        );
    }
}

#[test]
fn completions_and_man_read_no_host() {
    // They print what the command line is, so a --root that is not a host does not matter.
    for args in [["completions", "zsh"], ["man", "check"]] {
        let out = gpt()
            .args(["--root", "/nonexistent/host"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(!out.stdout.is_empty());
    }
}
