//! Shared by the integration tests: host-tree builders and helpers to run the real binary.
#![allow(dead_code)]

pub mod fakes;
pub mod hosts;
pub mod kernel;
pub mod synth;
pub mod tally;
pub mod transact;
pub mod tree;

use assert_cmd::Command;
use std::path::Path;

/// The real `gpt` binary, with a stable environment: no colours, the root's own pci.ids only.
pub fn gpt(root: &Path) -> Command {
    let mut cmd = Command::cargo_bin("gpt").unwrap();
    cmd.env("NO_COLOR", "1")
        .env("GPT_PCI_IDS", root.join("usr/share/misc/pci.ids"))
        .arg("--root")
        .arg(root);
    cmd
}

/// The real `gpt` binary as [`gpt`] gives it, with the fake commands first on PATH (one set
/// for the whole test process: for read-only commands such as `gpt check`).
pub fn gpt_with_fakes(root: &Path) -> Command {
    static FAKES: std::sync::OnceLock<fakes::Fakes> = std::sync::OnceLock::new();
    let mut cmd = gpt(root);
    cmd.env("PATH", FAKES.get_or_init(fakes::Fakes::new).path());
    cmd
}

/// Run and return (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `out` holds nothing but a plan as gpt renders it (unified diffs, then a `Commands:`
/// list): what a real run without `--json` prints on stdout before it applies or fails. Any
/// message, error or JSON there is a defect.
pub fn plan_only(out: &str) -> bool {
    out.lines().all(|l| {
        l.is_empty()
            || l == "Commands:"
            || ["--- ", "+++ ", "@@ ", " ", "+", "-", "\\ No newline"]
                .iter()
                .any(|p| l.starts_with(p))
    })
}
