//! `gpt qemu` against host trees: the configured GPU with every function, the firmware found
//! under the root, libvirt XML, two GPUs, a 3D controller, and the refusals.

use crate::support::hosts::{
    as_full_left_it, rebooted, rocketlake, rocketlake_config, DEBIAN_KVER, PCI_IDS,
};
use crate::support::tree::{Dev, HostTree};
use crate::support::{gpt, run};
use serde_json::Value;
use std::path::Path;

fn ovmf_4m(t: &mut HostTree) {
    t.file("/usr/share/OVMF/OVMF_CODE_4M.fd", "code")
        .file("/usr/share/OVMF/OVMF_VARS_4M.fd", "vars");
}

/// The rocketlake host configured by `gpt full nvidia`, rebooted, with Debian 12's OVMF.
fn rocketlake_ready(root: &Path) -> HostTree {
    let mut t = rocketlake(root);
    let c = rocketlake_config();
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    rebooted(&mut t, &c, DEBIAN_KVER);
    ovmf_4m(&mut t);
    t
}

/// An AMD EPYC server (AMD-Vi) with an H100 (3D controller, 0302, one function) and an AMD
/// Instinct MI210 (display controller, 0380) on vfio-pci, and only the old combined
/// `/usr/share/ovmf/OVMF.fd`.
fn epyc(root: &Path) -> HostTree {
    let mut t = HostTree::new(root);
    t.device(Dev::new("0000:40:01.1", (0x1022, 0x14ab), 0x060400).group(12).driver("pcieport"))
        .device(
            Dev::new("0000:41:00.0", (0x10de, 0x2331), 0x030200)
                .rev(0xa1)
                .group(40)
                .driver("vfio-pci")
                .behind("0000:40:01.1"),
        )
        .device(Dev::new("0000:c1:00.0", (0x1002, 0x740f), 0x038000).rev(0x02).group(41).driver("vfio-pci"))
        .device(Dev::new("0000:c2:00.0", (0x1a03, 0x2000), 0x030000).group(52).boot_vga().driver("ast"))
        .file("/sys/firmware/acpi/tables/IVRS", "IVRS")
        .file("/usr/share/ovmf/OVMF.fd", "firmware")
        .file("/usr/share/misc/pci.ids", PCI_IDS)
        .file(
            "/proc/cpuinfo",
            &(0..64)
                .map(|i| format!("processor\t: {i}\nvendor_id\t: AuthenticAMD\nsiblings\t: 64\ncpu cores\t: 32\nflags\t\t: svm\n\n"))
                .collect::<String>(),
        )
        .file("/proc/meminfo", "MemTotal:       792723456 kB\n");
    t
}

const NOTES: &str = "\
# Everything the VM opens is in /var/lib/gpt-vm, which only root can enter: QEMU runs as root.
# Supply /var/lib/gpt-vm/disk.qcow2, the guest's disk: `sudo qemu-img create -f qcow2 /var/lib/gpt-vm/disk.qcow2 64G`
#   and add `-cdrom /var/lib/gpt-vm/INSTALLER.iso` (copied there) for the first boot, or a cloud image
#   (`sudo qemu-img create -f qcow2 -b CLOUD.qcow2 -F qcow2 /var/lib/gpt-vm/disk.qcow2 32G`, CLOUD.qcow2
#   copied there) with a cloud-init seed (`sudo cloud-localds /var/lib/gpt-vm/seed.img user-data`, then
#   add `-drive if=virtio,format=raw,file=/var/lib/gpt-vm/seed.img`).
#   Windows guests need the virtio-win drivers for the virtio disk and network.
";

#[test]
fn the_configured_gpu_goes_in_with_every_function_and_the_installed_firmware() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake_ready(dir.path());
    let (code, out, err) = run(gpt(dir.path()).arg("qemu"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    let expected = format!(
        "\
# Pass to the VM:
#   0000:02:00.0 VGA compatible controller [0300]: NVIDIA Corporation TU106 [GeForce RTX 2060 Rev. A] [10de:1f08] (rev a1)
#   0000:02:00.1 Audio device [0403]: NVIDIA Corporation TU106 High Definition Audio Controller [10de:10f9] (rev a1)
#   0000:02:00.2 USB controller [0c03]: NVIDIA Corporation TU106 USB 3.1 Host Controller [10de:1ada] (rev a1)
#   0000:02:00.3 Serial bus controller [0c80]: NVIDIA Corporation TU106 USB Type-C UCSI Controller [10de:1adb] (rev a1)
# Firmware: /usr/share/OVMF/OVMF_CODE_4M.fd
{NOTES}\
# The guest's RAM (8G) is pinned for DMA, so it must be free. Its screen is VNC on the
#   Unix socket /var/lib/gpt-vm/vnc.sock, which only root can open (from another machine:
#   ssh -L 5900:/var/lib/gpt-vm/vnc.sock root@HOST, then a VNC viewer on localhost:5900), until the
#   GPU's own outputs take over; then `-vga none -display none` can replace `-vga std -vnc …`.
#   The network is QEMU's user mode, outgoing only; `hostfwd=tcp:127.0.0.1:2222-:22` on -netdev
#   would reach the guest's SSH, and every local user could connect to that port.
sudo install -d -m 0700 /var/lib/gpt-vm
sudo test -e /var/lib/gpt-vm/OVMF_VARS_4M.fd || sudo cp /usr/share/OVMF/OVMF_VARS_4M.fd /var/lib/gpt-vm/OVMF_VARS_4M.fd
sudo qemu-system-x86_64 \\
  -machine q35,accel=kvm \\
  -cpu host,kvm=off,hv_vendor_id=0123456789ab \\
  -smp 8,sockets=1,cores=4,threads=2 \\
  -m 8G \\
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \\
  -drive if=pflash,format=raw,file=/var/lib/gpt-vm/OVMF_VARS_4M.fd \\
  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \\
  -device vfio-pci,host=0000:02:00.0,bus=rp1,addr=00.0,multifunction=on \\
  -device vfio-pci,host=0000:02:00.1,bus=rp1,addr=00.1 \\
  -device vfio-pci,host=0000:02:00.2,bus=rp1,addr=00.2 \\
  -device vfio-pci,host=0000:02:00.3,bus=rp1,addr=00.3 \\
  -drive if=virtio,format=qcow2,file=/var/lib/gpt-vm/disk.qcow2 \\
  -netdev user,id=net0 \\
  -device virtio-net-pci,netdev=net0 \\
  -device qemu-xhci \\
  -device usb-tablet \\
  -vga std \\
  -vnc unix:/var/lib/gpt-vm/vnc.sock
"
    );
    assert_eq!(out, expected);
    assert!(!out.contains("x-vga"));
}

#[test]
fn the_output_is_a_shell_script() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake_ready(dir.path());
    let (_, out, _) = run(gpt(dir.path()).arg("qemu"));
    let status = std::process::Command::new("sh")
        .args(["-n", "-c", &out])
        .status()
        .unwrap();
    assert!(status.success(), "sh -n rejects:\n{out}");
}

#[test]
fn without_ovmf_the_standard_path_is_used_and_the_install_named() {
    let dir = tempfile::tempdir().unwrap();
    let t = rocketlake_ready(dir.path());
    std::fs::remove_dir_all(t.root.join("usr/share/OVMF")).unwrap();
    let (code, out, err) = run(gpt(dir.path()).arg("qemu"));
    assert_eq!(code, 0);
    assert!(
        out.contains(
            "# Firmware: /usr/share/OVMF/OVMF_CODE_4M.fd (not installed: sudo apt install ovmf)\n"
        ),
        "{out}"
    );
    assert!(out.contains(
        "  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \\\n"
    ));
    assert!(err.contains("no OVMF firmware under"), "{err}");
    assert!(err.contains("`sudo apt install ovmf`"), "{err}");
}

#[test]
fn libvirt_gets_one_hostdev_per_function() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake_ready(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--libvirt"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("<hostdev mode='subsystem' type='pci' managed='yes'>")
            .count(),
        4
    );
    for f in 0..4 {
        assert!(
            out.contains(&format!(
                "<hostdev mode='subsystem' type='pci' managed='yes'>\n  <source>\n    <address domain='0x0000' bus='0x02' slot='0x00' function='0x{f}'/>\n  </source>\n</hostdev>\n"
            )),
            "{out}"
        );
    }
    assert!(out.contains("<!-- 0000:02:00.3 Serial bus controller [0c80]: NVIDIA Corporation TU106 USB Type-C UCSI Controller [10de:1adb] (rev a1) -->\n"));
    assert!(!out.contains("qemu-system"));
}

#[test]
fn two_gpus_get_a_root_port_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    t.device(
        Dev::new("0000:05:00.0", (0x1002, 0x73bf), 0x030000)
            .group(16)
            .driver("vfio-pci"),
    )
    .device(
        Dev::new("0000:05:00.1", (0x1002, 0xab28), 0x040300)
            .group(16)
            .driver("vfio-pci"),
    );
    let mut c = rocketlake_config();
    c.gpus.push("0000:05:00.0".into());
    c.devices
        .extend(["0000:05:00.0".to_string(), "0000:05:00.1".to_string()]);
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    rebooted(&mut t, &c, DEBIAN_KVER);
    ovmf_4m(&mut t);
    let (code, out, err) = run(gpt(dir.path()).arg("qemu"));
    assert_eq!(code, 0, "{err}");
    let devices: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  -device "))
        .collect();
    assert_eq!(
        devices,
        [
            "  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \\",
            "  -device vfio-pci,host=0000:02:00.0,bus=rp1,addr=00.0,multifunction=on \\",
            "  -device vfio-pci,host=0000:02:00.1,bus=rp1,addr=00.1 \\",
            "  -device vfio-pci,host=0000:02:00.2,bus=rp1,addr=00.2 \\",
            "  -device vfio-pci,host=0000:02:00.3,bus=rp1,addr=00.3 \\",
            "  -device pcie-root-port,id=rp2,bus=pcie.0,chassis=2,slot=2 \\",
            "  -device vfio-pci,host=0000:05:00.0,bus=rp2,addr=00.0,multifunction=on \\",
            "  -device vfio-pci,host=0000:05:00.1,bus=rp2,addr=00.1 \\",
            "  -device virtio-net-pci,netdev=net0 \\",
            "  -device qemu-xhci \\",
            "  -device usb-tablet \\",
        ]
    );
    // The same two cards chosen by hand give the same command.
    let (_, by_hand, _) =
        run(gpt(dir.path()).args(["qemu", "--device", "05:00.0", "--device", "0000:02:00.0"]));
    assert_eq!(by_hand, out);
}

#[test]
fn a_3d_controller_needs_no_x_vga_and_an_amd_card_no_hidden_kvm() {
    let dir = tempfile::tempdir().unwrap();
    epyc(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--device", "41:00.0"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    assert!(!out.contains("x-vga"), "{out}");
    assert!(out.contains("#   0000:41:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 PCIe] [10de:2331] (rev a1)\n"), "{out}");
    let opts: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("sudo qemu-system"))
        .collect();
    assert_eq!(
        opts[..9],
        [
            "sudo qemu-system-x86_64 \\",
            "  -machine q35,accel=kvm \\",
            "  -cpu host,kvm=off,hv_vendor_id=0123456789ab \\",
            "  -smp 32,sockets=1,cores=16,threads=2 \\",
            "  -m 16G \\",
            "  -bios /usr/share/ovmf/OVMF.fd \\",
            "  -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1 \\",
            "  -device vfio-pci,host=0000:41:00.0,bus=rp1,addr=00.0 \\",
            "  -drive if=virtio,format=qcow2,file=/var/lib/gpt-vm/disk.qcow2 \\",
        ]
    );
    assert!(
        !out.contains("OVMF_VARS"),
        "no variables to copy with -bios:\n{out}"
    );
    // An AMD accelerator (display controller, 0380): no reason to hide KVM.
    let (code, out, _) = run(gpt(dir.path()).args(["qemu", "--device", "c1:00.0"]));
    assert_eq!(code, 0);
    assert!(out.contains("  -cpu host \\\n"), "{out}");
    assert!(out.contains("  -device vfio-pci,host=0000:c1:00.0,bus=rp1,addr=00.0 \\\n"));
}

#[test]
fn nothing_configured_and_no_device_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = run(gpt(dir.path()).arg("qemu"));
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: nothing configured; run `sudo gpt full VENDOR` or pass --device ADDR\n"
    );
}

#[test]
fn a_device_that_is_no_gpu_or_does_not_exist_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--device", "02:00.1"]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "error: 0000:02:00.1 is not a GPU (Audio device [0403]: NVIDIA Corporation TU106 High Definition Audio Controller [10de:10f9] (rev a1)); pass a display controller (class 03xx): `gpt iommu --gpu` lists them\n"
    );
    let (code, _, err) = run(gpt(dir.path()).args(["qemu", "--device", "09:00.0"]));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: no PCI device at 09:00.0; `gpt iommu` lists the devices of this host\n"
    );
    let (code, _, err) = run(gpt(dir.path()).args(["qemu", "--device", "nvidia"]));
    assert_eq!(code, 1);
    assert!(err.contains("expected the form 0000:02:00.0"), "{err}");
}

#[test]
fn a_gpu_still_on_its_host_driver_is_printed_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake(dir.path());
    ovmf_4m(&mut t);
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--device", "02:00.0"]));
    assert_eq!(code, 0);
    assert_eq!(out.matches("-device vfio-pci,host=0000:02:00.").count(), 4);
    assert_eq!(
        err,
        "warning: not on vfio-pci yet: 0000:02:00.0 (nouveau), 0000:02:00.1 (snd_hda_intel), 0000:02:00.2 (xhci_hcd), 0000:02:00.3 (nvidia-gpu); QEMU cannot open them until they are (`gpt check` says why)\n"
    );
}

/// QEMU runs as root: the command opens no port and no console another user can reach (VNC
/// on a Unix socket in a folder only root can enter, no host port forwarded), and every file
/// it opens is an absolute path in that folder, so neither the folder it is run from nor
/// another user can swap one (issue 27, item 5).
#[test]
fn the_command_exposes_nothing_to_other_users() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake_ready(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let setup: Vec<Vec<String>> = doc["setup"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    // The first step makes the private folder; every later path is inside it.
    let private = match setup[0].as_slice() {
        [install, d, m, mode, folder] if install == "install" && d == "-d" && m == "-m" => {
            assert_eq!(mode, "0700");
            format!("{folder}/")
        }
        other => panic!("the first setup step makes no root-only folder: {other:?}"),
    };
    assert!(private.starts_with('/'), "{private}");
    for step in &setup[1..] {
        assert!(step.last().unwrap().starts_with(&private), "{step:?}");
    }
    let argv = strings(&doc["argv"]);
    let value = |k: &str| -> Vec<&String> {
        argv.windows(2)
            .filter(|w| w[0] == k)
            .map(|w| &w[1])
            .collect()
    };
    let vnc = value("-vnc");
    assert_eq!(vnc.len(), 1, "{argv:?}");
    let socket = vnc[0].strip_prefix("unix:").expect("VNC on a Unix socket");
    assert!(socket.starts_with(&private), "{socket}");
    for v in value("-netdev") {
        assert!(!v.contains("hostfwd") && !v.contains("tcp:"), "{v}");
    }
    for opt in [
        "-display", "-spice", "-monitor", "-serial", "-qmp", "-chardev",
    ] {
        assert!(value(opt).is_empty(), "{opt} in {argv:?}");
    }
    let files: Vec<&str> = argv
        .iter()
        .flat_map(|a| a.split(','))
        .filter_map(|p| p.strip_prefix("file="))
        .collect();
    assert_eq!(files.len(), 3, "{argv:?}");
    for f in files {
        assert!(f.starts_with('/'), "{f} is not absolute");
        let in_firmware = f.starts_with("/usr/share/");
        assert!(in_firmware || f.starts_with(&private), "{f}");
    }
    // The script runs the same steps as root.
    let (_, script, _) = run(gpt(dir.path()).arg("qemu"));
    assert!(
        script.contains("\nsudo install -d -m 0700 /var/lib/gpt-vm\n"),
        "{script}"
    );
    assert!(!script.contains("127.0.0.1:0"), "{script}");
}

#[test]
fn json_carries_the_argv_and_the_setup() {
    let dir = tempfile::tempdir().unwrap();
    rocketlake_ready(dir.path());
    let (code, out, err) = run(gpt(dir.path()).args(["qemu", "--json"]));
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["devices"].as_array().unwrap().len(), 4);
    assert_eq!(doc["firmware"], "/usr/share/OVMF/OVMF_CODE_4M.fd");
    assert_eq!(doc["firmware_installed"], true);
    assert_eq!(
        doc["setup"],
        serde_json::json!([
            ["install", "-d", "-m", "0700", "/var/lib/gpt-vm"],
            [
                "cp",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
                "/var/lib/gpt-vm/OVMF_VARS_4M.fd"
            ]
        ])
    );
    let argv: Vec<&str> = doc["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(argv[0], "qemu-system-x86_64");
    assert!(argv.contains(&"vfio-pci,host=0000:02:00.3,bus=rp1,addr=00.3"));
    let (_, xml, _) = run(gpt(dir.path()).args(["qemu", "--json", "--libvirt"]));
    let doc: Value = serde_json::from_str(&xml).unwrap();
    assert_eq!(doc["xml"].as_str().unwrap().matches("<hostdev ").count(), 4);
}

#[test]
fn a_forced_group_member_of_another_slot_stays_out_of_the_vm() {
    // `full --force` bound a SATA controller sharing the GPU's group: it must stay off host
    // drivers, but the VM only gets the card.
    let dir = tempfile::tempdir().unwrap();
    let mut t = rocketlake_ready(dir.path());
    let mut c = rocketlake_config();
    c.devices.push("0000:00:17.0".into());
    as_full_left_it(&mut t, &c, DEBIAN_KVER, true);
    let (code, out, err) = run(gpt(dir.path()).arg("qemu"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("00:17.0"), "{out}");
    assert_eq!(out.matches("-device vfio-pci,").count(), 4);
    assert_eq!(
        err,
        "warning: 0000:00:17.0 is configured for vfio-pci but not a function of a GPU: left out of the VM\n"
    );
}
