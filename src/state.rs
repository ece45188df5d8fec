//! What `gpt full` configured, kept in `/var/lib/gpt/state.json` beside the journal: read by
//! `reset`, `check` and `qemu`. The file has one loader and one version check
//! ([`crate::txn::State::load`]); it is written by the transaction (see `txn`).

use crate::boot::StackId;
use crate::host::Host;
use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use crate::paths::{STATE_DIR, STATE_FILE};

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

/// Read the configuration, if gpt has configured this host.
pub fn load_config(host: &Host) -> Result<Option<Config>> {
    Ok(crate::txn::State::load(host)?.and_then(|s| s.config))
}
