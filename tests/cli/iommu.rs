use crate::support::hosts::{self, rocketlake};
use crate::support::tree::{Dev, HostTree};
use crate::support::{gpt, run};
use serde_json::Value;

/// The listing the old tool's README showed for its host, line for line.
const OLD_README_LISTING: &str = "\
IOMMU Group 0 00:02.0 VGA compatible controller [0300]: Intel Corporation RocketLake-S GT1 [UHD Graphics 750] [8086:4c8a] (rev 04)
IOMMU Group 1 00:00.0 Host bridge [0600]: Intel Corporation Device [8086:4c43] (rev 01)
IOMMU Group 2 00:01.0 PCI bridge [0604]: Intel Corporation Device [8086:4c01] (rev 01)
IOMMU Group 3 00:04.0 Signal processing controller [1180]: Intel Corporation Device [8086:4c03] (rev 01)
IOMMU Group 4 00:08.0 System peripheral [0880]: Intel Corporation Device [8086:4c11] (rev 01)
IOMMU Group 5 00:12.0 Signal processing controller [1180]: Intel Corporation Comet Lake PCH Thermal Controller [8086:06f9]
IOMMU Group 6 00:14.0 USB controller [0c03]: Intel Corporation Comet Lake USB 3.1 xHCI Host Controller [8086:06ed]
IOMMU Group 6 00:14.2 RAM memory [0500]: Intel Corporation Comet Lake PCH Shared SRAM [8086:06ef]
IOMMU Group 7 00:14.3 Network controller [0280]: Intel Corporation Comet Lake PCH CNVi WiFi [8086:06f0]
IOMMU Group 8 00:15.0 Serial bus controller [0c80]: Intel Corporation Comet Lake PCH Serial IO I2C Controller #0 [8086:06e8]
IOMMU Group 9 00:16.0 Communication controller [0780]: Intel Corporation Comet Lake HECI Controller [8086:06e0]
IOMMU Group 10 00:17.0 SATA controller [0106]: Intel Corporation Comet Lake SATA AHCI Controller [8086:06d2]
IOMMU Group 11 00:1b.0 PCI bridge [0604]: Intel Corporation Comet Lake PCI Express Root Port #21 [8086:06ac] (rev f0)
IOMMU Group 12 00:1c.0 PCI bridge [0604]: Intel Corporation Device [8086:06bc] (rev f0)
IOMMU Group 13 00:1f.0 ISA bridge [0601]: Intel Corporation H470 Chipset LPC/eSPI Controller [8086:0684]
IOMMU Group 13 00:1f.3 Audio device [0403]: Intel Corporation Device [8086:f1c8]
IOMMU Group 13 00:1f.4 SMBus [0c05]: Intel Corporation Comet Lake PCH SMBus Controller [8086:06a3]
IOMMU Group 13 00:1f.5 Serial bus controller [0c80]: Intel Corporation Comet Lake PCH SPI Controller [8086:06a4]
IOMMU Group 14 02:00.0 VGA compatible controller [0300]: NVIDIA Corporation TU106 [GeForce RTX 2060 Rev. A] [10de:1f08] (rev a1)
IOMMU Group 14 02:00.1 Audio device [0403]: NVIDIA Corporation TU106 High Definition Audio Controller [10de:10f9] (rev a1)
IOMMU Group 14 02:00.2 USB controller [0c03]: NVIDIA Corporation TU106 USB 3.1 Host Controller [10de:1ada] (rev a1)
IOMMU Group 14 02:00.3 Serial bus controller [0c80]: NVIDIA Corporation TU106 USB Type-C UCSI Controller [10de:1adb] (rev a1)
IOMMU Group 15 03:00.0 Non-Volatile memory controller [0108]: ADATA Technology Co., Ltd. XPG SX8200 Pro PCIe Gen3x4 M.2 2280 Solid State Drive [1cc1:8201] (rev 03)
";

fn json(out: &str) -> Value {
    serde_json::from_str(out)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"))
}

#[test]
fn lists_every_device_of_the_old_readme_host_in_its_group_like_lspci() {
    // (The README's host bridge 00:00.0 was shown as "PCI bridge"; the class of a host
    // bridge is 0600, which is what sysfs reports and what the listing above holds.)
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = run(gpt(dir.path()).arg("iommu"));
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    let mut group = None;
    let mut seen = Vec::new();
    for line in &lines {
        if let Some(g) = line.strip_prefix("IOMMU group ") {
            group = Some(g.to_string());
        } else if let Some(dev) = line.strip_prefix("  ").filter(|d| !d.starts_with(' ')) {
            let dev = dev
                .trim_end_matches(" [GPU, boot VGA]")
                .trim_end_matches(" [GPU]");
            seen.push(format!("IOMMU Group {} {}", group.clone().unwrap(), dev));
        }
    }
    let expected: Vec<&str> = OLD_README_LISTING.lines().collect();
    assert_eq!(seen, expected, "whole output:\n{out}");
    // Groups come in numeric order, not string order.
    let headers: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("IOMMU group"))
        .collect();
    assert_eq!(headers.len(), 16);
    assert_eq!(*headers[10], "IOMMU group 10");
    // Drivers in use, and the GPU marks.
    assert!(out.contains("  02:00.3 Serial bus controller [0c80]: NVIDIA Corporation TU106 USB Type-C UCSI Controller [10de:1adb] (rev a1)\n      driver: nvidia-gpu\n"), "{out}");
    assert!(
        out.contains("[8086:4c8a] (rev 04) [GPU, boot VGA]\n      driver: i915"),
        "{out}"
    );
    assert!(
        out.contains("[10de:1f08] (rev a1) [GPU]\n      driver: nouveau"),
        "{out}"
    );
    assert!(out.contains("00:04.0 Signal processing controller [1180]: Intel Corporation Device [8086:4c03] (rev 01)\n      driver: none"), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "no colour codes when not a terminal"
    );
}

#[test]
fn json_has_the_documented_fields_for_each_device() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["iommu", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 16);
    let g14 = groups.iter().find(|g| g["id"] == 14).unwrap();
    let gpu = &g14["devices"][0];
    let expected = serde_json::json!({
        "address": "0000:02:00.0", "class": "0300", "class_name": "VGA compatible controller",
        "vendor_id": "10de", "device_id": "1f08", "vendor_name": "NVIDIA Corporation",
        "device_name": "TU106 [GeForce RTX 2060 Rev. A]", "revision": "a1",
        "subsystem": "1043:86f0", "driver": "nouveau", "boot_vga": false, "gpu": true
    });
    assert_eq!(gpu, &expected);
    let addrs: Vec<&str> = g14["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addrs,
        [
            "0000:02:00.0",
            "0000:02:00.1",
            "0000:02:00.2",
            "0000:02:00.3"
        ]
    );
    let igpu = &groups.iter().find(|g| g["id"] == 0).unwrap()["devices"][0];
    assert_eq!(igpu["boot_vga"], true);
    let unbound = &groups.iter().find(|g| g["id"] == 3).unwrap()["devices"][0];
    assert_eq!(unbound["driver"], Value::Null);
    assert_eq!(unbound["gpu"], false);
    assert!(
        err.is_empty(),
        "nothing on stderr for a healthy host: {err}"
    );
}

/// An AMD EPYC datacenter host: a 3D-controller GPU, more than 64 groups, a VMD domain.
fn datacenter(root: &std::path::Path) -> HostTree {
    let mut t = HostTree::new(root);
    for g in 0..80u32 {
        let addr = format!("0000:{:02x}:00.0", g + 0x40);
        t.device(
            Dev::new(&addr, (0x1022, 0x1483), 0x060400)
                .group(g)
                .driver("pcieport"),
        );
    }
    t.device(
        Dev::new("0000:c1:00.0", (0x10de, 0x2331), 0x030200)
            .rev(0xa1)
            .subsys(0x10de, 0x1626)
            .group(93)
            .driver("nvidia"),
    )
    .device(
        Dev::new("10000:e1:00.0", (0x8086, 0x0a54), 0x010802)
            .group(94)
            .driver("nvme"),
    )
    .device(
        Dev::new("0000:e2:00.0", (0x1a03, 0x2000), 0x030000)
            .group(95)
            .boot_vga()
            .driver("ast"),
    )
    .file("/sys/firmware/acpi/tables/IVRS", "IVRS")
    .file("/etc/os-release", hosts::OS_UBUNTU2404);
    t
}

#[test]
fn every_group_in_numeric_order_with_3d_controllers_and_long_domains() {
    let dir = tempfile::tempdir().unwrap();
    datacenter(dir.path());
    let (code, out, err) = run(gpt(dir.path())
        .args(["iommu", "--json"])
        .env("GPT_PCI_IDS", ""));
    assert_eq!(code, 0, "{err}");
    let doc = json(&out);
    let ids: Vec<u64> = doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .collect();
    let mut want: Vec<u64> = (0..80).collect();
    want.extend([93, 94, 95]);
    assert_eq!(ids, want);
    let h100 = &doc["groups"][80]["devices"][0];
    assert_eq!(h100["class"], "0302");
    assert_eq!(h100["gpu"], true);
    assert_eq!(h100["vendor_name"], Value::Null, "no pci.ids: ids only");
    assert_eq!(doc["groups"][81]["devices"][0]["address"], "10000:e1:00.0");

    let (code, out, _) = run(gpt(dir.path())
        .args(["iommu", "--gpu"])
        .env("GPT_PCI_IDS", ""));
    assert_eq!(code, 0);
    assert_eq!(out.matches("IOMMU group").count(), 2, "{out}");
    assert!(
        out.contains("  c1:00.0 Class [0302]: Device [10de:2331] (rev a1) [GPU]"),
        "{out}"
    );
    assert!(
        out.contains("  e2:00.0 Class [0300]: Device [1a03:2000] [GPU, boot VGA]"),
        "{out}"
    );

    let (code, out, _) = run(gpt(dir.path())
        .args(["iommu", "--group", "94"])
        .env("GPT_PCI_IDS", ""));
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "IOMMU group 94\n  10000:e1:00.0 Class [0108]: Device [8086:0a54]\n      driver: nvme\n"
    );
}

#[test]
fn a_group_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["iommu", "--group", "99"]));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(
        err,
        "error: there is no IOMMU group 99 on this host; `gpt iommu` lists the 16 groups\n"
    );
}

#[test]
fn without_an_iommu_it_says_what_to_do_lists_devices_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    t.device(
        Dev::new("00:02.0", (0x8086, 0x4c8a), 0x030000)
            .rev(4)
            .boot_vga()
            .driver("i915"),
    )
    .device(
        Dev::new("01:00.0", (0x10de, 0x1f08), 0x030000)
            .rev(0xa1)
            .driver("nouveau"),
    )
    .file("/usr/share/misc/pci.ids", hosts::PCI_IDS);
    let (code, out, err) = run(gpt(dir.path()).arg("iommu"));
    assert_eq!(code, 1);
    assert!(out.starts_with("PCI devices (no IOMMU groups)\n  00:02.0 VGA compatible controller [0300]: Intel Corporation RocketLake-S GT1 [UHD Graphics 750] [8086:4c8a] (rev 04)"), "{out}");
    assert!(
        out.contains("01:00.0 VGA compatible controller [0300]: NVIDIA Corporation TU106"),
        "{out}"
    );
    assert!(err.contains("the IOMMU is not enabled"), "{err}");
    assert!(err.contains("VT-d") && err.contains("gpt full"), "{err}");

    let (code, out, _) = run(gpt(dir.path()).args(["iommu", "--json"]));
    assert_eq!(code, 1);
    let doc = json(&out);
    assert_eq!(doc["iommu_enabled"], false);
    assert_eq!(doc["groups"], serde_json::json!([]));
    assert_eq!(doc["ungrouped"].as_array().unwrap().len(), 2);
}

#[test]
fn broken_entries_are_reported_per_device_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    let gpu = t.dev_dir("0000:02:00.0");
    std::fs::remove_file(dir.path().join(&gpu[1..]).join("vendor")).unwrap();
    std::fs::write(dir.path().join(&gpu[1..]).join("class"), "garbage\n").unwrap();
    // Its uevent is garbled too (the kernel always writes one; a broken tree may not), so the
    // attributes are read one by one and each problem is named.
    std::fs::write(
        dir.path().join(&gpu[1..]).join("uevent"),
        "DRIVER=nouveau\nPCI_CLASS=garbage\nPCI_ID=zz\n",
    )
    .unwrap();
    // A device without a uevent at all (older trees) is read from its attributes, no problem.
    let audio = t.dev_dir("0000:02:00.1");
    std::fs::remove_file(dir.path().join(&audio[1..]).join("uevent")).unwrap();
    // A dangling device link, and a group entry for a device sysfs does not list.
    t.symlink(
        "/sys/bus/pci/devices/0000:05:00.0",
        "../../../devices/pci0000:00/0000:05:00.0",
    );
    t.symlink(
        "/sys/kernel/iommu_groups/16/devices/0000:06:00.0",
        "../../../../devices/nowhere",
    );
    let (code, out, err) = run(gpt(dir.path()).arg("iommu"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("  02:00.0 Class [????]: Device [????:????] (rev a1)\n      driver: nouveau\n      problem: cannot read vendor: No such file or directory (os error 2)\n      problem: class holds 'garbage', not a hex number\n"), "{out}");
    assert!(out.contains("  02:00.1 Audio device [0403]: NVIDIA Corporation TU106 High Definition Audio Controller [10de:10f9] (rev a1)\n      driver: snd_hda_intel\n  02:00.2 "), "{out}");
    assert!(out.contains("05:00.0 Class [????]: Device [????:????]\n      driver: none\n      problem: /sys/bus/pci/devices/0000:05:00.0 is a dangling link"), "{out}");
    assert!(out.contains("IOMMU group 16\n  06:00.0 Class [????]: Device [????:????]\n      driver: none\n      problem: in IOMMU group 16 but missing from /sys/bus/pci/devices"), "{out}");
    assert!(
        err.contains("warning: 0000:02:00.0: cannot read vendor"),
        "{err}"
    );
}

#[test]
fn a_root_that_is_not_a_directory_is_a_usage_error() {
    let (code, _, err) = run(gpt(std::path::Path::new("/nonexistent/gpt-root")).arg("iommu"));
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: --root /nonexistent/gpt-root: no such folder"),
        "{err}"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, _, err) = run(gpt(file.path()).arg("iommu"));
    assert_eq!(code, 2);
    assert!(err.contains(": not a directory"), "{err}");
}

#[test]
fn symlinks_in_the_tree_never_escape_the_root() {
    // A device directory that links to an absolute path: it must resolve inside the root.
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    t.device(Dev::new("01:00.0", (0x10de, 0x1f08), 0x030000).group(1));
    let inside = t.dev_dir("0000:01:00.0");
    std::fs::remove_file(dir.path().join("sys/bus/pci/devices/0000:01:00.0")).unwrap();
    t.symlink("/sys/bus/pci/devices/0000:01:00.0", &inside); // absolute target
    std::fs::remove_file(dir.path().join(&inside[1..]).join("vendor")).unwrap();
    t.symlink(&format!("{inside}/vendor"), "/etc/hostname"); // would read this machine's file
                                                             // The uevent links to a well-formed one outside the root: followed outside, it would give
                                                             // the vendor; inside the root it does not exist, and the attributes are read instead.
    let outside = tempfile::tempdir().unwrap();
    let foreign = outside.path().join("uevent");
    std::fs::write(
        &foreign,
        "PCI_CLASS=30000\nPCI_ID=10DE:1F08\nPCI_SUBSYS_ID=10DE:0000\nPCI_SLOT_NAME=0000:01:00.0\n",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join(&inside[1..]).join("uevent")).unwrap();
    t.symlink(&format!("{inside}/uevent"), foreign.to_str().unwrap());
    let (code, out, _) = run(gpt(dir.path())
        .args(["iommu", "--json"])
        .env("GPT_PCI_IDS", ""));
    assert_eq!(code, 0);
    let dev = &json(&out)["groups"][0]["devices"][0];
    assert_eq!(
        dev["device_id"], "1f08",
        "absolute device link resolved inside the root"
    );
    assert_eq!(dev["vendor_id"], Value::Null, "{dev}");
    assert!(
        dev["problems"][0]
            .as_str()
            .unwrap()
            .contains("cannot read vendor"),
        "{dev}"
    );
}

#[test]
fn uevent_and_the_attributes_one_by_one_give_the_same_listing() {
    // gpt reads a device's ids, class, subsystem and driver from its uevent and falls back to
    // the attributes without one: both ways must list every device the same.
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, with, err) = run(gpt(dir.path()).args(["iommu", "--json"]));
    assert_eq!(code, 0, "{err}");
    let mut removed = 0;
    for entry in std::fs::read_dir(dir.path().join("sys/bus/pci/devices")).unwrap() {
        let uevent = entry.unwrap().path().join("uevent");
        std::fs::remove_file(uevent).unwrap();
        removed += 1;
    }
    assert_eq!(removed, 23);
    let (code, without, err) = run(gpt(dir.path()).args(["iommu", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&with), json(&without));
    assert_eq!(
        json(&with)["groups"][14]["devices"][3]["driver"],
        "nvidia-gpu"
    );
}

#[test]
fn devices_read_in_threads_are_the_devices_read_in_one() {
    // From 48 devices on, gpt reads them in two threads and the groups in a third: the
    // topology is the same as read in one, on a synthetic host and on one with broken entries.
    let dir = tempfile::tempdir().unwrap();
    crate::support::synth::synth(dir.path(), 300, "");
    let mut names: Vec<_> = std::fs::read_dir(dir.path().join("sys/bus/pci/devices"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    std::fs::remove_file(names[7].join("uevent")).unwrap();
    std::fs::write(names[200].join("uevent"), "garbage").unwrap();
    std::fs::remove_file(names[200].join("vendor")).unwrap();
    let host = gpt::host::Host::new(dir.path());
    let one = gpt::sysfs::read_topology_with(&host, usize::MAX).unwrap();
    let threads = gpt::sysfs::read_topology_with(&host, 1).unwrap();
    assert_eq!(one.devices.len(), 300);
    assert!(one.groups.len() > 100, "{}", one.groups.len());
    assert!(!one.devices.values().nth(200).unwrap().problems.is_empty());
    assert_eq!(one, threads);
}

#[test]
fn a_device_knows_its_bridge_from_the_text_of_its_link_alone() {
    // The bridge above a device is the folder holding its folder, read from the text of the
    // device's link in /sys/bus/pci/devices (the folder opened once, one readlinkat per
    // device, nothing followed). A link that climbs far past the root or is absolute still
    // names its bridge while the device is read inside the root; a device folder that is no
    // link, or sits on a root bus, has none. The same in one thread, in two, and on the
    // portable walk.
    let dir = tempfile::tempdir().unwrap();
    let mut t = HostTree::new(dir.path());
    let port = |a: &str, g: u32| Dev::new(a, (0x8086, 0x06bc), 0x060400).group(g);
    t.device(port("00:1c.0", 1));
    t.device(port("01:00.0", 2).behind("00:1c.0"));
    t.device(port("02:01.0", 3).behind("01:00.0"));
    t.device(
        Dev::new("03:00.0", (0x10de, 0x1f08), 0x030000)
            .group(4)
            .behind("02:01.0"),
    );
    t.device(
        Dev::new("04:00.0", (0x1cc1, 0x8201), 0x010802)
            .group(5)
            .behind("00:1c.0"),
    );
    t.device(
        Dev::new("05:00.0", (0x8086, 0x15f3), 0x020000)
            .group(6)
            .behind("00:1c.0"),
    );
    t.device(Dev::new("00:1f.0", (0x8086, 0x0684), 0x060100).group(7));
    let links = dir.path().join("sys/bus/pci/devices");
    let (nvme, nic) = (t.dev_dir("0000:04:00.0"), t.dev_dir("0000:05:00.0"));
    let climbs = format!("{}{}", "../".repeat(12), &nvme[1..]);
    for (addr, target) in [("0000:04:00.0", climbs.as_str()), ("0000:05:00.0", &nic)] {
        std::fs::remove_file(links.join(addr)).unwrap();
        t.symlink(&format!("/sys/bus/pci/devices/{addr}"), target);
    }
    let lpc = dir.path().join(&t.dev_dir("0000:00:1f.0")[1..]);
    std::fs::remove_file(links.join("0000:00:1f.0")).unwrap();
    std::fs::rename(lpc, links.join("0000:00:1f.0")).unwrap();

    let fast = gpt::host::Host::new(dir.path());
    let topo = gpt::sysfs::read_topology_with(&fast, usize::MAX).unwrap();
    let a = |s: &str| s.parse::<gpt::pci::PciAddress>().unwrap();
    let parent = |s: &str| topo.device(&a(s)).unwrap().parent;
    assert_eq!(parent("00:1c.0"), None, "on the root bus");
    assert_eq!(parent("01:00.0"), Some(a("00:1c.0")));
    assert_eq!(parent("02:01.0"), Some(a("01:00.0")));
    assert_eq!(parent("04:00.0"), Some(a("00:1c.0")), "link past the root");
    assert_eq!(parent("05:00.0"), Some(a("00:1c.0")), "absolute link");
    assert_eq!(parent("00:1f.0"), None, "a folder, not a link");
    assert_eq!(
        topo.ancestors(&a("03:00.0")),
        [a("02:01.0"), a("01:00.0"), a("00:1c.0")]
    );
    for addr in ["04:00.0", "05:00.0", "00:1f.0"] {
        let d = topo.device(&a(addr)).unwrap();
        assert!(d.vendor.is_some() && d.problems.is_empty(), "{addr}: {d:?}");
    }
    assert_eq!(topo, gpt::sysfs::read_topology_with(&fast, 1).unwrap());
    let portable = gpt::host::Host::new(dir.path()).portable_only();
    assert_eq!(
        topo,
        gpt::sysfs::read_topology_with(&portable, usize::MAX).unwrap()
    );
    // `gpt iommu` shows no bridge and reads none: the rest is the same.
    let mut flat = topo.clone();
    flat.devices.values_mut().for_each(|d| d.parent = None);
    assert_eq!(
        flat,
        gpt::sysfs::read_topology_without_bridges(&fast).unwrap()
    );
}
