//! Whole host trees for tests: the old README's RocketLake + RTX 2060 Debian 12 host (also the
//! bundled example), an AMD datacenter host with a 3D-controller GPU, and broken variants.
#![allow(dead_code)]

use super::tree::{Dev, HostTree};
use std::path::Path;

pub const PCI_IDS: &str = include_str!("fixtures/pci.ids");
pub const GRUB_DEBIAN12: &str = include_str!("fixtures/grub.debian12");
pub const MODULES_DEBIAN12: &str = include_str!("fixtures/initramfs-modules.debian12");
pub const OS_DEBIAN12: &str = include_str!("fixtures/os-release.debian12");
pub const OS_UBUNTU2404: &str = include_str!("fixtures/os-release.ubuntu2404");

pub const DEBIAN_KVER: &str = "6.1.0-13-amd64";

fn cpuinfo(vendor: &str, model: &str, flag: &str, threads: usize) -> String {
    (0..threads)
        .map(|i| {
            format!(
                "processor\t: {i}\nvendor_id\t: {vendor}\nmodel name\t: {model}\n\
                 physical id\t: 0\nsiblings\t: {threads}\ncore id\t\t: {}\ncpu cores\t: {}\n\
                 flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep {flag} sse sse2 ht\n\n",
                i / 2,
                threads / 2
            )
        })
        .collect()
}

/// The Debian 12 files every test host has: os-release, grub, initramfs-tools, modprobe.d.
pub fn debian12_etc(t: &mut HostTree) {
    t.file("/etc/os-release", OS_DEBIAN12)
        .file("/etc/default/grub", GRUB_DEBIAN12)
        .file("/etc/initramfs-tools/modules", MODULES_DEBIAN12)
        .file(
            "/etc/initramfs-tools/initramfs.conf",
            "MODULES=most\nBUSYBOX=auto\nCOMPRESS=zstd\n",
        )
        .file(
            "/etc/modprobe.d/intel-microcode-blacklist.conf",
            "# The microcode module attempts to apply a microcode update when\n\
             # it autoloads.  This is not always safe, so we block it by default.\n\
             blacklist microcode\n",
        )
        .file("/usr/share/misc/pci.ids", PCI_IDS)
        // What initramfs-tools ships (gpt tells the generator from it without a dpkg database).
        .file("/usr/sbin/update-initramfs", "#!/bin/sh\n");
}

/// A Debian 6.1 kernel: vfio, vfio_iommu_type1, vfio_virqfd and vfio-pci are modules.
pub fn debian_kernel(t: &mut HostTree, kver: &str) {
    t.kernel(
        kver,
        &[
            "kernel/drivers/vfio/vfio.ko",
            "kernel/drivers/vfio/vfio_iommu_type1.ko",
            "kernel/drivers/vfio/vfio_virqfd.ko",
            "kernel/drivers/vfio/pci/vfio-pci.ko",
            "kernel/drivers/vfio/pci/vfio-pci-core.ko",
            "kernel/drivers/gpu/drm/nouveau/nouveau.ko",
            "kernel/sound/pci/hda/snd-hda-intel.ko",
            "kernel/drivers/usb/host/xhci-pci.ko",
            "kernel/drivers/i2c/busses/i2c-nvidia-gpu.ko",
            "kernel/drivers/usb/typec/ucsi/ucsi_ccg.ko",
        ],
        &["kernel/drivers/pci/pcie/portdrv.ko"],
        "alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\n\
         alias pci:v*d*sv*sd*bc04sc03i00* snd_hda_intel\n\
         alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci\n\
         alias pci:v000010DEd00001ADBsv*sd*bc0Csc80i00* i2c_nvidia_gpu\n",
    );
}

/// The host of the old README: Intel i7 RocketLake, iGPU as boot VGA, RTX 2060 in group 14,
/// NVMe root disk in group 15, Debian 12. Its listing is the one the README showed.
pub fn rocketlake(root: &Path) -> HostTree {
    let mut t = HostTree::new(root);
    let intel = |addr: &str, dev: u16, class: u32| Dev::new(addr, (0x8086, dev), class);
    // Kernel 6.1 lists reset methods: function 0 has `bus` (probed while it was alone on
    // the bus), the later functions none; all are in D0.
    let nv = |addr: &str, dev: u16, class: u32, drv: &str| {
        let d = Dev::new(addr, (0x10de, dev), class)
            .rev(0xa1)
            .subsys(0x1043, 0x86f0)
            .group(14)
            .driver(drv)
            .behind("00:01.0")
            .power_state("D0")
            .d3cold_allowed(true);
        if addr.ends_with(".0") {
            d.reset_method("bus")
        } else {
            d
        }
    };
    t.device(intel("00:00.0", 0x4c43, 0x060000).rev(1).group(1))
        .device(
            intel("00:01.0", 0x4c01, 0x060400)
                .rev(1)
                .group(2)
                .driver("pcieport"),
        )
        .device(
            intel("00:02.0", 0x4c8a, 0x030000)
                .rev(4)
                .group(0)
                .boot_vga()
                .driver("i915"),
        )
        .device(intel("00:04.0", 0x4c03, 0x118000).rev(1).group(3))
        .device(intel("00:08.0", 0x4c11, 0x088000).rev(1).group(4))
        .device(intel("00:12.0", 0x06f9, 0x118000).group(5))
        .device(
            intel("00:14.0", 0x06ed, 0x0c0330)
                .group(6)
                .driver("xhci_hcd"),
        )
        .device(intel("00:14.2", 0x06ef, 0x050000).group(6))
        .device(
            intel("00:14.3", 0x06f0, 0x028000)
                .group(7)
                .driver("iwlwifi"),
        )
        .device(
            intel("00:15.0", 0x06e8, 0x0c8000)
                .group(8)
                .driver("intel-lpss"),
        )
        .device(intel("00:16.0", 0x06e0, 0x078000).group(9).driver("mei_me"))
        .device(intel("00:17.0", 0x06d2, 0x010601).group(10).driver("ahci"))
        .device(
            intel("00:1b.0", 0x06ac, 0x060400)
                .rev(0xf0)
                .group(11)
                .driver("pcieport"),
        )
        .device(
            intel("00:1c.0", 0x06bc, 0x060400)
                .rev(0xf0)
                .group(12)
                .driver("pcieport"),
        )
        .device(intel("00:1f.0", 0x0684, 0x060100).group(13))
        .device(
            intel("00:1f.3", 0xf1c8, 0x040300)
                .group(13)
                .driver("snd_hda_intel"),
        )
        .device(
            intel("00:1f.4", 0x06a3, 0x0c0500)
                .group(13)
                .driver("i801_smbus"),
        )
        .device(
            intel("00:1f.5", 0x06a4, 0x0c8000)
                .group(13)
                .driver("intel-spi"),
        )
        .device(nv("02:00.0", 0x1f08, 0x030000, "nouveau"))
        .device(nv("02:00.1", 0x10f9, 0x040300, "snd_hda_intel"))
        .device(nv("02:00.2", 0x1ada, 0x0c0330, "xhci_hcd"))
        .device(nv("02:00.3", 0x1adb, 0x0c8000, "nvidia-gpu"))
        .device(
            Dev::new("03:00.0", (0x1cc1, 0x8201), 0x010802)
                .rev(3)
                .subsys(0x1cc1, 0x8201)
                .group(15)
                .driver("nvme")
                .behind("00:1b.0"),
        )
        .driver_dir("vfio-pci")
        .block(
            "0000:03:00.0",
            "nvme/nvme0",
            "nvme0n1",
            &["nvme0n1p1", "nvme0n1p2", "nvme0n1p3"],
        )
        .net("0000:00:14.3", "wlp0s20f3");
    t.file("/sys/firmware/acpi/tables/DMAR", "DMAR");
    debian12_etc(&mut t);
    debian_kernel(&mut t, DEBIAN_KVER);
    t.file(
        "/proc/cpuinfo",
        &cpuinfo("GenuineIntel", "11th Gen Intel(R) Core(TM) i7-11700 @ 2.50GHz", "vmx", 16),
    )
    .file("/proc/meminfo", "MemTotal:       32711880 kB\nMemFree:        30000000 kB\n")
    .file(
        "/proc/cmdline",
        &format!("BOOT_IMAGE=/boot/vmlinuz-{DEBIAN_KVER} root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro quiet\n"),
    )
    .file(
        "/proc/mounts",
        "/dev/nvme0n1p2 / ext4 rw,relatime,errors=remount-ro 0 0\n\
         /dev/nvme0n1p1 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077 0 0\n\
         proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
         sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n",
    )
    .file(
        "/proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/nvme0n1p3                          partition\t16777212\t0\t\t-2\n",
    )
    .file(
        "/proc/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         wlp0s20f3\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
         wlp0s20f3\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n",
    )
    .file(
        "/proc/interrupts",
        "            CPU0       CPU1\n 120:          0          0  IR-PCI-MSI 1048576-edge      nvme0q0\n",
    );
    t
}

/// dpkg's status database with the given packages installed.
pub fn dpkg_status(t: &mut HostTree, installed: &[&str]) {
    let text: String = installed
        .iter()
        .map(|p| format!("Package: {p}\nStatus: install ok installed\nVersion: 1.0\n\n"))
        .collect();
    t.file("/var/lib/dpkg/status", &text);
}

/// An AMD EPYC server on Ubuntu 24.04 (kernel 6.8, vfio-pci built in, AMD-Vi: ACPI IVRS) with
/// an H100 (3D controller, class 0302) alone in its group and an ASPEED BMC display as boot VGA.
pub fn amd_datacenter(root: &Path) -> HostTree {
    let mut t = HostTree::new(root);
    let amd =
        |addr: &str, dev: u16, class: u32, g: u32| Dev::new(addr, (0x1022, dev), class).group(g);
    t.device(amd("0000:00:00.0", 0x14a4, 0x060000, 0))
        .device(amd("0000:40:01.1", 0x14ab, 0x060400, 12).driver("pcieport"))
        .device(
            Dev::new("0000:41:00.0", (0x10de, 0x2331), 0x030200)
                .rev(0xa1)
                .subsys(0x10de, 0x1626)
                .group(40)
                .driver("nvidia")
                .behind("0000:40:01.1"),
        )
        .device(amd("0000:c0:01.1", 0x14ab, 0x060400, 50).driver("pcieport"))
        .device(
            Dev::new("0000:c1:00.0", (0x144d, 0xa80a), 0x010802)
                .group(51)
                .driver("nvme")
                .behind("0000:c0:01.1"),
        )
        .device(Dev::new("0000:c2:00.0", (0x1a03, 0x2000), 0x030000).rev(0x52).group(52).boot_vga().driver("ast"))
        .device(Dev::new("0000:c3:00.0", (0x14e4, 0x16d7), 0x020000).group(53).driver("bnxt_en"))
        .block("0000:c1:00.0", "nvme/nvme0", "nvme0n1", &["nvme0n1p1", "nvme0n1p2"])
        .net("0000:c3:00.0", "eno1")
        .file("/sys/firmware/acpi/tables/IVRS", "IVRS")
        .file("/etc/os-release", OS_UBUNTU2404)
        .file("/etc/default/grub", &GRUB_DEBIAN12.replace("echo Debian", "echo Ubuntu"))
        .file("/etc/initramfs-tools/modules", MODULES_DEBIAN12)
        .file("/usr/share/misc/pci.ids", PCI_IDS)
        .file(
            "/proc/cpuinfo",
            &cpuinfo("AuthenticAMD", "AMD EPYC 9354 32-Core Processor", "svm", 64),
        )
        .file("/proc/meminfo", "MemTotal:       792723456 kB\n")
        .file("/proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.8.0-45-generic root=/dev/mapper/vg0-root ro\n")
        .file("/proc/mounts", "/dev/mapper/vg0-root / ext4 rw 0 0\n/dev/nvme0n1p1 /boot/efi vfat rw 0 0\n")
        .file("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
        .file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neno1\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n",
        )
        .file("/sys/block/dm-0/dm/name", "vg0-root\n")
        .symlink("/sys/block/dm-0/slaves/nvme0n1p2", "../../nvme0n1/nvme0n1p2")
        .symlink("/sys/class/block/dm-0", "../../block/dm-0")
        .kernel(
            "6.8.0-45-generic",
            &[
                "kernel/drivers/vfio/vfio.ko.zst",
                "kernel/drivers/vfio/vfio_iommu_type1.ko.zst",
                "kernel/drivers/gpu/drm/nouveau/nouveau.ko.zst",
            ],
            &["kernel/drivers/vfio/pci/vfio-pci.ko", "kernel/drivers/vfio/pci/vfio-pci-core.ko"],
            "alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\n",
        );
    dpkg_status(
        &mut t,
        &[
            "qemu-system-x86",
            "qemu-utils",
            "ovmf",
            "curl",
            "initramfs-tools",
        ],
    );
    t
}

// ---------------------------------------------------------------------------------------
// A host as `gpt full` leaves it, and the same host after the reboot (for check and qemu).

/// The kernel arguments `gpt full nvidia` configures on the rocketlake host.
/// The ids of the RTX 2060's four functions.
pub const ROCKETLAKE_IDS: [&str; 4] = ["10de:1f08", "10de:10f9", "10de:1ada", "10de:1adb"];

pub const ROCKETLAKE_ARGS: [&str; 5] = [
    "iommu=pt",
    "intel_iommu=on",
    "vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb",
    "kvm.ignore_msrs=1",
    "kvm.report_ignored_msrs=0",
];

/// What `gpt full nvidia` records for the rocketlake host.
pub fn rocketlake_config() -> gpt::model::Config {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    gpt::model::Config {
        phase: gpt::model::Phase::Vfio,
        gpus: s(&["0000:02:00.0"]),
        devices: s(&[
            "0000:02:00.0",
            "0000:02:00.1",
            "0000:02:00.2",
            "0000:02:00.3",
        ]),
        ids: s(&["10de:1f08", "10de:10f9", "10de:1ada", "10de:1adb"]),
        bind: gpt::model::BindMode::Ids,
        grub_file: "/etc/default/grub".into(),
        grub_var: "GRUB_CMDLINE_LINUX_DEFAULT".into(),
        args: s(&ROCKETLAKE_ARGS),
        added_args: s(&ROCKETLAKE_ARGS),
        initramfs_modules: s(&["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci"]),
        softdeps: s(&[
            "i2c_nvidia_gpu",
            "nouveau",
            "nvidia",
            "nvidiafb",
            "snd_hda_intel",
            "ucsi_ccg",
            "xhci_pci",
        ]),
        kernels: s(&[DEBIAN_KVER]),
        boot: gpt::boot::StackId::default(),
        no_idle_d3: false,
    }
}

/// A fixed point in time for mtimes, so "older" and "newer" do not depend on the clock.
fn at(offset: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs((1_700_000_000 + offset) as u64)
}

pub fn set_mtime(t: &HostTree, abs: &str, offset: i64) {
    let f = std::fs::File::options()
        .write(true)
        .open(t.root.join(abs.trim_start_matches('/')))
        .unwrap();
    f.set_modified(at(offset)).unwrap();
}

/// A Debian grub.cfg whose default entry boots `kver` with `args` after `quiet`, plus the
/// recovery entry (which only gets GRUB_CMDLINE_LINUX).
pub fn grub_cfg(kver: &str, args: &[&str]) -> String {
    let root = "root=UUID=0b6c1a9e-5f2d-4c2a-9d39-3f0d8f5b7e21 ro";
    let extra: String = args.iter().map(|a| format!(" {a}")).collect();
    format!(
        "### BEGIN /etc/grub.d/10_linux ###\n\
         menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class os {{\n\
         \tload_video\n\tinsmod gzio\n\
         \techo\t'Loading Linux {kver} ...'\n\
         \tlinux\t/boot/vmlinuz-{kver} {root}  quiet{extra}\n\
         \tinitrd\t/boot/initrd.img-{kver}\n}}\n\
         submenu 'Advanced options for Debian GNU/Linux' {{\n\
         \tmenuentry 'Debian GNU/Linux, with Linux {kver} (recovery mode)' {{\n\
         \t\tlinux\t/boot/vmlinuz-{kver} {root} single \n\
         \t\tinitrd\t/boot/initrd.img-{kver}\n\t}}\n}}\n\
         ### END /etc/grub.d/10_linux ###\n"
    )
}

/// Write what `gpt full` leaves for `c`: the state, the edited /etc/default/grub, the
/// initramfs block, gpt-vfio.conf; with `updated`, also the grub.cfg and initramfs that
/// update-grub and update-initramfs regenerate (otherwise the old ones, as `--no-update`
/// leaves them).
pub fn as_full_left_it(t: &mut HostTree, c: &gpt::model::Config, kver: &str, updated: bool) {
    use gpt::edit::{grub, modprobe, modules};
    let read = |t: &HostTree, p: &str| {
        std::fs::read_to_string(t.root.join(p.trim_start_matches('/'))).unwrap_or_default()
    };
    let doc = serde_json::json!({"version": 1, "config": c, "files": []});
    t.file(gpt::paths::STATE_FILE, &format!("{doc}\n"));
    let g = grub::apply(&read(t, &c.grub_file), &c.grub_var, &c.args).unwrap();
    t.file(&c.grub_file, &g);
    if c.phase == gpt::model::Phase::Vfio {
        let mods: Vec<&str> = c.initramfs_modules.iter().map(String::as_str).collect();
        let m = modules::apply(&read(t, "/etc/initramfs-tools/modules"), &mods);
        t.file("/etc/initramfs-tools/modules", &m);
        t.file(
            "/etc/modprobe.d/gpt-vfio.conf",
            &modprobe::render(&c.softdeps, &[]),
        );
        set_mtime(t, "/etc/modprobe.d/gpt-vfio.conf", 0);
    }
    set_mtime(t, "/etc/initramfs-tools/modules", 0);
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let initrd = format!("/boot/initrd.img-{kver}");
    // In the format of the fake update-initramfs (which the fake lsinitramfs lists): an
    // updated image holds the modules gpt listed.
    let mut image = format!("# initramfs written by gpt's fake update-initramfs for {kver}\n");
    if updated {
        for m in &c.initramfs_modules {
            let file = if m == "vfio_pci" {
                "vfio/pci/vfio-pci.ko".to_string()
            } else {
                format!("vfio/{m}.ko")
            };
            image.push_str(&format!("module {m} kernel/drivers/{file}\n"));
        }
    }
    t.file(&initrd, &image);
    if updated {
        t.file("/boot/grub/grub.cfg", &grub_cfg(kver, &args));
        set_mtime(t, &initrd, 100);
    } else {
        t.file("/boot/grub/grub.cfg", &grub_cfg(kver, &[]));
        set_mtime(t, &initrd, -100);
    }
}

/// Bind the device at `addr` to `driver` (a relative `driver` link, as the kernel makes it).
pub fn bind(t: &mut HostTree, addr: &str, driver: &str) {
    let dev_link = t.root.join("sys/bus/pci/devices").join(addr);
    let dir = std::fs::canonicalize(&dev_link).unwrap();
    let rel = dir
        .strip_prefix(std::fs::canonicalize(&t.root).unwrap())
        .unwrap()
        .to_path_buf();
    let link = dir.join("driver");
    if let Ok(old) = std::fs::read_link(&link) {
        let old_drv = old.file_name().unwrap().to_string_lossy().into_owned();
        let _ = std::fs::remove_file(t.root.join("sys/bus/pci/drivers").join(old_drv).join(addr));
        std::fs::remove_file(&link).unwrap();
    }
    super::tree::set_uevent_driver(&dir, Some(driver));
    let up = "../".repeat(rel.components().count());
    std::fs::create_dir_all(t.root.join("sys/bus/pci/drivers").join(driver)).unwrap();
    std::os::unix::fs::symlink(format!("{up}sys/bus/pci/drivers/{driver}"), &link).unwrap();
    std::os::unix::fs::symlink(
        format!("../../../../{}", rel.display()),
        t.root.join("sys/bus/pci/drivers").join(driver).join(addr),
    )
    .unwrap();
}

/// The host after the reboot: the running kernel has gpt's arguments, every configured
/// device is on vfio-pci, vfio_pci is loaded, KVM is up.
pub fn rebooted(t: &mut HostTree, c: &gpt::model::Config, kver: &str) {
    let cmdline = std::fs::read_to_string(t.root.join("proc/cmdline")).unwrap();
    let line = format!("{} {}\n", cmdline.trim_end(), c.args.join(" "));
    t.file("/proc/cmdline", &line)
        .file("/proc/sys/kernel/osrelease", &format!("{kver}\n"))
        .file("/sys/module/vfio_pci/initstate", "live\n")
        .file("/dev/kvm", "");
    for d in &c.devices {
        bind(t, d, "vfio-pci");
    }
}

/// The kernel arguments the old setup.sh's README put on GRUB_CMDLINE_LINUX_DEFAULT.
pub const OLD_SETUP_ARGS: &str = "quiet preempt=voluntary iommu=pt amd_iommu=on intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9,10de:1ada,10de:1adb rd.driver.pre=vfio-pci video=efifb:off kvm.ignore_msrs=1 kvm.report_ignored_msrs=0";

/// What `bash setup.sh full NVIDIA debian` left on a Debian 12 host: its grub.bak, the
/// arguments, `options vfio-pci ids=` in the initramfs list and in blacklist.conf, and the
/// global `blacklist xhci_hcd`.
pub fn old_setup_sh(t: &mut HostTree) {
    let ids = "10de:1f08,10de:10f9,10de:1ada,10de:1adb";
    t.file("/etc/default/grub.bak", GRUB_DEBIAN12)
        .file(
            "/etc/default/grub",
            &GRUB_DEBIAN12.replace(
                "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"",
                &format!("GRUB_CMDLINE_LINUX_DEFAULT=\"{OLD_SETUP_ARGS}\""),
            ),
        )
        .file(
            "/etc/initramfs-tools/modules",
            &format!(
                "{MODULES_DEBIAN12}vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\noptions vfio-pci ids={ids}\n"
            ),
        )
        .file(
            "/etc/modprobe.d/blacklist.conf",
            &format!("options vfio-pci ids={ids}\n"),
        )
        .file("/etc/modprobe.d/xhci_hcd.conf", "blacklist xhci_hcd\n");
}

/// Which dracut a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dracut {
    /// Debian 13's dracut 106: no update-initramfs of its own.
    Debian13,
    /// dracut 107 and later (Debian testing, Ubuntu 25.10 and 26.04): its own
    /// update-initramfs, and initramfs-tools-core left installed with /etc/initramfs-tools.
    Ubuntu2604,
}

/// The RocketLake host with dracut building its images instead of initramfs-tools, as the
/// package database says.
pub fn rocketlake_dracut(root: &Path, which: Dracut) -> HostTree {
    let mut t = rocketlake(root);
    t.file("/usr/bin/dracut", "#!/bin/sh\n").file(
        "/etc/dracut.conf.d/10-debian.conf",
        "do_prelink=\"no\"\nhostonly=\"yes\"\n",
    );
    match which {
        Dracut::Debian13 => {
            std::fs::remove_file(root.join("usr/sbin/update-initramfs")).unwrap();
            std::fs::remove_dir_all(root.join("etc/initramfs-tools")).unwrap();
            dpkg_status(&mut t, &["dracut", "dracut-core"]);
        }
        Dracut::Ubuntu2604 => {
            t.file("/etc/os-release", OS_UBUNTU2404);
            dpkg_status(&mut t, &["dracut", "dracut-core", "initramfs-tools-core"]);
        }
    }
    t
}

pub const MACHINE_ID: &str = "4d1e6a1b0c2f4e7a9b3c5d7e9f0a1b2c";

/// The bytes of a Boot Loader Interface EFI variable: attributes, then UTF-16LE and a NUL.
pub fn efi_var(s: &str) -> Vec<u8> {
    let mut v = vec![6, 0, 0, 0];
    for u in s.encode_utf16().chain([0]) {
        v.extend(u.to_le_bytes());
    }
    v
}

/// The RocketLake host booting systemd-boot (Debian 13's `systemd-boot` package, the ESP at
/// /boot/efi, entries written by kernel-install): with `/etc/kernel/cmdline` when `cmdline`
/// is given, GRUB's package and settings too with `grub`, and the LoaderInfo EFI variable
/// when `loader_info` is given.
pub fn sdboot(
    root: &Path,
    cmdline: Option<&str>,
    grub: bool,
    loader_info: Option<&str>,
) -> HostTree {
    let mut t = rocketlake(root);
    let mut pkgs = vec![
        "initramfs-tools",
        "systemd-boot",
        "systemd-boot-efi",
        "systemd",
    ];
    if grub {
        pkgs.push("grub-efi-amd64");
    } else {
        std::fs::remove_file(root.join("etc/default/grub")).unwrap();
    }
    dpkg_status(&mut t, &pkgs);
    t.file("/usr/bin/kernel-install", "#!/bin/sh\n")
        .file("/usr/bin/bootctl", "#!/bin/sh\n")
        .file("/etc/kernel/postinst.d/zz-systemd-boot", "#!/bin/sh\n")
        .file("/etc/machine-id", &format!("{MACHINE_ID}\n"))
        .file("/boot/efi/EFI/systemd/systemd-bootx64.efi", "MZ")
        .file("/boot/efi/EFI/BOOT/BOOTX64.EFI", "MZ")
        .file("/boot/efi/loader/entries.srel", "type1\n")
        .file(
            "/boot/efi/loader/loader.conf",
            "#timeout 3\n#console-mode keep\n",
        );
    std::fs::create_dir_all(root.join(format!("boot/efi/{MACHINE_ID}"))).unwrap();
    if let Some(line) = cmdline {
        t.file("/etc/kernel/cmdline", line);
    }
    if let Some(info) = loader_info {
        let dir = root.join("sys/firmware/efi/efivars");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"),
            efi_var(info),
        )
        .unwrap();
    }
    t
}

pub const PVE_ESP: &str = "4A1B-2C3D";

/// The RocketLake host as a Proxmox VE install on ZFS: proxmox-boot-tool manages one ESP, and
/// the unused /etc/default/grub is still there. The ESP's file system is the folder
/// /var/tmp/espmounts/UUID, which /dev/disk/by-uuid/UUID links to ([`pve_esp`]): what the fake
/// refresh writes there is what gpt reads back by bind-mounting the link's folder. With
/// `sdboot` the ESP runs systemd-boot and LoaderInfo says so; otherwise GRUB (Secure Boot) and
/// no LoaderInfo.
pub fn pve_zfs(root: &Path, sdboot: bool) -> HostTree {
    let mut t = rocketlake(root);
    dpkg_status(
        &mut t,
        &[
            "initramfs-tools",
            "proxmox-kernel-helper",
            "grub-efi-amd64",
            "systemd-boot",
        ],
    );
    t.file("/usr/sbin/proxmox-boot-tool", "#!/bin/sh\n")
        .file(
            "/etc/kernel/proxmox-boot-uuids",
            &format!("# This file is auto-generated by proxmox-boot-tool\n{PVE_ESP}\n"),
        )
        .file(
            "/proc/cmdline",
            &format!("initrd=\\EFI\\proxmox\\{DEBIAN_KVER}\\initrd.img-{DEBIAN_KVER} root=ZFS=rpool/ROOT/pve-1 boot=zfs\n"),
        );
    t.file(
        "/etc/kernel/postinst.d/zz-proxmox-boot",
        "#!/bin/sh\n# proxmox-boot-tool refresh runs this hook\n",
    );
    pve_esp(&mut t, PVE_ESP, !sdboot);
    // Booted by UEFI either way (GRUB: with Secure Boot, and a GRUB before 2.12 that sets no
    // LoaderInfo).
    let dir = root.join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&dir).unwrap();
    if sdboot {
        std::fs::write(
            dir.join("LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"),
            efi_var("systemd-boot 252.33-1~deb12u1"),
        )
        .unwrap();
    }
    t
}

/// One more ESP proxmox-boot-tool manages on a Proxmox host: its file system (a folder at
/// /var/tmp/espmounts/UUID, which /dev/disk/by-uuid/UUID links to, relatively, as udev's links
/// do), set up for GRUB (`EFI/proxmox/grubx64.efi`) or systemd-boot (`loader/loader.conf`).
/// Not added to /etc/kernel/proxmox-boot-uuids. Returns the folder, as on the host.
pub fn pve_esp(t: &mut HostTree, uuid: &str, grub: bool) -> String {
    let esp = format!("/var/tmp/espmounts/{uuid}");
    t.symlink(
        &format!("/dev/disk/by-uuid/{uuid}"),
        &format!("../../../var/tmp/espmounts/{uuid}"),
    );
    if grub {
        t.file(&format!("{esp}/EFI/proxmox/grubx64.efi"), "MZ");
        t.file(&format!("{esp}/grub/grubenv"), "# GRUB Environment Block\n");
    } else {
        t.file(&format!("{esp}/EFI/systemd/systemd-bootx64.efi"), "MZ");
        t.file(
            &format!("{esp}/loader/loader.conf"),
            "timeout 3\ndefault proxmox-*\n",
        );
    }
    esp
}

/// kernelstub's configuration on Pop!_OS 22.04, as kernelstub writes it (json.dump, indent 2,
/// no final newline), with the user's options.
pub const KERNELSTUB_CONF: &str = "{\n  \"default\": {\n    \"kernel_options\": [\n      \"quiet\",\n      \"splash\"\n    ],\n    \"esp_path\": \"/boot/efi\",\n    \"setup_loader\": false,\n    \"manage_mode\": false,\n    \"force_update\": false,\n    \"live_mode\": false,\n    \"config_rev\": 3\n  },\n  \"user\": {\n    \"kernel_options\": [\n      \"quiet\",\n      \"loglevel=0\",\n      \"systemd.show_status=false\",\n      \"splash\"\n    ],\n    \"esp_path\": \"/boot/efi\",\n    \"setup_loader\": true,\n    \"manage_mode\": true,\n    \"force_update\": false,\n    \"live_mode\": false,\n    \"config_rev\": 3\n  }\n}";

/// The RocketLake host as Pop!_OS: kernelstub writes systemd-boot's entries on /boot/efi.
pub fn pop_os(root: &Path) -> HostTree {
    let mut t = rocketlake(root);
    std::fs::remove_file(root.join("etc/default/grub")).unwrap();
    dpkg_status(&mut t, &["initramfs-tools", "kernelstub", "systemd"]);
    t.file(
        "/etc/os-release",
        "NAME=\"Pop!_OS\"\nVERSION=\"22.04 LTS\"\nID=pop\nID_LIKE=\"ubuntu debian\"\nPRETTY_NAME=\"Pop!_OS 22.04 LTS\"\n",
    )
    .file("/etc/kernelstub/configuration", KERNELSTUB_CONF)
    .file("/boot/efi/EFI/systemd/systemd-bootx64.efi", "MZ");
    let dir = root.join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("LoaderInfo-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"),
        efi_var("systemd-boot 251.3"),
    )
    .unwrap();
    t
}

// ---------------------------------------------------------------------------------------
// Layouts people posted: cards whose functions are not all on the GPU's bus or group.

/// A Debian 12 desktop or laptop around the devices a layout adds: an NVMe root disk behind
/// its own root port (group 90), a wired NIC (group 91) carrying the default route, the CPU
/// of `cpu_vendor` and its IOMMU table.
pub fn layout_base(root: &Path, cpu_vendor: &str) -> HostTree {
    let mut t = HostTree::new(root);
    let maker = if cpu_vendor == "GenuineIntel" {
        0x8086
    } else {
        0x1022
    };
    t.device(Dev::new("00:00.0", (maker, 0x0001), 0x060000).group(89))
        .device(
            Dev::new("00:1d.0", (maker, 0x0002), 0x060400)
                .group(90)
                .driver("pcieport"),
        )
        .device(
            Dev::new("70:00.0", (0x144d, 0xa808), 0x010802)
                .group(90)
                .driver("nvme")
                .behind("00:1d.0"),
        )
        .device(
            Dev::new("00:1e.0", (maker, 0x0003), 0x060400)
                .group(91)
                .driver("pcieport"),
        )
        .device(
            Dev::new("71:00.0", (0x10ec, 0x8125), 0x020000)
                .group(91)
                .driver("r8169")
                .behind("00:1e.0"),
        )
        .driver_dir("vfio-pci")
        .block(
            "0000:70:00.0",
            "nvme/nvme0",
            "nvme0n1",
            &["nvme0n1p1", "nvme0n1p2"],
        )
        .net("0000:71:00.0", "enp113s0");
    if maker == 0x8086 {
        t.file("/sys/firmware/acpi/tables/DMAR", "DMAR");
    } else {
        t.file("/sys/firmware/acpi/tables/IVRS", "IVRS");
    }
    debian12_etc(&mut t);
    debian_kernel(&mut t, DEBIAN_KVER);
    t.file("/proc/cpuinfo", &cpuinfo(cpu_vendor, "a CPU", "vmx svm", 8))
        .file("/proc/meminfo", "MemTotal:       32711880 kB\n")
        .file(
            "/proc/cmdline",
            &format!("BOOT_IMAGE=/boot/vmlinuz-{DEBIAN_KVER} root=/dev/nvme0n1p2 ro quiet\n"),
        )
        .file(
            "/proc/mounts",
            "/dev/nvme0n1p2 / ext4 rw 0 0\n/dev/nvme0n1p1 /boot/efi vfat rw 0 0\n",
        )
        .file("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
        .file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             enp113s0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n",
        );
    t
}

/// An Arc A770 on an Alder Lake desktop: the card's own switch (8086:4fa1 upstream port,
/// 8086:4fa4 downstream ports) below the CPU's root port 00:01.0, the GPU at 03:00.0 and its
/// HDMI audio at 04:00.0. With `audio_group` 1 everything shares the root port's group (as
/// when the ports lack ACS); otherwise the audio has a group of its own.
pub fn arc_a770(root: &Path, audio_group: u32) -> HostTree {
    let mut t = layout_base(root, "GenuineIntel");
    let intel = |addr: &str, dev: u16, class: u32| Dev::new(addr, (0x8086, dev), class);
    t.device(
        intel("00:02.0", 0x4680, 0x030000)
            .group(0)
            .boot_vga()
            .driver("i915"),
    )
    .device(
        intel("00:01.0", 0x460d, 0x060400)
            .group(1)
            .driver("pcieport"),
    )
    .device(
        intel("01:00.0", 0x4fa1, 0x060400)
            .group(1)
            .driver("pcieport")
            .behind("00:01.0"),
    )
    .device(
        intel("02:01.0", 0x4fa4, 0x060400)
            .group(1)
            .driver("pcieport")
            .behind("01:00.0"),
    )
    .device(
        intel("02:04.0", 0x4fa4, 0x060400)
            .group(1)
            .driver("pcieport")
            .behind("01:00.0"),
    )
    .device(
        intel("03:00.0", 0x56a0, 0x030000)
            .subsys(0x8086, 0x1020)
            .group(1)
            .driver("i915")
            .behind("02:01.0"),
    )
    .device(
        intel("04:00.0", 0x4f90, 0x040300)
            .subsys(0x8086, 0x1020)
            .group(audio_group)
            .driver("snd_hda_intel")
            .behind("02:04.0"),
    );
    t
}

/// An RX 6800 XT on a Ryzen 7000 board: the card's own switch (1002:1478 upstream, 1002:1479
/// downstream), and its VGA, HDMI audio, USB-C (xHCI) and UCSI functions in four groups. The
/// CPU's iGPU drives the console.
pub fn rx6800_four_groups(root: &Path) -> HostTree {
    let mut t = layout_base(root, "AuthenticAMD");
    let amd = |addr: &str, dev: u16, class: u32| Dev::new(addr, (0x1002, dev), class);
    let card = |d: Dev| d.subsys(0x1da2, 0xe437).behind("0b:00.0");
    t.device(
        Dev::new("00:01.1", (0x1022, 0x14db), 0x060400)
            .group(10)
            .driver("pcieport"),
    )
    .device(
        amd("0a:00.0", 0x1478, 0x060400)
            .group(11)
            .driver("pcieport")
            .behind("00:01.1"),
    )
    .device(
        amd("0b:00.0", 0x1479, 0x060400)
            .group(12)
            .driver("pcieport")
            .behind("0a:00.0"),
    )
    .device(card(
        amd("0c:00.0", 0x73bf, 0x030000).group(13).driver("amdgpu"),
    ))
    .device(card(
        amd("0c:00.1", 0xab28, 0x040300)
            .group(14)
            .driver("snd_hda_intel"),
    ))
    .device(card(
        amd("0c:00.2", 0x73a6, 0x0c0330)
            .group(15)
            .driver("xhci_hcd"),
    ))
    .device(card(
        amd("0c:00.3", 0x73a4, 0x0c8000)
            .group(16)
            .driver("i2c-designware-pci"),
    ))
    .device(
        Dev::new("00:08.1", (0x1022, 0x14dd), 0x060400)
            .group(20)
            .driver("pcieport"),
    )
    .device(
        amd("10:00.0", 0x164e, 0x030000)
            .group(21)
            .boot_vga()
            .driver("amdgpu")
            .behind("00:08.1"),
    );
    t
}

/// A Renoir laptop (Ryzen 4000 APU with an RTX 2060 Max-Q) whose firmware puts the APU's
/// whole slot in one group with the platform's dummy host bridge 00:08.0 (1022:1632, no
/// driver) and the internal port 00:08.1: the iGPU and its HDMI audio, and the CPU's PSP and
/// USB controllers.
pub fn apu_laptop(root: &Path) -> HostTree {
    let mut t = layout_base(root, "AuthenticAMD");
    let amd = |addr: &str, v: u16, dev: u16, class: u32| {
        Dev::new(addr, (v, dev), class).group(5).behind("00:08.1")
    };
    t.device(Dev::new("00:08.0", (0x1022, 0x1632), 0x060000).group(5))
        .device(
            Dev::new("00:08.1", (0x1022, 0x1635), 0x060400)
                .group(5)
                .driver("pcieport"),
        )
        .device(
            amd("05:00.0", 0x1002, 0x1636, 0x030000)
                .boot_vga()
                .driver("amdgpu"),
        )
        .device(amd("05:00.1", 0x1002, 0x1637, 0x040300).driver("snd_hda_intel"))
        .device(amd("05:00.2", 0x1022, 0x15df, 0x108000).driver("ccp"))
        .device(amd("05:00.3", 0x1022, 0x1639, 0x0c0330).driver("xhci_hcd"))
        .device(
            Dev::new("00:01.1", (0x1022, 0x1633), 0x060400)
                .group(2)
                .driver("pcieport"),
        )
        .device(
            Dev::new("01:00.0", (0x10de, 0x1f15), 0x030000)
                .group(9)
                .driver("nouveau")
                .behind("00:01.1"),
        );
    t
}

/// Two RTX 3060 cards (GPU and HDMI audio each, own groups) of one board maker, or of two
/// when `makers_differ`, on a host with two kernels: Debian's 6.1 (vfio-pci a module) and a
/// 5.4 that builds vfio-pci in (as Ubuntu 20.04's did) and, with `xhci_builtin`, xhci_pci.
pub fn twin_cards(root: &Path, makers_differ: bool, xhci_builtin: bool) -> HostTree {
    let mut t = layout_base(root, "GenuineIntel");
    let second = if makers_differ {
        (0x3842, 0x3657)
    } else {
        (0x1043, 0x87f3)
    };
    let card = |slot: &str, port: &str, g: u32, sub: (u16, u16)| {
        [
            Dev::new(&format!("{slot}.0"), (0x10de, 0x2504), 0x030000)
                .subsys(sub.0, sub.1)
                .group(g)
                .driver("nouveau")
                .behind(port),
            Dev::new(&format!("{slot}.1"), (0x10de, 0x228e), 0x040300)
                .subsys(sub.0, sub.1)
                .group(g)
                .driver("snd_hda_intel")
                .behind(port),
        ]
    };
    t.device(
        Dev::new("00:02.0", (0x8086, 0x4680), 0x030000)
            .group(0)
            .boot_vga()
            .driver("i915"),
    )
    .device(
        Dev::new("00:01.0", (0x8086, 0x460d), 0x060400)
            .group(1)
            .driver("pcieport"),
    )
    .device(
        Dev::new("00:06.0", (0x8086, 0x464d), 0x060400)
            .group(2)
            .driver("pcieport"),
    );
    for d in card("01:00", "00:01.0", 11, (0x1043, 0x87f3)) {
        t.device(d);
    }
    for d in card("02:00", "00:06.0", 12, second) {
        t.device(d);
    }
    let mut builtin = vec![
        "kernel/drivers/vfio/pci/vfio-pci.ko",
        "kernel/drivers/vfio/vfio.ko",
    ];
    if xhci_builtin {
        builtin.push("kernel/drivers/usb/host/xhci-pci.ko");
    }
    t.kernel(
        "5.4.0-150-generic",
        &[
            "kernel/drivers/vfio/vfio_iommu_type1.ko",
            "kernel/drivers/vfio/vfio_virqfd.ko",
            "kernel/drivers/gpu/drm/nouveau/nouveau.ko",
            "kernel/sound/pci/hda/snd-hda-intel.ko",
        ],
        &builtin,
        "alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\n",
    );
    t
}

/// An Ubuntu-style kernel that builds xhci_pci in (as Ubuntu 26.04's config does), every
/// vfio module and GPU driver a module.
pub const XHCI_BUILTIN_KVER: &str = "6.17.0-5-generic";

/// RTX 3060 cards with their USB-C controller (GPU, HDMI audio, xHCI at .2, one group per
/// card): two identical ones with `twin`, else one. Kernels: Debian's 6.1 (everything a
/// module; xhci_hcd is a module in the running kernel) and, with `xhci_builtin`,
/// [`XHCI_BUILTIN_KVER`], which builds xhci_pci in: a host whose kernels differ.
pub fn cards_with_usb(root: &Path, twin: bool, xhci_builtin: bool) -> HostTree {
    let mut t = layout_base(root, "GenuineIntel");
    let sub = (0x1043, 0x87f3);
    let card = |slot: &str, port: &str, g: u32| {
        [
            Dev::new(&format!("{slot}.0"), (0x10de, 0x2504), 0x030000)
                .subsys(sub.0, sub.1)
                .group(g)
                .driver("nouveau")
                .behind(port),
            Dev::new(&format!("{slot}.1"), (0x10de, 0x228e), 0x040300)
                .subsys(sub.0, sub.1)
                .group(g)
                .driver("snd_hda_intel")
                .behind(port),
            Dev::new(&format!("{slot}.2"), (0x10de, 0x1ada), 0x0c0330)
                .subsys(sub.0, sub.1)
                .group(g)
                .driver("xhci_hcd")
                .behind(port),
        ]
    };
    t.device(
        Dev::new("00:02.0", (0x8086, 0x4680), 0x030000)
            .group(0)
            .boot_vga()
            .driver("i915"),
    )
    .device(
        Dev::new("00:01.0", (0x8086, 0x460d), 0x060400)
            .group(1)
            .driver("pcieport"),
    );
    for d in card("01:00", "00:01.0", 11) {
        t.device(d);
    }
    if twin {
        t.device(
            Dev::new("00:06.0", (0x8086, 0x464d), 0x060400)
                .group(2)
                .driver("pcieport"),
        );
        for d in card("02:00", "00:06.0", 12) {
            t.device(d);
        }
    }
    if xhci_builtin {
        t.kernel(
            XHCI_BUILTIN_KVER,
            &[
                "kernel/drivers/vfio/vfio.ko",
                "kernel/drivers/vfio/vfio_iommu_type1.ko",
                "kernel/drivers/vfio/pci/vfio-pci.ko",
                "kernel/drivers/vfio/pci/vfio-pci-core.ko",
                "kernel/drivers/gpu/drm/nouveau/nouveau.ko",
                "kernel/sound/pci/hda/snd-hda-intel.ko",
            ],
            &[
                "kernel/drivers/pci/pcie/portdrv.ko",
                "kernel/drivers/usb/host/xhci-pci.ko",
            ],
            "alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\n",
        );
    }
    t
}

/// The same host on dracut, as Debian 13 has it (initramfs-tools removed): dracut's package,
/// its base module in `/usr/lib/dracut/modules.d`, Debian's generic-image setting.
pub fn on_dracut(t: &mut HostTree, root: &Path) {
    t.file("/usr/bin/dracut", "#!/bin/sh\n")
        .file(
            "/usr/lib/dracut/modules.d/99base/module-setup.sh",
            "#!/bin/bash\ncheck() {\n    return 0\n}\n",
        )
        .file(
            "/etc/dracut.conf.d/10-debian.conf",
            "do_prelink=\"no\"\nhostonly=\"no\"\n",
        );
    std::fs::remove_file(root.join("usr/sbin/update-initramfs")).unwrap();
    std::fs::remove_dir_all(root.join("etc/initramfs-tools")).unwrap();
    dpkg_status(t, &["dracut", "dracut-core"]);
}
