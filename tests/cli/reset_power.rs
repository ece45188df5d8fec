//! Can the guest reset the card, and will it wake up: the reset and power facts in `gpt check`
//! (text and `--json`) and in `gpt full`'s plan, on fake sysfs trees for each case; and
//! `gpt full --no-idle-d3` through dry run, apply, re-run and reset.

use crate::support::hosts::{
    as_full_left_it, rebooted, rocketlake, rocketlake_config, DEBIAN_KVER,
};
use crate::support::tree::{config_space, Dev, HostTree};
use crate::support::{gpt, gpt_with_fakes, run};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The rocketlake host configured by `gpt full nvidia` and rebooted: the RTX 2060's four
/// functions on vfio-pci, kernel 6.1.
fn after_reboot(root: &Path) -> HostTree {
    let mut t = rocketlake(root);
    as_full_left_it(&mut t, &rocketlake_config(), DEBIAN_KVER, true);
    rebooted(&mut t, &rocketlake_config(), DEBIAN_KVER);
    t
}

/// The device directory of `addr` (as the tree's links resolve it).
fn dev_dir(root: &Path, addr: &str) -> PathBuf {
    std::fs::canonicalize(root.join("sys/bus/pci/devices").join(addr)).unwrap()
}

/// Write (or, with `None`, remove) a sysfs attribute of a device.
fn attr(root: &Path, addr: &str, name: &str, value: Option<&[u8]>) {
    let p = dev_dir(root, addr).join(name);
    match value {
        Some(v) => std::fs::write(p, v).unwrap(),
        None => {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Every reset check line of `gpt check`: `(address, "PASS (…)" | "WARN (…)")`.
fn reset_lines(root: &Path) -> Vec<(String, String)> {
    let (_, out, err) = run(gpt_with_fakes(root).arg("check"));
    assert!(!err.contains("panicked"), "{err}");
    out.lines()
        .filter_map(|l| l.strip_prefix("Checking for "))
        .filter_map(|l| l.split_once(" : "))
        .filter_map(|(name, status)| {
            let addr = name.trim_end().strip_suffix(" resettable by the guest")?;
            Some((addr.to_string(), status.to_string()))
        })
        .flat_map(|(name, status)| {
            // One line per card where its functions say the same: `0000:02:00.1, .2 and .3`.
            let (first, _) = name
                .split_once(',')
                .or(name.split_once(" and "))
                .unwrap_or((&name, ""));
            let slot = first.rsplit_once('.').map_or("", |(s, _)| s).to_string();
            let fns: Vec<String> = name
                .split([',', ' '])
                .filter(|w| w.starts_with('.'))
                .map(|f| format!("{slot}{f}"))
                .collect();
            std::iter::once(first.to_string())
                .chain(fns)
                .map(move |a| (a, status.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn line_of<'a>(lines: &'a [(String, String)], addr: &str) -> &'a str {
    lines
        .iter()
        .find(|(a, _)| a == addr)
        .map(|(_, s)| s.as_str())
        .unwrap_or_else(|| panic!("no reset line for {addr} in {lines:#?}"))
}

fn check_json(root: &Path) -> Vec<Value> {
    let (_, out, _) = run(gpt_with_fakes(root).args(["check", "--json"]));
    let doc: Value = serde_json::from_str(&out).expect("one JSON document");
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("resets").is_some())
        .cloned()
        .collect()
}

#[test]
fn as_on_debian_11_nothing_is_reported_and_check_degrades_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    after_reboot(r).file("/proc/sys/kernel/osrelease", "5.10.0-26-amd64\n");
    for f in [
        "0000:02:00.0",
        "0000:02:00.1",
        "0000:02:00.2",
        "0000:02:00.3",
    ] {
        for a in ["reset_method", "power_state", "d3cold_allowed"] {
            attr(r, f, a, None);
        }
    }
    // The GPU's config space announces FLR in its PCIe DevCap (read: not in D3cold, and a
    // tree under --root needs no privilege); the other functions have only the 64-byte header.
    let flr = config_space(&Dev::new("02:00.0", (0x10de, 0x1f08), 0x030000).pcie_flr(true));
    attr(r, "0000:02:00.0", "config", Some(&flr));
    let lines = reset_lines(r);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        line_of(&lines, "0000:02:00.0"),
        "PASS (function-level reset (FLR, from PCIe DevCap: the kernel lists its reset methods only from 5.15); \
         driver vfio-pci, reset_method not reported before 5.15, power_state not reported, d3cold_allowed not reported)"
    );
    assert_eq!(
        line_of(&lines, "0000:02:00.1"),
        "PASS (vfio resets bus 0000:02, where every device goes to vfio-pci (FLR not known (no PCIe capability in its config space)); \
         0000:02:00.1: driver vfio-pci, reset_method not reported before 5.15, power_state not reported, d3cold_allowed not reported)"
    );
    let (code, _, err) = run(gpt_with_fakes(r).arg("check"));
    assert_eq!(code, 0, "{err}");
    let json = check_json(r);
    assert_eq!(json[0]["resets"][0]["reset_method"], Value::Null);
    assert_eq!(json[0]["resets"][0]["power_state"], Value::Null);
}

#[test]
fn flr_passes_and_json_carries_every_fact() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    after_reboot(r);
    attr(r, "0000:02:00.0", "reset_method", Some(b"flr bus\n"));
    let lines = reset_lines(r);
    assert_eq!(
        line_of(&lines, "0000:02:00.0"),
        "PASS (function-level reset (FLR); driver vfio-pci, reset_method \"flr bus\", power_state D0, d3cold_allowed 1)"
    );
    let json = check_json(r);
    // The GPU has its own line; the three functions that say the same share one.
    assert_eq!(json.len(), 2);
    assert_eq!(json[0]["name"], "0000:02:00.0 resettable by the guest");
    assert_eq!(
        json[1]["name"],
        "0000:02:00.1, .2 and .3 resettable by the guest"
    );
    assert_eq!(json[0]["status"], "pass");
    assert_eq!(
        json[0]["resets"],
        serde_json::json!([{
            "address": "0000:02:00.0",
            "driver": "vfio-pci",
            "reset_method": ["flr", "bus"],
            "power_state": "D0",
            "d3cold_allowed": "1",
            "verdict": "pass",
            "reason": "function-level reset (FLR)"
        }])
    );
    // The shared line still carries each of its three functions' own facts.
    let shared: Vec<&str> = json[1]["resets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert_eq!(shared, ["0000:02:00.1", "0000:02:00.2", "0000:02:00.3"]);
    // A function the kernel found no method for: an empty list, not null.
    assert_eq!(json[1]["resets"][2]["reset_method"], serde_json::json!([]));
}

#[test]
fn bus_only_warns_when_a_device_on_the_bus_stays_on_the_host_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut t = after_reboot(r);
    // A fifth function on bus 02, in an IOMMU group of its own, left on the host.
    t.device(
        Dev::new("02:00.4", (0x10de, 0x1aeb), 0x0c0330)
            .group(16)
            .driver("xhci_hcd")
            .behind("00:01.0"),
    );
    let lines = reset_lines(r);
    let gpu = line_of(&lines, "0000:02:00.0");
    assert!(gpu.starts_with("WARN (no function-level reset, and a reset of bus 0000:02 would also reset 0000:02:00.4 (xhci_hcd), which stays on the host"), "{gpu}");
    // Still a warning, not a failure: the host is otherwise ready.
    let (code, _, err) = run(gpt_with_fakes(r).arg("check"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn on_a_bus_of_its_own_bus_only_passes_and_device_specific_first_passes() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    after_reboot(r);
    let lines = reset_lines(r);
    assert!(line_of(&lines, "0000:02:00.3")
        .starts_with("PASS (vfio resets bus 0000:02, where every device goes to vfio-pci (no function-level reset); 0000:02:00.0: driver vfio-pci, reset_method \"bus\""));
    attr(
        r,
        "0000:02:00.0",
        "reset_method",
        Some(b"device_specific bus\n"),
    );
    let lines = reset_lines(r);
    assert!(line_of(&lines, "0000:02:00.0")
        .starts_with("PASS (a device-specific reset comes first; driver vfio-pci, reset_method \"device_specific bus\""));
    // Without `bus` anywhere on the bus, the kernel offers no bus reset.
    attr(r, "0000:02:00.0", "reset_method", Some(b"pm\n"));
    let lines = reset_lines(r);
    assert!(line_of(&lines, "0000:02:00.1").contains("the kernel offers no reset of bus 0000:02"));
}

#[test]
fn d3cold_warns_says_what_no_idle_d3_does_and_config_space_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    // 5.14: power_state exists, reset_method does not yet.
    after_reboot(r).file("/proc/sys/kernel/osrelease", "5.14.0-1-amd64\n");
    for f in [
        "0000:02:00.0",
        "0000:02:00.1",
        "0000:02:00.2",
        "0000:02:00.3",
    ] {
        attr(r, f, "reset_method", None);
    }
    attr(r, "0000:02:00.0", "power_state", Some(b"D3cold\n"));
    // A read of this config space would fail and say so: the verdict shows none was tried.
    let cfg = dev_dir(r, "0000:02:00.0").join("config");
    std::fs::remove_file(&cfg).unwrap();
    std::fs::create_dir(&cfg).unwrap();
    let lines = reset_lines(r);
    let gpu = line_of(&lines, "0000:02:00.0");
    assert!(
        gpu.starts_with("WARN (")
            && gpu.contains(
                "FLR not known (it is in D3cold, and reading config space would wake it)"
            ),
        "{gpu}"
    );
    assert!(
        gpu.contains("`sudo gpt full --no-idle-d3` keeps idle vfio-pci devices in D0"),
        "{gpu}"
    );
    assert!(
        gpu.ends_with("power_state D3cold, d3cold_allowed 1)"),
        "{gpu}"
    );
    assert!(line_of(&lines, "0000:02:00.1").starts_with("PASS"));
}

// ---- An AMD Polaris card (the reset bug) on the rocketlake host ----

const POLARIS: [&str; 2] = ["0000:0a:00.0", "0000:0a:00.1"];
const RULES: &str = "/etc/udev/rules.d/99-vendor-reset.rules";
const RULE: &str = "ACTION==\"add\", SUBSYSTEM==\"pci\", ATTR{vendor}==\"0x1002\", ATTR{device}==\"0x67DF\", RUN+=\"/bin/sh -c '/sbin/modprobe vendor-reset; echo device_specific > /sys$env{DEVPATH}/reset_method'\"\n";

fn with_polaris(t: &mut HostTree) {
    let amd = |addr: &str, dev: u16, class: u32, drv: &str| {
        Dev::new(addr, (0x1002, dev), class)
            .subsys(0x1da2, 0xe366)
            .group(20)
            .driver(drv)
            .behind("00:1c.0")
            .power_state("D0")
            .d3cold_allowed(true)
    };
    t.device(amd("0a:00.0", 0x67df, 0x030000, "amdgpu").reset_method("pm bus"))
        .device(amd("0a:00.1", 0xaaf0, 0x040300, "snd_hda_intel").reset_method("pm"));
}

fn polaris_config() -> gpt::model::Config {
    let mut c = rocketlake_config();
    c.gpus = vec![POLARIS[0].into()];
    c.devices = POLARIS.iter().map(|s| s.to_string()).collect();
    c.ids = vec!["1002:67df".into(), "1002:aaf0".into()];
    c.args[2] = "vfio-pci.ids=1002:67df,1002:aaf0".into();
    c
}

#[test]
fn a_polaris_card_without_vendor_reset_warns_and_with_it_wired_passes() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut t = rocketlake(r);
    with_polaris(&mut t);
    as_full_left_it(&mut t, &polaris_config(), DEBIAN_KVER, true);
    rebooted(&mut t, &polaris_config(), DEBIAN_KVER);
    let lines = reset_lines(r);
    assert_eq!(
        line_of(&lines, POLARIS[0]),
        "WARN (Polaris 10 card with the AMD reset bug (1002:67df): the guest cannot reset it without vendor-reset: \
         vendor-reset is not installed for 6.1.0-13-amd64; \
         no udev rule puts device_specific into its reset_method (0x1002:0x67df); \
         reset_method is \"pm bus\", and device_specific must come first; \
         driver vfio-pci, reset_method \"pm bus\", power_state D0, d3cold_allowed 1)"
    );
    // The audio function has no reset bug: it is reset with the bus, which only it and the GPU share.
    assert!(line_of(&lines, POLARIS[1])
        .starts_with("PASS (vfio resets bus 0000:0a, where every device goes to vfio-pci (no function-level reset, only a power-management reset (pm)"), "{lines:#?}");

    // vendor-reset loaded, with upstream's rule (uppercase: it never matches).
    t.file("/sys/module/vendor_reset/initstate", "live\n")
        .file(RULES, RULE);
    let gpu = line_of(&reset_lines(r), POLARIS[0]).to_string();
    assert!(gpu.starts_with("WARN ("), "{gpu}");
    assert!(
        !gpu.contains("not loaded") && !gpu.contains("not installed"),
        "{gpu}"
    );
    assert!(
        gpu.contains(&format!(
            "the udev rule in {RULES} names 0x67DF, which never matches sysfs's lowercase 0x67df"
        )),
        "{gpu}"
    );

    // A lowercase rule ran: device_specific first.
    t.file(RULES, &RULE.replace("0x67DF", "0x67df"));
    attr(
        r,
        POLARIS[0],
        "reset_method",
        Some(b"device_specific pm bus\n"),
    );
    assert_eq!(
        line_of(&reset_lines(r), POLARIS[0]),
        "PASS (Polaris 10 card with the AMD reset bug (1002:67df): vendor-reset resets it; \
         driver vfio-pci, reset_method \"device_specific pm bus\", power_state D0, d3cold_allowed 1)"
    );
}

// ---- `gpt full`: the verdict in the plan, and --no-idle-d3 ----

#[test]
fn the_full_plan_shows_the_verdict_before_the_reboot_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut t = rocketlake(r);
    with_polaris(&mut t);
    let (code, _, err) = run(gpt(r).args(["full", "--device", "0a:00.0", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("==> Reset by the guest, and waking up:\n"),
        "{err}"
    );
    assert!(err.contains("    0000:0a:00.0 WARN: Polaris 10 card with the AMD reset bug (1002:67df): the guest cannot reset it without vendor-reset"), "{err}");
    assert!(
        err.contains(
            "        driver amdgpu, reset_method \"pm bus\", power_state D0, d3cold_allowed 1\n"
        ),
        "{err}"
    );
    assert!(err.contains("    0000:0a:00.1 PASS: "), "{err}");

    let (code, out, err) = run(gpt(r).args(["full", "nvidia", "--dry-run", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let reset = doc["reset"].as_array().unwrap();
    assert_eq!(reset.len(), 4, "{doc}");
    assert_eq!(reset[0]["address"], "0000:02:00.0");
    assert_eq!(reset[0]["driver"], "nouveau");
    assert_eq!(reset[0]["verdict"], "pass");
    assert_eq!(reset[0]["reset_method"], serde_json::json!(["bus"]));
}

// ---- --no-idle-d3: dry run, apply, re-run, reset ----

use crate::support::fakes::Fakes;
use crate::support::transact::{primed_host, snap};

fn full(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root).env("PATH", fakes.path()).arg("full").args(args))
}

fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

const CONF: &str = "etc/modprobe.d/gpt-vfio.conf";

#[test]
fn no_idle_d3_goes_into_gpts_modprobe_file_and_reset_takes_it_out() {
    let (dir, fakes) = primed_host();
    let r = dir.path();
    let before = etc(r);
    let args = ["nvidia", "--yes", "--no-deps", "--no-idle-d3", "--json"];

    let all = snap(r);
    let (code, out, err) = full(r, &fakes, &["nvidia", "--no-idle-d3", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+# Keep idle vfio-pci devices in D0: some cards do not wake from D3cold.\n+options vfio-pci disable_idle_d3=1\n"), "{out}");
    assert!(
        !out.contains("vfio_pci.disable_idle_d3"),
        "vfio_pci is a module here: {out}"
    );
    assert_eq!(snap(r), all, "a dry run changed the tree");

    let (code, out, err) = full(r, &fakes, &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["changed"],
        true
    );
    let conf = std::fs::read_to_string(r.join(CONF)).unwrap();
    assert_eq!(
        conf.matches("options vfio-pci disable_idle_d3=1\n").count(),
        1,
        "{conf}"
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("var/lib/gpt/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["config"]["no_idle_d3"], true);
    // The file is an input of the initramfs: it was rebuilt.
    assert!(
        fakes
            .calls()
            .contains(&"update-initramfs -u -k all".to_string()),
        "{:?}",
        fakes.calls()
    );

    fakes.reset_log();
    let applied = snap(r);
    let (code, out, err) = full(r, &fakes, &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["changed"],
        false
    );
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());
    assert_eq!(snap(r), applied);

    let (code, _, err) = run(gpt(r).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(r), before, "reset left /etc different");
}

#[test]
fn check_verifies_disable_idle_d3_after_the_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut c = rocketlake_config();
    c.no_idle_d3 = true;
    let mut t = rocketlake(r);
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    rebooted(&mut t, &c, DEBIAN_KVER);
    let name = "Checking for vfio-pci's disable_idle_d3 (--no-idle-d3)";
    let param = "/sys/module/vfio_pci/parameters/disable_idle_d3";
    t.file(param, "Y\n");
    let (code, out, err) = run(gpt_with_fakes(r).arg("check"));
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with(": PASS"), "{line}");
    t.file(param, "N\n");
    let (code, out, _) = run(gpt_with_fakes(r).arg("check"));
    assert_eq!(code, 1);
    let line = out.lines().find(|l| l.starts_with(name)).unwrap();
    assert!(line.contains("FAIL (/sys/module/vfio_pci/parameters/disable_idle_d3 reads N: vfio_pci was loaded without gpt's option; rebuild the initramfs (`sudo update-initramfs -u -k all`) and reboot)"), "{line}");
    // Not configured: no such line.
    let mut t2 = rocketlake(&r.join("other"));
    as_full_left_it(&mut t2, &rocketlake_config(), DEBIAN_KVER, true);
    rebooted(&mut t2, &rocketlake_config(), DEBIAN_KVER);
    let (_, out, _) = run(gpt_with_fakes(&r.join("other")).arg("check"));
    assert!(!out.contains("disable_idle_d3"), "{out}");
}

#[test]
fn with_vfio_pci_built_in_no_idle_d3_is_also_a_kernel_argument() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::hosts::amd_datacenter(dir.path());
    let (code, out, err) =
        run(gpt(dir.path()).args(["full", "nvidia", "--no-idle-d3", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" vfio_pci.disable_idle_d3=1"), "{out}");
    assert!(
        out.contains("+options vfio-pci disable_idle_d3=1\n"),
        "{out}"
    );
}

#[test]
fn a_function_on_the_root_bus_without_flr_warns_in_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    // The iGPU sits on root bus 00; kernel 6.1 lists no method for it.
    let (code, _, err) = run(gpt(dir.path()).args(["full", "--device", "00:02.0", "--dry-run"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(
        "    0000:00:02.0 WARN: no function-level reset, and it sits on a root bus, which vfio cannot reset"
    ), "{err}");
    assert!(
        err.contains("        driver i915, reset_method none, power_state not reported"),
        "{err}"
    );
}
