//! One gpt at a time per host: an exclusive `flock` on `<root>/run/gpt.lock`.
//!
//! The lock's file descriptor is inherited by the commands gpt starts, so an update-initramfs
//! that outlives a killed gpt still holds the lock until it ends: no second gpt can start
//! changing files under it.

use crate::host::Host;
use crate::ioerr::IoContext;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, Flock, FlockArg};
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

pub const LOCK_FILE: &str = "/run/gpt.lock";

/// Proof that this process holds the lock; released when dropped (or when the process and
/// every command it started have ended).
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
    /// When this run made the lock's folder (a tree without /run): the lock file and the
    /// folders, taken away again when the lock is released, so a tree gpt only looked at
    /// keeps no trace. A folder that was there keeps its lock file (another gpt may be
    /// about to lock that same file).
    made: Option<(OwnedFd, Vec<std::path::PathBuf>, Host)>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some((dir, dirs, host)) = self.made.take() {
            let name = Path::new(LOCK_FILE).file_name().expect("a file name");
            let _ = rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty());
            let _ = super::fs::remove_dirs_if_empty(&host, &dirs);
        }
    }
}

impl Lock {
    /// Take the lock without waiting; "another gpt is running" when it is held.
    pub fn acquire(host: &Host) -> Result<Lock> {
        let abs = Path::new(LOCK_FILE);
        let dir = abs.parent().expect("the lock file has a folder");
        // /run is a tmpfs on a real host; a host tree may lack it. The lock need not survive
        // a crash, so the folder is not synced.
        let made = super::fs::create_dirs_unsynced(host, dir)?;
        // The folder opened once inside the root; the lock file in it never through a link.
        let dir = host
            .open_in_root(dir, OFlags::RDONLY | OFlags::DIRECTORY)
            .io_ctx("open the lock file", abs)?;
        let name = abs.file_name().expect("the lock file has a name");
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600))
            .map(File::from)
            .map_err(std::io::Error::from)
            .io_ctx("open the lock file", abs)?;
        let flock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => bail!(
                "another gpt is running (lock {LOCK_FILE} held); wait for it to finish \
                 (an update-initramfs it started may still be running) and try again"
            ),
            Err((_, e)) => {
                return Err(e).with_context(|| format!("cannot lock {LOCK_FILE}"));
            }
        };
        // Inheritable: commands started while the lock is held keep it held.
        fcntl(flock.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))
            .with_context(|| format!("cannot make {LOCK_FILE} inheritable"))?;
        let made = (!made.is_empty()).then(|| (dir, made, host.clone()));
        Ok(Lock {
            _flock: flock,
            made,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_root_is_refused_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let h = Host::new(d.path());
        let first = Lock::acquire(&h).unwrap();
        let err = Lock::acquire(&h).unwrap_err();
        assert!(
            format!("{err:#}").contains("another gpt is running (lock /run/gpt.lock held)"),
            "{err:#}"
        );
        drop(first);
        Lock::acquire(&h).unwrap();
        let other = tempfile::tempdir().unwrap();
        let _a = Lock::acquire(&Host::new(other.path())).unwrap();
    }

    #[test]
    fn a_lock_file_that_is_a_symlink_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::fs::create_dir(d.path().join("run")).unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("run/gpt.lock")).unwrap();
        let err = Lock::acquire(&Host::new(d.path())).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot open the lock file /run/gpt.lock"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
