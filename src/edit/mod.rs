//! Pure file editors: each edit is `fn(&str, …) -> Result<String>` with an exact reverse.
//!
//! No I/O happens here. Every editor keeps each byte it does not own (comments, other
//! tokens, quoting style, CRLF line endings, a missing final newline), and
//! `reverse(apply(x)) == x` byte for byte, `apply(apply(x)) == apply(x)`.
//!
//! - [`cmdline`]: kernel command-line tokens (split, key, value).
//! - [`grub`]: `/etc/default/grub` and `/etc/default/grub.d/*.cfg` (a shell file).
//! - [`modules`]: `/etc/initramfs-tools/modules`, plus clean-up helpers for the old setup.sh.
//! - [`modprobe`]: gpt's own `/etc/modprobe.d/gpt-vfio.conf`.
//! - [`dracut`]: gpt's own `/etc/dracut.conf.d/gpt-vfio.conf`.
//! - [`early`]: gpt's early binding step in the initramfs (init-top script, dracut hook).

pub mod cmdline;
pub mod dracut;
pub mod early;
pub mod grub;
pub mod kernel_cmdline;
pub mod modprobe;
pub mod modules;

mod text;
