//! Under `--root`, a writing command that runs the tree's own programs says so, and refuses a
//! tree another user could change (issue 27, item 1): a folder on the way to what gpt writes
//! or runs owned by another user or writable by group or others, named; nothing changed.

use crate::support::fakes::Fakes;
use crate::support::gpt;
use crate::support::run;
use crate::support::transact::{primed_host, snap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const FULL: &[&str] = &["full", "nvidia", "debian", "--yes", "--no-deps"];

fn tree_program(root: &Path, abs: &str) {
    let p = root.join(abs.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn gpt_in(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).args(args))
}

#[test]
fn a_folder_another_user_could_change_is_refused_and_named() {
    // (folder in the tree, owner, mode): a user's /etc, a group-writable /usr/sbin (where the
    // tree's update-grub is), a root writable by all.
    let cases: [(&str, u32, u32, &str); 3] = [
        ("etc", 65534, 0o755, "is owned by uid 65534"),
        ("usr/sbin", 0, 0o775, "is writable by its group (mode 775)"),
        ("", 0, 0o757, "is writable by others (mode 757)"),
    ];
    for (folder, uid, mode, why) in cases {
        let (dir, fakes) = primed_host();
        let r = dir.path();
        tree_program(r, "/usr/sbin/update-grub");
        let p = r.join(folder);
        std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let before = snap(r);
        let (code, out, err) = gpt_in(r, &fakes, FULL);
        assert_ne!(code, 0, "{folder}: {out}{err}");
        let named = format!(
            "error: refusing to run the tree's own programs: {} {why}",
            p.canonicalize().unwrap().display()
        );
        assert!(err.contains(&named), "{folder}: {err}");
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(snap(r), before, "{folder}: the tree changed");
        assert_eq!(fakes.chrooted(), Vec::<String>::new(), "{folder}");
        // A dry run says what a real run would do, and runs nothing.
        let mut dry = FULL.to_vec();
        dry.push("--dry-run");
        let (code, out, err) = gpt_in(r, &fakes, &dry);
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("a real run would refuse:"), "{err}");
        assert_eq!(snap(r), before, "{folder}: the dry run changed the tree");
        // Back to root's alone: the same run goes through.
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (code, out, err) = gpt_in(r, &fakes, FULL);
        assert_eq!(code, 0, "{folder}: {out}{err}");
    }
}

#[test]
fn the_plan_says_it_runs_the_trees_programs_and_reset_refuses_too() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let (code, _, err) = gpt_in(r, &fakes, FULL);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "note: under --root, update-grub, depmod, update-initramfs run as root inside {} (`chroot {}`)",
            r.display(),
            r.display()
        )),
        "{err}"
    );
    let p = r.join("etc/default");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = snap(r);
    fakes.reset_log();
    let (code, out, err) = gpt_in(r, &fakes, &["reset", "--yes"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!(
            "{} is writable by others (mode 777)",
            p.canonicalize().unwrap().display()
        )),
        "{err}"
    );
    assert_eq!(snap(r), before, "reset changed the tree");
    assert_eq!(fakes.chrooted(), Vec::<String>::new());
}
