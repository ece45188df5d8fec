//! The boot stack: the one place that knows, for the host's boot loader and initramfs
//! generator, which file holds the kernel arguments and how it is edited, which file lists the
//! early modules, which commands regenerate the boot files (in their order), how to verify
//! that they carry gpt's configuration, and the rescue printed to the user.
//!
//! Commands hold a [`Stack`] (a [`Loader`] and a [`Generator`]) and never a concrete one. A new
//! boot loader or initramfs generator is one new file here implementing one of the traits, one
//! variant of [`LoaderKind`] or [`InitramfsKind`], and one rule in [`crate::facts::detect`].

pub mod dracut;
pub mod grub;
pub mod initramfs_tools;
pub mod kernelstub;
pub mod proxmox;
pub mod systemd_boot;

use crate::edit::early::EarlyBind;
use crate::facts::Facts;
use crate::host::Host;
use crate::model::BindMode;
use crate::plan::{FileChange, Step};
use crate::runner::Runner;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub use crate::facts::detect::{detect, Probe};
pub use crate::model::{Choice, InitramfsKind, LoaderKind, StackId};

/// The change to the file that holds the kernel arguments.
#[derive(Debug, Clone)]
pub struct ArgsEdit {
    pub change: FileChange,
    /// The file and the setting in it that carry gpt's arguments (kept in the configuration).
    pub file: String,
    pub setting: String,
    /// What a person should know about where the arguments went.
    pub notes: Vec<String>,
}

/// What the regenerated boot entries say about a set of arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entries {
    /// Some entry carries every argument.
    Carry,
    /// No entry carries all of them: what the closest entry lacks.
    Lack(Vec<String>),
    /// The entries cannot be read: why.
    Unreadable(String),
    /// The entries are out of gpt's reach by design (on ESPs that are not mounted): what to
    /// do to see them.
    Unchecked(String),
}

/// A boot loader: where the kernel arguments are configured and how they reach the boot
/// entries.
pub trait Loader: Sync {
    fn kind(&self) -> LoaderKind;
    /// Every kernel argument the host's configuration gives, gpt's own ones left out.
    fn user_args(&self, f: &Facts) -> Result<Vec<String>>;
    /// Refuse an argument file the loader cannot edit, before anything else is decided.
    fn validate(&self, _f: &Facts) -> Result<()> {
        Ok(())
    }
    /// The edit that takes gpt's earlier arguments out and adds `add`.
    fn edit_args(&self, f: &Facts, add: &[String]) -> Result<ArgsEdit>;
    /// Whether `path` is one of the files that hold the kernel arguments.
    fn owns(&self, path: &Path) -> bool;
    /// The files that can carry gpt's arguments (reset looks for gpt's marks in them).
    fn files(&self, host: &Host) -> Result<Vec<PathBuf>>;
    /// Whether `text` (one of [`Loader::files`]) carries gpt's marks.
    fn has_marks(&self, text: &str) -> bool;
    /// `text` without gpt's arguments and marks.
    fn strip(&self, path: &Path, text: &str) -> Result<String>;
    /// `text` without gpt's arguments, given the ones gpt added (from its journal): for a
    /// file that can hold no mark of gpt's.
    fn strip_args(&self, path: &Path, text: &str, _added: &[String]) -> Result<String> {
        self.strip(path, text)
    }
    /// The commands that regenerate the boot entries, in order.
    fn regenerate(&self, f: &Facts) -> Vec<Step>;
    /// Whether the entries carry copies of the initramfs images: their regeneration then
    /// follows every rebuild of the images.
    fn copies_images(&self) -> bool {
        false
    }
    /// What a person runs to regenerate the entries (`sudo update-grub`).
    fn regenerate_hint(&self) -> String;
    /// Where the boot entries are, for messages (`/boot/grub/grub.cfg`).
    fn entries_name(&self) -> String;
    /// Whether the boot entries carry every one of `args`.
    fn entries(&self, host: &Host, f: &Facts, args: &[String]) -> Entries;
    /// Inside the transaction, after the regeneration: the entries that boot carry every one
    /// of `want` and none of `gone`, or an error that rolls the run back (a regeneration that
    /// silently did nothing). Loaders whose entries are checked after the run say `Ok`.
    fn confirm(&self, _host: &Host, _f: &Facts, _want: &[String], _gone: &[String]) -> Result<()> {
        Ok(())
    }
    /// Whether the argument file carries gpt's marks (so reset can work without the journal).
    fn marks_in_file(&self) -> bool {
        true
    }
    /// The file the kernel arguments are configured in, for messages.
    fn entries_source(&self) -> String {
        "the boot loader's configuration".into()
    }
    /// Whether the regeneration rewrites the argument file itself (kernelstub): gpt then
    /// writes its own bytes back after it.
    fn rewritten_by_regeneration(&self) -> bool {
        false
    }
    /// The tool that reads `/proc/cmdline` instead when the argument file gpt created is
    /// gone (`kernel-install`), if there is one: removing that file must then wait until the
    /// entries were regenerated from the cleaned file, since `/proc/cmdline` holds gpt's
    /// arguments while the host runs with them.
    fn falls_back_to_proc_cmdline(&self) -> Option<&'static str> {
        None
    }
    /// Entries of installed kernels that the regeneration leaves as they are, with whatever
    /// options they had (systemd-boot's boot counting: the entries of earlier installs), by
    /// path; `planned`: asked before the regeneration, so every entry but the one it writes.
    fn stale_entries(&self, _host: &Host, _f: &Facts, _planned: bool) -> Vec<String> {
        Vec::new()
    }
    /// The boot entries whose command line has a token with parameter name `key` (`_`
    /// spelling); `None` when this loader does not tell.
    fn carrying(&self, _host: &Host, _f: &Facts, _key: &str) -> Option<Vec<String>> {
        None
    }
    /// How to boot once without gpt's configuration, from the boot menu.
    fn rescue(&self, bind: BindMode) -> String;
    /// The rescue for this host (a loader whose menu can be locked says what to do then).
    fn rescue_on(&self, _f: &Facts, bind: BindMode) -> String {
        self.rescue(bind)
    }
}

/// An initramfs generator: which file lists the early modules, how the images are rebuilt and
/// how their content is listed.
pub trait Generator: Sync {
    fn kind(&self) -> InitramfsKind;
    /// The change to the generator's early-modules file that lists exactly `modules` as gpt's
    /// (`None`: this generator needs no file for them); `early`: gpt's early binding step is
    /// configured too (a generator that enables it in that file does so).
    fn edit_modules(
        &self,
        f: &Facts,
        modules: &[String],
        early: bool,
    ) -> Result<Option<FileChange>>;
    /// The changes that make exactly `early` run in the initramfs before udev (`None`: no
    /// step; gpt's files of an earlier run go).
    fn edit_early(&self, f: &Facts, early: Option<&EarlyBind>) -> Result<Vec<FileChange>>;
    /// The files of the early step, as on the host (the facts read them; reset looks for
    /// them).
    fn early_files(&self) -> Vec<&'static str>;
    /// How the early step runs, for the plan ("an init-top script, before udev").
    fn early_how(&self) -> &'static str;
    /// The end of the path the early step has in an image's file list.
    fn early_in_image(&self) -> &'static str;
    /// Whether `path` is the generator's early-modules file or a file of its early step.
    fn owns(&self, path: &Path) -> bool;
    /// The files that can carry gpt's modules (reset looks for gpt's marks in them).
    fn files(&self, host: &Host) -> Result<Vec<PathBuf>>;
    fn has_marks(&self, text: &str) -> bool;
    /// `text` without gpt's modules (`None`: the file is gpt's and goes).
    fn strip(&self, path: &Path, text: &str) -> Result<Option<String>>;
    /// Files whose content goes into the images (an image older than one of them is stale).
    fn inputs(&self) -> Vec<&'static str>;
    /// The commands that rebuild every installed kernel's image, in order.
    fn regenerate(&self, f: &Facts) -> Vec<Step>;
    /// What a person runs to rebuild the images.
    fn regenerate_hint(&self) -> String;
    /// The image of kernel `kver`, as on the host.
    fn image(&self, host: &Host, kver: &str) -> String;
    /// The images present under /boot, as on the host.
    fn images(&self, host: &Host) -> Vec<String>;
    /// The file list of one image.
    fn list(&self, runner: &Runner, image: &str) -> Result<String>;
}

/// The file list of `image` by `lister` (`lsinitramfs`, `lsinitrd`). On this machine, its
/// lister as usual; under `--root`, this machine's own lister on the image opened inside the
/// root, never the tree's (a read-only command executes nothing from a tree). A lister that
/// fails, or is missing, is an error: what the image holds could not be told.
pub fn list_image(runner: &Runner, lister: &str, image: &str) -> Result<String> {
    let host = runner.host();
    let c = if host.is_real_root() {
        runner.query(&[lister, image])?
    } else {
        let file = host
            .open_read(image)
            .map_err(|e| crate::ioerr::error("open", Path::new(image), &e))?;
        runner.query_own_on(lister, &file)?
    };
    if !c.status.success() {
        let err = String::from_utf8_lossy(&c.stderr);
        let tail = err.trim().lines().last().unwrap_or("").to_string();
        anyhow::bail!("`{lister}` failed ({}): {tail}", c.status);
    }
    Ok(c.stdout_str())
}

/// Every loader gpt knows (reset looks for gpt's marks in all of their files).
pub fn loaders() -> Vec<&'static dyn Loader> {
    vec![
        &grub::Grub,
        &systemd_boot::SystemdBoot,
        &proxmox::Proxmox,
        &kernelstub::Kernelstub,
    ]
}

/// Every generator gpt knows.
pub fn generators() -> Vec<&'static dyn Generator> {
    vec![&initramfs_tools::InitramfsTools, &dracut::Dracut]
}

/// The host's boot stack.
#[derive(Clone, Copy)]
pub struct Stack {
    pub loader: &'static dyn Loader,
    pub initramfs: &'static dyn Generator,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stack({:?})", self.id())
    }
}

impl Stack {
    /// The stack the facts found, or why gpt cannot tell (nothing was changed).
    pub fn of_facts(f: &Facts) -> Result<Stack> {
        Ok(Stack::of(f.stack_id()?))
    }

    pub fn of(id: StackId) -> Stack {
        let loader: &'static dyn Loader = match id.loader {
            LoaderKind::Grub => &grub::Grub,
            LoaderKind::SystemdBoot => &systemd_boot::SystemdBoot,
            LoaderKind::Proxmox => &proxmox::Proxmox,
            LoaderKind::Kernelstub => &kernelstub::Kernelstub,
        };
        let initramfs: &'static dyn Generator = match id.initramfs {
            InitramfsKind::InitramfsTools => &initramfs_tools::InitramfsTools,
            InitramfsKind::Dracut => &dracut::Dracut,
        };
        Stack { loader, initramfs }
    }

    pub fn id(&self) -> StackId {
        StackId {
            loader: self.loader.kind(),
            initramfs: self.initramfs.kind(),
        }
    }

    /// Whether a change to `path` means the boot entries must be regenerated.
    pub fn is_args_file(&self, path: &Path) -> bool {
        self.loader.owns(path)
    }

    /// Whether a change to `path` means the images must be rebuilt.
    pub fn is_initramfs_input(&self, path: &Path) -> bool {
        self.initramfs.inputs().iter().any(|i| Path::new(i) == path) || self.initramfs.owns(path)
    }

    /// The regeneration commands, each once, in the stack's order: the boot entries when the
    /// arguments changed, the images when their inputs changed.
    pub fn regenerate(&self, f: &Facts, args: bool, initramfs: bool) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.loader.copies_images() {
            // The entries get copies of the images: the images first, then the entries, also
            // when only the images changed.
            if initramfs {
                steps.extend(self.initramfs.regenerate(f));
            }
            if args || initramfs {
                steps.extend(self.loader.regenerate(f));
            }
        } else {
            if args {
                steps.extend(self.loader.regenerate(f));
            }
            if initramfs {
                steps.extend(self.initramfs.regenerate(f));
            }
        }
        for s in &mut steps {
            s.regenerates = true;
        }
        steps
    }

    /// The images of `kernels` that do not hold `module` (each with why), skipping kernels
    /// that build it in.
    pub fn images_lacking(
        &self,
        host: &Host,
        runner: &Runner,
        kernels: &[crate::facts::Kernel],
        module: &str,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for k in kernels {
            if k.builtin.contains(module) {
                continue;
            }
            let image = self.initramfs.image(host, &k.version);
            match self.initramfs.list(runner, &image) {
                Ok(list) if image_holds(&list, module) => {}
                Ok(_) => problems.push(format!(
                    "{image} does not contain {module}: it will load too late to claim the GPU; run `{}` and reboot",
                    self.initramfs.regenerate_hint()
                )),
                Err(e) => problems.push(format!("could not list {image}: {e:#}")),
            }
        }
        problems
    }

    /// The images of `kernels` that do not hold gpt's early binding step (each with why).
    pub fn images_lacking_early(
        &self,
        host: &Host,
        runner: &Runner,
        kernels: &[crate::facts::Kernel],
    ) -> Vec<String> {
        let end = self.initramfs.early_in_image();
        let mut problems = Vec::new();
        for k in kernels {
            let image = self.initramfs.image(host, &k.version);
            match self.initramfs.list(runner, &image) {
                Ok(list) if list.lines().any(|l| l.trim_end().ends_with(end)) => {}
                Ok(_) => problems.push(format!(
                    "{image} does not contain gpt's early binding step ({end}); run `{}` and reboot",
                    self.initramfs.regenerate_hint()
                )),
                Err(e) => problems.push(format!("could not list {image}: {e:#}")),
            }
        }
        problems
    }

    /// After the regeneration: the entries carry `args`, each image holds vfio_pci.
    pub fn verify(
        &self,
        host: &Host,
        runner: &Runner,
        f: &Facts,
        args: &[String],
        check_images: bool,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        match self.loader.entries(host, f, args) {
            Entries::Carry => {}
            Entries::Lack(missing) => problems.push(format!(
                "the regenerated {} has no entry carrying {}; check {} and run `{}`",
                self.loader.entries_name(),
                missing.join(" "),
                self.loader.kind().name(),
                self.loader.regenerate_hint()
            )),
            Entries::Unreadable(why) => problems.push(why),
            Entries::Unchecked(_) => {}
        }
        if check_images {
            problems.extend(self.images_lacking(host, runner, &f.kernels, crate::facts::VFIO_PCI));
        }
        problems
    }
}

/// The change of one file of the early step (`after`: its content, `None`: no file), created
/// with `mode`; refused when a file gpt did not write has its name.
pub(crate) fn early_change(
    f: &Facts,
    path: &str,
    after: Option<String>,
    mode: u32,
) -> Result<FileChange> {
    let before = f.early_files.get(path).cloned();
    if let Some(b) = &before {
        if !crate::edit::early::is_gpt_script(&String::from_utf8_lossy(b)) {
            anyhow::bail!(
                "{path} exists and was not written by gpt; move it aside and run this again"
            );
        }
    }
    let mut c = FileChange::new(path, before, after.map(String::into_bytes));
    c.new_mode = mode;
    Ok(c)
}

/// Whether an image's file list holds the module (`…/vfio-pci.ko`, `…/vfio_pci.ko.zst`).
pub fn image_holds(list: &str, module: &str) -> bool {
    list.lines().any(|l| {
        let base = l.trim().rsplit('/').next().unwrap_or_default();
        crate::facts::module_name(base).is_some_and(|m| m == module)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_hold_a_module_under_either_spelling_and_any_compression() {
        let list = "usr/lib/modules/6.1.0-13-amd64/kernel/drivers/vfio/pci/vfio-pci.ko\n";
        assert!(image_holds(list, "vfio_pci"));
        assert!(image_holds(
            "lib/modules/6.12/kernel/drivers/vfio/pci/vfio_pci.ko.xz",
            "vfio_pci"
        ));
        assert!(!image_holds(
            "lib/modules/6.1/kernel/drivers/vfio/pci/vfio-pci-core.ko\n",
            "vfio_pci"
        ));
        assert!(!image_holds("etc/modprobe.d/vfio_pci.conf\n", "vfio_pci"));
    }

    #[test]
    fn the_stack_regenerates_entries_first_and_each_command_once() {
        let s = Stack::of(StackId::default());
        let kernel = |v: &str| crate::facts::Kernel {
            version: v.into(),
            ..Default::default()
        };
        let f = Facts {
            kernels: vec![kernel("6.1.0-13-amd64"), kernel("6.12.0-1-amd64")],
            ..Facts::default()
        };
        let steps = s.regenerate(&f, true, true);
        let lines: Vec<String> = steps.iter().map(|s| s.shell_line()).collect();
        assert_eq!(
            lines,
            [
                "update-grub",
                "depmod -a 6.1.0-13-amd64",
                "depmod -a 6.12.0-1-amd64",
                "update-initramfs -u -k all"
            ]
        );
        assert!(steps.iter().all(|s| s.regenerates));
        assert!(s.regenerate(&f, false, false).is_empty());
        let json = serde_json::to_string(&s.id()).unwrap();
        assert_eq!(json, r#"{"loader":"grub","initramfs":"initramfs-tools"}"#);
    }
}
