//! Writing files the way a careful admin would: atomically (temp file in the same folder,
//! fsync, rename, fsync the folder), keeping mode and owner, never following a symlink out
//! of the root, never leaving a temp file behind.

use crate::host::Host;
use crate::ioerr::{self, IoContext};
use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every temp file gpt makes starts with this; stale ones are removed at the next run.
pub const TEMP_PREFIX: &str = ".gpt-tmp.";

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

    fn of(meta: &fs::Metadata) -> Meta {
        Meta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

/// A regular file's bytes and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub bytes: Vec<u8>,
    pub meta: Meta,
}

/// Where a write to `abs` lands ([`Host::write_target`]).
fn target(host: &Host, abs: &Path) -> Result<PathBuf> {
    host.write_target(abs)
}

/// The file at `abs` (as on the target host), or `None` when it does not exist. A directory
/// or other non-file there is an error: gpt only ever writes regular files.
pub fn read(host: &Host, abs: &Path) -> Result<Option<Current>> {
    let path = target(host, abs)?;
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ioerr::error("read", abs, &e)),
    };
    if !meta.is_file() {
        bail!(
            "{} is not a regular file (a directory or device is in its place); move it aside and run gpt again",
            abs.display()
        );
    }
    let bytes = fs::read(&path).io_ctx("read", abs)?;
    Ok(Some(Current {
        bytes,
        meta: Meta::of(&meta),
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
        let p = target(host, d)?;
        match fs::metadata(&p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => bail!(
                "{} is not a directory; gpt needs a folder there",
                d.display()
            ),
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

fn make_dirs(host: &Host, abs_dir: &Path, durable: bool) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    for d in missing_dirs(host, abs_dir)? {
        let p = target(host, &d)?;
        match fs::create_dir(&p) {
            Ok(()) => {}
            // Another gpt made it since we looked (two started at once on a root without
            // /run): a folder there is what we wanted; it is that one's to own.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => continue,
            Err(e) => return Err(ioerr::error("create", &d, &e)),
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
        if running_as_root() {
            std::os::unix::fs::chown(&p, Some(0), Some(0))
                .with_context(|| format!("cannot set the owner of {}", d.display()))?;
        }
        if let (true, Some(parent)) = (durable, p.parent()) {
            sync_dir(parent)?;
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
        let p = target(host, d)?;
        match fs::remove_dir(&p) {
            Ok(()) => {
                if let Some(parent) = p.parent() {
                    sync_dir(parent)?;
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::DirectoryNotEmpty => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", d.display())),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync the folder {}", dir.display()))
}

/// Removes the temp file unless it was renamed into place.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
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
    let path = target(host, abs)?;
    let existing = match fs::metadata(&path) {
        Ok(m) if m.is_file() => Some(Meta::of(&m)),
        Ok(_) => bail!(
            "{} is not a regular file (a directory or device is in its place); move it aside and run gpt again",
            abs.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(ioerr::error("read", abs, &e)),
    };
    let meta = meta
        .or(existing)
        .unwrap_or_else(|| Meta::new_file(new_mode));
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent folder", path.display()))?;
    if !dir.is_dir() {
        bail!(
            "{} is a link into a folder that does not exist ({}); fix or remove the link",
            abs.display(),
            dir.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", abs.display()))?;
    let tmp = dir.join(format!("{TEMP_PREFIX}{}", name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .io_ctx("write", abs)?;
    f.write_all(bytes).io_ctx("write", abs)?;
    if running_as_root() {
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid))
            .with_context(|| format!("cannot set the owner of {}", abs.display()))?;
    }
    // After chown, which clears set-id bits.
    f.set_permissions(fs::Permissions::from_mode(meta.mode))
        .with_context(|| format!("cannot set the mode of {}", abs.display()))?;
    f.sync_all().io_ctx("write", abs)?;
    drop(f);
    fs::rename(&tmp, &path).io_ctx("write", abs)?;
    guard.0 = None;
    if sync_dir_after {
        sync_dir(dir)?;
    }
    Ok(created)
}

/// Make sure a file of `len` bytes fits beside `abs`: `gpt full` checks this for its final
/// state right after the journal, so that a full disk stops it before the first change, not
/// after the commands. The free blocks and inodes come from `statvfs` (what an unprivileged
/// writer may use, to be safe); a file system that does not say is taken at its word.
pub fn check_room(host: &Host, abs: &Path, len: usize) -> Result<()> {
    let path = target(host, abs)?;
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let Ok(st) = nix::sys::statvfs::statvfs(dir) else {
        return Ok(());
    };
    let block = st.fragment_size().max(1);
    let need = (len as u64).div_ceil(block) + 1;
    let enough_blocks = st.blocks() == 0 || st.blocks_available() >= need;
    let enough_inodes = st.files() == 0 || st.files_available() >= 1;
    if enough_blocks && enough_inodes {
        return Ok(());
    }
    let e = io::Error::from_raw_os_error(nix::libc::ENOSPC);
    Err(ioerr::error("write", abs, &e))
}

/// Remove `abs` (a link inside the root is followed and its target removed). Returns whether
/// there was a file.
pub fn remove(host: &Host, abs: &Path) -> Result<bool> {
    let path = target(host, abs)?;
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => bail!(
            "{} is a directory, not a file gpt wrote; leaving it",
            abs.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ioerr::error("remove", abs, &e)),
    }
    fs::remove_file(&path).io_ctx("remove", abs)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(true)
}

/// Remove stale `.gpt-tmp.*` files that a killed gpt left in the folder `abs_dir`.
pub fn clean_temps(host: &Host, abs_dir: &Path) -> Result<usize> {
    let dir = target(host, abs_dir)?;
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return Ok(0),
    };
    let mut n = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_file())
        {
            fs::remove_file(entry.path()).with_context(|| {
                format!(
                    "cannot remove the stale temp file {}",
                    entry.path().display()
                )
            })?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
