//! The skeleton `full` and `reset` share: the root check, the lock, showing the plan, the
//! question, and the JSON of the files.

use crate::host::Host;
use crate::plan::FileAction;
use crate::txn::Lock;
use crate::ui::Ui;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

/// A dry run changes nothing and takes no lock; a real run holds the lock from before it
/// reads the host (another gpt could change it under us) until it is done.
pub enum Mode {
    DryRun,
    Apply(Lock),
}

pub struct Session<'a> {
    pub ui: &'a Ui,
    pub mode: Mode,
    /// `--yes`: apply without asking.
    yes: bool,
}

impl<'a> Session<'a> {
    /// `needs_root` is the sentence that says why this run needs root, when it is not root on
    /// the real host.
    pub fn start(
        host: &'a Host,
        ui: &'a Ui,
        dry_run: bool,
        yes: bool,
        needs_root: &str,
    ) -> Result<Session<'a>> {
        if !dry_run && host.is_real_root() && !nix::unistd::geteuid().is_root() {
            bail!("{needs_root}");
        }
        let mode = if dry_run {
            Mode::DryRun
        } else {
            Mode::Apply(Lock::acquire(host)?)
        };
        Ok(Session { ui, mode, yes })
    }

    /// Under `--root`, a plan that runs the tree's own programs says so; a real run refuses
    /// a tree another user could change (a dry run, which runs nothing, warns).
    pub fn trust_tree(&self, host: &Host, plan: &crate::plan::Plan) -> Result<()> {
        let Some(note) = crate::tree_trust::runs_tree_programs(host, plan) else {
            return Ok(());
        };
        self.ui.info(format!("note: {note}"));
        let Some((path, why)) = crate::tree_trust::first_changeable(host, plan) else {
            return Ok(());
        };
        let what = format!(
            "{} {why}: another user could change what gpt runs there as root; make it root's \
             and writable only by root (chown root:root, chmod go-w) or use a tree only root can change",
            path.display()
        );
        if self.dry_run() {
            self.ui.warn(format!("a real run would refuse: {what}"));
            return Ok(());
        }
        bail!("refusing to run the tree's own programs: {what}; nothing was changed")
    }

    pub fn dry_run(&self) -> bool {
        matches!(self.mode, Mode::DryRun)
    }

    /// The lock of a real run (`None` in a dry run).
    pub fn lock(&self) -> Option<&Lock> {
        match &self.mode {
            Mode::Apply(lock) => Some(lock),
            Mode::DryRun => None,
        }
    }

    /// The plan's diffs go to stdout in a dry run and a real run alike (`> plan.diff` keeps
    /// them either way). Under `--json` stdout holds only the JSON document: a dry run's plan
    /// is in it, a real run's diffs go to stderr.
    pub fn show(&self, text: &str) {
        match self.mode {
            _ if !self.ui.json => crate::ui::out(text),
            Mode::DryRun => {}
            Mode::Apply(_) => eprint!("{}", crate::printable::clean(text)),
        }
    }

    /// Ask, unless `--yes` or a dry run; refuse rather than hang without a terminal.
    pub fn confirm(&self, question: &str) -> Result<bool> {
        if self.yes || self.dry_run() {
            return Ok(true);
        }
        if !self.ui.interactive {
            bail!(
                "no terminal to ask on: re-run with --yes to apply this, or --dry-run to only see it; nothing was changed"
            );
        }
        Ok(dialoguer::Confirm::new()
            .with_prompt(question)
            .default(false)
            .interact()?)
    }
}

/// One file of a plan or an outcome, as `--json` lists it.
#[derive(Debug, Serialize)]
pub struct FileJson {
    pub path: String,
    pub action: FileAction,
}

impl FileJson {
    pub fn new(path: &Path, action: FileAction) -> FileJson {
        FileJson {
            path: path.display().to_string(),
            action,
        }
    }
}
