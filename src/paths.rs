//! Every well-known path gpt reads or writes, as on the target host, defined once. A [`Host`]
//! (`crate::host::Host`) puts them under its root.

/// GRUB's settings, and the snippets sourced after it (`*.cfg`, in name order).
pub const GRUB_DEFAULT: &str = "/etc/default/grub";
pub const GRUB_D: &str = "/etc/default/grub.d";
/// What update-grub generates: the boot entries GRUB reads.
pub const GRUB_CFG: &str = "/boot/grub/grub.cfg";
/// initramfs-tools' configuration and its list of modules loaded early.
pub const INITRAMFS_TOOLS: &str = "/etc/initramfs-tools";
pub const INITRAMFS_MODULES: &str = "/etc/initramfs-tools/modules";
/// dracut's configuration snippets (only `*.conf` are read).
pub const DRACUT_CONF_D: &str = "/etc/dracut.conf.d";
/// gpt's own dracut snippet: the vfio modules forced into the image.
pub const DRACUT_CONF: &str = "/etc/dracut.conf.d/gpt-vfio.conf";
/// gpt's early binding step on initramfs-tools: an `init-top` script from /etc, which
/// mkinitramfs copies into the image. Its name sorts before `udev`: see
/// `crate::boot::initramfs_tools`.
pub const INITRAMFS_EARLY: &str = "/etc/initramfs-tools/scripts/init-top/gpt-vfio";
/// gpt's early binding step on dracut: a module of its own (dracut reads modules only from
/// here), added by gpt's dracut.conf.d file, whose `module-setup.sh` installs the hook as a
/// `pre-udev` hook.
pub const DRACUT_EARLY_DIR: &str = "/usr/lib/dracut/modules.d/90gpt-vfio";
pub const DRACUT_EARLY_SETUP: &str = "/usr/lib/dracut/modules.d/90gpt-vfio/module-setup.sh";
pub const DRACUT_EARLY_HOOK: &str = "/usr/lib/dracut/modules.d/90gpt-vfio/gpt-vfio.sh";
/// Every file of gpt's early binding step, of every generator (the reader reads them all).
pub const EARLY_FILES: [&str; 3] = [INITRAMFS_EARLY, DRACUT_EARLY_SETUP, DRACUT_EARLY_HOOK];
pub const MODPROBE_D: &str = "/etc/modprobe.d";
/// gpt's own modprobe.d file: softdeps (and the bind-by-address hook).
pub const MODPROBE_CONF: &str = "/etc/modprobe.d/gpt-vfio.conf";
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
pub const MODULES_DIR: &str = "/lib/modules";
pub const BOOT: &str = "/boot";
pub const OS_RELEASE: &str = "/etc/os-release";
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// gpt's state: the configuration and the journal.
pub const STATE_DIR: &str = "/var/lib/gpt";
pub const STATE_FILE: &str = "/var/lib/gpt/state.json";
/// The old setup.sh's backup of the grub file.
pub const GRUB_BAK: &str = "/etc/default/grub.bak";

/// The initramfs image of kernel `kver` on Debian and Ubuntu.
pub fn initrd(kver: &str) -> String {
    format!("{BOOT}/initrd.img-{kver}")
}
