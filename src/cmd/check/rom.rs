//! `gpt check`'s ROM line: for each configured GPU whose ROM `gpt rom` saved, the file and
//! whether it still checks clean for the card (a file changed since would not).

use super::verdict::Check;
use crate::host::Host;
use crate::model::Config;
use crate::pci::{PciAddress, Topology};
use crate::rom;
use crate::rom_read;

pub fn checks(host: &Host, topo: &Topology, c: &Config) -> Vec<Check> {
    c.gpus
        .iter()
        .filter_map(|g| PciAddress::parse(g))
        .filter_map(|a| topo.device(&a))
        .filter_map(|dev| {
            let file = rom_read::saved_path(dev)?;
            let bytes = host.read(&file).ok()?;
            let ids = (dev.vendor?, dev.device?);
            let name = format!("a saved ROM of {} ({})", dev.address, file.display());
            let problems = rom::parse(&bytes).verdict(Some(ids), false);
            Some(if problems.is_empty() {
                Check::pass(
                    name,
                    format!(
                        "{} bytes, a clean ROM for {:04x}:{:04x}; `gpt qemu --rom {}` gives it to the guest",
                        bytes.len(),
                        ids.0,
                        ids.1,
                        host.path(&file).display()
                    ),
                )
            } else {
                Check::warn(
                    name,
                    format!(
                        "not a clean ROM for the card any more: {}; read it again with `sudo gpt rom {}`",
                        problems.join("; "),
                        dev.address
                    ),
                )
            })
        })
        .collect()
}
