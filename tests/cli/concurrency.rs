//! Two `gpt full` at once on one root: one configures, the other refuses with "another gpt is
//! running" (or, if it starts after the first is done, finds nothing to do); the end state is
//! exactly one run's.

use crate::support::fakes::Fakes;
use crate::support::hosts;
use crate::support::tally;
use crate::support::transact::snap;
use std::path::Path;
use std::process::{Child, Stdio};

fn start(root: &Path, fakes: &Fakes) -> Child {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("gpt"));
    cmd.env("NO_COLOR", "1")
        .env("GPT_PCI_IDS", root.join("usr/share/misc/pci.ids"))
        .env("PATH", fakes.path())
        // Long enough that the two runs overlap.
        .env("FAKE_SLEEP", "update-grub:1")
        .arg("--root")
        .arg(root)
        .args(["full", "nvidia", "--yes", "--no-deps"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_full_at_once_one_refuses_and_the_end_state_is_one_runs() {
    // The reference: one run alone.
    let alone = tempfile::tempdir().unwrap();
    hosts::rocketlake(alone.path());
    let fakes = Fakes::new();
    fakes.prime(alone.path());
    let (code, err) = finish(start(alone.path(), &fakes));
    assert_eq!(code, 0, "{err}");
    let want = snap(alone.path());

    const ROUNDS: usize = 4;
    let mut refused = 0;
    for round in 0..ROUNDS {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        hosts::rocketlake(root);
        let fakes = Fakes::new();
        fakes.prime(root);
        // Started together; in the later rounds the second one comes a little later, while
        // the first is in its commands.
        let a = start(root, &fakes);
        std::thread::sleep(std::time::Duration::from_millis(150 * round as u64));
        let b = start(root, &fakes);
        let (ca, ea) = finish(a);
        let (cb, eb) = finish(b);
        let results = [(ca, &ea), (cb, &eb)];
        let winners = results
            .iter()
            .filter(|(c, e)| *c == 0 && !e.contains("already configured"))
            .count();
        assert_eq!(
            winners, 1,
            "round {round}: exactly one run configures:\n{ea}\n---\n{eb}"
        );
        for (c, e) in results {
            if c != 0 {
                assert_eq!(c, 1, "round {round}: {e}");
                assert!(
                    e.lines()
                        .last()
                        .unwrap_or_default()
                        .starts_with("error: another gpt is running (lock /run/gpt.lock held)"),
                    "round {round}: {e}"
                );
                refused += 1;
            }
        }
        assert_eq!(snap(root), want, "round {round}: not one run's end state");
        // Each update command ran once: the loser started none.
        let calls = fakes.calls();
        let grubs = calls.iter().filter(|c| *c == "update-grub").count();
        assert_eq!(grubs, 1, "round {round}: {calls:?}");
    }
    // The runs did overlap: the lock, not luck, kept them apart.
    assert!(
        refused >= ROUNDS - 1,
        "only {refused} of {ROUNDS} second runs met the lock"
    );
    tally::record("races", "two-full", ROUNDS, ROUNDS);
}
