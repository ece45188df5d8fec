//! The host gpt works on: a root prefix (default `/`) from which every path is built.
//!
//! Under a root other than `/`, paths and symlinks resolve inside the root and never escape
//! it, the way they would after `chroot`: an absolute link target restarts at the root and
//! `..` stops at the root.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Symlink hops allowed while resolving one path (the kernel's limit is 40).
const MAX_LINK_HOPS: usize = 40;

/// The bytes of `path`, opened without blocking: a FIFO a tree plants where a file is read
/// gives what is in it (nothing, without a writer) instead of waiting for a writer for ever.
/// Every read is opened this way (`O_NONBLOCK` changes nothing for files, sysfs or /proc).
fn read_nonblocking(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    real: bool,
    fast: Arc<FastPath>,
}

/// The kernel's own in-root resolution (`openat2` with `RESOLVE_IN_ROOT`, Linux 5.6+): one
/// system call per path instead of an `lstat` per component. Resolves exactly like
/// [`Host::resolve`]; where it is missing (older kernels, seccomp filters) or fails for any
/// reason, gpt takes the portable path, so errors and messages are the portable path's.
#[derive(Debug, Default)]
struct FastPath {
    /// The root directory, opened on first use (`None` if it cannot be opened).
    root: OnceLock<Option<File>>,
    /// Set once `openat2` turned out to be unavailable, or by tests.
    off: AtomicBool,
}

/// An open file descriptor, closed when dropped.
#[derive(Debug)]
pub struct Fd(RawFd);

impl Fd {
    /// Read a small file (a sysfs attribute) into `buf`, which is cleared first and can be
    /// reused. A short read that ends with a newline is the whole content (sysfs returns an
    /// attribute in one piece), which saves the second `read` that would only see the end.
    pub fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        // Room for a whole `uevent` (a few hundred bytes) in one read.
        let mut chunk = [0u8; 1024];
        loop {
            match nix::unistd::read(self.0, &mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() && chunk[n - 1] == b'\n' {
                        return Ok(());
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Open `name` (one component) in this directory, not following a final symlink when
    /// `nofollow`.
    pub fn open_at(&self, name: &str, nofollow: bool) -> io::Result<Fd> {
        let mut flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        if nofollow {
            flags |= OFlag::O_NOFOLLOW;
        }
        Ok(Fd(nix::fcntl::openat(
            Some(self.0),
            name,
            flags,
            Mode::empty(),
        )?))
    }

    /// The file name a symlink in this directory points at (`driver`, `iommu_group`).
    pub fn link_name_at(&self, name: &str) -> Option<String> {
        self.link_target_at(name)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// The path a symlink in this directory points at, as written in the link
    /// (`../../../devices/pci0000:00/…`): one `readlinkat`, nothing followed.
    pub fn link_target_at(&self, name: &str) -> Option<PathBuf> {
        nix::fcntl::readlinkat(Some(self.0), name)
            .ok()
            .map(PathBuf::from)
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        let _ = nix::unistd::close(self.0);
    }
}

impl Host {
    /// A host rooted at `root`. `/` means this machine.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let real = root == Path::new("/");
        Host {
            root,
            real,
            fast: Arc::default(),
        }
    }

    /// Open `abs` with `flags`, resolving it inside the root in one `openat2` call. `None`
    /// when that is not possible or fails: the caller then takes the portable path, which
    /// gives the same result and the same errors.
    fn open_fast(&self, abs: &Path, flags: OFlag) -> Option<Fd> {
        let flags = flags | OFlag::O_CLOEXEC;
        if self.real {
            let path = Path::new("/").join(abs);
            return nix::fcntl::open(&path, flags, Mode::empty()).ok().map(Fd);
        }
        let how = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        self.openat2_root(abs, flags, how)
    }

    /// The root directory for `openat2`, opened on first use; `None` when the fast path is
    /// off or the root cannot be opened.
    fn fast_root(&self) -> Option<&File> {
        if self.fast.off.load(Ordering::Relaxed) {
            return None;
        }
        self.fast
            .root
            .get_or_init(|| File::open(&self.root).ok())
            .as_ref()
    }

    /// `openat2` of `abs` relative to the root directory.
    fn openat2_root(&self, abs: &Path, flags: OFlag, resolve: ResolveFlag) -> Option<Fd> {
        let root = self.fast_root()?;
        let rel = rel_path(abs);
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(resolve);
        match nix::fcntl::openat2(root.as_raw_fd(), rel.as_path(), how) {
            Ok(fd) => Some(Fd(fd)),
            Err(Errno::ENOSYS | Errno::EPERM | Errno::E2BIG) => {
                self.fast.off.store(true, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    /// `abs` under the root when no component of it is a symlink (checked by the kernel in
    /// one `openat2` call): then it resolves to itself and needs no walk.
    fn plain_path(&self, abs: &Path) -> Option<PathBuf> {
        if abs.components().any(|c| c == Component::ParentDir) {
            return None;
        }
        let how = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS;
        self.openat2_root(abs, OFlag::O_PATH, how)?;
        Some(self.path(abs))
    }

    /// Open the directory `abs` (following symlinks inside the root) to read entries of it
    /// with [`Fd::open_at`] and [`Fd::link_name_at`], without resolving its path again.
    /// `None` when the fast path cannot open it; [`Host::resolve`] then explains why.
    pub fn open_dir(&self, abs: impl AsRef<Path>) -> Option<Fd> {
        self.open_fast(abs.as_ref(), OFlag::O_PATH | OFlag::O_DIRECTORY)
            .or_else(|| {
                let dir = self.resolve(abs.as_ref()).ok()?;
                let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                nix::fcntl::open(&dir, flags, Mode::empty()).ok().map(Fd)
            })
    }

    /// Turn the `openat2` fast path off, to compare it with the portable path in tests.
    #[doc(hidden)]
    pub fn portable_only(self) -> Self {
        self.fast.off.store(true, Ordering::Relaxed);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when the root is this machine's `/` (writes then need root and change the real host).
    pub fn is_real_root(&self) -> bool {
        self.real
    }

    /// The path of `abs` (an absolute path as seen on the target host) under the root,
    /// without following symlinks.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let abs = abs.as_ref();
        if self.real {
            return Path::new("/").join(abs);
        }
        let rel: PathBuf = abs
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.root.join(rel)
    }

    /// Resolve `abs` following symlinks, but never outside the root. The result exists only
    /// if the path exists; dangling links resolve to where they point.
    pub fn resolve(&self, abs: impl AsRef<Path>) -> Result<PathBuf> {
        let abs = abs.as_ref();
        if self.real {
            // Opening the path would follow the links anyway, but callers also read the
            // resolved path itself (the PCI addresses on the way from /sys/class/block/vda1 to
            // its controller, the bus above a function): resolve it as the walk below does.
            // A path that does not exist (or a dangling link) stays as it was given.
            let plain = Path::new("/").join(abs);
            return Ok(std::fs::canonicalize(&plain).unwrap_or(plain));
        }
        if let Some(plain) = self.plain_path(abs) {
            return Ok(plain);
        }
        // `done` is the resolved path relative to the root; `todo` holds components left to walk.
        let mut done: Vec<std::ffi::OsString> = Vec::new();
        let mut todo: Vec<std::ffi::OsString> = components_rev(abs);
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            if part == OsStr::new("..") {
                done.pop();
                continue;
            }
            let mut candidate = self.root.clone();
            candidate.extend(&done);
            candidate.push(&part);
            match std::fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        bail!(
                            "too many levels of symbolic links in {}",
                            self.path(abs).display()
                        );
                    }
                    let target = std::fs::read_link(&candidate)
                        .with_context(|| format!("cannot read link {}", candidate.display()))?;
                    if target.is_absolute() {
                        done.clear();
                    }
                    todo.extend(components_rev(&target));
                }
                _ => done.push(part),
            }
        }
        let mut out = self.root.clone();
        out.extend(&done);
        Ok(out)
    }

    /// The path of `abs` with every symlink resolved inside the root.
    fn open_path(&self, abs: &Path) -> io::Result<PathBuf> {
        self.resolve(abs)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:#}")))
    }

    pub fn read_to_string(&self, abs: impl AsRef<Path>) -> io::Result<String> {
        if let Some(bytes) = self.read_fast(abs.as_ref()) {
            return String::from_utf8(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            });
        }
        let bytes = read_nonblocking(&self.open_path(abs.as_ref())?)?;
        String::from_utf8(bytes).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }

    pub fn read(&self, abs: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        if let Some(bytes) = self.read_fast(abs.as_ref()) {
            return Ok(bytes);
        }
        read_nonblocking(&self.open_path(abs.as_ref())?)
    }

    /// The whole content of `abs` through the fast path, `None` to take the portable one.
    fn read_fast(&self, abs: &Path) -> Option<Vec<u8>> {
        let fd = self.open_fast(abs, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        let mut bytes = Vec::new();
        read_to_end(&fd, &mut bytes).ok()?;
        Some(bytes)
    }

    /// Open `abs` for reading, resolved once inside the root (a file to hand to this machine's
    /// own tool as `/proc/self/fd/N`, so that nothing walks the tree's path again).
    pub fn open_read(&self, abs: impl AsRef<Path>) -> io::Result<File> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let abs = abs.as_ref();
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        if !self.real {
            if let Some(root) = self.fast_root() {
                let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
                match rustix::fs::openat2(root, rel_path(abs), flags, Mode::empty(), resolve) {
                    Ok(fd) => return Ok(File::from(fd)),
                    Err(
                        rustix::io::Errno::NOSYS
                        | rustix::io::Errno::PERM
                        | rustix::io::Errno::TOOBIG,
                    ) => self.fast.off.store(true, Ordering::Relaxed),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let path = self.open_path(abs)?;
        Ok(File::from(rustix::fs::open(
            path,
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
        )?))
    }

    /// Open `abs` with `flags`, resolved once inside the root by the kernel (`openat2` with
    /// `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`), for the writing side: a folder to create,
    /// rename and remove in with `*at` calls, so that no path is walked twice. On this
    /// machine's `/`, a plain `open`. Under a root on a kernel without `openat2` (before
    /// Linux 5.6, or filtered), an error: gpt refuses to write there rather than walk the
    /// path twice and race whoever else can change the tree.
    pub fn open_in_root(
        &self,
        abs: impl AsRef<Path>,
        flags: rustix::fs::OFlags,
    ) -> io::Result<std::os::fd::OwnedFd> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let abs = abs.as_ref();
        let flags = flags | OFlags::CLOEXEC;
        if self.real {
            return Ok(rustix::fs::open(
                Path::new("/").join(abs),
                flags,
                Mode::empty(),
            )?);
        }
        let root = self
            .fast
            .root
            .get_or_init(|| File::open(&self.root).ok())
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the root cannot be opened"))?;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let rel = rel_path(abs);
        // EAGAIN: a rename or mount anywhere on the machine while the kernel walked a `..`
        // (sysfs links are full of them), so it could not vouch for staying inside the root.
        // The call is safe to repeat (openat2(2) says so); a busy machine needs a few tries.
        let mut tries = 0;
        let opened = loop {
            match rustix::fs::openat2(root, &rel, flags, Mode::empty(), resolve) {
                Err(rustix::io::Errno::AGAIN) if tries < 1000 => {
                    tries += 1;
                    if tries % 100 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                other => break other,
            }
        };
        match opened {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM | rustix::io::Errno::TOOBIG) => {
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel offers no openat2 (Linux 5.6 or later), which gpt needs to \
                     write inside --root without racing other users of the tree",
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Read a file that may be absent: `Ok(None)` when it does not exist.
    pub fn read_optional(&self, abs: impl AsRef<Path>) -> Result<Option<String>> {
        let abs = abs.as_ref();
        match self.read_to_string(abs) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::ioerr::error("read", abs, &e)),
        }
    }

    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        if self.open_fast(abs.as_ref(), OFlag::O_PATH).is_some() {
            return true;
        }
        self.open_path(abs.as_ref())
            .map(|p| p.exists())
            .unwrap_or(false)
    }

    /// The file name a symlink points at (`driver`, `iommu_group`, `module` links in sysfs).
    pub fn link_name(&self, abs: impl AsRef<Path>) -> Option<String> {
        let abs = abs.as_ref();
        if let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) {
            let dir = self.open_fast(parent, OFlag::O_PATH | OFlag::O_DIRECTORY);
            if let (Some(dir), Some(name)) = (dir, name.to_str()) {
                return dir.link_name_at(name);
            }
        }
        let target = std::fs::read_link(self.open_parent(abs.as_ref())?).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The path a symlink points at, as written in the link (`../../../devices/pci0000:00/…`).
    pub fn link_target(&self, abs: impl AsRef<Path>) -> Option<PathBuf> {
        let abs = abs.as_ref();
        if let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) {
            let dir = self.open_fast(parent, OFlag::O_PATH | OFlag::O_DIRECTORY);
            if let (Some(dir), Some(name)) = (dir, name.to_str()) {
                if let Ok(t) = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
                    return Some(PathBuf::from(t));
                }
            }
        }
        std::fs::read_link(self.open_parent(abs)?).ok()
    }

    /// `abs` with its parent resolved but the last component kept as is (to read a link itself).
    fn open_parent(&self, abs: &Path) -> Option<PathBuf> {
        let name = abs.file_name()?;
        let parent = abs.parent()?;
        Some(self.open_path(parent).ok()?.join(name))
    }

    /// Entry names of a directory, sorted; an absent directory gives an empty list.
    pub fn list_dir(&self, abs: impl AsRef<Path>) -> Result<Vec<String>> {
        let abs = abs.as_ref();
        if let Some(names) = self.list_dir_fast(abs) {
            return Ok(names);
        }
        let dir = self.open_path(abs)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list {}", self.path(abs).display()))
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// [`Host::list_dir`] through the fast path: the directory opened in one `openat2` (a
    /// plain `open` on this machine) and read with `getdents64` straight away: four system
    /// calls for a small directory, where the portable path makes seven (a check of the
    /// path, then `opendir`'s open and `fstat`, two reads and a close). `None` on any
    /// failure, to take the portable path, which gives the same result and the errors.
    fn list_dir_fast(&self, abs: &Path) -> Option<Vec<String>> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = if self.real {
            rustix::fs::open(Path::new("/").join(abs), flags, Mode::empty()).ok()?
        } else {
            let root = self.fast_root()?;
            let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(root, rel_path(abs), flags, Mode::empty(), resolve) {
                Ok(fd) => fd,
                Err(
                    rustix::io::Errno::NOSYS | rustix::io::Errno::PERM | rustix::io::Errno::TOOBIG,
                ) => {
                    self.fast.off.store(true, Ordering::Relaxed);
                    return None;
                }
                Err(_) => return None,
            }
        };
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut dir = rustix::fs::RawDir::new(&fd, &mut buf);
        let mut names = Vec::new();
        while let Some(entry) = dir.next() {
            let entry = entry.ok()?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        names.sort();
        Some(names)
    }
}

/// Read from `fd` to its end, appending to `buf`.
fn read_to_end(fd: &Fd, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    loop {
        match nix::unistd::read(fd.0, &mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// `abs` relative to the root, for `openat2` at the root directory (`.` for the root itself).
fn rel_path(abs: &Path) -> PathBuf {
    let rel: PathBuf = abs
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

fn components_rev(path: &Path) -> Vec<std::ffi::OsString> {
    let mut parts: Vec<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real"), "inside").unwrap();
        symlink("/etc/real", root.join("etc/link")).unwrap();
        symlink("../../../../../../etc/real", root.join("etc/up")).unwrap();
        let host = Host::new(root);
        assert_eq!(host.read_to_string("/etc/link").unwrap(), "inside");
        assert_eq!(host.read_to_string("/etc/up").unwrap(), "inside");
        assert_eq!(host.resolve("/etc/link").unwrap(), root.join("etc/real"));
    }

    /// The kernel answers EAGAIN to an `openat2(RESOLVE_IN_ROOT)` that walked `..` while
    /// anything was renamed on the machine; the writing side must try again, not fail (the
    /// fake sysfs under a busy test run hit it). Renames run beside the opens here.
    #[test]
    fn renames_elsewhere_do_not_fail_an_open_through_dot_dot() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sys/devices/pci/0000:02:00.0")).unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        std::fs::write(
            root.join("sys/devices/pci/0000:02:00.0/driver_override"),
            "",
        )
        .unwrap();
        symlink(
            "../../../devices/pci/0000:02:00.0",
            root.join("sys/bus/pci/devices/0000:02:00.0"),
        )
        .unwrap();
        let busy = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let host = Host::new(root);
        std::thread::scope(|s| {
            s.spawn(|| {
                let (a, b) = (busy.path().join("a"), busy.path().join("b"));
                std::fs::write(&a, "").unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(&a, &b).unwrap();
                    std::fs::rename(&b, &a).unwrap();
                }
            });
            for _ in 0..20_000 {
                let r = host.open_in_root(
                    "/sys/bus/pci/devices/0000:02:00.0/driver_override",
                    rustix::fs::OFlags::WRONLY,
                );
                if let Err(e) = r {
                    stop.store(true, Ordering::Relaxed);
                    panic!("open failed while renames ran elsewhere: {e}");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn link_loops_are_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let host = Host::new(dir.path());
        let err = host.resolve("/a").unwrap_err();
        assert!(format!("{err}").contains("too many levels"), "{err}");
    }

    #[test]
    fn link_name_reads_the_last_component_of_a_relative_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/bus/pci/drivers/nouveau")).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/devices/x")).unwrap();
        symlink(
            "../../bus/pci/drivers/nouveau",
            dir.path().join("sys/devices/x/driver"),
        )
        .unwrap();
        let host = Host::new(dir.path());
        assert_eq!(
            host.link_name("/sys/devices/x/driver").as_deref(),
            Some("nouveau")
        );
        assert_eq!(host.link_name("/sys/devices/x/missing"), None);
    }

    /// The kernel's in-root resolution (openat2) and the portable walk agree on every kind of
    /// path: plain, through relative and absolute links, `..` past the root, dangling links,
    /// loops, a symlinked file, a file where a directory is expected, and absent paths.
    #[test]
    fn the_fast_path_and_the_portable_walk_agree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
        let file = |p: &str, c: &[u8]| std::fs::write(root.join(p), c).unwrap();
        let link = |target: &str, p: &str| symlink(target, root.join(p)).unwrap();
        mk("sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0");
        mk("sys/bus/pci/devices");
        mk("sys/bus/pci/drivers/nouveau");
        mk("etc");
        file(
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/vendor",
            b"0x10de\n",
        );
        file(
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/bad",
            b"\xff\xfe\n",
        );
        file("etc/real", b"inside");
        link(
            "../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0",
            "sys/bus/pci/devices/0000:01:00.0",
        );
        link("/sys/devices/pci0000:00", "sys/bus/pci/devices/abs");
        link("../../../../../../../../etc", "sys/bus/pci/devices/up");
        link("../../../missing", "sys/bus/pci/devices/dangling");
        link("loop2", "sys/bus/pci/devices/loop1");
        link("loop1", "sys/bus/pci/devices/loop2");
        link(
            "/etc/real",
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/linked",
        );
        link(
            "../../../../bus/pci/drivers/nouveau",
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/driver",
        );
        let paths = [
            "/",
            "/etc",
            "/etc/real",
            "/etc/real/x",
            "/etc/../etc/real",
            "/../../etc/real",
            "/sys/bus/pci/devices",
            "/sys/bus/pci/devices/0000:01:00.0",
            "/sys/bus/pci/devices/0000:01:00.0/vendor",
            "/sys/bus/pci/devices/0000:01:00.0/bad",
            "/sys/bus/pci/devices/0000:01:00.0/linked",
            "/sys/bus/pci/devices/0000:01:00.0/driver",
            "/sys/bus/pci/devices/0000:01:00.0/../0000:01:00.0/vendor",
            "/sys/bus/pci/devices/abs/0000:00:01.0",
            "/sys/bus/pci/devices/up/real",
            "/sys/bus/pci/devices/dangling",
            "/sys/bus/pci/devices/dangling/x",
            "/sys/bus/pci/devices/loop1",
            "/sys/bus/pci/devices/absent",
            "/absent/deeper",
        ];
        let fast = Host::new(root);
        let slow = Host::new(root).portable_only();
        let show = |r: io::Result<String>| r.map_err(|e| format!("{:?} {e}", e.kind()));
        for p in paths {
            assert_eq!(
                fast.resolve(p).map_err(|e| e.to_string()),
                slow.resolve(p).map_err(|e| e.to_string()),
                "resolve {p}"
            );
            assert_eq!(
                show(fast.read_to_string(p)),
                show(slow.read_to_string(p)),
                "read {p}"
            );
            assert_eq!(fast.exists(p), slow.exists(p), "exists {p}");
            assert_eq!(fast.link_name(p), slow.link_name(p), "link_name {p}");
            assert_eq!(
                fast.list_dir(p).map_err(|e| e.to_string()),
                slow.list_dir(p).map_err(|e| e.to_string()),
                "list_dir {p}"
            );
            assert_eq!(
                fast.open_dir(p).is_some(),
                slow.open_dir(p).is_some(),
                "open_dir {p}"
            );
            if let (Some(f), Some(s)) = (fast.open_dir(p), slow.open_dir(p)) {
                let mut a = Vec::new();
                let mut b = Vec::new();
                let ra = f
                    .open_at("vendor", true)
                    .and_then(|fd| fd.read_into(&mut a));
                let rb = s
                    .open_at("vendor", true)
                    .and_then(|fd| fd.read_into(&mut b));
                assert_eq!(ra.is_ok(), rb.is_ok(), "open_at {p}");
                assert_eq!(a, b, "read_into {p}");
                assert_eq!(f.link_name_at("driver"), s.link_name_at("driver"), "{p}");
            }
        }
        assert_eq!(
            fast.read_to_string("/sys/bus/pci/devices/0000:01:00.0/vendor")
                .unwrap(),
            "0x10de\n"
        );
        if fast.fast.off.load(Ordering::Relaxed) {
            eprintln!("openat2 is not available here: only the portable path was tested");
        }
    }

    #[test]
    fn read_into_reads_attributes_of_any_length() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(1000) + "\n";
        for content in ["", "0x10de\n", "no newline", long.as_str()] {
            std::fs::write(dir.path().join("a"), content).unwrap();
            let host = Host::new(dir.path());
            let d = host.open_dir("/").unwrap();
            let mut buf = b"stale".to_vec();
            d.open_at("a", true).unwrap().read_into(&mut buf).unwrap();
            assert_eq!(buf, content.as_bytes());
        }
    }
}
