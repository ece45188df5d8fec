//! The plain vocabulary every layer shares, and the model gpt persists: which boot stack a
//! host has, how devices are bound, what `gpt full` configured. Plain data (serde), no I/O:
//! the journal ([`crate::txn`]) writes it, the reader ([`crate::facts`]) reads it back, and
//! everything between takes it as it is.

use crate::paths::STATE_FILE;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The boot loaders gpt knows (what reads the kernel command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoaderKind {
    Grub,
    SystemdBoot,
    /// Proxmox VE's proxmox-boot-tool, which copies kernels and the command line to the ESPs
    /// it manages (systemd-boot or GRUB on them).
    Proxmox,
    /// Pop!_OS's kernelstub, which writes systemd-boot entries from its JSON configuration.
    Kernelstub,
}

/// The initramfs generators gpt knows (what puts the early modules into the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsKind {
    InitramfsTools,
    Dracut,
}

impl LoaderKind {
    pub fn name(self) -> &'static str {
        match self {
            LoaderKind::Grub => "grub",
            LoaderKind::SystemdBoot => "systemd-boot",
            LoaderKind::Proxmox => "proxmox",
            LoaderKind::Kernelstub => "kernelstub",
        }
    }
}

impl InitramfsKind {
    pub fn name(self) -> &'static str {
        match self {
            InitramfsKind::InitramfsTools => "initramfs-tools",
            InitramfsKind::Dracut => "dracut",
        }
    }
}

/// Which stack a host has, as shown in the plan, `--json` (`"boot"`) and `gpt check`, and as
/// kept in gpt's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackId {
    pub loader: LoaderKind,
    pub initramfs: InitramfsKind,
}

impl Default for StackId {
    /// The only stack a gpt without this field in its state file could have configured.
    fn default() -> Self {
        StackId {
            loader: LoaderKind::Grub,
            initramfs: InitramfsKind::InitramfsTools,
        }
    }
}

impl std::fmt::Display for StackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "boot loader {}, initramfs by {}",
            self.loader.name(),
            self.initramfs.name()
        )
    }
}

/// The loader `--boot-loader` names (what the user says boots this host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Grub,
    SystemdBoot,
    Proxmox,
    Kernelstub,
}

impl Choice {
    pub fn name(self) -> &'static str {
        match self {
            Choice::Grub => "grub",
            Choice::SystemdBoot => "systemd-boot",
            Choice::Proxmox => "proxmox",
            Choice::Kernelstub => "kernelstub",
        }
    }
}

/// The distribution families gpt knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distro {
    Debian,
    Ubuntu,
}

impl Distro {
    pub fn name(self) -> &'static str {
        match self {
            Distro::Debian => "debian",
            Distro::Ubuntu => "ubuntu",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Only the IOMMU arguments are configured; a reboot and a second run follow.
    Iommu,
    /// Devices are configured for vfio-pci.
    Vfio,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// `vfio-pci.ids=` on the kernel command line.
    #[default]
    Ids,
    /// By address (two identical cards): `driver_override` set by gpt's modprobe.d hook.
    Address,
}

/// The configuration gpt applied. Paths are as on the target host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub phase: Phase,
    /// The GPUs selected (full addresses).
    pub gpus: Vec<String>,
    /// Every device given to vfio-pci: the GPUs and the other functions of their groups.
    pub devices: Vec<String>,
    /// `vendor:device` of each device, in `devices` order, deduplicated.
    pub ids: Vec<String>,
    pub bind: BindMode,
    /// The file and variable that carry the kernel arguments.
    pub grub_file: String,
    pub grub_var: String,
    /// Every kernel argument gpt's configuration needs (`iommu=pt`, `vfio-pci.ids=…`, …).
    pub args: Vec<String>,
    /// The arguments gpt itself added to the argument file (those the user had are not
    /// gpt's): reset takes exactly these out of a file that holds no mark of gpt's
    /// (`/etc/kernel/cmdline`).
    #[serde(default)]
    pub added_args: Vec<String>,
    /// Modules gpt listed in /etc/initramfs-tools/modules.
    pub initramfs_modules: Vec<String>,
    /// Modules held off with `softdep … pre: vfio-pci`.
    pub softdeps: Vec<String>,
    /// Installed kernels when gpt ran (`lib/modules/*`).
    pub kernels: Vec<String>,
    /// The boot stack gpt configured (absent in the state of a gpt that knew only GRUB and
    /// initramfs-tools, which is then what it configured).
    #[serde(default)]
    pub boot: StackId,
    /// `--no-idle-d3`: vfio-pci keeps idle devices in D0 (`disable_idle_d3=1`).
    #[serde(default)]
    pub no_idle_d3: bool,
}

/// The journal's version this gpt reads and writes.
pub const JOURNAL_VERSION: u32 = 1;

/// One journalled file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// As on the target host.
    pub path: String,
    pub existed: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Blob with the original bytes, relative to the state folder.
    pub original: Option<String>,
    /// Blob with what gpt last wrote; `None`: gpt left the file absent.
    pub written: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub config: Option<Config>,
    #[serde(default)]
    pub files: Vec<Entry>,
    #[serde(default)]
    pub created_dirs: Vec<String>,
    #[serde(default)]
    pub update_needed: bool,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub blobs: BTreeMap<String, Blob>,
}

/// A copy of a file's bytes kept in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Blob {
    /// UTF-8 (every configuration file gpt edits, normally): readable in `state.json`.
    Text(String),
    /// Anything else, byte by byte.
    Bytes(Vec<u8>),
}

impl Blob {
    pub fn new(bytes: &[u8]) -> Blob {
        match std::str::from_utf8(bytes) {
            Ok(s) => Blob::Text(s.to_string()),
            Err(_) => Blob::Bytes(bytes.to_vec()),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Blob::Text(s) => s.as_bytes(),
            Blob::Bytes(b) => b,
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            version: JOURNAL_VERSION,
            config: None,
            files: Vec::new(),
            created_dirs: Vec::new(),
            update_needed: false,
            generation: 0,
            blobs: BTreeMap::new(),
        }
    }
}

impl State {
    /// The journal from its bytes; a corrupt one, or one of another version, is an error that
    /// says what to do.
    pub fn parse(raw: &[u8]) -> Result<State> {
        let state: State = serde_json::from_slice(raw).with_context(|| {
            format!(
                "{STATE_FILE} is corrupt; move it aside and run `gpt reset` to clean up from the files themselves"
            )
        })?;
        if state.version != JOURNAL_VERSION {
            bail!(
                "{STATE_FILE} has version {} and this gpt reads version {JOURNAL_VERSION}: use the gpt that wrote it",
                state.version
            );
        }
        Ok(state)
    }

    pub fn entry(&self, path: &Path) -> Option<&Entry> {
        self.files.iter().find(|e| Path::new(&e.path) == path)
    }

    /// Every blob this state points at.
    pub fn referenced(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .flat_map(|e| [e.original.clone(), e.written.clone()])
            .flatten()
            .collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(self).expect("the state serializes");
        s.push('\n');
        s.into_bytes()
    }
}
