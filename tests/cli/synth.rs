//! The synthetic hosts of the benchmark (`tests/support/synth.rs`): shaped like real ones, and
//! read by gpt as they are written.

use crate::support::synth::*;

#[test]
fn synthetic_hosts_have_exactly_n_functions_in_valid_groups() {
    for n in [1, 7, 64, 300] {
        let dir = tempfile::tempdir().unwrap();
        synth(dir.path(), n, "");
        let sys = dir.path().join("sys");
        let devices = std::fs::read_dir(sys.join("bus/pci/devices")).unwrap();
        let mut count = 0;
        for d in devices {
            let d = d.unwrap().path();
            assert!(d.join("config").metadata().unwrap().len() == 64, "{d:?}");
            assert!(d.join("iommu_group").exists(), "{d:?}");
            count += 1;
        }
        assert_eq!(count, n);
    }
}

#[test]
fn large_hosts_span_several_domains_with_gpus() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 700, "");
    let names: Vec<String> = std::fs::read_dir(dir.path().join("sys/bus/pci/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 700);
    assert!(names.iter().any(|a| a.starts_with("0001:")));
    let gpus = names
        .iter()
        .filter(|a| {
            let class = dir.path().join("sys/bus/pci/devices").join(a).join("class");
            std::fs::read_to_string(class).unwrap().starts_with("0x03")
        })
        .count();
    assert!((20..100).contains(&gpus), "{gpus} GPUs");
}

#[test]
fn gpt_lists_every_function_of_a_synthetic_host() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 300, crate::support::hosts::PCI_IDS);
    let (code, out, err) = crate::support::run(crate::support::gpt(dir.path()).arg("iommu"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("      driver: ").count(), 300, "{out}");
    assert!(out.contains("[GPU, boot VGA]"), "{out}");
    assert!(err.is_empty(), "{err}");
}

/// `gpt iommu | head` must not panic when the reader goes away.
#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 64, "");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("gpt"))
        .args(["iommu", "--root"])
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // nobody reads: the first write gets EPIPE
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
