//! The one place gpt starts external processes.
//!
//! `argv[0]` is looked up on PATH (a clear error names the package that provides it); under
//! a root other than `/` the command runs inside it through `chroot ROOT argv…`. Output is
//! captured into unnamed temp files (never pipes: a command that outlives a killed gpt must
//! not die of SIGPIPE half-way), and a failure's error carries the exact command line and the
//! last lines of its stderr. Nothing is printed on stdout, which belongs to `--json`.

use crate::host::Host;
use crate::plan::Step;
use crate::progress::Progress as Screen;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The folders where a command run as `chroot ROOT cmd` is looked for, in its PATH's order.
pub const CHROOT_BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
use std::time::{Duration, Instant};

/// Lines of stderr put into an error.
const TAIL_LINES: usize = 20;

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// How many processes this gpt has started (a no-op run starts none).
pub fn spawned() -> usize {
    SPAWNED.load(Ordering::SeqCst)
}

/// The Debian package that provides a command gpt runs.
pub fn package_for(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "update-grub" | "grub-mkconfig" => "grub2-common",
        "update-initramfs" | "lsinitramfs" => "initramfs-tools",
        "dracut" | "lsinitrd" => "dracut",
        "depmod" | "modprobe" | "lsmod" => "kmod",
        "chroot" => "coreutils",
        "dpkg-query" | "dpkg" => "dpkg",
        "apt-get" => "apt",
        "qemu-img" => "qemu-utils",
        "unshare" => "util-linux",
        _ => return None,
    })
}

/// What a finished command wrote, and how it ended.
#[derive(Debug, Clone)]
pub struct Captured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs commands for one host. Tests may give it its own PATH and extra environment.
#[derive(Debug, Clone)]
pub struct Runner<'a> {
    host: &'a Host,
    ui: &'a dyn Screen,
    path: Option<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl<'a> Runner<'a> {
    pub fn new(host: &'a Host, ui: &'a dyn Screen) -> Runner<'a> {
        Runner {
            host,
            ui,
            path: None,
            envs: Vec::new(),
        }
    }

    /// Look commands up on this PATH instead of the process's (children get it too).
    pub fn with_path(mut self, path: impl Into<OsString>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Set a variable in the environment of every command.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn host(&self) -> &'a Host {
        self.host
    }

    /// Where this runner's progress goes.
    pub fn progress(&self) -> &'a dyn Screen {
        self.ui
    }

    fn search_path(&self) -> Option<OsString> {
        self.path.clone().or_else(|| std::env::var_os("PATH"))
    }

    fn which(&self, name: &str) -> Option<PathBuf> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        which::which_in(name, self.search_path(), cwd).ok()
    }

    /// Whether `name` exists inside the root's usual command folders.
    fn inside_root(&self, name: &str) -> bool {
        CHROOT_BIN_DIRS
            .iter()
            .any(|d| self.host.exists(Path::new(d).join(name)))
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        let install = match package_for(name) {
            Some(p) => format!("install the {p} package"),
            None => "install it".to_string(),
        };
        let where_ = if self.host.is_real_root() {
            String::new()
        } else {
            format!(" or inside {}", self.host.root().display())
        };
        anyhow::anyhow!("{name}: command not found on PATH{where_}; {install} and run gpt again")
    }

    /// The program to start and its arguments, as they will really be run.
    pub fn command_line(&self, argv: &[String]) -> Result<(PathBuf, Vec<String>)> {
        let Some(name) = argv.first() else {
            bail!("empty command")
        };
        if self.host.is_real_root() {
            let prog = self.which(name).ok_or_else(|| self.missing(name))?;
            return Ok((prog, argv[1..].to_vec()));
        }
        if self.which(name).is_none() && !self.inside_root(name) {
            return Err(self.missing(name));
        }
        let chroot = self.which("chroot").ok_or_else(|| self.missing("chroot"))?;
        let mut args = vec![self.host.root().display().to_string()];
        args.extend(argv.iter().cloned());
        Ok((chroot, args))
    }

    fn shown(prog: &Path, args: &[String]) -> String {
        let name = prog
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::iter::once(name)
            .chain(args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn spawn_and_wait(&self, argv: &[String], label: Option<&str>) -> Result<(String, Captured)> {
        let (prog, args) = self.command_line(argv)?;
        self.spawn_program(&prog, &args, label)
    }

    fn spawn_program(
        &self,
        prog: &Path,
        args: &[String],
        label: Option<&str>,
    ) -> Result<(String, Captured)> {
        let line = Self::shown(prog, args);
        let mut out = output_file()?;
        let mut err = output_file()?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(err.try_clone()?))
            .env("DEBIAN_FRONTEND", "noninteractive");
        if let Some(p) = &self.path {
            cmd.env("PATH", p);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if crate::signals::holding() {
            // Out of the terminal's process group: Ctrl-C reaches gpt (which finishes this
            // step, then rolls back), not the command (which would die half-way).
            cmd.process_group(0);
        }
        let spinner = label.map(|l| Progress::start(self.ui, l));
        let started = Instant::now();
        let child = spawn(&mut cmd).with_context(|| format!("cannot start `{line}`"))?;
        SPAWNED.fetch_add(1, Ordering::SeqCst);
        let status = wait(child, spinner.as_ref()).with_context(|| format!("`{line}`"))?;
        if let Some(sp) = spinner {
            sp.finish(started.elapsed());
        }
        let read = |f: &mut std::fs::File| -> Result<Vec<u8>> {
            let mut v = Vec::new();
            f.rewind()?;
            f.read_to_end(&mut v)?;
            Ok(v)
        };
        let captured = Captured {
            status,
            stdout: read(&mut out)?,
            stderr: read(&mut err)?,
        };
        Ok((line, captured))
    }

    /// Run a plan step: a spinner with the label and elapsed time on a terminal, else one
    /// `==> label` line on stderr. A non-zero exit is an error with the command and its stderr.
    pub fn run(&self, step: &Step) -> Result<Captured> {
        let (line, c) = self.spawn_and_wait(&step.argv, Some(&step.label))?;
        if !c.status.success() {
            bail!("{}", failure(&line, &c));
        }
        Ok(c)
    }

    /// Run this gpt binary itself with `args` (after `--root ROOT`) in a private mount
    /// namespace, silently: `unshare --mount --propagation private -- GPT --root ROOT args…`.
    /// It runs on this machine, never inside the root (it reads the root through `--root`),
    /// and what it mounts stays in its own namespace, gone when it ends. Its exit status is
    /// the caller's to judge.
    pub fn query_gpt_unshared(&self, args: &[String]) -> Result<Captured> {
        let unshare = self.which("unshare").ok_or_else(|| {
            let install = package_for("unshare").unwrap_or("util-linux");
            anyhow::anyhow!("unshare: command not found on PATH; install the {install} package")
        })?;
        let exe = std::env::current_exe().context("cannot tell where this gpt binary is")?;
        let mut all: Vec<String> = ["--mount", "--propagation", "private", "--"]
            .map(String::from)
            .to_vec();
        all.push(exe.display().to_string());
        all.push("--root".into());
        all.push(self.host.root().display().to_string());
        all.extend(args.iter().cloned());
        Ok(self.spawn_program(&unshare, &all, None)?.1)
    }

    /// Run a query (dpkg-query, lsinitramfs) silently; its exit status is the caller's to judge.
    pub fn query(&self, argv: &[&str]) -> Result<Captured> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        Ok(self.spawn_and_wait(&argv, None)?.1)
    }

    /// Run this machine's own `name` (found on PATH; never the root's, never through
    /// `chroot`) on `file`, an open file it gets as `/proc/self/fd/N`: how a tree's file is
    /// read with a tool under `--root` without executing anything from the tree and without
    /// walking the tree's path again. Its exit status is the caller's to judge.
    pub fn query_own_on(&self, name: &str, file: &std::fs::File) -> Result<Captured> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        use std::os::fd::AsRawFd;
        let prog = self.which(name).ok_or_else(|| {
            let install = package_for(name).map_or("it".to_string(), |p| format!("the {p} package"));
            anyhow::anyhow!(
                "{name} is not installed on this machine (under --root gpt reads a tree's file \
                 with this machine's own tools, never the tree's); install {install} to have it read"
            )
        })?;
        let fd = file.as_raw_fd();
        // Inherited by the child for the time of this one call.
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).context("cannot hand the file over")?;
        let res = self.spawn_program(&prog, &[format!("/proc/self/fd/{fd}")], None);
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("cannot close the file")?;
        Ok(res?.1)
    }
}

/// An unnamed file for a command's output: a memfd (memory, no file system: creating one on
/// ext4's /tmp cost a journalled inode per stream), else an unlinked temp file.
fn output_file() -> Result<std::fs::File> {
    use rustix::fs::{memfd_create, MemfdFlags};
    match memfd_create("gpt-output", MemfdFlags::CLOEXEC) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(_) => tempfile::tempfile().context("cannot create a temp file for output"),
    }
}

/// Wait for `child` to end. The wait blocks in a helper thread, so the end is seen the moment
/// it happens (polling with `try_wait` every 2 ms cost a fresh `full` about 5 ms over its
/// commands, plus a wake-up every 2 ms); meanwhile this thread looks for a held-off signal
/// every 100 ms to say on the spinner that gpt rolls back once the step ends.
fn wait(mut child: std::process::Child, spinner: Option<&Progress>) -> std::io::Result<ExitStatus> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || {
            let _ = tx.send(child.wait());
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(status) => return status,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if let (Some(sp), Some(sig)) = (spinner, crate::signals::received()) {
                        sp.interrupted(sig);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(std::io::Error::other("the thread waiting for it ended"));
                }
            }
        }
    })
}

/// Start `cmd`, retrying briefly on ETXTBSY: a script written a moment ago can still be open
/// for writing in a process that another thread is forking.
fn spawn(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// "`cmd args` failed (exit status 1); its last lines of stderr: …"
fn failure(line: &str, c: &Captured) -> String {
    let how = match (
        c.status.code(),
        std::os::unix::process::ExitStatusExt::signal(&c.status),
    ) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".to_string(),
    };
    let (which, text) = if c.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        ("stderr", &c.stderr)
    } else {
        ("output", &c.stdout)
    };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if tail.is_empty() {
        format!("`{line}` failed ({how}) and printed nothing")
    } else {
        format!(
            "`{line}` failed ({how}); the last lines of its {which}:\n{}",
            tail.iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// Quote a word for a shell only when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A spinner on a terminal, or plain lines otherwise.
struct Progress<'u> {
    ui: &'u dyn Screen,
    label: String,
    bar: Option<indicatif::ProgressBar>,
    warned: std::cell::Cell<bool>,
}

impl<'u> Progress<'u> {
    fn start(ui: &'u dyn Screen, label: &str) -> Progress<'u> {
        let bar = if ui.spinners() {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            {
                bar.set_style(style);
            }
            bar.set_message(crate::printable::clean(label).into_owned());
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        } else {
            ui.step(label);
            None
        };
        Progress {
            ui,
            label: crate::printable::clean(label).into_owned(),
            bar,
            warned: std::cell::Cell::new(false),
        }
    }

    fn interrupted(&self, sig: &str) {
        if self.warned.replace(true) {
            return;
        }
        let msg = format!("{sig} received: gpt rolls back once this step ends");
        match &self.bar {
            Some(bar) => bar.set_message(format!("{} ({msg})", self.label)),
            None => self.ui.warn(&msg),
        }
    }

    fn finish(self, took: Duration) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
            self.ui
                .step(&format!("{} ({:.1}s)", self.label, took.as_secs_f64()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("update-initramfs"), "update-initramfs");
        assert_eq!(shell_quote("-k"), "-k");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn a_missing_command_names_its_package() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::new(d.path());
        let ui = crate::progress::Quiet;
        let r = Runner::new(&host, &ui).with_path(d.path().join("nobin"));
        let err = r
            .run(&Step::new(
                "Regenerating the initramfs",
                &["update-initramfs", "-u"],
            ))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("update-initramfs: command not found"), "{msg}");
        assert!(msg.contains("initramfs-tools package"), "{msg}");
    }

    #[test]
    fn a_failure_carries_the_command_line_and_the_tail_of_stderr() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // `chroot ROOT cmd args` stand-in: skip the root, run the rest.
        let script = "#!/bin/sh\nshift\nexec \"$@\"\n";
        std::fs::write(bin.join("chroot"), script).unwrap();
        let fail = "#!/bin/sh\nfor i in $(seq 1 30); do echo \"line $i\" >&2; done\nexit 3\n";
        std::fs::write(bin.join("boom"), fail).unwrap();
        for f in ["chroot", "boom"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let host = Host::new(d.path());
        let ui = crate::progress::Quiet;
        let mut path = bin.clone().into_os_string();
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let r = Runner::new(&host, &ui).with_path(path);
        let before = spawned();
        let err = r.run(&Step::new("Booming", &["boom", "a b"])).unwrap_err();
        assert!(spawned() > before);
        let msg = format!("{err:#}");
        let root = d.path().display();
        assert!(
            msg.starts_with(&format!(
                "`chroot {root} boom 'a b'` failed (exit status 3)"
            )),
            "{msg}"
        );
        assert!(msg.contains("    line 30"), "{msg}");
        assert!(msg.contains("    line 11\n"), "{msg}");
        assert!(!msg.contains("line 10\n"), "{msg}");
        let q = r.query(&["boom"]).unwrap();
        assert_eq!(q.status.code(), Some(3));
    }
}
