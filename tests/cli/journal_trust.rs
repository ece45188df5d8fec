//! The journal is data, not instructions (issue 27, item 3): a `state.json` that points
//! outside gpt's own files, names a copy outside its folder, restores a set-id mode or hands a
//! file to another user is refused with one `error:` line, and the tree stays byte-identical.

use crate::support::fakes::Fakes;
use crate::support::run;
use crate::support::transact::{primed_host, simulate_full, snap};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

const STATE: &str = "var/lib/gpt/state.json";

/// A host after a real `gpt full` transaction, its journal as JSON.
fn configured() -> (tempfile::TempDir, Fakes, Value) {
    let (dir, fakes) = primed_host();
    simulate_full(dir.path(), &fakes, &[]).unwrap();
    fakes.reset_log();
    let doc = serde_json::from_slice(&fs::read(dir.path().join(STATE)).unwrap()).unwrap();
    (dir, fakes, doc)
}

/// The journal entry of /etc/default/grub.
fn grub(doc: &mut Value) -> &mut Value {
    doc["files"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["path"] == "/etc/default/grub")
        .unwrap()
}

/// Write the tampered journal, run `gpt reset --yes`: refused, naming `why`, nothing changed
/// and nothing run.
fn refused(root: &Path, fakes: &Fakes, doc: &Value, why: &str) {
    fs::write(root.join(STATE), serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let before = snap(root);
    let (code, out, err) = run(crate::support::gpt(root)
        .env("PATH", fakes.path())
        .args(["reset", "--yes"]));
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(why), "{err}");
    assert!(errors[0].contains("move it aside"), "{err}");
    assert_eq!(snap(root), before);
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
}

#[test]
fn a_copy_named_outside_the_journal_folder_is_refused_and_not_deleted() {
    let (dir, fakes, mut doc) = configured();
    let root = dir.path();
    fs::write(root.join("etc/secret"), "not gpt's\n").unwrap();
    grub(&mut doc)["original"] = json!("../../../etc/secret");
    refused(
        root,
        &fakes,
        &doc,
        "\"../../../etc/secret\" of /etc/default/grub",
    );
    assert!(root.join("etc/secret").exists());
}

#[test]
fn a_setuid_mode_is_refused() {
    let (dir, fakes, mut doc) = configured();
    grub(&mut doc)["mode"] = json!(0o6755);
    refused(
        dir.path(),
        &fakes,
        &doc,
        "the mode 6755 of /etc/default/grub",
    );
}

#[test]
fn a_path_gpt_never_writes_is_refused() {
    let (dir, fakes, mut doc) = configured();
    doc["files"].as_array_mut().unwrap().push(json!({
        "path": "/etc/sudoers.d/gpt", "existed": true, "mode": 0o440, "uid": 0, "gid": 0,
        "original": "originals/9", "written": null
    }));
    doc["blobs"]["originals/9"] = json!("ALL ALL=(ALL) NOPASSWD: ALL\n");
    refused(
        dir.path(),
        &fakes,
        &doc,
        "\"/etc/sudoers.d/gpt\" is not a file gpt writes",
    );
    assert!(!dir.path().join("etc/sudoers.d").exists());
}

#[test]
fn a_folder_gpt_never_creates_is_refused() {
    let (dir, fakes, mut doc) = configured();
    fs::create_dir(dir.path().join("etc/empty")).unwrap();
    doc["created_dirs"] = json!(["/etc/empty"]);
    refused(
        dir.path(),
        &fakes,
        &doc,
        "\"/etc/empty\" is not a folder gpt creates",
    );
}

/// As root only: a test run by another user cannot make a file root's to begin with.
#[test]
fn an_owner_other_than_root_or_the_files_own_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to own the tree's files");
        return;
    }
    let (dir, fakes, mut doc) = configured();
    let g = grub(&mut doc);
    g["uid"] = json!(1000);
    g["gid"] = json!(1000);
    refused(
        dir.path(),
        &fakes,
        &doc,
        "gives /etc/default/grub to 1000:1000",
    );
}
