//! Whether a tree under `--root` is one only root can change, before gpt runs the tree's own
//! programs in it as root (`chroot ROOT update-grub`, …): a chroot does not contain root, so
//! a tree another user can change is a way for that user to run code as root. The folders
//! on the way to what gpt writes or runs, and the programs themselves, must be root's (or
//! this user's) and writable by nobody else, the way sudo checks its own files; a sticky
//! folder such as `/tmp` is allowed on the way to the root.

use crate::host::Host;
use crate::plan::Plan;
use crate::runner::CHROOT_BIN_DIRS as BIN_DIRS;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why another user could change a file of `uid` and `mode` (`None`: only root or `me` can).
/// A folder writable by all but sticky lets others change only their own entries.
pub fn changeable_by_others(uid: u32, mode: u32, is_dir: bool, me: u32) -> Option<String> {
    if uid != 0 && uid != me {
        return Some(format!("is owned by uid {uid}"));
    }
    let sticky = is_dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        let who = if mode & 0o002 != 0 {
            "others"
        } else {
            "its group"
        };
        return Some(format!("is writable by {who} (mode {:o})", mode & 0o7777));
    }
    None
}

/// The programs of `plan` as found in the tree (host paths, `/usr/sbin/update-grub`).
pub fn programs(host: &Host, plan: &Plan) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for step in &plan.commands {
        let Some(name) = step.argv.first() else {
            continue;
        };
        let found = BIN_DIRS
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| host.exists(p));
        if let Some(p) = found.filter(|p| !out.contains(p)) {
            out.push(p);
        }
    }
    out
}

/// The first file on the way to what `plan` writes or runs in the tree that another user
/// could change, as `(path on this machine, why)`; `None` when the tree is only root's.
/// Checked: every folder from this machine's `/` down to the root, every folder inside it on
/// the way to each file gpt writes and each program it runs, and the programs themselves.
pub fn first_changeable(host: &Host, plan: &Plan) -> Option<(PathBuf, String)> {
    let me = nix::unistd::geteuid().as_raw();
    let judge = |p: &Path| -> Option<(PathBuf, String)> {
        let m = std::fs::metadata(p).ok()?;
        changeable_by_others(m.uid(), m.mode(), m.is_dir(), me).map(|why| (p.to_path_buf(), why))
    };
    let root = std::fs::canonicalize(host.root()).unwrap_or_else(|_| host.root().to_path_buf());
    let mut outside: Vec<&Path> = root.ancestors().collect();
    outside.reverse();
    if let Some(bad) = outside.into_iter().find_map(judge) {
        return Some(bad);
    }
    let progs = programs(host, plan);
    let written = plan
        .files
        .iter()
        .chain(&plan.after_commands)
        .map(|f| &f.path);
    for target in written.chain(&progs) {
        for dir in target.ancestors().skip(1) {
            if let Some(bad) = host.resolve(dir).ok().and_then(|p| judge(&p)) {
                return Some(bad);
            }
        }
    }
    progs
        .iter()
        .find_map(|p| host.resolve(p).ok().and_then(|r| judge(&r)))
}

/// The first of `path` (a file of this machine, its links resolved) and the folders above it
/// that another user could change, as `(path, why)`: a program root will run later (libvirt's
/// hook runs gpt as root) must be only root's, all the way up.
pub fn changeable_on_the_way(path: &Path) -> Option<(PathBuf, String)> {
    let me = nix::unistd::geteuid().as_raw();
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut all: Vec<&Path> = real.ancestors().collect();
    all.reverse();
    all.into_iter().find_map(|p| {
        let m = std::fs::metadata(p).ok()?;
        changeable_by_others(m.uid(), m.mode(), m.is_dir(), me).map(|why| (p.to_path_buf(), why))
    })
}

/// The sentence a plan carries under `--root` when it runs the tree's own programs.
pub fn runs_tree_programs(host: &Host, plan: &Plan) -> Option<String> {
    if host.is_real_root() || plan.commands.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = Vec::new();
    for name in plan.commands.iter().filter_map(|s| s.argv.first()) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    Some(format!(
        "under --root, {} run as root inside {} (`chroot {}`): the tree's own programs, trusted as this machine's are",
        names.join(", "),
        host.root().display(),
        host.root().display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_me_and_no_other_writer() {
        assert_eq!(changeable_by_others(0, 0o755, true, 0), None);
        assert_eq!(changeable_by_others(1000, 0o755, true, 1000), None);
        assert_eq!(
            changeable_by_others(1000, 0o755, true, 0).as_deref(),
            Some("is owned by uid 1000")
        );
        assert_eq!(
            changeable_by_others(0, 0o775, true, 0).as_deref(),
            Some("is writable by its group (mode 775)")
        );
        assert_eq!(
            changeable_by_others(0, 0o757, true, 0).as_deref(),
            Some("is writable by others (mode 757)")
        );
        // /tmp: sticky, so others may change only their own entries.
        assert_eq!(changeable_by_others(0, 0o1777, true, 0), None);
        // A sticky bit means nothing on a file.
        assert!(changeable_by_others(0, 0o1777, false, 0).is_some());
    }
}
