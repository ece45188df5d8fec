//! What `gpt full` configured, kept in `/var/lib/gpt/state.json`: read by `reset`, `check` and
//! `qemu`. The file is written by the transaction (see `txn`) together with its journal.

use crate::host::Host;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const STATE_DIR: &str = "/var/lib/gpt";
pub const STATE_FILE: &str = "/var/lib/gpt/state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Only the IOMMU arguments are configured; a reboot and a second run follow.
    Iommu,
    /// Devices are configured for vfio-pci.
    Vfio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// `vfio-pci.ids=` on the kernel command line.
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
    /// Modules gpt listed in /etc/initramfs-tools/modules.
    pub initramfs_modules: Vec<String>,
    /// Modules held off with `softdep … pre: vfio-pci`.
    pub softdeps: Vec<String>,
    /// Installed kernels when gpt ran (`lib/modules/*`).
    pub kernels: Vec<String>,
}

/// Read the configuration, if gpt has configured this host.
pub fn load_config(host: &Host) -> Result<Option<Config>> {
    let Some(text) = host.read_optional(STATE_FILE)? else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Doc {
        config: Option<Config>,
    }
    let doc: Doc = serde_json::from_str(&text).with_context(|| {
        format!(
            "{STATE_FILE} is corrupt; move it aside and run `gpt reset` to clean up from the files themselves"
        )
    })?;
    Ok(doc.config)
}
