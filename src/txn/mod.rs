//! The transaction every writing command goes through: lock → journal → atomic writes →
//! commands → state, and on any failure, a rollback that puts the host back as it was.
//!
//! - [`Lock`]: one gpt per host (`/run/gpt.lock`, inherited by the commands gpt starts).
//! - [`fs`]: atomic writes and removals that keep mode and owner and stay inside the root.
//! - [`journal`]: `/var/lib/gpt/state.json`, holding copies of the original and written bytes.
//! - the command runner ([`crate::runner`]) and the signals held off while committing
//!   ([`crate::signals`]) sit below, in host access: the reader's queries use the runner too.
//! - [`failpoint`]: named points where a test build stops dead (feature `failpoints`).
//!
//! Crash safety: the journal is saved, with `update_needed` set, before the first file
//! changes, and it records both the original and the bytes about to be written. Whatever
//! point a run is stopped at, each file is either its old or its new version (atomic
//! rename), and `reset` or a re-run of `full` can tell which and converge.

pub mod display;
pub mod failpoint;
pub mod fs;
pub mod journal;
pub mod live;
pub mod lock;

pub use fs::Meta;
pub use journal::State;
pub use lock::Lock;

use crate::host::Host;
use crate::model::Config;
use crate::paths::{STATE_DIR, STATE_FILE};
use crate::plan::{FileAction, FileChange, Plan};
use crate::progress::Progress;
use crate::runner::Runner;
use crate::signals;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// What the state should say once the transaction succeeded.
#[derive(Debug, Clone, Copy)]
pub enum Finish<'c> {
    /// `full`: journal the files (keeping the very first originals) and record the config.
    Record(Option<&'c Config>),
    /// `reset`: forget the journal (it is removed; only an `update_needed` marker stays when
    /// the update commands did not run).
    Forget,
    /// Files that are no boot files (a libvirt hook): journal them, keeping the recorded
    /// config and whether an update is owed; a file back to its original (a hook removed
    /// again) leaves the journal, and so do the folders made for it; an empty journal goes.
    Files,
}

/// What a transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Each file of the plan with what happened to it (`created`, `modified`, `removed`).
    pub files: Vec<(PathBuf, FileAction)>,
    /// The commands run, in order.
    pub commands: Vec<Vec<String>>,
    /// A signal that arrived during the last step: gpt finished the transaction first.
    pub interrupted: Option<&'static str>,
}

/// Whether `/etc` may be ahead of grub.cfg and the initramfs (a run was stopped, or the
/// update commands were skipped): `full` must then run them even with nothing to write.
pub fn update_needed(host: &Host) -> Result<bool> {
    Ok(State::load(host)?.is_some_and(|s| s.update_needed))
}

/// Apply `plan` on `host`, recording `config`, with `verify` before the commit (what `gpt
/// full` does).
pub fn apply(
    host: &Host,
    ui: &dyn Progress,
    lock: &Lock,
    plan: &Plan,
    config: Option<&Config>,
    verify: Verify,
) -> Result<Outcome> {
    apply_verified(
        &Runner::new(host, ui),
        lock,
        plan,
        Finish::Record(config),
        &[],
        verify,
    )
}

/// One file of the plan as it was when the transaction started.
struct Before {
    path: PathBuf,
    current: Option<fs::Current>,
}

/// Apply `plan` with `runner` (whose host and UI are used). `metas` sets the exact mode and
/// owner of some files (`reset` recreating a file gpt had removed); other files keep theirs,
/// and new ones get root:root `new_mode`.
///
/// On any failure — a write, a command, or SIGINT/SIGTERM/SIGHUP between steps — every file
/// already changed is put back (bytes, mode, owner), the commands that had started are run
/// again so grub.cfg and the initramfs match the restored files, the previous state is
/// restored, and the error says what failed and that the host was rolled back.
pub fn apply_with(
    runner: &Runner,
    lock: &Lock,
    plan: &Plan,
    finish: Finish,
    metas: &[(PathBuf, Meta)],
) -> Result<Outcome> {
    apply_verified(runner, lock, plan, finish, metas, &|_| Ok(()))
}

/// A check of the regenerated boot files, run after the plan's commands and before
/// `plan.after_commands` and the commit: its error rolls the run back like a failed command
/// (an image without vfio-pci, a boot loader's regeneration that silently wrote nothing).
pub type Verify<'a> = &'a dyn Fn(&Runner) -> Result<()>;

/// [`apply_with`], with `verify` run after the commands (when there were any).
pub fn apply_verified(
    runner: &Runner,
    _lock: &Lock,
    plan: &Plan,
    finish: Finish,
    metas: &[(PathBuf, Meta)],
    verify: Verify,
) -> Result<Outcome> {
    let host = runner.host();
    for late in &plan.after_commands {
        if !plan
            .files
            .iter()
            .any(|f| f.path == late.path && !f.is_noop())
        {
            bail!(
                "internal error: {} changes after the commands but not before",
                late.path.display()
            );
        }
    }
    let ui = runner.progress();
    let hold = signals::hold()?;
    let files: Vec<&crate::plan::FileChange> = plan.files.iter().filter(|f| !f.is_noop()).collect();

    // Leftovers of a killed run: temp files, blobs no saved state points at.
    let prev_raw = journal::load_raw(host)?;
    let prev = prev_raw.as_deref().map(journal::parse).transpose()?;
    journal::clean_temps(host)?;
    let befores = unchanged_since_planning(host, &files)?;
    // The journal, before the first change.
    let state = journal_for(host, prev.as_ref(), &finish, &files, &befores, metas)?;
    let mut tx = Tx {
        runner,
        prev_raw: prev_raw.as_deref(),
        prev: prev.as_ref(),
        state: &state,
        befores: &befores,
        commands: &plan.commands,
        written: 0,
        changed: 0,
        started: 0,
        file_dirs: Vec::new(),
    };
    let result = (|| -> Result<Outcome> {
        // One atomic write: the copies are inside the state.
        let journal = state.to_json();
        write_state_bytes(host, &journal, true)?;
        // Room for the final state beside it (the same size, give or take a word).
        fs::check_room(host, Path::new(STATE_FILE), journal.len() + 64)?;
        crate::failpoint!("after-journal");

        for (i, f) in files.iter().enumerate() {
            interrupted(&hold)?;
            tx.written = i + 1;
            match &f.after {
                Some(bytes) => {
                    let meta = metas.iter().find(|(p, _)| *p == f.path).map(|(_, m)| *m);
                    let made = fs::write(host, &f.path, bytes, meta, f.new_mode)?;
                    tx.file_dirs.extend(made);
                }
                None => {
                    fs::remove(host, &f.path)?;
                }
            }
            tx.changed += 1;
            crate::failpoint!("after-write:{}", i + 1);
        }
        let mut outcome = Outcome {
            files: files.iter().map(|f| (f.path.clone(), f.action())).collect(),
            ..Outcome::default()
        };
        for (j, step) in plan.commands.iter().enumerate() {
            interrupted(&hold)?;
            crate::failpoint!("before-command:{}", j + 1);
            tx.started = j + 1;
            runner.run(step)?;
            outcome.commands.push(step.argv.clone());
            crate::failpoint!("after-command:{}", j + 1);
        }
        if !plan.commands.is_empty() {
            interrupted(&hold)?;
            verify(runner)?;
        }
        for late in &plan.after_commands {
            interrupted(&hold)?;
            match &late.after {
                Some(bytes) => {
                    fs::write(host, &late.path, bytes, None, late.new_mode)?;
                }
                None => {
                    fs::remove(host, &late.path)?;
                }
            }
            if let Some(entry) = outcome.files.iter_mut().find(|(p, _)| *p == late.path) {
                let first = files.iter().find(|f| f.path == late.path);
                entry.1 = FileChange::new(
                    &late.path,
                    first.and_then(|f| f.before.clone()),
                    late.after.clone(),
                )
                .action();
            }
        }
        Ok(outcome)
    })();

    let mut done = state.clone();
    done.update_needed = plan.commands.is_empty()
        && (prev.as_ref().is_some_and(|p| p.update_needed)
            || files.iter().any(|f| goes_into_boot_files(&f.path)));
    let mut gone_dirs = Vec::new();
    if let Finish::Files = finish {
        done.update_needed = prev.as_ref().is_some_and(|p| p.update_needed);
        gone_dirs = forget_restored(&mut done);
    }
    let marker = State {
        created_dirs: done.created_dirs.clone(),
        update_needed: true,
        generation: done.generation,
        ..State::default()
    };
    // The new state is the commit: when it cannot be written (a full disk), the run is rolled
    // back like any other failure, so gpt never reports an error with the host half-changed.
    let result = result.and_then(|outcome| {
        crate::failpoint!("before-commit");
        match finish {
            Finish::Record(_) => write_state_final(host, &done)?,
            Finish::Files if !is_empty(&done) => write_state_final(host, &done)?,
            Finish::Forget if done.update_needed => write_state(host, &marker)?,
            Finish::Forget | Finish::Files => {}
        }
        Ok(outcome)
    });
    let mut outcome = match result {
        Ok(o) => o,
        Err(err) => return Err(tx.rollback(err)),
    };
    match finish {
        Finish::Record(_) => journal::drop_blobs(host, prev.as_ref(), Some(&done))?,
        Finish::Files if is_empty(&done) => {
            journal::remove_all(host, &done, prev.is_some())?;
            fs::remove_dirs_if_empty(host, &gone_dirs)?;
        }
        Finish::Files => {
            journal::drop_blobs(host, prev.as_ref(), Some(&done))?;
            fs::remove_dirs_if_empty(host, &gone_dirs)?;
        }
        Finish::Forget if done.update_needed => {
            journal::drop_blobs(host, Some(&done), Some(&marker))?
        }
        Finish::Forget => journal::remove_all(host, &done, prev.is_some())?,
    }
    crate::failpoint!("after-commit");
    outcome.interrupted = hold.interrupted();
    if let Some(sig) = outcome.interrupted {
        ui.warn(&format!(
            "{sig} arrived during the last step; gpt finished it first, so the host is consistent"
        ));
    }
    Ok(outcome)
}

/// Whether a command rebuilds boot files from /etc (the boot stack marks those): they run
/// again after a rollback so /boot matches the restored files.
pub fn regenerates(step: &crate::plan::Step) -> bool {
    step.regenerates
}

/// The files of the plan as they are now, each checked to be what the plan was made from.
fn unchanged_since_planning(
    host: &Host,
    files: &[&crate::plan::FileChange],
) -> Result<Vec<Before>> {
    let mut befores = Vec::new();
    for f in files {
        if let Some(dir) = f.path.parent() {
            fs::clean_temps(host, dir)?;
        }
        let current = fs::read(host, &f.path)?;
        if current.as_ref().map(|c| &c.bytes) != f.before.as_ref() {
            bail!(
                "{} changed since gpt read it (another program is editing it?); nothing was changed, run gpt again",
                f.path.display()
            );
        }
        befores.push(Before {
            path: f.path.clone(),
            current,
        });
    }

    Ok(befores)
}

/// The journal to save before the first change: the previous one's originals kept, copies of
/// what this run writes, an update owed until the commands ran, the folders it creates.
fn journal_for(
    host: &Host,
    prev: Option<&State>,
    finish: &Finish,
    files: &[&crate::plan::FileChange],
    befores: &[Before],
    metas: &[(PathBuf, Meta)],
) -> Result<State> {
    let mut state = prev.cloned().unwrap_or_default();
    state.generation += 1;
    state.update_needed = true;
    if let Finish::Record(config) = finish {
        state.config = config.cloned();
    }
    if matches!(finish, Finish::Record(_) | Finish::Files) {
        for (f, b) in files.iter().zip(befores) {
            let path = f.path.display().to_string();
            let k = match state.files.iter().position(|e| e.path == path) {
                Some(k) => k,
                None => {
                    let n = state.files.len() + 1;
                    let meta = b
                        .current
                        .as_ref()
                        .map(|c| c.meta)
                        .unwrap_or_else(|| meta_for(metas, &f.path, f.new_mode));
                    let original = f.before.as_ref().map(|bytes| {
                        let name = journal::original_name(n);
                        state.keep_blob(&name, bytes);
                        name
                    });
                    state.files.push(journal::Entry {
                        path,
                        existed: f.before.is_some(),
                        mode: meta.mode,
                        uid: meta.uid,
                        gid: meta.gid,
                        original,
                        written: None,
                    });
                    n - 1
                }
            };
            let written = f.after.as_ref().map(|bytes| {
                let name = journal::written_name(k + 1, state.generation);
                state.keep_blob(&name, bytes);
                name
            });
            state.files[k].written = written;
        }
        state.prune_blobs();
    }
    let mut new_dirs = fs::missing_dirs(host, Path::new(STATE_DIR))?;
    for f in files {
        if f.after.is_some() {
            if let Some(dir) = f.path.parent() {
                for d in fs::missing_dirs(host, dir)? {
                    if !new_dirs.contains(&d) {
                        new_dirs.push(d);
                    }
                }
            }
        }
    }
    for d in &new_dirs {
        let d = d.display().to_string();
        if !state.created_dirs.contains(&d) {
            state.created_dirs.push(d);
        }
    }

    Ok(state)
}

/// Whether a file can go into the boot files (all but single-GPU mode's libvirt hooks): a
/// change to it leaves an update owed until the boot files are regenerated.
fn goes_into_boot_files(path: &Path) -> bool {
    !path.starts_with(crate::single_gpu::HOOK_DIR)
}

/// A journal with nothing to undo.
fn is_empty(s: &State) -> bool {
    s.files.is_empty() && s.config.is_none() && !s.update_needed
}

/// Drop the entries of files back to their original absence (written and original both
/// none), and the folders created only for them; returns those folders (deepest first).
fn forget_restored(s: &mut State) -> Vec<PathBuf> {
    let gone: Vec<String> = s
        .files
        .iter()
        .filter(|e| !e.existed && e.written.is_none())
        .map(|e| e.path.clone())
        .collect();
    s.files.retain(|e| !gone.contains(&e.path));
    let needed = |d: &str| {
        s.files.iter().any(|e| e.path.starts_with(&format!("{d}/")))
            || Path::new(STATE_DIR).starts_with(d)
    };
    let mut dirs: Vec<String> = s
        .created_dirs
        .iter()
        .filter(|d| gone.iter().any(|g| g.starts_with(&format!("{d}/"))) && !needed(d))
        .cloned()
        .collect();
    s.created_dirs.retain(|d| !dirs.contains(d));
    s.prune_blobs();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    dirs.into_iter().map(PathBuf::from).collect()
}

fn meta_for(metas: &[(PathBuf, Meta)], path: &Path, new_mode: u32) -> Meta {
    metas
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, m)| *m)
        .unwrap_or_else(|| Meta::new_file(new_mode))
}

fn interrupted(hold: &signals::Hold) -> Result<()> {
    match hold.interrupted() {
        Some(sig) => bail!("interrupted by {sig}"),
        None => Ok(()),
    }
}

/// The state holds copies of the files it journals: it is root's only (0600), always — a
/// secret added later to a file that was readable by all must not land in a readable journal.
fn write_state(host: &Host, state: &State) -> Result<()> {
    write_state_bytes(host, &state.to_json(), true)
}

/// The last state of a successful run. Its folder is not synced: if a crash loses the rename,
/// the journal before it (with `update_needed`) is what the next run finds, and it re-runs the
/// update commands, which is safe.
fn write_state_final(host: &Host, state: &State) -> Result<()> {
    write_state_bytes(host, &state.to_json(), false)
}

fn write_state_bytes(host: &Host, bytes: &[u8], sync_dir: bool) -> Result<()> {
    let mode = 0o600;
    let meta = Some(Meta::new_file(mode));
    fs::write_with(host, Path::new(STATE_FILE), bytes, meta, mode, sync_dir)?;
    Ok(())
}

/// A failed command's message split before the stderr tail the runner appends, which goes
/// last (on lines of its own).
fn split_tail(text: &str) -> (String, String) {
    const TAIL: &str = "; the last lines of its ";
    match text.split_once(TAIL) {
        Some((head, tail)) => (head.to_string(), format!("\nthe last lines of its {tail}")),
        None => (text.to_string(), String::new()),
    }
}

/// What a running transaction has done so far, for the rollback.
struct Tx<'a, 'r> {
    runner: &'a Runner<'r>,
    prev_raw: Option<&'a [u8]>,
    prev: Option<&'a State>,
    state: &'a State,
    befores: &'a [Before],
    commands: &'a [crate::plan::Step],
    /// Files possibly changed (the first `written` of the plan).
    written: usize,
    /// Files written successfully.
    changed: usize,
    /// Commands started (the first `started` of the plan).
    started: usize,
    /// Folders created for new files.
    file_dirs: Vec<PathBuf>,
}

impl Tx<'_, '_> {
    fn rollback(self, err: anyhow::Error) -> anyhow::Error {
        let host = self.runner.host();
        let mut problems = Vec::new();
        for (_n, b) in self.befores[..self.written].iter().enumerate().rev() {
            let r = match &b.current {
                Some(c) => fs::write(host, &b.path, &c.bytes, Some(c.meta), c.meta.mode).map(drop),
                None => fs::remove(host, &b.path).map(drop),
            };
            if let Err(e) = r {
                problems.push(format!("{}: {e:#}", b.path.display()));
            }
            crate::failpoint!("rollback-after-restore:{}", _n + 1);
        }
        if let Err(e) = fs::remove_dirs_if_empty(host, &self.file_dirs) {
            problems.push(format!("{e:#}"));
        }
        if !problems.is_empty() {
            return err.context(format!(
                "ROLLBACK INCOMPLETE: could not put back {}. The journal in {STATE_DIR} still has \
                 every original: fix the cause, then run `gpt reset`",
                problems.join("; ")
            ));
        }
        let restored = self.changed;
        // Only the commands that derive boot files from /etc run again; packages a failed
        // run installed stay installed (removing them could take away more than gpt added).
        let commands: Vec<&crate::plan::Step> = self.commands[..self.started]
            .iter()
            .filter(|s| regenerates(s))
            .collect();
        let mut rerun = Vec::new();
        let mut failed = None;
        if !commands.is_empty() {
            self.runner.progress().step(
                "Rolling back: the files are back; rebuilding the boot files from them again",
            );
        }
        for step in &commands {
            match self.runner.run(step) {
                Ok(_) => rerun.push(step.shell_line()),
                Err(e) => {
                    failed = Some((step.shell_line(), e));
                    break;
                }
            }
        }
        let state_result = if failed.is_some() {
            // /etc is back, but grub.cfg or the initramfs may not match it yet.
            let mut s = self.prev.cloned().unwrap_or_default();
            s.update_needed = true;
            s.created_dirs = self.state.created_dirs.clone();
            write_state(host, &s)
                .and_then(|()| journal::drop_blobs(host, Some(self.state), Some(&s)))
        } else {
            self.restore_state()
        };
        let files = match restored {
            1 => "the file gpt changed is back".to_string(),
            n => format!("the {n} files gpt changed are back"),
        };
        let mut msg = if restored == 0 {
            "nothing was changed".to_string()
        } else {
            format!("rolled back: {files} as they were")
        };
        if !rerun.is_empty() {
            msg.push_str(&format!(", and `{}` ran again", rerun.join("`, `")));
        }
        if let Some((line, e)) = failed {
            let (why, _) = split_tail(&format!("{e:#}"));
            msg.push_str(&format!(
                ". But re-running `{line}` failed too ({why}), so the boot files may not match /etc \
                 yet: once the cause is fixed, run gpt again (the next `gpt full` or `gpt reset` \
                 runs them first), or run `{}` yourself",
                commands
                    .iter()
                    .map(|s| s.shell_line())
                    .collect::<Vec<_>>()
                    .join(" && ")
            ));
        } else {
            msg.push_str("; fix the cause and run the same command again");
        }
        if let Err(e) = state_result {
            msg.push_str(&format!(
                ". The journal {STATE_FILE} could not be restored ({e:#}); run `gpt reset`"
            ));
        }
        if err.downcast_ref::<crate::refusal::Refusal>().is_some() {
            return err.context(msg);
        }
        // One line: what failed, the state the host is in, what to do; the stderr tail last.
        let (cause, tail) = split_tail(&format!("{err:#}"));
        anyhow::anyhow!("{cause}; {msg}{tail}")
    }

    /// Put the state file back as it was before this run (or remove the journal it created).
    fn restore_state(&self) -> Result<()> {
        let host = self.runner.host();
        match self.prev_raw {
            Some(raw) => {
                if journal::load_raw(host)?.as_deref() != Some(raw) {
                    write_state_bytes(host, raw, true)?;
                }
                journal::drop_blobs(host, Some(self.state), self.prev)
            }
            None => journal::remove_all(host, self.state, false),
        }
    }
}
