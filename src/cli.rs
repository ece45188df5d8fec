//! The command line: what each subcommand takes. Parsing only; the work is in `cmd`.

use crate::model::Choice;
pub use crate::model::Distro;
pub use crate::refusal::UsageError;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "gpt",
    version,
    about = "Prepare a Debian or Ubuntu host for GPU passthrough (VFIO), and undo it exactly",
    long_about = "Prepare a Debian or Ubuntu host for GPU passthrough (VFIO), and undo it exactly.\n\n\
        gpt finds the GPU, takes every function of its IOMMU group, and configures the kernel \
        command line, the initramfs and modprobe.d so that vfio-pci claims them on the next boot. \
        Every change is journalled; `gpt reset` puts the host back byte for byte.\n\n\
        Typical use: `sudo gpt full nvidia --dry-run`, then `sudo gpt full nvidia`, reboot, \
        `gpt check`, `gpt qemu`. Undo with `sudo gpt reset`.",
    after_help = "Exit status: 0 success, 1 failure or refusal, 2 usage error."
)]
pub struct Cli {
    /// Work on the host tree under DIR instead of this machine (paths and symlinks stay inside it)
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Print exactly one JSON document on stdout; human messages go to stderr
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configure the host so the GPU and its IOMMU group go to vfio-pci on the next boot
    #[command(
        long_about = "Configure the host so the GPU and every function of its IOMMU group are \
            bound to vfio-pci on the next boot.\n\n\
            Puts the IOMMU arguments and vfio-pci.ids where the boot loader reads them (GRUB: \
            /etc/default/grub; the ids live only on the kernel command line: removing \
            vfio-pci.ids= at the boot menu gives the GPU back), the vfio modules where the \
            initramfs generator reads them (initramfs-tools: /etc/initramfs-tools/modules; \
            dracut: /etc/dracut.conf.d/gpt-vfio.conf), writes /etc/modprobe.d/gpt-vfio.conf, \
            installs kmod if it is missing (the VM tools with --vm-tools), then regenerates the boot files (update-grub, depmod, the \
            initramfs rebuild) and verifies them. Shows the plan and asks first; --dry-run only \
            shows it.\n\n\
            When the IOMMU is off, a first run adds only the IOMMU arguments; reboot and run the \
            same command again."
    )]
    Full(FullArgs),
    /// Undo what `gpt full` did, byte for byte, keeping edits made since
    Reset(ResetArgs),
    /// List IOMMU groups with device names, ids and the driver in use
    Iommu(IommuArgs),
    /// After the reboot: check that passthrough is ready (PASS/WARN/FAIL per check)
    Check(CheckArgs),
    /// Print a QEMU command line (or libvirt XML) that passes the configured GPU to a VM
    Qemu(QemuArgs),
    /// Read a card's ROM (video BIOS), check it and save a clean copy; or check a ROM file
    #[command(
        long_about = "Read the expansion ROM (video BIOS) of a PCI function from sysfs, list its \
            images (code type, ids, length, last-image bit, checksum), check each against the \
            function's own ids, and save it only when it is a clean chain for this card: by \
            default to /var/lib/gpt/rom/VENDOR-DEVICE-SUBVENDOR-SUBDEVICE.rom, for QEMU's \
            romfile= (`gpt qemu --rom FILE`). Read only: gpt never writes a ROM to a card.\n\n\
            With --check FILE, the same checks for a file from elsewhere: a flash tool's header \
            before the first image is found and a copy without it is written beside the file \
            (FILE.stripped.rom); --device ADDR refuses a file for another card.\n\n\
            FILE paths are this machine's, as given (not under --root)."
    )]
    Rom(RomArgs),
    /// Hand a card to vfio-pci now, without a reboot, until `gpt unbind` or the next boot
    #[command(
        long_about = "Hand a card to vfio-pci now, without a reboot: every function of the card \
            (and of its IOMMU group), selected and refused as by `gpt full`, goes to vfio-pci \
            until `gpt unbind` or the next boot. The card that shows the console or a display \
            is refused, and so is a card a process holds open (named with its pid). Per \
            function: driver_override, unbind, probe, and the driver read back; a write that \
            does not return within --timeout is reported and the functions already moved are \
            handed back. The original drivers are journalled in /run/gpt/bind.json."
    )]
    Bind(BindArgs),
    /// Give a card back to its host drivers, without a reboot
    #[command(
        long_about = "Give a card back to the drivers it had before `gpt bind` (from the \
            journal in /run/gpt/bind.json, also after a crash), or a card that `gpt full` \
            configured to its host driver for this boot only. Without VENDOR or --device: \
            everything `gpt bind` bound. Each function is verified on its driver afterwards."
    )]
    Unbind(BindArgs),
    /// Give the host's only GPU to a libvirt VM while it runs, and take it back when it stops
    #[command(
        name = "single-gpu",
        long_about = "Single-GPU mode: the desktop runs on the host's only GPU until a chosen \
            libvirt VM starts; the VM gets the card, and the desktop comes back when it stops. \
            `enable VM` checks the host can do it (the card is the only display, every function \
            can be reset, libvirt 6.5 or later, a way in over SSH or a serial console) and \
            installs one hook file in /etc/libvirt/hooks/qemu.d/, journalled (`disable VM` or \
            `gpt reset` removes it). The hook runs gpt, never virsh: `release` when the VM \
            starts (stop the display manager, wait until nothing holds the card, unbind fbcon, \
            hand every function to vfio-pci; any failure hands everything back and stops the \
            start) and `restore` when it has stopped."
    )]
    SingleGpu(SingleGpuArgs),
    /// Internal: write VALUE to the sysfs attribute PATH (inside --root), as `echo VALUE >
    /// PATH`. gpt runs it as a child it can abandon when a driver never returns from the write.
    #[command(name = "__sysfs-write", hide = true)]
    SysfsWrite(SysfsWriteArgs),
    /// Internal: read the ESPs proxmox-boot-tool manages, each mounted read-only, and print
    /// what boots from them as JSON. gpt runs it itself in a private mount namespace
    /// (`unshare --mount --propagation private`); it refuses to mount anything in the
    /// namespace of the gpt that started it.
    #[command(name = "__read-esps", hide = true)]
    ReadEsps(ReadEspsArgs),
    /// Print a shell completion script on stdout
    #[command(
        long_about = "Print a completion script for SHELL on stdout, generated from gpt's own \
            command line. Install it for bash with \
            `gpt completions bash | sudo tee /etc/bash_completion.d/gpt`."
    )]
    Completions(CompletionsArgs),
    /// Print the manual page of gpt, or of one of its commands, on stdout (roff)
    #[command(
        long_about = "Print the manual page of gpt (gpt.1), or of one of its commands \
            (gpt-full.1, ...), on stdout in roff, generated from gpt's own command line. Read \
            it with `gpt man | man -l -`; install it with \
            `gpt man | sudo tee /usr/local/share/man/man1/gpt.1`."
    )]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A command of gpt (full, reset, iommu, check, qemu, rom, completions, man) for its own page
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// The boot loader `--boot-loader` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootLoader {
    Grub,
    SystemdBoot,
    Proxmox,
    Kernelstub,
}

impl BootLoader {
    pub fn choice(self) -> Choice {
        match self {
            BootLoader::Grub => Choice::Grub,
            BootLoader::SystemdBoot => Choice::SystemdBoot,
            BootLoader::Proxmox => Choice::Proxmox,
            BootLoader::Kernelstub => Choice::Kernelstub,
        }
    }
}

#[derive(Debug, Args)]
pub struct FullArgs {
    /// GPU vendor: nvidia, amd, intel (any case) or a 4-digit hex vendor id such as 10de
    #[arg(value_name = "VENDOR")]
    pub vendor: Option<String>,

    /// The distribution: debian or ubuntu (default: from /etc/os-release); alone when
    /// --device picks the GPU
    #[arg(value_name = "DISTRO")]
    pub distro: Option<String>,

    /// Select a GPU by PCI address (0000:02:00.0 or 02:00.0); repeatable
    #[arg(long = "device", value_name = "ADDR")]
    pub devices: Vec<String>,

    /// Take every GPU of the vendor when there are several
    #[arg(long)]
    pub all: bool,

    /// Print the plan (a diff of every file, the commands) and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Apply without asking
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Do not install missing packages
    #[arg(long)]
    pub no_deps: bool,

    /// Also install the tools to run the VM (QEMU, OVMF, virtinst and the like); never on Proxmox VE,
    /// whose own QEMU they would fight
    #[arg(long)]
    pub vm_tools: bool,

    /// Do not run update-grub, update-initramfs and depmod; print what to run instead
    #[arg(long)]
    pub no_update: bool,

    /// Override refusals that are safe to override (shared IOMMU group, headless host, non-GPU
    /// device); gpt lists every device it then takes from the host. Never a bridge, a host
    /// bridge's group on a driver, the root disk or the network the host is reached by
    #[arg(long)]
    pub force: bool,

    /// Pass only the GPU's IOMMU group: functions of the card in groups of their own (HDMI
    /// audio, USB-C and its UCSI controller on many RX 6000/7000 boards) stay on the host.
    /// By default gpt takes every function of the card, each of its groups checked like the GPU's
    #[arg(long)]
    pub gpu_group_only: bool,

    /// Leave out kvm.ignore_msrs=1 kvm.report_ignored_msrs=0
    #[arg(long)]
    pub no_ignore_msrs: bool,

    /// Keep idle vfio-pci devices in D0 (options vfio-pci disable_idle_d3=1), for cards that
    /// do not wake from D3cold; takes effect after the reboot
    #[arg(long)]
    pub no_idle_d3: bool,

    /// The boot loader that boots this host, when gpt cannot tell (GRUB and systemd-boot both
    /// installed, and no LoaderInfo EFI variable)
    #[arg(long, value_enum, value_name = "LOADER")]
    pub boot_loader: Option<BootLoader>,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Print what would be undone and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Apply without asking
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Do not run update-grub, update-initramfs and depmod; print what to run instead
    #[arg(long)]
    pub no_update: bool,

    /// Also remove what the old setup.sh left behind (asks for each one unless --yes)
    #[arg(long)]
    pub legacy: bool,

    /// The boot loader that boots this host, when gpt cannot tell (GRUB and systemd-boot both
    /// installed, and no LoaderInfo EFI variable)
    #[arg(long, value_enum, value_name = "LOADER")]
    pub boot_loader: Option<BootLoader>,
}

#[derive(Debug, Args)]
pub struct IommuArgs {
    /// Only groups that hold a GPU (display controller, class 03xx)
    #[arg(long)]
    pub gpu: bool,

    /// Only this group
    #[arg(long, value_name = "N")]
    pub group: Option<u32>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The boot loader that boots this host, when gpt cannot tell (GRUB and systemd-boot both
    /// installed, and no LoaderInfo EFI variable)
    #[arg(long, value_enum, value_name = "LOADER")]
    pub boot_loader: Option<BootLoader>,
}

#[derive(Debug, Args)]
pub struct QemuArgs {
    /// The GPU to pass (default: the one `gpt full` configured); repeatable
    #[arg(long = "device", value_name = "ADDR")]
    pub devices: Vec<String>,

    /// Print libvirt <hostdev> XML instead of a QEMU command line
    #[arg(long)]
    pub libvirt: bool,

    /// With --libvirt: the XML for single-GPU mode (`gpt single-gpu enable`), the host's only
    /// GPU with every function of its card; managed='yes' (libvirt hands the card back, gpt
    /// checks) or, with --unmanaged, managed='no' (gpt does both ways)
    #[arg(long, requires = "libvirt")]
    pub single_gpu: bool,

    /// With --single-gpu: managed='no'
    #[arg(long, requires = "single_gpu")]
    pub unmanaged: bool,

    /// Give the GPU this ROM file (romfile=FILE, or <rom file='FILE'/> with --libvirt), checked first: a clean chain
    /// for the GPU's ids, starting at the image (`gpt rom` saves one)
    #[arg(long, value_name = "FILE")]
    pub rom: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RomArgs {
    /// The PCI function whose ROM to read (0000:02:00.0 or 02:00.0)
    #[arg(
        value_name = "ADDR",
        required_unless_present = "check",
        conflicts_with = "check"
    )]
    pub address: Option<String>,

    /// Save the ROM to FILE instead of /var/lib/gpt/rom/VENDOR-DEVICE-SUBVENDOR-SUBDEVICE.rom
    #[arg(long, value_name = "FILE", conflicts_with = "check")]
    pub out: Option<PathBuf>,

    /// Check a ROM file instead of reading a card's; a header before the first image is
    /// stripped into FILE.stripped.rom
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,

    /// With --check: the card the file must be for
    #[arg(
        long = "device",
        value_name = "ADDR",
        requires = "check",
        conflicts_with = "address"
    )]
    pub device: Option<String>,

    /// Read the ROM even while a driver other than vfio-pci uses the card
    #[arg(long, conflicts_with = "check")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BindArgs {
    /// GPU vendor: nvidia, amd, intel (any case) or a 4-digit hex vendor id such as 10de
    #[arg(value_name = "VENDOR")]
    pub vendor: Option<String>,

    /// Select a GPU by PCI address (0000:02:00.0 or 02:00.0); repeatable
    #[arg(long = "device", value_name = "ADDR")]
    pub devices: Vec<String>,

    /// Print the steps and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Apply without asking
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Seconds one sysfs write may take before gpt gives up on it (a driver that does not let
    /// go of the card)
    #[arg(long, value_name = "SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct SingleGpuArgs {
    #[command(subcommand)]
    pub action: SingleGpuAction,
}

#[derive(Debug, Subcommand)]
pub enum SingleGpuAction {
    /// Check the host and install the libvirt hook for domain VM
    Enable(SingleGpuEnable),
    /// Remove the libvirt hook for domain VM
    Disable(SingleGpuDisable),
    /// Run by the hook when VM starts (`prepare begin`): take the card from the host
    Release(SingleGpuHook),
    /// Run by the hook when VM has stopped (`release end`): give the card back to the host
    Restore(SingleGpuHook),
}

#[derive(Debug, Args)]
pub struct SingleGpuEnable {
    /// The libvirt domain (VM) that gets the GPU
    #[arg(value_name = "VM")]
    pub vm: String,

    /// The GPU, by PCI address (default: the host's only display controller)
    #[arg(long = "device", value_name = "ADDR")]
    pub device: Option<String>,

    /// A unit to stop besides display-manager.service when the VM starts (a session's
    /// compositor, pipewire), started again when it stops; USER/UNIT for a unit of that
    /// user's own manager (alice/pipewire.service); repeatable
    #[arg(long = "also-stop", value_name = "UNIT")]
    pub also_stop: Vec<String>,

    /// Seconds each wait and each sysfs write may take in the hook
    #[arg(long, value_name = "SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,

    /// Print the hook file as a diff and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Apply without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct SingleGpuDisable {
    /// The libvirt domain (VM) whose hook to remove
    #[arg(value_name = "VM")]
    pub vm: String,

    /// Print the removal as a diff and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Apply without asking
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct SingleGpuHook {
    /// The libvirt domain (VM); its XML is read from standard input, and nothing is done
    /// unless it holds the card
    #[arg(value_name = "VM")]
    pub vm: String,

    /// The GPU's display function
    #[arg(long = "device", value_name = "ADDR", required = true)]
    pub device: String,

    /// A unit to stop (release) or start (restore) besides display-manager.service (USER/UNIT:
    /// that user's unit)
    #[arg(long = "also-stop", value_name = "UNIT")]
    pub also_stop: Vec<String>,

    /// Seconds each wait and each sysfs write may take
    #[arg(long, value_name = "SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct SysfsWriteArgs {
    /// The attribute, as a path on the host (`/sys/bus/pci/drivers_probe`)
    pub path: String,
    /// What to write (a newline is added)
    pub value: String,
}

#[derive(Debug, Args)]
pub struct ReadEspsArgs {
    /// The ESPs, by file system UUID (`/dev/disk/by-uuid/UUID`)
    #[arg(value_name = "UUID")]
    pub uuids: Vec<String>,
}
