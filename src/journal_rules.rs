//! The journal is data, not instructions. `reset` restores bytes, modes and owners from
//! `state.json`, so a journal someone crafted could make gpt, as root, write anywhere. Only
//! root can write it, and gpt still checks every loaded journal against what gpt itself would
//! have written there: paths only among the files gpt writes, blob names of gpt's own form
//! (`originals/N`, `written/N.G`), folders only on the way to those files, modes without
//! setuid, setgid or sticky bits. A journal that breaks one is refused whole, before
//! anything is changed. Pure: no I/O.

use crate::boot::{kernelstub, systemd_boot};
use crate::leftovers::{GRUB_BAK_ASIDE, OPTION_FILES, XHCI_CONF};
use crate::model::State;
use crate::paths::{
    DRACUT_CONF, DRACUT_EARLY_HOOK, DRACUT_EARLY_SETUP, GRUB_BAK, GRUB_D, GRUB_DEFAULT,
    INITRAMFS_EARLY, INITRAMFS_MODULES, MODPROBE_CONF, MODPROBE_D, STATE_DIR,
};

/// The files gpt writes by one fixed name.
fn fixed_files() -> Vec<&'static str> {
    let mut v = vec![
        GRUB_DEFAULT,
        GRUB_BAK,
        GRUB_BAK_ASIDE,
        INITRAMFS_MODULES,
        INITRAMFS_EARLY,
        DRACUT_CONF,
        DRACUT_EARLY_SETUP,
        DRACUT_EARLY_HOOK,
        MODPROBE_CONF,
        XHCI_CONF,
        systemd_boot::KERNEL_CMDLINE,
        kernelstub::CONFIG,
    ];
    v.extend(OPTION_FILES);
    v
}

/// `/a/b/c` with no empty, `.` or `..` component.
fn is_plain_absolute(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `NAME` of `DIR/NAME`, when `path` is directly in `dir`.
fn name_in<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let name = path.strip_prefix(dir)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether gpt ever writes the file `path` (as on the target host).
pub fn is_gpts_file(path: &str) -> bool {
    if !is_plain_absolute(path) {
        return false;
    }
    if fixed_files().contains(&path) {
        return true;
    }
    let suffixed = |dir: &str, ext: &str| {
        name_in(path, dir).is_some_and(|n| n.len() > ext.len() && n.ends_with(ext))
    };
    let aside_n = path
        .strip_prefix(GRUB_BAK_ASIDE)
        .and_then(|s| s.strip_prefix('.'))
        .is_some_and(digits);
    suffixed(GRUB_D, ".cfg")
        || suffixed(MODPROBE_D, ".conf")
        || aside_n
        || crate::single_gpu::is_hook_path(path)
}

/// Whether `dir` is a folder gpt may have created: one on the way to a file gpt writes.
pub fn is_gpts_dir(dir: &str) -> bool {
    if !is_plain_absolute(dir) {
        return false;
    }
    let parents = fixed_files()
        .into_iter()
        .map(|f| f.rsplit_once('/').map_or("", |(p, _)| p).to_string());
    let own = [GRUB_D, MODPROBE_D, STATE_DIR, crate::single_gpu::HOOK_DIR].map(str::to_string);
    let copies = ["originals", "written"].map(|d| format!("{STATE_DIR}/{d}"));
    let mut folders = parents.chain(own).chain(copies);
    folders.any(|f| f == dir || f.starts_with(&format!("{dir}/")))
}

/// `originals/N` or `written/N.G`, as [`crate::txn::journal`] names them.
pub fn is_blob_name(name: &str) -> bool {
    if let Some(n) = name.strip_prefix("originals/") {
        return digits(n);
    }
    name.strip_prefix("written/")
        .and_then(|s| s.split_once('.'))
        .is_some_and(|(n, g)| digits(n) && digits(g))
}

/// File modes gpt restores: permission bits only, never setuid, setgid or sticky.
pub fn is_plain_mode(mode: u32) -> bool {
    mode & !0o777 == 0
}

/// What is wrong with `state`, as one clause naming the entry (`None`: nothing).
pub fn check(state: &State) -> Option<String> {
    for e in &state.files {
        if !is_gpts_file(&e.path) {
            return Some(format!("{:?} is not a file gpt writes", e.path));
        }
        for name in [&e.original, &e.written].into_iter().flatten() {
            if !is_blob_name(name) {
                return Some(format!(
                    "the copy {name:?} of {} is not named as gpt names its copies",
                    e.path
                ));
            }
        }
        if !is_plain_mode(e.mode) {
            return Some(format!(
                "the mode {:o} of {} has setuid, setgid or sticky bits, which gpt never restores",
                e.mode, e.path
            ));
        }
    }
    if let Some(name) = state.blobs.keys().find(|n| !is_blob_name(n)) {
        return Some(format!(
            "the copy {name:?} is not named as gpt names its copies"
        ));
    }
    if let Some(d) = state.created_dirs.iter().find(|d| !is_gpts_dir(d)) {
        return Some(format!("{d:?} is not a folder gpt creates"));
    }
    None
}

/// Whether reset may give a file the owner `uid:gid` from the journal: root, or the owner the
/// file has now (gpt keeps a file's owner; it never hands a file to another user), or — when
/// gpt does not run as root and so sets no owner at all — gpt's own user.
pub fn owner_allowed(
    (uid, gid): (u32, u32),
    current: Option<(u32, u32)>,
    me: Option<(u32, u32)>,
) -> bool {
    let ok = |u: u32, g: u32| (uid == u || uid == 0) && (gid == g || gid == 0);
    (uid == 0 && gid == 0)
        || current.is_some_and(|(u, g)| ok(u, g))
        || me.is_some_and(|(u, g)| ok(u, g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Entry;
    use crate::txn::journal::{original_name, written_name};

    fn entry(path: &str) -> Entry {
        Entry {
            path: path.into(),
            existed: true,
            mode: 0o644,
            uid: 0,
            gid: 0,
            original: Some(original_name(1)),
            written: Some(written_name(1, 3)),
        }
    }

    fn state_with(e: Entry) -> State {
        State {
            files: vec![e],
            ..State::default()
        }
    }

    #[test]
    fn gpts_own_files_pass() {
        for p in [
            "/etc/default/grub",
            "/etc/default/grub.d/50-cloud.cfg",
            "/etc/default/grub.bak.gpt-legacy.2",
            "/etc/modprobe.d/gpt-vfio.conf",
            "/etc/modprobe.d/local.conf",
            "/etc/initramfs-tools/modules",
            "/etc/initramfs-tools/scripts/init-top/gpt-vfio",
            "/usr/lib/dracut/modules.d/90gpt-vfio/module-setup.sh",
            "/etc/kernel/cmdline",
            "/etc/kernelstub/configuration",
        ] {
            assert!(is_gpts_file(p), "{p}");
            assert_eq!(check(&state_with(entry(p))), None, "{p}");
        }
    }

    #[test]
    fn other_paths_are_refused() {
        for p in [
            "/etc/sudoers",
            "/etc/sudoers.d/x",
            "/etc/default/grub.d/../../sudoers",
            "/etc/modprobe.d/../cron.d/x.conf",
            "/etc/modprobe.d/.conf",
            "/etc/modprobe.d/sub/x.conf",
            "/etc/default/grub.d/x.sh",
            "/etc/default/grub.bak.gpt-legacy.x",
            "etc/default/grub",
            "//etc/default/grub",
            "/etc/default//grub",
            "/etc/default/./grub",
            "",
            "/",
        ] {
            assert!(!is_gpts_file(p), "{p}");
            let why = check(&state_with(entry(p))).unwrap();
            assert!(why.contains("is not a file gpt writes"), "{why}");
        }
    }

    #[test]
    fn blob_names_are_gpts_form_only() {
        assert!(is_blob_name("originals/1"));
        assert!(is_blob_name("written/12.3"));
        for bad in [
            "../../../etc/shadow",
            "originals/../../x",
            "originals/",
            "originals/1/2",
            "written/1",
            "written/1.2.3",
            "written/.2",
            "written/1.-2",
            "/etc/shadow",
            "originals/1 ",
        ] {
            assert!(!is_blob_name(bad), "{bad}");
            let mut e = entry("/etc/default/grub");
            e.original = Some(bad.into());
            let why = check(&state_with(e)).unwrap();
            assert!(why.contains("not named as gpt names"), "{why}");
            let mut s = state_with(entry("/etc/default/grub"));
            s.keep_blob(bad, b"x");
            assert!(check(&s).is_some(), "{bad}");
        }
    }

    #[test]
    fn set_id_and_sticky_modes_are_refused() {
        for m in [0o4755, 0o2755, 0o1644, 0o6755, 0o10644] {
            let mut e = entry("/etc/default/grub");
            e.mode = m;
            let why = check(&state_with(e)).unwrap();
            assert!(why.contains("setuid, setgid or sticky"), "{why}");
        }
        for m in [0o644, 0o600, 0o755, 0o000] {
            assert!(is_plain_mode(m));
        }
    }

    #[test]
    fn created_folders_lie_on_the_way_to_gpts_files() {
        for d in [
            "/etc/modprobe.d",
            "/etc/default/grub.d",
            "/usr",
            "/usr/lib/dracut/modules.d/90gpt-vfio",
            "/etc/initramfs-tools/scripts/init-top",
            "/etc/kernel",
            "/var/lib/gpt",
            "/var/lib/gpt/originals",
        ] {
            assert!(is_gpts_dir(d), "{d}");
        }
        for d in ["/", "/root", "/etc/sudoers.d", "/etc/kernel/..", "/etc/mod"] {
            assert!(!is_gpts_dir(d), "{d}");
            let mut s = State::default();
            s.created_dirs.push(d.into());
            assert!(check(&s).unwrap().contains("not a folder gpt creates"));
        }
    }

    #[test]
    fn owners_are_root_or_the_files_own() {
        assert!(owner_allowed((0, 0), None, None));
        assert!(owner_allowed((1000, 4), Some((1000, 4)), None));
        assert!(owner_allowed((0, 4), Some((1000, 4)), None));
        assert!(!owner_allowed((1000, 0), Some((0, 0)), None));
        assert!(!owner_allowed((0, 27), Some((0, 0)), None));
        assert!(!owner_allowed((1000, 1000), None, None));
        assert!(owner_allowed((1000, 1000), None, Some((1000, 1000))));
        assert!(!owner_allowed((1001, 1000), None, Some((1000, 1000))));
    }
}
