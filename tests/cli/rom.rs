//! `gpt rom` against host trees: a `rom` file in the fake sysfs device folder holds the bytes
//! the kernel would give. A clean chain is listed and saved (once); every bad ROM is refused
//! with its reason and no file written; `--check` strips a flash tool's header; `gpt qemu
//! --rom` and `gpt check` use the saved file.

use crate::support::hosts::{
    as_full_left_it, bind, rebooted, rocketlake, rocketlake_config, DEBIAN_KVER,
};
use crate::support::tree::HostTree;
use crate::support::{gpt, run};
use serde_json::Value;
use std::path::{Path, PathBuf};

const GPU: &str = "0000:02:00.0";
const SAVED: &str = "var/lib/gpt/rom/10de-1f08-1043-86f0.rom";

/// An image of `blocks` × 512 bytes for `vendor:device` with `code_type` (0 x86, 3 EFI) and
/// the last-image bit; an x86 image's bytes sum to 0.
fn image(id: (u16, u16), code_type: u8, blocks: u16, last: bool) -> Vec<u8> {
    let mut b = vec![0u8; blocks as usize * 512];
    b[..3].copy_from_slice(&[0x55, 0xaa, blocks as u8]);
    b[0x18..0x1a].copy_from_slice(&0x1cu16.to_le_bytes());
    let p = 0x1c;
    b[p..p + 4].copy_from_slice(b"PCIR");
    b[p + 4..p + 6].copy_from_slice(&id.0.to_le_bytes());
    b[p + 6..p + 8].copy_from_slice(&id.1.to_le_bytes());
    b[p + 0x0f] = 0x03;
    b[p + 0x10..p + 0x12].copy_from_slice(&blocks.to_le_bytes());
    b[p + 0x14] = code_type;
    b[p + 0x15] = if last { 0x80 } else { 0 };
    for (i, x) in b.iter_mut().enumerate().skip(0x80) {
        *x = (i % 251) as u8;
    }
    if code_type == 0 {
        let n = b.len();
        b[n - 1] = 0;
        let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        b[n - 1] = sum.wrapping_neg();
    }
    b
}

/// The RTX 2060's ROM: a legacy image and an EFI image.
fn rtx2060_rom() -> Vec<u8> {
    let mut rom = image((0x10de, 0x1f08), 0, 8, false);
    rom.extend(image((0x10de, 0x1f08), 3, 4, true));
    rom
}

/// The rocketlake host configured and rebooted: the card on vfio-pci, idle.
fn ready(root: &Path) -> HostTree {
    let mut t = rocketlake(root);
    let c = rocketlake_config();
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    rebooted(&mut t, &c, DEBIAN_KVER);
    t
}

/// Put `bytes` in the function's sysfs `rom` attribute.
fn with_rom(t: &HostTree, addr: &str, bytes: &[u8]) {
    let dir = t.root.join(t.dev_dir(addr).trim_start_matches('/'));
    std::fs::write(dir.join("rom"), bytes).unwrap();
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_clean_chain_is_listed_checked_and_saved_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = ready(dir.path());
    let rom = rtx2060_rom();
    let mut padded = rom.clone();
    padded.resize(65536, 0xff); // the flash chip's padding after the last image
    with_rom(&t, GPU, &padded);
    let (code, out, err) = run(gpt(dir.path()).args(["rom", "02:00.0"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("0000:02:00.0 VGA compatible controller [0300]"),
        "{out}"
    );
    assert!(out.contains("ROM: 65536 bytes read\n"), "{out}");
    assert!(
        out.contains(
            "image 1 at 0x0: x86 legacy, 10de:1f08, class 030000, 4096 bytes, checksum valid\n\
             image 2 at 0x1000: EFI, 10de:1f08, class 030000, 2048 bytes, last\n"
        ),
        "{out}"
    );
    assert!(err.contains("ok: saved 6144 bytes of ROM to"), "{err}");
    assert!(
        err.contains("(the 59392 bytes after the last image, padding, left out)"),
        "{err}"
    );
    let saved = dir.path().join(SAVED);
    assert_eq!(std::fs::read(&saved).unwrap(), rom);
    // The sysfs attribute of a tree is a plain file: read, never written.
    assert_eq!(
        std::fs::read(dir.path().join(&t.dev_dir(GPU)[1..]).join("rom")).unwrap(),
        padded
    );

    let before = t.snapshot();
    let (code, out, err) = run(gpt(dir.path()).args(["rom", GPU, "--json"]));
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["action"], "unchanged");
    assert_eq!(v["device"], GPU);
    assert_eq!(v["file"], saved.display().to_string());
    assert_eq!(v["trailing"], 59392);
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    assert_eq!(v["images"][0]["code_type"], "x86 legacy");
    assert_eq!(v["images"][0]["checksum"], "valid");
    assert_eq!(v["images"][1]["code_type"], "EFI");
    assert_eq!(v["images"][1]["last"], true);
    assert_eq!(v["images"][1]["checksum"], "none");
    assert_eq!(t.snapshot(), before, "a second run changes nothing");
}

/// Every bad ROM: exit 1, one `error:` line with the reason, nothing written anywhere.
#[test]
fn every_bad_rom_is_refused_with_its_reason_and_nothing_is_written() {
    let good = rtx2060_rom();
    let mut bad_sum = good.clone();
    bad_sum[0x300] ^= 0x40;
    let mut other = image((0x10de, 0x2484), 0, 8, false);
    other.extend(image((0x10de, 0x2484), 3, 4, true));
    let mut headed = vec![0u8; 0x400];
    headed[..4].copy_from_slice(b"NVGI");
    headed.extend(&good);
    let cases: [(&str, Vec<u8>, &str); 7] = [
        ("bad checksum", bad_sum, "image 1 (x86 legacy) has a bad checksum: its first 4096 bytes sum to 0x"),
        ("another card", other, "image 1 (x86 legacy) is for 10de:2484, not this card's 10de:1f08: the ROM of another card"),
        ("a header", headed, "1024 bytes come before the first image (a flash tool's header)"),
        ("truncated", good[..4096 + 1000].to_vec(), "image 2 at 0x1000 declares 2048 bytes but only 1000 are there: the ROM is truncated"),
        ("chain cut after a non-last image", good[..4096].to_vec(), "image 1 is not marked last, but no image follows at 0x1000"),
        ("empty", Vec::new(), "the ROM is empty (0 bytes)"),
        ("blank", vec![0xff; 8192], "all 8192 bytes are 0xff: the card answered nothing"),
    ];
    for (name, bytes, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let t = ready(dir.path());
        with_rom(&t, GPU, &bytes);
        let before = t.snapshot();
        let (code, out, err) = run(gpt(dir.path()).args(["rom", GPU]));
        assert_eq!(code, 1, "{name}: {out}{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{name}: {err}");
        assert!(
            errors[0].starts_with("error: the ROM of 0000:02:00.0 is not a clean ROM for 10de:1f08, so gpt saved nothing: "),
            "{name}: {err}"
        );
        assert!(errors[0].contains(reason), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert_eq!(t.snapshot(), before, "{name}: nothing written");
        assert!(!dir.path().join("var/lib/gpt/rom").exists(), "{name}");

        let (code, out, _) = run(gpt(dir.path()).args(["rom", GPU, "--json"]));
        assert_eq!(code, 1, "{name}");
        let v = json(&out);
        assert_eq!(
            (&v["ok"], &v["kind"]),
            (&Value::Bool(false), &Value::from("bad_rom")),
            "{name}"
        );
        assert!(
            v["problems"][0].as_str().unwrap().contains(reason)
                || v["problems"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p.as_str().unwrap().contains(reason)),
            "{name}: {v}"
        );
        assert_eq!(t.snapshot(), before, "{name}: nothing written (json)");
    }
}

#[test]
fn a_card_in_use_by_its_driver_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let t = rocketlake(dir.path()); // 02:00.0 on nouveau
    with_rom(&t, GPU, &rtx2060_rom());
    let before = t.snapshot();
    let (code, _, err) = run(gpt(dir.path()).args(["rom", GPU]));
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: 0000:02:00.0 is in use by its driver nouveau: while a driver runs the card, reading its ROM can fail"),
        "{err}"
    );
    assert!(err.contains("or pass --force to read it now"), "{err}");
    assert_eq!(t.snapshot(), before);
    let (code, _, err) = run(gpt(dir.path()).args(["rom", GPU, "--force", "--json"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: 0000:02:00.0 is in use by its driver nouveau"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(SAVED)).unwrap(),
        rtx2060_rom()
    );
}

#[test]
fn a_function_without_a_rom_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let t = ready(dir.path());
    let before = t.snapshot();
    let (code, out, err) = run(gpt(dir.path()).args(["rom", "02:00.1"]));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.starts_with("error: 0000:02:00.1 (Audio device [0403]"),
        "{err}"
    );
    assert!(
        err.contains("has no ROM: the kernel shows no `rom` attribute for it"),
        "{err}"
    );
    let (code, out, _) = run(gpt(dir.path()).args(["rom", "02:00.1", "--json"]));
    assert_eq!(code, 1);
    assert_eq!(json(&out)["kind"], "no_rom");
    assert_eq!(t.snapshot(), before);
}

#[test]
fn a_boot_gpu_warns_that_its_copy_may_be_the_shadow() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = ready(dir.path());
    bind(&mut t, "0000:00:02.0", "vfio-pci");
    let igd = image((0x8086, 0x4c8a), 0, 16, true);
    with_rom(&t, "0000:00:02.0", &igd);
    let (code, _, err) = run(gpt(dir.path()).args(["rom", "00:02.0"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: 0000:00:02.0 is the boot GPU: the kernel may give the copy the firmware shadowed at 0xC0000"), "{err}");
}

#[test]
fn out_writes_the_file_asked_for_and_never_replaces_another() {
    let dir = tempfile::tempdir().unwrap();
    let t = ready(dir.path());
    with_rom(&t, GPU, &rtx2060_rom());
    let elsewhere = tempfile::tempdir().unwrap();
    let out_file = elsewhere.path().join("card.rom");
    let (code, _, err) = run(gpt(dir.path()).args(["rom", GPU, "--out"]).arg(&out_file));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out_file).unwrap(), rtx2060_rom());
    assert!(!dir.path().join("var/lib/gpt/rom").exists());
    // Another file in the way is kept.
    std::fs::write(&out_file, b"someone else's").unwrap();
    let (code, _, err) = run(gpt(dir.path()).args(["rom", GPU, "--out"]).arg(&out_file));
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists and holds other bytes; move it aside"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out_file).unwrap(), b"someone else's");
    // A folder that does not exist is not made.
    let deep = elsewhere.path().join("no/such/dir/card.rom");
    let (code, _, err) = run(gpt(dir.path()).args(["rom", GPU, "--out"]).arg(&deep));
    assert_eq!(code, 1);
    assert!(
        err.contains("does not exist; create it or give another path"),
        "{err}"
    );
    assert!(!elsewhere.path().join("no").exists());
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn check_strips_a_flash_tools_header_into_a_copy_beside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    ready(dir.path());
    let files = tempfile::tempdir().unwrap();
    let mut headed = b"NVGI\x00\x02 NVIDIA flash tool header".to_vec();
    headed.resize(0x400, 0);
    headed.extend(rtx2060_rom());
    let f = file_with(files.path(), "TU106.rom", &headed);
    let (code, out, err) = run(gpt(dir.path())
        .args(["rom", "--check"])
        .arg(&f)
        .args(["--device", GPU]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("header: 1024 bytes before the first image"),
        "{out}"
    );
    let stripped = files.path().join("TU106.stripped.rom");
    assert!(
        err.contains(&format!(
            "saved the 6144 bytes of the chain to {}",
            stripped.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&stripped).unwrap(), rtx2060_rom());
    assert_eq!(
        std::fs::read(&f).unwrap(),
        headed,
        "the file itself is left as it was"
    );
    // The stripped copy is clean as it is; a second check of the original changes nothing.
    let (code, out, err) = run(gpt(dir.path())
        .args(["rom", "--json", "--check"])
        .arg(&stripped));
    assert_eq!(code, 0, "{err}");
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["header"].clone(), v["action"].clone()),
        (Value::Bool(true), Value::from(0), Value::Null)
    );
    let (code, out, _) = run(gpt(dir.path()).args(["rom", "--json", "--check"]).arg(&f));
    assert_eq!(code, 0);
    assert_eq!(json(&out)["action"], "unchanged");
}

#[test]
fn check_refuses_a_file_for_another_card_and_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    ready(dir.path());
    let files = tempfile::tempdir().unwrap();
    let mut rtx3060 = vec![0u8; 0x200];
    rtx3060.extend(image((0x10de, 0x2503), 0, 8, true));
    let f = file_with(files.path(), "GA106.rom", &rtx3060);
    let before = crate::support::tree::snapshot(files.path());
    let (code, out, err) = run(gpt(dir.path())
        .args(["rom", "--check"])
        .arg(&f)
        .args(["--device", GPU]));
    assert_eq!(code, 1, "{out}");
    assert!(
        err.starts_with(&format!("error: {} is not a clean ROM for 0000:02:00.0 (10de:1f08): image 1 (x86 legacy) is for 10de:2503", f.display())),
        "{err}"
    );
    assert_eq!(
        crate::support::tree::snapshot(files.path()),
        before,
        "no stripped copy"
    );
    // Without --device it names the card it is for, and strips it.
    let (code, _, err) = run(gpt(dir.path()).args(["rom", "--check"]).arg(&f));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is a ROM for 10de:2503 behind a 512-byte header"),
        "{err}"
    );
    let elf = file_with(files.path(), "gpt.bin", b"\x7fELF\x02\x01\x01");
    let (code, _, err) = run(gpt(dir.path()).args(["rom", "--check"]).arg(&elf));
    assert_eq!(code, 1);
    assert!(err.contains("no image in 7 bytes (no 0x55 0xAA followed by a PCI data structure): not a PCI option ROM"), "{err}");
    let (code, _, err) = run(gpt(dir.path())
        .args(["rom", "--check"])
        .arg(files.path().join("absent.rom")));
    assert_eq!(code, 1);
    assert!(err.starts_with("error: cannot read"), "{err}");
}

#[test]
fn qemu_takes_a_checked_rom_for_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    ready(dir.path());
    let files = tempfile::tempdir().unwrap();
    let good = file_with(files.path(), "TU106.rom", &rtx2060_rom());
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--rom"]).arg(&good));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "-device vfio-pci,host=0000:02:00.0,bus=rp1,addr=00.0,multifunction=on,romfile={} \\\n",
            good.display()
        )),
        "{out}"
    );
    assert_eq!(out.matches("romfile=").count(), 1, "{out}");
    let (code, out, err) = run(gpt(dir.path())
        .args(["qemu", "--libvirt", "--rom"])
        .arg(&good));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("<address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>\n  </source>\n  <rom file='{}'/>\n</hostdev>", good.display())),
        "{out}"
    );
    assert_eq!(out.matches("<rom ").count(), 1, "{out}");
    let other = file_with(
        files.path(),
        "GA106.rom",
        &image((0x10de, 0x2503), 0, 8, true),
    );
    let mut headed = vec![0u8; 0x200];
    headed.extend(rtx2060_rom());
    let headed = file_with(files.path(), "headed.rom", &headed);
    for (f, reason) in [
        (
            &other,
            "image 1 (x86 legacy) is for 10de:2503, not this card's 10de:1f08",
        ),
        (&headed, "512 bytes come before the first image"),
    ] {
        let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--rom"]).arg(f));
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(
            err.starts_with(&format!(
                "error: --rom {}: not a clean ROM for 0000:02:00.0 (10de:1f08): ",
                f.display()
            )),
            "{err}"
        );
        assert!(err.contains(reason), "{err}");
        assert!(err.contains("`gpt rom --check"), "{err}");
    }
}

#[test]
fn check_mentions_the_saved_rom_of_the_configured_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let t = ready(dir.path());
    let (_, out, _) = run(gpt(dir.path()).arg("check"));
    assert!(!out.contains("saved ROM"), "{out}");
    with_rom(&t, GPU, &rtx2060_rom());
    let (code, _, err) = run(gpt(dir.path()).args(["rom", GPU]));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(gpt(dir.path()).args(["check", "--json"]));
    let v = json(&out);
    let line = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["name"]
                .as_str()
                .unwrap()
                .starts_with("a saved ROM of 0000:02:00.0")
        })
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(line["status"], "pass");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .starts_with("6144 bytes, a clean ROM for 10de:1f08"),
        "{line}"
    );
    // A saved file changed since is a warning.
    let saved = dir.path().join(SAVED);
    let mut bytes = std::fs::read(&saved).unwrap();
    bytes[0x200] ^= 1;
    std::fs::write(&saved, bytes).unwrap();
    let (_, out, _) = run(gpt(dir.path()).arg("check"));
    let line = out.lines().find(|l| l.contains("a saved ROM of")).unwrap();
    assert!(
        line.contains(
            "WARN (not a clean ROM for the card any more: image 1 (x86 legacy) has a bad checksum"
        ),
        "{line}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    ready(dir.path());
    for args in [
        &["rom"][..],
        &["rom", GPU, "--check", "x.rom"],
        &["rom", GPU, "--device", GPU],
    ] {
        let (code, _, err) = run(gpt(dir.path()).args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) = run(gpt(dir.path()).args(["rom", "99:00.0"]));
    assert_eq!(code, 1);
    assert!(err.starts_with("error:"), "{err}");
}

/// The saved ROM is not journalled: `gpt full` and `gpt reset` work beside it, and reset
/// leaves it (it is no configuration of the host) while giving back everything else.
#[test]
fn reset_leaves_a_saved_rom_and_undoes_the_rest() {
    use crate::support::transact::{primed_host, simulate_full, snap};
    let (dir, fakes) = primed_host();
    let root = dir.path();
    let before = snap(root);
    simulate_full(root, &fakes, &[]).unwrap();
    let rom_attr = std::fs::canonicalize(root.join("sys/bus/pci/devices").join(GPU))
        .unwrap()
        .join("rom");
    std::fs::write(&rom_attr, rtx2060_rom()).unwrap();
    let (code, _, err) = run(gpt(root).args(["rom", GPU, "--force"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(gpt(root).env("PATH", fakes.path()).args(["reset", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(root.join(SAVED)).unwrap(), rtx2060_rom());
    // The journal is gone; the folders holding the ROM stay.
    assert_eq!(
        std::fs::read_dir(root.join("var/lib/gpt"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        ["rom"]
    );
    std::fs::remove_file(&rom_attr).unwrap();
    let rest: Vec<_> = snap(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("var"))
        .collect();
    let was: Vec<_> = before
        .into_iter()
        .filter(|(p, _)| !p.starts_with("var"))
        .collect();
    let only = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
        a.iter()
            .filter(|x| !b.contains(x))
            .map(|x| x.0.clone())
            .collect()
    };
    assert_eq!(
        (only(&rest, &was), only(&was, &rest)),
        (Vec::new(), Vec::new()),
        "paths that differ (now, before)"
    );
}

/// A tree is untrusted input: a FIFO where sysfs has the `rom` attribute must not hang `gpt
/// rom` (it used to wait for a writer forever). The attribute is opened once, non-blocking,
/// inside the root; the FIFO gives nothing, which is an error, and nothing is saved.
#[test]
fn a_fifo_for_the_rom_attribute_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let t = ready(dir.path());
    let rom = dir
        .path()
        .join(t.dev_dir("0000:02:00.0").trim_start_matches('/'))
        .join("rom");
    nix::unistd::mkfifo(&rom, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = run(gpt(dir.path())
        .args(["rom", "02:00.0"])
        .timeout(std::time::Duration::from_secs(60)));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "no hang"
    );
    assert!(
        err.contains("0000:02:00.0/rom is neither sysfs's attribute nor a regular file"),
        "{err}"
    );
    assert!(!dir.path().join("var/lib/gpt/rom").exists());
}
