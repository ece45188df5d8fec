//! The planner tested directly: facts in (built without a host tree), files and commands out.

#[path = "support/facts.rs"]
mod facts;

use facts::{FactsBuilder, KVER};
use gpt::facts::Facts;
use gpt::plan::FileAction;
use gpt::planner::{self, Options, Planned};
use gpt::select::{self, Request};

const VGA: u32 = 0x030000;
const AUDIO: u32 = 0x040300;

/// An RTX 2060's GPU and audio functions alone in group 1, the iGPU in group 0.
fn nvidia(b: FactsBuilder) -> FactsBuilder {
    b.device("0000:00:02.0", (0x8086, 0x4c8a), VGA, Some(0), "i915")
        .device("0000:01:00.0", (0x10de, 0x1f08), VGA, Some(1), "nouveau")
        .device(
            "0000:01:00.1",
            (0x10de, 0x10f9),
            AUDIO,
            Some(1),
            "snd_hda_intel",
        )
}

fn plan(f: &Facts, opts: &Options) -> Planned {
    let sel = f.topology.iommu_enabled().then(|| {
        let req = Request {
            vendor: Some(0x10de),
            ..Request::default()
        };
        select::select(&f.topology, &Default::default(), &req, &f.protected).unwrap()
    });
    planner::plan(f, sel.as_ref(), opts).unwrap()
}

fn files(p: &Planned) -> Vec<(String, FileAction)> {
    p.plan
        .files
        .iter()
        .map(|c| (c.path.display().to_string(), c.action()))
        .collect()
}

fn commands(p: &Planned) -> Vec<String> {
    p.plan.commands.iter().map(|c| c.shell_line()).collect()
}

fn text(p: &Planned, path: &str) -> String {
    let c = p.plan.files.iter().find(|c| c.path.to_str() == Some(path));
    String::from_utf8(c.unwrap().after.clone().unwrap()).unwrap()
}

#[test]
fn each_stack_gets_its_files_and_its_commands() {
    use FileAction::*;
    let depmod = format!("depmod -a {KVER}");
    let dracut = format!("dracut --force /boot/initrd.img-{KVER} {KVER}");
    type Row<'a> = (&'a str, Facts, Vec<(&'a str, FileAction)>, Vec<&'a str>);
    let rows: Vec<Row> = vec![
        (
            "grub + initramfs-tools",
            nvidia(FactsBuilder::debian12()).build(),
            vec![
                ("/etc/default/grub", Modified),
                ("/etc/initramfs-tools/modules", Modified),
                ("/etc/modprobe.d/gpt-vfio.conf", Created),
            ],
            vec!["update-grub", &depmod, "update-initramfs -u -k all"],
        ),
        (
            "grub + dracut 106",
            nvidia(FactsBuilder::debian12()).dracut(false).build(),
            vec![
                ("/etc/default/grub", Modified),
                ("/etc/dracut.conf.d/gpt-vfio.conf", Created),
                ("/etc/modprobe.d/gpt-vfio.conf", Created),
            ],
            vec!["update-grub", &depmod, &dracut],
        ),
        (
            "grub + dracut 110 (its own update-initramfs)",
            nvidia(FactsBuilder::debian12()).dracut(true).build(),
            vec![
                ("/etc/default/grub", Modified),
                ("/etc/dracut.conf.d/gpt-vfio.conf", Created),
                ("/etc/modprobe.d/gpt-vfio.conf", Created),
            ],
            vec!["update-grub", &depmod, "update-initramfs -u -k all"],
        ),
        (
            "the IOMMU off: only its arguments",
            FactsBuilder::debian12()
                .device("0000:01:00.0", (0x10de, 0x1f08), VGA, None, "nouveau")
                .build(),
            vec![("/etc/default/grub", Modified)],
            vec!["update-grub"],
        ),
    ];
    let no_deps = Options {
        no_deps: true,
        ..Options::default()
    };
    for (name, facts, want_files, want_commands) in rows {
        let p = plan(&facts, &no_deps);
        let want: Vec<(String, FileAction)> = want_files
            .into_iter()
            .map(|(p, a)| (p.to_string(), a))
            .collect();
        assert_eq!(files(&p), want, "{name}");
        assert_eq!(commands(&p), want_commands, "{name}");
        assert!(p.plan.commands.iter().all(|c| c.regenerates), "{name}");
        assert_eq!(p.config.boot, facts.stack_id().unwrap(), "{name}");
    }
}

#[test]
fn the_arguments_and_modules_follow_the_devices_and_kernels() {
    let p = plan(
        &nvidia(FactsBuilder::debian12()).build(),
        &Options::default(),
    );
    assert_eq!(
        p.config.args,
        [
            "iommu=pt",
            "intel_iommu=on",
            "vfio-pci.ids=10de:1f08,10de:10f9",
            "kvm.ignore_msrs=1",
            "kvm.report_ignored_msrs=0"
        ]
    );
    assert_eq!(
        p.config.initramfs_modules,
        ["vfio", "vfio_iommu_type1", "vfio_virqfd", "vfio_pci"]
    );
    assert!(text(&p, "/etc/default/grub").contains("vfio-pci.ids=10de:1f08,10de:10f9"));
    let conf = text(&p, "/etc/modprobe.d/gpt-vfio.conf");
    assert!(conf.contains("softdep nouveau pre: vfio-pci"), "{conf}");
    assert!(
        conf.contains("softdep snd_hda_intel pre: vfio-pci"),
        "{conf}"
    );

    // Built in everywhere: nothing to load early, no image rebuild for it; on dracut no file.
    let p = plan(
        &nvidia(FactsBuilder::debian12())
            .dracut(false)
            .vfio_built_in()
            .build(),
        &Options::default(),
    );
    assert_eq!(p.config.initramfs_modules, ["vfio_virqfd"]);
    assert!(
        text(&p, "/etc/dracut.conf.d/gpt-vfio.conf").contains("force_drivers+=\" vfio_virqfd \"")
    );

    // --no-ignore-msrs, --no-update: the commands become the user's.
    let opts = Options {
        no_ignore_msrs: true,
        no_update: true,
        ..Options::default()
    };
    let p = plan(&nvidia(FactsBuilder::debian12()).build(), &opts);
    assert!(!p.config.args.iter().any(|a| a.starts_with("kvm.")));
    assert!(p.plan.commands.is_empty());
    assert_eq!(
        p.manual,
        [
            "update-grub".to_string(),
            format!("depmod -a {KVER}"),
            "update-initramfs -u -k all".into()
        ]
    );
}

#[test]
fn a_configured_host_plans_nothing() {
    let first = plan(
        &nvidia(FactsBuilder::debian12()).build(),
        &Options::default(),
    );
    let facts = nvidia(FactsBuilder::debian12())
        .configured(
            text(&first, "/etc/default/grub"),
            text(&first, "/etc/initramfs-tools/modules"),
            text(&first, "/etc/modprobe.d/gpt-vfio.conf"),
        )
        .build();
    let again = plan(&facts, &Options::default());
    assert!(again.plan.is_empty(), "{:?}", files(&again));
    assert_eq!(again.config, first.config);
}

#[test]
fn a_host_whose_stack_is_unknown_is_refused_before_anything_is_planned() {
    let mut facts = nvidia(FactsBuilder::debian12()).build();
    facts.probe.update_initramfs = false;
    facts.boot = Some(gpt::boot::detect(&facts.probe));
    let sel = select::select(
        &facts.topology,
        &Default::default(),
        &Request {
            vendor: Some(0x10de),
            ..Request::default()
        },
        &facts.protected,
    )
    .unwrap();
    let err = planner::plan(&facts, Some(&sel), &Options::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("no initramfs generator found"),
        "{err:#}"
    );
}

/// Packages: only what the boot configuration needs is installed by default (kmod); the VM
/// tools are suggested, installed with --vm-tools, and never on Proxmox VE or where a package
/// that provides QEMU is installed.
#[test]
fn only_what_the_configuration_needs_is_installed_and_never_vm_tools_on_proxmox() {
    let with = |pkgs: &[&str]| {
        let mut f = nvidia(FactsBuilder::debian12()).build();
        f.dpkg_status_found = true;
        f.installed_packages = pkgs.iter().map(|s| s.to_string()).collect();
        f
    };
    let installs = |p: &gpt::planner::Planned| -> Vec<String> {
        p.plan
            .commands
            .iter()
            .filter(|c| c.argv.iter().any(|a| a == "install"))
            .flat_map(|c| c.argv.iter().skip_while(|a| *a != "-q").skip(1).cloned())
            .collect()
    };
    let debian = with(&["initramfs-tools", "grub2-common"]);
    let p = plan(&debian, &Options::default());
    assert_eq!(installs(&p), ["kmod"]);
    assert!(
        p.notes.iter().any(|n| n.contains("sudo apt-get install qemu-system-x86") && n.contains("--vm-tools")),
        "{:?}",
        p.notes
    );
    let vm = Options {
        vm_tools: true,
        ..Options::default()
    };
    let p = plan(&with(&["kmod", "initramfs-tools"]), &vm);
    assert!(
        installs(&p).contains(&"qemu-system-x86".to_string()),
        "{:?}",
        installs(&p)
    );
    // Proxmox VE: its own QEMU; nothing of the VM toolset, with the flag or without.
    let pve = with(&[
        "kmod",
        "pve-manager",
        "pve-qemu-kvm",
        "proxmox-kernel-helper",
    ]);
    for opts in [Options::default(), vm] {
        let p = plan(&pve, &opts);
        assert!(installs(&p).is_empty(), "{:?}", installs(&p));
        assert!(
            !p.notes.iter().any(|n| n.contains("apt-get install")),
            "{:?}",
            p.notes
        );
    }
    assert!(plan(
        &pve,
        &Options {
            vm_tools: true,
            ..Options::default()
        }
    )
    .notes
    .iter()
    .any(|n| n.contains("Proxmox VE brings its own QEMU (pve-qemu-kvm)")));
}
