//! `gpt full`'s plan and transaction through the library, for the tests of what comes after
//! it (the journal, reset, check): the real facts reader, selection and planner, applied with
//! the fakes on PATH.

use super::fakes::Fakes;
use super::hosts::rocketlake;
use super::tree::snapshot;
use gpt::boot::Stack;
use gpt::facts::Facts;
use gpt::host::Host;
use gpt::plan::{FileChange, Plan};
use gpt::planner::{self, Options, Planned};
use gpt::runner::Runner;
use gpt::select::{self, Request};
use gpt::txn::{self, Finish, Lock};
use gpt::ui::Ui;
use std::path::Path;

/// A RocketLake tree whose /boot matches its /etc, and the fakes.
pub fn primed_host() -> (tempfile::TempDir, Fakes) {
    let dir = tempfile::tempdir().unwrap();
    rocketlake(dir.path());
    let fakes = Fakes::new();
    fakes.prime(dir.path());
    (dir, fakes)
}

/// A snapshot without the lock file (which stays, as lock files do).
pub fn snap(root: &Path) -> Vec<(String, String)> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| p != "run" && p != "run/gpt.lock")
        .collect()
}

/// The snapshot of /etc alone.
pub fn etc(root: &Path) -> Vec<(String, String)> {
    snap(root)
        .into_iter()
        .filter(|(p, _)| p.starts_with("etc"))
        .collect()
}

/// What `gpt full nvidia --no-deps` plans for the host under `root`.
pub fn planned(root: &Path) -> Planned {
    let host = Host::new(root);
    let facts = Facts::read(&host).unwrap();
    let names = gpt::sysfs::load_names(&host, &facts.topology);
    let req = Request {
        vendor: Some(0x10de),
        devices: Vec::new(),
        all: false,
        force: false,
        ..Request::default()
    };
    let sel = select::select(&facts.topology, &names, &req, &facts.protected).unwrap();
    let opts = Options {
        no_deps: true,
        foreign_root: true,
        ..Options::default()
    };
    planner::plan(&facts, Some(&sel), &opts).unwrap()
}

/// A plan that sets the kernel arguments to `args` (gpt's earlier ones replaced), with the
/// host stack's regeneration: for runs with another configuration than `planned`'s.
pub fn plan_with_args(root: &Path, args: &[String]) -> Plan {
    let host = Host::new(root);
    let facts = Facts::read(&host).unwrap();
    let stack: Stack = Stack::of_facts(&facts).unwrap();
    let edit = stack.loader.edit_args(&facts, args).unwrap();
    let mut plan = Plan::default();
    plan.push_file(edit.change);
    if !plan.files.is_empty() {
        plan.commands = stack.regenerate(&facts, true, false);
    }
    plan
}

/// The change `planned` makes to one file.
pub fn change<'a>(plan: &'a Plan, path: &str) -> Option<&'a FileChange> {
    plan.files.iter().find(|f| f.path == Path::new(path))
}

/// Run the transaction as `gpt full` does, with the fakes (and `env`) for the commands.
pub fn simulate_full(
    root: &Path,
    fakes: &Fakes,
    env: &[(&str, &str)],
) -> anyhow::Result<txn::Outcome> {
    let host = Host::new(root);
    let ui = Ui::new(false);
    let mut runner = Runner::new(&host, &ui).with_path(fakes.path());
    for (k, v) in env {
        runner = runner.with_env(k, v);
    }
    let lock = Lock::acquire(&host)?;
    let mut planned = planned(root);
    // As `full` does: an update owed by a stopped run is run even with nothing to write.
    if txn::update_needed(&host)? {
        let facts = Facts::read(&host)?;
        planned.plan.commands.retain(|c| !c.regenerates);
        planned
            .plan
            .commands
            .extend(Stack::of_facts(&facts)?.regenerate(&facts, true, true));
    }
    txn::apply_with(
        &runner,
        &lock,
        &planned.plan,
        Finish::Record(Some(&planned.config)),
        &[],
    )
}
