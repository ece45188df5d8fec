//! A fake kernel for runtime binding tests: the sysfs attributes gpt writes to change a
//! device's driver become FIFOs in the host tree, and a thread per FIFO acts on each write as
//! the PCI core would, moving the relative `driver` links (and the `uevent`'s `DRIVER=`).
//!
//! - `/sys/bus/pci/drivers/D/unbind` (one per driver): `ADDR` unbinds ADDR if D drives it.
//! - `/sys/bus/pci/drivers_probe`: `ADDR` without a driver binds the driver its
//!   `driver_override` names, else the one `vfio-pci.ids` gives it ([`Rules::ids`]), else its
//!   host driver ([`Rules::native`]) — each only when registered (its folder exists) and not
//!   in [`Rules::refuse`] (a probe that binds nothing, as when the driver's probe fails).
//! - `driver_override` is a plain file per device (`(null)` when empty): it only matters at
//!   the probe, as in the kernel.
//! - A device's `drm` folder (its DRM nodes) is there only while a driver other than vfio-pci
//!   drives it: an unbind moves it aside (`.drm-unbound`), a bind to another driver back.
//! - A driver in [`Rules::blocked`] gets a FIFO for `unbind` that nobody reads: the writer's
//!   open never returns (a driver that does not let go), until [`Kernel::release`].
//!
//! A write to a FIFO returns before the thread acts on it, where sysfs returns after the
//! change (except for drivers that probe asynchronously): gpt reads the `driver` link back
//! for a short while, which covers both.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// ADDR → the driver a plain probe binds (its host driver).
    pub native: BTreeMap<String, String>,
    /// Drivers whose probe binds nothing.
    pub refuse: BTreeSet<String>,
    /// Drivers whose unbind never returns.
    pub blocked: BTreeSet<String>,
    /// Addresses `vfio-pci.ids=` matches (a plain probe gives them to vfio-pci).
    pub ids: BTreeSet<String>,
}

pub struct Kernel {
    root: PathBuf,
    stop: Arc<AtomicBool>,
    served: Vec<PathBuf>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Every write acted on, `unbind D ADDR` or `probe ADDR -> D|none`, in order.
    pub log: Arc<Mutex<Vec<String>>>,
    rules: Arc<Rules>,
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

impl Kernel {
    /// Turn the tree's attributes into FIFOs and serve them. Each device's current driver is
    /// its host driver unless `rules.native` says otherwise.
    pub fn start(root: &Path, mut rules: Rules) -> Kernel {
        let devices = root.join("sys/bus/pci/devices");
        for e in std::fs::read_dir(&devices).unwrap().flatten() {
            let addr = e.file_name().to_string_lossy().into_owned();
            let ov = e.path().join("driver_override");
            if !ov.exists() {
                std::fs::write(&ov, "(null)\n").unwrap();
            }
            if let Some(d) = driver_of(root, &addr) {
                rules.native.entry(addr).or_insert(d);
            }
        }
        let rules = Arc::new(rules);
        let mut k = Kernel {
            root: root.to_path_buf(),
            stop: Arc::default(),
            served: Vec::new(),
            threads: Vec::new(),
            log: Arc::default(),
            rules: rules.clone(),
        };
        let drivers = root.join("sys/bus/pci/drivers");
        for e in std::fs::read_dir(&drivers).unwrap().flatten() {
            let drv = e.file_name().to_string_lossy().into_owned();
            let unbind = e.path().join("unbind");
            mkfifo(&unbind);
            if !rules.blocked.contains(&drv) {
                k.serve(unbind, Some(drv));
            }
        }
        let probe = root.join("sys/bus/pci/drivers_probe");
        mkfifo(&probe);
        k.serve(probe, None);
        k
    }

    fn serve(&mut self, fifo: PathBuf, unbind_of: Option<String>) {
        let (root, stop, log, rules) = (
            self.root.clone(),
            self.stop.clone(),
            self.log.clone(),
            self.rules.clone(),
        );
        self.served.push(fifo.clone());
        self.threads.push(std::thread::spawn(move || loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&fifo) {
                let _ = f.read_to_string(&mut text);
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let addr = text.trim();
            if addr.is_empty() {
                continue;
            }
            // The log is held while the tree changes: whoever saw the change sees its line.
            let mut log = log.lock().unwrap();
            let line = match &unbind_of {
                Some(d) => unbind(&root, d, addr),
                None => probe(&root, &rules, addr),
            };
            log.push(line);
        }));
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Let a blocked unbind of `driver` return, acting on it as the kernel finally would.
    pub fn release(&self, driver: &str) {
        let fifo = self
            .root
            .join(format!("sys/bus/pci/drivers/{driver}/unbind"));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut text = String::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let mut buf = [0u8; 64];
            match f.read(&mut buf) {
                Ok(0) if !text.is_empty() => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let addr = text.trim();
        if !addr.is_empty() {
            let mut log = self.log.lock().unwrap();
            let line = unbind(&self.root, driver, addr);
            log.push(line);
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (fifo, t) in self.served.iter().zip(self.threads.drain(..)) {
            // Wakes the thread waiting in open() (once it is there); it sees `stop` and ends.
            while !t.is_finished() {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(fifo);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

fn dev_dir(root: &Path, addr: &str) -> PathBuf {
    std::fs::canonicalize(root.join("sys/bus/pci/devices").join(addr)).unwrap()
}

pub fn driver_of(root: &Path, addr: &str) -> Option<String> {
    let link = root.join("sys/bus/pci/devices").join(addr).join("driver");
    std::fs::read_link(link)
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

fn unbind(root: &Path, drv: &str, addr: &str) -> String {
    if driver_of(root, addr).as_deref() != Some(drv) {
        return format!("unbind {drv} {addr}: not bound to it (ENODEV)");
    }
    let dir = dev_dir(root, addr);
    std::fs::remove_file(dir.join("driver")).unwrap();
    let _ = std::fs::remove_file(root.join("sys/bus/pci/drivers").join(drv).join(addr));
    if dir.join("drm").is_dir() {
        std::fs::rename(dir.join("drm"), dir.join(".drm-unbound")).unwrap();
    }
    super::tree::set_uevent_driver(&dir, None);
    format!("unbind {drv} {addr}")
}

fn probe(root: &Path, rules: &Rules, addr: &str) -> String {
    if driver_of(root, addr).is_some() {
        return format!("probe {addr} -> already bound");
    }
    let dir = dev_dir(root, addr);
    let ov = std::fs::read_to_string(dir.join("driver_override")).unwrap_or_default();
    let ov = ov.trim();
    let want = if !ov.is_empty() && ov != "(null)" {
        Some(ov.to_string())
    } else if rules.ids.contains(addr) {
        Some("vfio-pci".to_string())
    } else {
        rules.native.get(addr).cloned()
    };
    let registered = |d: &str| root.join("sys/bus/pci/drivers").join(d).is_dir();
    match want {
        Some(d) if registered(&d) && !rules.refuse.contains(&d) => {
            bind(root, addr, &d);
            format!("probe {addr} -> {d}")
        }
        _ => format!("probe {addr} -> none"),
    }
}

fn bind(root: &Path, addr: &str, drv: &str) {
    let dir = dev_dir(root, addr);
    let rel = dir
        .strip_prefix(std::fs::canonicalize(root).unwrap())
        .unwrap()
        .to_path_buf();
    let up = "../".repeat(rel.components().count());
    symlink(format!("{up}sys/bus/pci/drivers/{drv}"), dir.join("driver")).unwrap();
    if drv != "vfio-pci" && dir.join(".drm-unbound").is_dir() {
        std::fs::rename(dir.join(".drm-unbound"), dir.join("drm")).unwrap();
    }
    symlink(
        format!("../../../../{}", rel.display()),
        root.join("sys/bus/pci/drivers").join(drv).join(addr),
    )
    .unwrap();
    super::tree::set_uevent_driver(&dir, Some(drv));
}
