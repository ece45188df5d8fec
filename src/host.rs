//! The host gpt works on: a root prefix (default `/`) from which every path is built.
//!
//! Under a root other than `/`, paths and symlinks resolve inside the root and never escape
//! it, the way they would after `chroot`: an absolute link target restarts at the root and
//! `..` stops at the root.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlink hops allowed while resolving one path (the kernel's limit is 40).
const MAX_LINK_HOPS: usize = 40;

#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    real: bool,
}

impl Host {
    /// A host rooted at `root`. `/` means this machine.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let real = root == Path::new("/");
        Host { root, real }
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
            return Ok(Path::new("/").join(abs));
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
        std::fs::read_to_string(self.open_path(abs.as_ref())?)
    }

    pub fn read(&self, abs: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        std::fs::read(self.open_path(abs.as_ref())?)
    }

    /// Read a file that may be absent: `Ok(None)` when it does not exist.
    pub fn read_optional(&self, abs: impl AsRef<Path>) -> Result<Option<String>> {
        let abs = abs.as_ref();
        match self.read_to_string(abs) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.path(abs).display())),
        }
    }

    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.open_path(abs.as_ref())
            .map(|p| p.exists())
            .unwrap_or(false)
    }

    /// The file name a symlink points at (`driver`, `iommu_group`, `module` links in sysfs).
    pub fn link_name(&self, abs: impl AsRef<Path>) -> Option<String> {
        let target = std::fs::read_link(self.open_parent(abs.as_ref())?).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
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

    /// Show a path as it is on the target host (`/etc/default/grub`), for messages and JSON.
    pub fn display(abs: impl AsRef<Path>) -> String {
        abs.as_ref().display().to_string()
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
}
