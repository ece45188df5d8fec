//! `gpt check`'s reset and power lines: per configured function, can the guest reset it and
//! will it wake up (with the facts the verdict comes from), and, after `--no-idle-d3`, whether
//! vfio-pci runs with `disable_idle_d3`.

use super::verdict::Check;
use crate::boot::Stack;
use crate::facts::Facts;
use crate::host::Host;
use crate::model::Config;
use crate::pci::PciAddress;
use crate::reset_facts;
use crate::resetability::{self, Env, Level, Report};
use std::collections::BTreeSet;

pub fn checks(
    host: &Host,
    f: &Facts,
    stack: &Stack,
    c: &Config,
    reboot_pending: bool,
) -> Vec<Check> {
    let addrs: Vec<PciAddress> = c
        .devices
        .iter()
        .filter_map(|d| PciAddress::parse(d))
        .filter(|a| f.topology.device(a).is_some())
        .collect();
    let facts = reset_facts::read(host, f, &addrs);
    let vfio: BTreeSet<PciAddress> = addrs.iter().copied().collect();
    let reports = resetability::judge_all(&facts, &f.topology, &vfio);
    let mut out: Vec<Check> = resetability::by_card(&reports)
        .into_iter()
        .map(|(addrs, r)| {
            let all = reports
                .iter()
                .filter(|f| addrs.contains(&f.address))
                .cloned()
                .collect();
            reset_check(&addrs, r, all)
        })
        .collect();
    if c.no_idle_d3 {
        out.push(idle_d3_check(&facts.env, f, stack, reboot_pending));
    }
    out
}

/// `0000:02:00.0, .1 and .3`: the functions of one card, the slot said once.
fn card_name(addrs: &[String]) -> String {
    let mut name = addrs[0].clone();
    let fns: Vec<&str> = addrs[1..]
        .iter()
        .filter_map(|a| a.rsplit_once('.'))
        .map(|(_, f)| f)
        .collect();
    for (i, f) in fns.iter().enumerate() {
        let sep = if i + 1 == fns.len() { " and" } else { "," };
        name.push_str(&format!("{sep} .{f}"));
    }
    name
}

/// One card's line; `all` holds the facts of each function it names, for the JSON.
fn reset_check(addrs: &[String], r: Report, all: Vec<Report>) -> Check {
    let (name, detail) = match addrs {
        [one] => (one.clone(), format!("{}; {}", r.reason, r.facts_line())),
        _ => (
            card_name(addrs),
            format!("{}; {}: {}", r.reason, r.address, r.facts_line()),
        ),
    };
    let name = format!("{name} resettable by the guest");
    let mut check = match r.verdict {
        Level::Pass => Check::pass(name, detail),
        Level::Warn => Check::warn(name, detail),
    };
    check.resets = all;
    check
}

/// `gpt full --no-idle-d3` configured it: the loaded vfio_pci must have it on.
fn idle_d3_check(env: &Env, f: &Facts, stack: &Stack, reboot_pending: bool) -> Check {
    let name = "vfio-pci's disable_idle_d3 (--no-idle-d3)";
    let todo = if reboot_pending {
        "reboot pending".to_string()
    } else {
        format!(
            "rebuild the initramfs (`{}`) and reboot",
            stack.initramfs.regenerate_hint()
        )
    };
    match env.disable_idle_d3 {
        Some(true) => Check::pass(name, "Y: idle vfio-pci devices stay in D0"),
        Some(false) => Check::fail(
            name,
            format!("/sys/module/vfio_pci/parameters/disable_idle_d3 reads N: vfio_pci was loaded without gpt's option; {todo}"),
        ),
        None if !f.vfio_pci_loaded => Check::fail(
            name,
            format!("vfio_pci is not loaded, so its disable_idle_d3 cannot be read; {todo}"),
        ),
        None => Check::warn(
            name,
            "vfio_pci is loaded but has no disable_idle_d3 parameter in /sys/module/vfio_pci/parameters",
        ),
    }
}
