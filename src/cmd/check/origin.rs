//! `gpt check`: how each function on vfio-pci came there (gpt bind, vfio-pci.ids= at boot,
//! gpt's early step, or something gpt did not set up), with what that means for `gpt reset`.

use super::verdict::Check;
use crate::facts::Facts;
use crate::host::Host;
use crate::model::{Config, Phase};
use crate::runtime_bind::{self as rb, Seen};
use crate::txn::live;

pub(crate) fn checks(host: &Host, f: &Facts, config: Option<&Config>) -> Vec<Check> {
    let journal = live::load_journal(host).ok().flatten().unwrap_or_default();
    let ids = rb::vfio_ids(&f.cmdline, &[]);
    let config = config.filter(|c| c.phase == Phase::Vfio);
    let mut out = Vec::new();
    for d in f.topology.devices.values() {
        if d.driver.as_deref() != Some(rb::VFIO_PCI) {
            continue;
        }
        let a = d.address;
        let driverctl = format!("/etc/driverctl.d/pci-{a}");
        let seen = Seen {
            journalled: journal.entry(&a).is_some(),
            driverctl: host.exists(&driverctl).then_some(driverctl),
            on_cmdline_ids: d
                .id()
                .is_some_and(|id| rb::ids_match(&ids, &id, d.subsystem().as_deref())),
            configured: config
                .filter(|c| c.devices.iter().any(|x| *x == a.to_string()))
                .map(|c| c.bind),
            override_vfio: live::override_of(host, &a).as_deref() == Some(rb::VFIO_PCI),
        };
        let origin = rb::origin(&seen);
        let name = format!("how {a} came to vfio-pci");
        out.push(if origin.gpts() {
            Check::pass_explained(name, origin.describe(&a))
        } else {
            Check::warn(name, origin.describe(&a))
        });
    }
    out
}
