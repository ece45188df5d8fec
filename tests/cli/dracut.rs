//! dracut hosts (Debian 13 with dracut, Ubuntu 25.10/26.04): the generator told from the
//! package database, gpt's own dracut file, the rebuild the host's own updates use, the
//! images listed and checked, and reset byte for byte.

use crate::support::fakes::Fakes;
use crate::support::hosts::{dpkg_status, rocketlake, rocketlake_dracut, Dracut, DEBIAN_KVER};
use crate::support::transact::{etc, snap};
use crate::support::{gpt, gpt_with_fakes, run};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

const DRACUT_CONF: &str = "/etc/dracut.conf.d/gpt-vfio.conf";

fn full(root: &Path, fakes: &Fakes, args: &[&str]) -> (i32, String, String) {
    run(gpt(root)
        .env("PATH", fakes.path())
        .args(["full", "nvidia", "--no-deps"])
        .args(args))
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

/// `boot.initramfs` of a dry run's JSON, or the error line of a refusal.
fn generator(root: &Path) -> Result<String, String> {
    let (code, out, err) = run(gpt(root).args(["full", "nvidia", "--dry-run", "--json"]));
    if code != 0 {
        return Err(err);
    }
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["boot"]["loader"], "grub");
    Ok(v["boot"]["initramfs"].as_str().unwrap().to_string())
}

#[test]
fn the_generator_comes_from_what_is_installed_never_from_etc_initramfs_tools() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    // No package database: the files each package ships.
    let mut t = rocketlake(r);
    assert_eq!(generator(r).unwrap(), "initramfs-tools");
    t.file("/usr/bin/dracut", "#!/bin/sh\n");
    assert_eq!(generator(r).unwrap(), "dracut");
    fs::remove_file(r.join("usr/bin/dracut")).unwrap();
    // The database wins over the files.
    dpkg_status(&mut t, &["initramfs-tools"]);
    assert_eq!(generator(r).unwrap(), "initramfs-tools");
    dpkg_status(&mut t, &["dracut"]);
    assert_eq!(
        generator(r).unwrap(),
        "dracut",
        "/etc/initramfs-tools is still there"
    );
    dpkg_status(&mut t, &["dracut", "initramfs-tools"]);
    let err = generator(r).unwrap_err();
    assert!(
        err.contains("both initramfs-tools and dracut are installed"),
        "{err}"
    );
    dpkg_status(&mut t, &["initramfs-tools-core"]);
    let err = generator(r).unwrap_err();
    assert!(err.contains("no initramfs generator found"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The two real layouts.
    for which in [Dracut::Debian13, Dracut::Ubuntu2604] {
        let dir = tempfile::tempdir().unwrap();
        rocketlake_dracut(dir.path(), which);
        assert_eq!(generator(dir.path()).unwrap(), "dracut", "{which:?}");
    }
}

/// full on a dracut host: what it writes and runs, then a second run, then reset.
fn cycle(which: Dracut, rebuild: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rocketlake_dracut(root, which);
    let fakes = Fakes::new();
    fakes.prime(root);
    let before = etc(root);
    let (code, out, err) = full(root, &fakes, &["--yes", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("initramfs by dracut"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["boot"], json!({"loader": "grub", "initramfs": "dracut"}));
    assert_eq!(
        v["files"],
        json!([
            {"path": "/etc/default/grub", "action": "modified"},
            {"path": DRACUT_CONF, "action": "created"},
            {"path": "/etc/modprobe.d/gpt-vfio.conf", "action": "created"},
        ])
    );
    let mut commands = vec![json!(["update-grub"]), json!(["depmod", "-a", DEBIAN_KVER])];
    commands.push(json!(rebuild));
    assert_eq!(v["commands"], json!(commands));
    let conf = read(root, DRACUT_CONF);
    assert!(conf.starts_with("# Managed by gpt"), "{conf}");
    assert!(
        conf.contains("\nforce_drivers+=\" vfio vfio_iommu_type1 vfio_virqfd vfio_pci \"\n"),
        "{conf}"
    );
    assert!(conf.ends_with("\ninstall_items+=\" /etc/modprobe.d/gpt-vfio.conf \"\n"));
    // Nothing for initramfs-tools, which does not build the images here.
    if which == Dracut::Ubuntu2604 {
        assert_eq!(
            before
                .iter()
                .find(|(p, _)| p == "etc/initramfs-tools/modules"),
            etc(root)
                .iter()
                .find(|(p, _)| p == "etc/initramfs-tools/modules")
        );
    }
    // The image was rebuilt by dracut, listed with lsinitrd, and holds vfio-pci and gpt's file.
    let image = read(root, &format!("/boot/initrd.img-{DEBIAN_KVER}"));
    assert!(image.contains("written by gpt's fake dracut"), "{image}");
    assert!(
        image.contains("module vfio_pci kernel/drivers/vfio/pci/vfio-pci.ko"),
        "{image}"
    );
    assert!(
        image.contains("conf etc/modprobe.d/gpt-vfio.conf "),
        "{image}"
    );
    let calls = fakes.calls();
    assert!(
        calls.contains(&format!("lsinitrd fd:/boot/initrd.img-{DEBIAN_KVER}")),
        "{calls:?}"
    );
    // gpt check names the generator and finds vfio_pci in the image.
    let (_, out, _) = run(gpt_with_fakes(root).args(["check", "--json"]));
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["boot"]["initramfs"], "dracut");
    let images = c["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "vfio-pci in the initramfs images")
        .unwrap();
    assert_eq!(images["status"], "pass", "{images}");

    fakes.reset_log();
    let (code, out, err) = full(root, &fakes, &["--yes", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["changed"], false);
    assert!(fakes.calls().is_empty(), "{:?}", fakes.calls());

    let (code, _, err) = run(gpt(root).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(etc(root), before, "/etc is not byte-identical after reset");
    assert!(fakes.calls().iter().any(|c| c.starts_with(rebuild[0])));
    let image = read(root, &format!("/boot/initrd.img-{DEBIAN_KVER}"));
    assert!(!image.contains("vfio_pci"), "{image}");
}

#[test]
fn debian_13_with_dracut_106_rebuilds_with_dracut_itself() {
    cycle(
        Dracut::Debian13,
        &[
            "dracut",
            "--force",
            &format!("/boot/initrd.img-{DEBIAN_KVER}"),
            DEBIAN_KVER,
        ],
    );
}

#[test]
fn ubuntu_26_04_rebuilds_with_dracuts_own_update_initramfs() {
    cycle(Dracut::Ubuntu2604, &["update-initramfs", "-u", "-k", "all"]);
}

#[test]
fn an_image_without_vfio_pci_rolls_the_run_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rocketlake_dracut(root, Dracut::Debian13);
    // The kernel's vfio-pci module file is gone: dracut builds an image without it.
    fs::remove_file(root.join(format!(
        "lib/modules/{DEBIAN_KVER}/kernel/drivers/vfio/pci/vfio-pci.ko"
    )))
    .unwrap();
    let fakes = Fakes::new();
    fakes.prime(root);
    let before = snap(root);
    let (code, _, err) = full(root, &fakes, &["--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        err.contains(&format!(
            "/boot/initrd.img-{DEBIAN_KVER} does not contain vfio_pci"
        )),
        "{err}"
    );
    assert!(
        err.contains("sudo dracut --force /boot/initrd.img-KVER KVER"),
        "{err}"
    );
    let etc_now: Vec<_> = snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect();
    let etc_before: Vec<_> = before
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect();
    assert_eq!(etc_now, etc_before);
    // The rollback rebuilt the image from the restored files.
    let calls = fakes.calls();
    let rebuilds = calls.iter().filter(|c| c.starts_with("dracut ")).count();
    assert_eq!(rebuilds, 2, "{calls:?}");
}

#[test]
fn bad_dracut_files_are_refused_and_nothing_changes() {
    type Break = fn(&Path);
    let cases: [(&str, Break, &str); 3] = [
        (
            "dracut.conf.d is a file",
            |r| {
                fs::remove_dir_all(r.join("etc/dracut.conf.d")).unwrap();
                fs::write(r.join("etc/dracut.conf.d"), "x\n").unwrap();
            },
            "cannot read /etc/dracut.conf.d/gpt-vfio.conf: a file stands where a folder of that path should be",
        ),
        (
            "gpt's file is a folder",
            |r| fs::create_dir(r.join("etc/dracut.conf.d/gpt-vfio.conf")).unwrap(),
            "cannot read /etc/dracut.conf.d/gpt-vfio.conf: it is a directory, not a file",
        ),
        (
            "someone else's file of that name",
            |r| {
                fs::write(
                    r.join("etc/dracut.conf.d/gpt-vfio.conf"),
                    "add_drivers+=\" vfio_pci \"\n",
                )
                .unwrap()
            },
            "/etc/dracut.conf.d/gpt-vfio.conf exists and was not written by gpt; move it aside",
        ),
    ];
    for (what, breakage, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        rocketlake_dracut(root, Dracut::Debian13);
        breakage(root);
        let fakes = Fakes::new();
        let before = snap(root);
        let (code, out, err) = full(root, &fakes, &["--yes"]);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(out.is_empty(), "{what}: {out}");
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{what}: {err}"
        );
        assert_eq!(snap(root), before, "{what}: the tree changed");
        assert!(fakes.calls().is_empty(), "{what}: {:?}", fakes.calls());
    }
}

#[test]
fn reset_undoes_a_host_whose_generator_changed_since_full() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut t = rocketlake(root);
    dpkg_status(&mut t, &["initramfs-tools"]);
    let fakes = Fakes::new();
    fakes.prime(root);
    let before = etc(root);
    let (code, _, err) = full(root, &fakes, &["--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(read(root, "/etc/initramfs-tools/modules").contains("vfio_pci"));
    // dracut replaces initramfs-tools (its postinst leaves /etc/initramfs-tools as it was).
    dpkg_status(&mut t, &["dracut", "initramfs-tools-core"]);
    t.file("/usr/bin/dracut", "#!/bin/sh\n");
    fakes.reset_log();
    let (code, _, err) = run(gpt(root).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("it now has boot loader grub, initramfs by dracut"),
        "{err}"
    );
    assert_eq!(etc(root), before);
    // Regenerated the way the host builds its images now.
    assert!(
        fakes
            .calls()
            .iter()
            .any(|c| c == "update-initramfs -u -k all"),
        "{:?}",
        fakes.calls()
    );
    let image = read(root, &format!("/boot/initrd.img-{DEBIAN_KVER}"));
    assert!(image.contains("fake dracut"), "{image}");
}
