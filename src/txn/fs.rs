//! Writing files the way a careful admin would: atomically (temp file in the same folder,
//! fsync, rename, fsync the folder), keeping mode and owner, never following a symlink out
//! of the root, never leaving a temp file behind.
//!
//! Every write, folder, mode, owner, rename and removal works on a descriptor of its parent
//! folder, resolved once inside the root ([`Host::open_in_root`]), with `*at` calls on a name
//! in it (`openat(O_CREAT|O_EXCL|O_NOFOLLOW)`, `mkdirat`, `renameat`, `unlinkat`) and mode and
//! owner set on the open file: no path is walked twice, so a user who swaps a folder of the
//! tree for a symlink while gpt works cannot turn a write onto the real host.

use crate::host::Host;
use crate::ioerr::{self, IoContext};
use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Every temp file gpt makes starts with this; stale ones are removed at the next run.
pub const TEMP_PREFIX: &str = ".gpt-tmp.";

/// Symlink hops followed for one write (the kernel's limit is 40).
const MAX_LINK_HOPS: usize = 40;

/// Mode and owner of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    /// A file gpt creates: root:root with `mode`.
    pub fn new_file(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn of(st: &rustix::fs::Stat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

/// A regular file's bytes and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub bytes: Vec<u8>,
    pub meta: Meta,
}

/// A name in a folder opened inside the root.
struct At {
    dir: OwnedFd,
    name: OsString,
}

/// The parent folder of `abs`, opened once inside the root, and `abs`'s last name (a final
/// symlink is not followed).
fn parent_of(host: &Host, abs: &Path) -> io::Result<At> {
    let name = match abs.components().next_back() {
        Some(Component::Normal(n)) => n.to_os_string(),
        _ => {
            let why = format!("{} names no file", abs.display());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
    };
    let parent = abs.parent().unwrap_or(Path::new("/"));
    let dir = host.open_in_root(parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
    Ok(At { dir, name })
}

/// Where a write to `abs` lands: a final symlink followed inside the root (an atomic rename
/// then replaces the link's target and keeps the link), each hop read with `readlinkat` in a
/// folder opened inside the root. The name returned is not a symlink, or does not exist;
/// `None` when the folder it lands in does not exist.
fn landing_opt(host: &Host, abs: &Path) -> Result<Option<At>> {
    let mut cur = abs.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        let at = match parent_of(host, &cur) {
            Ok(at) => at,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ioerr::error("open the folder of", abs, &e)),
        };
        let Ok(target) = rustix::fs::readlinkat(&at.dir, &at.name, Vec::new()) else {
            return Ok(Some(at));
        };
        let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
        cur = match cur.parent() {
            Some(p) if !target.is_absolute() => p.join(target),
            _ => target,
        };
    }
    bail!("too many levels of symbolic links in {}", abs.display())
}

/// [`landing_opt`] where the folder must exist (gpt has just made sure of it).
fn landing(host: &Host, abs: &Path) -> Result<At> {
    landing_opt(host, abs)?.with_context(|| {
        format!(
            "{} is a link into a folder that does not exist; fix or remove the link",
            abs.display()
        )
    })
}

fn stat_at(at: &At) -> io::Result<rustix::fs::Stat> {
    Ok(rustix::fs::statat(
        &at.dir,
        &at.name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

fn not_a_file(abs: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not a regular file (a directory or device is in its place); move it aside and run gpt again",
        abs.display()
    )
}

/// The file at `abs` (as on the target host), or `None` when it does not exist. A directory
/// or other non-file there is an error: gpt only ever writes regular files.
pub fn read(host: &Host, abs: &Path) -> Result<Option<Current>> {
    let Some(at) = landing_opt(host, abs)? else {
        return Ok(None);
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&at.dir, &at.name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err(not_a_file(abs)),
        Err(e) => return Err(ioerr::error("read", abs, &e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| ioerr::error("read", abs, &e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(not_a_file(abs));
    }
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes).io_ctx("read", abs)?;
    Ok(Some(Current {
        bytes,
        meta: Meta::of(&st),
    }))
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The folders of `abs_dir` (an absolute host path) that do not exist yet, outermost first.
pub fn missing_dirs(host: &Host, abs_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(abs_dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d == Path::new("/") {
            break;
        }
        match host.open_in_root(d, OFlags::PATH) {
            Ok(fd) => match rustix::fs::fstat(&fd) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => break,
                _ => bail!(
                    "{} is not a directory; gpt needs a folder there",
                    d.display()
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                return Err(ioerr::error("create", d, &e))
            }
            Err(_) => missing.push(d.to_path_buf()),
        }
        cur = d.parent();
    }
    missing.reverse();
    Ok(missing)
}

/// Create the missing folders of `abs_dir` with mode 0755 (root:root when gpt runs as root),
/// returning the ones created (host paths, outermost first).
pub fn create_dirs(host: &Host, abs_dir: &Path) -> Result<Vec<PathBuf>> {
    make_dirs(host, abs_dir, true)
}

/// [`create_dirs`] without syncing the parent folders, for what need not outlive a crash
/// (the lock's `/run`, a tmpfs on a real host).
pub fn create_dirs_unsynced(host: &Host, abs_dir: &Path) -> Result<Vec<PathBuf>> {
    make_dirs(host, abs_dir, false)
}

/// Open the folder `name` in `dir` itself (never through a symlink).
fn open_sub(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

fn make_dirs(host: &Host, abs_dir: &Path, durable: bool) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    for d in missing_dirs(host, abs_dir)? {
        let at = parent_of(host, &d).map_err(|e| ioerr::error("create", &d, &e))?;
        match rustix::fs::mkdirat(&at.dir, &at.name, Mode::from_raw_mode(0o755)) {
            Ok(()) => {}
            // Another gpt made it since we looked (two started at once on a root without
            // /run): a folder there is what we wanted; it is that one's to own.
            Err(rustix::io::Errno::EXIST) if open_sub(&at.dir, &at.name).is_ok() => continue,
            Err(e) => return Err(ioerr::error("create", &d, &e.into())),
        }
        let fd = open_sub(&at.dir, &at.name).map_err(|e| ioerr::error("create", &d, &e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
        if running_as_root() {
            let root = Some(rustix::fs::Uid::ROOT);
            rustix::fs::fchown(&fd, root, Some(rustix::fs::Gid::ROOT))
                .with_context(|| format!("cannot set the owner of {}", d.display()))?;
        }
        if durable {
            sync_dir(&at.dir, &d)?;
        }
        created.push(d);
    }
    Ok(created)
}

/// Remove folders gpt created (innermost first), each only if it is empty.
pub fn remove_dirs_if_empty(host: &Host, dirs: &[PathBuf]) -> Result<()> {
    let mut dirs: Vec<&PathBuf> = dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for d in dirs {
        let at = match parent_of(host, d) {
            Ok(at) => at,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ioerr::error("remove", d, &e)),
        };
        match rustix::fs::unlinkat(&at.dir, &at.name, AtFlags::REMOVEDIR) {
            Ok(()) => sync_dir(&at.dir, d)?,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY) => {}
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("cannot remove {}", d.display()))
            }
        }
    }
    Ok(())
}

fn sync_dir(dir: &OwnedFd, shown: &Path) -> Result<()> {
    rustix::fs::fsync(dir).with_context(|| {
        let folder = shown.parent().unwrap_or(Path::new("/"));
        format!("cannot sync the folder {}", folder.display())
    })
}

/// Removes the temp file unless it was renamed into place.
struct TempGuard<'a> {
    dir: &'a OwnedFd,
    name: Option<OsString>,
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = rustix::fs::unlinkat(self.dir, &n, AtFlags::empty());
        }
    }
}

/// Write `bytes` to `abs` atomically. An existing file keeps its mode and owner unless `meta`
/// says otherwise; a new file gets `meta` or root:root `new_mode` (the owner is set only when
/// gpt runs as root). Missing parent folders are created; they are returned (outermost first)
/// so that a rollback or reset can remove them again.
pub fn write(
    host: &Host,
    abs: &Path,
    bytes: &[u8],
    meta: Option<Meta>,
    new_mode: u32,
) -> Result<Vec<PathBuf>> {
    write_with(host, abs, bytes, meta, new_mode, true)
}

/// [`write`], with the folder synced after the rename only when `sync_dir_after`: the bytes
/// are always synced before the rename, so the file is old or new, never torn; without the
/// folder sync a crash may bring the old one back.
pub fn write_with(
    host: &Host,
    abs: &Path,
    bytes: &[u8],
    meta: Option<Meta>,
    new_mode: u32,
    sync_dir_after: bool,
) -> Result<Vec<PathBuf>> {
    let parent_abs = abs
        .parent()
        .with_context(|| format!("{} has no parent folder", abs.display()))?;
    let created = create_dirs(host, parent_abs)?;
    let at = landing(host, abs)?;
    let existing = match stat_at(&at) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            Some(Meta::of(&st))
        }
        Ok(_) => return Err(not_a_file(abs)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(ioerr::error("read", abs, &e)),
    };
    let meta = meta
        .or(existing)
        .unwrap_or_else(|| Meta::new_file(new_mode));
    let mut tmp = OsString::from(TEMP_PREFIX);
    tmp.push(&at.name);
    let _ = rustix::fs::unlinkat(&at.dir, &tmp, AtFlags::empty());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&at.dir, &tmp, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| ioerr::error("write", abs, &e.into()))?;
    let mut guard = TempGuard {
        dir: &at.dir,
        name: Some(tmp.clone()),
    };
    let mut f = File::from(fd);
    f.write_all(bytes).io_ctx("write", abs)?;
    if running_as_root() {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(meta.uid),
            rustix::fs::Gid::from_raw(meta.gid),
        );
        rustix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("cannot set the owner of {}", abs.display()))?;
    }
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(&f, Mode::from_raw_mode(meta.mode))
        .with_context(|| format!("cannot set the mode of {}", abs.display()))?;
    f.sync_all().io_ctx("write", abs)?;
    drop(f);
    rustix::fs::renameat(&at.dir, &tmp, &at.dir, &at.name)
        .map_err(|e| ioerr::error("write", abs, &e.into()))?;
    guard.name = None;
    if sync_dir_after {
        sync_dir(&at.dir, abs)?;
    }
    Ok(created)
}

/// Make sure a file of `len` bytes fits beside `abs`: `gpt full` checks this for its final
/// state right after the journal, so that a full disk stops it before the first change, not
/// after the commands. The free blocks and inodes come from `statvfs` (what an unprivileged
/// writer may use, to be safe); a file system that does not say is taken at its word.
pub fn check_room(host: &Host, abs: &Path, len: usize) -> Result<()> {
    let Ok(Some(at)) = landing_opt(host, abs) else {
        return Ok(());
    };
    let Ok(st) = rustix::fs::fstatvfs(&at.dir) else {
        return Ok(());
    };
    let block = st.f_frsize.max(1);
    let need = (len as u64).div_ceil(block) + 1;
    let enough_blocks = st.f_blocks == 0 || st.f_bavail >= need;
    let enough_inodes = st.f_files == 0 || st.f_favail >= 1;
    if enough_blocks && enough_inodes {
        return Ok(());
    }
    let e = io::Error::from_raw_os_error(nix::libc::ENOSPC);
    Err(ioerr::error("write", abs, &e))
}

/// Remove `abs` (a link inside the root is followed and its target removed). Returns whether
/// there was a file.
pub fn remove(host: &Host, abs: &Path) -> Result<bool> {
    let Some(at) = landing_opt(host, abs)? else {
        return Ok(false);
    };
    match stat_at(&at) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => bail!(
            "{} is a directory, not a file gpt wrote; leaving it",
            abs.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ioerr::error("remove", abs, &e)),
    }
    rustix::fs::unlinkat(&at.dir, &at.name, AtFlags::empty())
        .map_err(|e| ioerr::error("remove", abs, &e.into()))?;
    sync_dir(&at.dir, abs)?;
    Ok(true)
}

/// Remove stale `.gpt-tmp.*` files that a killed gpt left in the folder `abs_dir`.
pub fn clean_temps(host: &Host, abs_dir: &Path) -> Result<usize> {
    let Ok(dir) = host.open_in_root(abs_dir, OFlags::RDONLY | OFlags::DIRECTORY) else {
        return Ok(0);
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
        if !name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        let at = At {
            dir: dir.try_clone()?,
            name,
        };
        if !stat_at(&at)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
        {
            continue;
        }
        rustix::fs::unlinkat(&at.dir, &at.name, AtFlags::empty()).with_context(|| {
            let shown = host.path(abs_dir).join(&at.name);
            format!("cannot remove the stale temp file {}", shown.display())
        })?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn host() -> (tempfile::TempDir, Host) {
        let d = tempfile::tempdir().unwrap();
        let h = Host::new(d.path());
        (d, h)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_keep_mode_and_leave_no_temp_file() {
        let (d, h) = host();
        fs::create_dir_all(d.path().join("etc/default")).unwrap();
        let p = d.path().join("etc/default/grub");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let created = write(&h, Path::new("/etc/default/grub"), b"new", None, 0o644).unwrap();
        assert!(created.is_empty());
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(names(&d.path().join("etc/default")), ["grub"]);
    }

    #[test]
    fn new_files_get_the_new_mode_and_their_folders_are_reported() {
        let (d, h) = host();
        let created = write(
            &h,
            Path::new("/etc/modprobe.d/gpt-vfio.conf"),
            b"x\n",
            None,
            0o644,
        )
        .unwrap();
        assert_eq!(
            created,
            [PathBuf::from("/etc"), PathBuf::from("/etc/modprobe.d")]
        );
        let m = fs::metadata(d.path().join("etc/modprobe.d/gpt-vfio.conf")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o644);
        remove(&h, Path::new("/etc/modprobe.d/gpt-vfio.conf")).unwrap();
        remove_dirs_if_empty(&h, &created).unwrap();
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn a_symlink_is_followed_inside_the_root_and_kept() {
        let (d, h) = host();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("grub"), "outside").unwrap();
        fs::create_dir_all(d.path().join("etc/default")).unwrap();
        let inside = d.path().join(outside.path().strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        // An absolute link: under the root it means <root>/<outside>/grub, not the real one.
        symlink(
            outside.path().join("grub"),
            d.path().join("etc/default/grub"),
        )
        .unwrap();
        write(&h, Path::new("/etc/default/grub"), b"inside", None, 0o644).unwrap();
        assert_eq!(fs::read(outside.path().join("grub")).unwrap(), b"outside");
        assert!(fs::symlink_metadata(d.path().join("etc/default/grub"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(inside.join("grub")).unwrap(), b"inside");
    }

    #[test]
    fn a_directory_in_place_of_a_file_is_refused() {
        let (d, h) = host();
        fs::create_dir_all(d.path().join("etc/default/grub")).unwrap();
        let err = write(&h, Path::new("/etc/default/grub"), b"x", None, 0o644).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        assert!(read(&h, Path::new("/etc/default/grub")).is_err());
    }

    #[test]
    fn stale_temp_files_are_cleaned() {
        let (d, h) = host();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/.gpt-tmp.grub"), "half").unwrap();
        fs::write(d.path().join("etc/keep"), "k").unwrap();
        assert_eq!(clean_temps(&h, Path::new("/etc")).unwrap(), 1);
        assert_eq!(names(&d.path().join("etc")), ["keep"]);
    }
}
