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
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
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
    made: Option<(std::path::PathBuf, Vec<std::path::PathBuf>, Host)>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some((path, dirs, host)) = self.made.take() {
            let _ = std::fs::remove_file(&path);
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
        let path = host.write_target(abs)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
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
        let made = (!made.is_empty()).then(|| (path, made, host.clone()));
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
}
