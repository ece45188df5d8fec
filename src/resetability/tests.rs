use super::*;
use crate::pci::PciDevice;

fn a(s: &str) -> PciAddress {
    PciAddress::parse(s).unwrap()
}

/// A topology of `(address, vendor, device, driver)`.
fn topo(devs: &[(&str, u16, u16, &str)]) -> Topology {
    let mut t = Topology::default();
    for (addr, v, d, drv) in devs {
        let mut dev = PciDevice::new(a(addr));
        dev.vendor = Some(*v);
        dev.device = Some(*d);
        dev.driver = Some(drv.to_string());
        t.devices.insert(dev.address, dev);
    }
    t
}

fn func(addr: &str, methods: Option<&str>, peers: &[&str]) -> Function {
    let mut f = Function::new(a(addr));
    f.reset_method = methods.map(|m| m.split_whitespace().map(String::from).collect());
    f.power_state = Some("D0".into());
    f.d3cold_allowed = Some("1".into());
    f.bus_peers = peers.iter().map(|p| a(p)).collect();
    f
}

fn env_515() -> Env {
    Env {
        lists_methods: true,
        running_kernel: Some("6.1.0-13-amd64".into()),
        ..Env::default()
    }
}

fn vfio(addrs: &[&str]) -> BTreeSet<PciAddress> {
    addrs.iter().map(|s| a(s)).collect()
}

fn one(f: Function, env: Env, t: &Topology, v: &BTreeSet<PciAddress>) -> Report {
    let facts = ResetFacts {
        functions: vec![f.clone()],
        env,
    };
    judge(&f, &facts, t, v)
}

const NV: (u16, u16) = (0x10de, 0x1f08);

#[test]
fn flr_passes_and_the_facts_line_says_what_was_read() {
    let t = topo(&[("01:00.0", NV.0, NV.1, "vfio-pci")]);
    let r = one(
        func("01:00.0", Some("flr bus"), &[]),
        env_515(),
        &t,
        &vfio(&["01:00.0"]),
    );
    assert_eq!(r.verdict, Level::Pass);
    assert_eq!(r.reason, "function-level reset (FLR)");
    assert_eq!(
        r.facts_line(),
        "driver vfio-pci, reset_method \"flr bus\", power_state D0, d3cold_allowed 1"
    );
}

#[test]
fn bus_only_passes_on_a_bus_of_its_own_and_warns_on_a_shared_one() {
    let t = topo(&[
        ("01:00.0", NV.0, NV.1, "vfio-pci"),
        ("01:00.1", 0x10de, 0x10f9, "snd_hda_intel"),
    ]);
    // Function 0 lists `bus` (probed before its sibling was on the bus); the sibling has no
    // reset_method at all.
    let f0 = func("01:00.0", Some("bus"), &["01:00.1"]);
    let r = one(f0.clone(), env_515(), &t, &vfio(&["01:00.0", "01:00.1"]));
    assert_eq!(r.verdict, Level::Pass, "{}", r.reason);
    assert!(r.reason.contains("vfio resets bus 0000:01"), "{}", r.reason);
    let r = one(f0, env_515(), &t, &vfio(&["01:00.0"]));
    assert_eq!(r.verdict, Level::Warn);
    assert_eq!(
        r.reason,
        "no function-level reset, and a reset of bus 0000:01 would also reset 0000:01:00.1 (snd_hda_intel), which stays on the host: vfio will not reset the bus, so the guest may find the card as the last VM left it; move the card to a slot of its own, or shut the guest down cleanly (not a forced stop), and if the next VM start finds the card hung or its screen dark, reboot the host first"
    );
    // The sibling without any method is reset with the bus when function 0 offers it.
    let f1 = func("01:00.1", None, &["01:00.0"]);
    let facts = ResetFacts {
        functions: vec![func("01:00.0", Some("bus"), &["01:00.1"]), f1.clone()],
        env: env_515(),
    };
    let r = judge(&f1, &facts, &t, &vfio(&["01:00.0", "01:00.1"]));
    assert_eq!(r.verdict, Level::Pass, "{}", r.reason);
    assert_eq!(r.reset_method, Some(vec![]));
    assert!(r.facts_line().contains("reset_method none"));
}

#[test]
fn no_bus_reset_offered_or_a_root_bus_warns() {
    let t = topo(&[("01:00.0", NV.0, NV.1, "vfio-pci")]);
    let r = one(
        func("01:00.0", Some("pm"), &[]),
        env_515(),
        &t,
        &vfio(&["01:00.0"]),
    );
    assert_eq!(r.verdict, Level::Warn);
    assert!(
        r.reason.contains("only a power-management reset (pm)"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("no-bus-reset quirk"), "{}", r.reason);
    let mut root = func("00:02.0", Some("pm"), &[]);
    root.root_bus = true;
    let r = one(root, env_515(), &t, &vfio(&["00:02.0"]));
    assert_eq!(r.verdict, Level::Warn);
    assert!(r.reason.contains("root bus"), "{}", r.reason);
}

#[test]
fn device_specific_first_passes() {
    let t = topo(&[("01:00.0", 0x8086, 0x1234, "vfio-pci")]);
    let r = one(
        func("01:00.0", Some("device_specific bus"), &[]),
        env_515(),
        &t,
        &vfio(&["01:00.0"]),
    );
    assert_eq!(
        (r.verdict, r.reason.as_str()),
        (Level::Pass, "a device-specific reset comes first")
    );
}

#[test]
fn before_5_15_nothing_is_listed_and_devcap_or_the_bus_decides() {
    let t = topo(&[("01:00.0", NV.0, NV.1, "vfio-pci")]);
    let old = Env::default();
    let mut f = func("01:00.0", None, &[]);
    f.power_state = None;
    f.d3cold_allowed = None;
    let r = one(f.clone(), old.clone(), &t, &vfio(&["01:00.0"]));
    assert_eq!(r.reset_method, None);
    assert_eq!(
        r.facts_line(),
        "driver vfio-pci, reset_method not reported before 5.15, power_state not reported, d3cold_allowed not reported"
    );
    assert_eq!(r.verdict, Level::Pass, "{}", r.reason);
    // A PASS says what works first.
    assert_eq!(
        r.reason,
        "vfio resets bus 0000:01, where every device goes to vfio-pci (FLR not known (not read))"
    );
    f.devcap_flr = DevcapFlr::Yes;
    let r = one(f.clone(), old.clone(), &t, &vfio(&["01:00.0"]));
    assert!(
        r.reason
            .starts_with("function-level reset (FLR, from PCIe DevCap"),
        "{}",
        r.reason
    );
    f.devcap_flr = DevcapFlr::No;
    f.root_bus = true;
    let r = one(f, old, &t, &vfio(&["01:00.0"]));
    assert_eq!(r.verdict, Level::Warn);
    assert!(r
        .reason
        .starts_with("no function-level reset (PCIe DevCap), and it sits on a root bus"));
}

const POLARIS: (u16, u16) = (0x1002, 0x67df);
const RULE: &str = "ACTION==\"add\", SUBSYSTEM==\"pci\", ATTR{vendor}==\"0x1002\", ATTR{device}==\"0x67df\", RUN+=\"/bin/sh -c 'echo device_specific > /sys$env{DEVPATH}/reset_method'\"\n";

#[test]
fn a_polaris_card_needs_vendor_reset_loaded_wired_and_first() {
    let t = topo(&[("0a:00.0", POLARIS.0, POLARIS.1, "vfio-pci")]);
    let v = vfio(&["0a:00.0"]);
    let bare = one(func("0a:00.0", Some("pm bus"), &[]), env_515(), &t, &v);
    assert_eq!(bare.verdict, Level::Warn);
    assert_eq!(
        bare.reason,
        "Polaris 10 card with the AMD reset bug (1002:67df): the guest cannot reset it without vendor-reset: \
         vendor-reset is not loaded; no udev rule puts device_specific into its reset_method (0x1002:0x67df); \
         reset_method is \"pm bus\", and device_specific must come first"
    );
    let mut env = env_515();
    env.vendor_reset_installed = Some(false);
    let r = one(func("0a:00.0", Some("pm bus"), &[]), env.clone(), &t, &v);
    assert!(
        r.reason
            .contains("vendor-reset is not installed for 6.1.0-13-amd64"),
        "{}",
        r.reason
    );
    // Loaded, with upstream's uppercase rule: the rule is named, and nothing reset it.
    env.vendor_reset_loaded = true;
    env.udev_rules = vec![(
        "/etc/udev/rules.d/99-vendor-reset.rules".into(),
        RULE.replace("0x67df", "0x67DF"),
    )];
    let r = one(func("0a:00.0", Some("pm bus"), &[]), env.clone(), &t, &v);
    assert_eq!(r.verdict, Level::Warn);
    assert!(
        r.reason.contains("names 0x67DF, which never matches"),
        "{}",
        r.reason
    );
    assert!(!r.reason.contains("not loaded"), "{}", r.reason);
    // Wired: a matching rule put device_specific first.
    env.udev_rules = vec![(
        "/etc/udev/rules.d/99-vendor-reset.rules".into(),
        RULE.into(),
    )];
    let r = one(
        func("0a:00.0", Some("device_specific pm bus"), &[]),
        env.clone(),
        &t,
        &v,
    );
    assert_eq!(r.verdict, Level::Pass, "{}", r.reason);
    assert_eq!(
        r.reason,
        "Polaris 10 card with the AMD reset bug (1002:67df): vendor-reset resets it"
    );
    // device_specific first, but the module is gone: a warning.
    env.vendor_reset_loaded = false;
    let r = one(
        func("0a:00.0", Some("device_specific pm bus"), &[]),
        env,
        &t,
        &v,
    );
    assert_eq!(r.verdict, Level::Warn);
    // Before 5.15, loaded is enough.
    let old = Env {
        vendor_reset_loaded: true,
        ..Env::default()
    };
    let r = one(func("0a:00.0", None, &[]), old, &t, &v);
    assert_eq!(r.verdict, Level::Pass, "{}", r.reason);
}

#[test]
fn d3cold_warns_and_says_what_no_idle_d3_does() {
    let t = topo(&[("01:00.0", NV.0, NV.1, "vfio-pci")]);
    let mut f = func("01:00.0", Some("flr bus"), &[]);
    f.power_state = Some("D3cold".into());
    let r = one(f.clone(), env_515(), &t, &vfio(&["01:00.0"]));
    assert_eq!(r.verdict, Level::Warn);
    assert!(
        r.reason
            .starts_with("function-level reset (FLR); it is in D3cold"),
        "{}",
        r.reason
    );
    assert!(
        r.reason.contains("`sudo gpt full --no-idle-d3`"),
        "{}",
        r.reason
    );
    let mut env = env_515();
    env.disable_idle_d3 = Some(true);
    let r = one(f, env, &t, &vfio(&["01:00.0"]));
    assert!(
        r.reason
            .contains("although vfio-pci's disable_idle_d3 is on"),
        "{}",
        r.reason
    );
}

#[test]
fn the_kernel_lists_methods_from_5_15_or_when_a_function_shows_them() {
    assert!(lists_methods(Some((5, 15)), false));
    assert!(lists_methods(Some((6, 1)), false));
    assert!(!lists_methods(Some((5, 10)), false));
    assert!(!lists_methods(None, false));
    assert!(lists_methods(None, true));
}

#[test]
fn one_verdict_per_card_where_its_functions_say_the_same() {
    let r = |a: &str, v: Level, why: &str| Report {
        address: a.into(),
        driver: None,
        reset_method: None,
        power_state: None,
        d3cold_allowed: None,
        verdict: v,
        reason: why.into(),
    };
    let grouped = by_card(&[
        r("0000:01:00.0", Level::Pass, "bus"),
        r("0000:01:00.1", Level::Pass, "bus"),
        r("0000:01:00.2", Level::Warn, "d3cold"),
        r("0000:02:00.0", Level::Pass, "bus"),
    ]);
    let shown: Vec<(Vec<String>, Level)> =
        grouped.into_iter().map(|(a, r)| (a, r.verdict)).collect();
    assert_eq!(
        shown,
        [
            (
                vec!["0000:01:00.0".to_string(), "0000:01:00.1".to_string()],
                Level::Pass
            ),
            (vec!["0000:01:00.2".to_string()], Level::Warn),
            (vec!["0000:02:00.0".to_string()], Level::Pass),
        ]
    );
}
