//! `gpt reset`: undo what `gpt full` did, byte for byte, keeping edits made since.
//!
//! With the journal (`/var/lib/gpt/state.json`), each file gpt touched is either
//! - unchanged since gpt wrote it: its original bytes, mode and owner come back (a file gpt
//!   created is removed);
//! - changed since (the user edited it): only gpt's part is taken out — the tokens and
//!   lines gpt's markers record in the grub files, gpt's block in the initramfs modules
//!   list, gpt's own lines in `gpt-vfio.conf` (the user's lines there are kept: reset never
//!   discards a user's edit) — and reset says so.
//!
//! Without a journal (lost, or never written), gpt's markers, blocks and owned files are
//! found in the files themselves and removed. `--legacy` also removes what the old setup.sh
//! left, one leftover at a time. Then the boot stack's regeneration commands run (only for
//! what changed) through the same transaction and rollback as `full`, and the journal goes.

mod items;
mod legacy;
mod order;
mod report;

use super::session::Session;
use crate::boot::Stack;
use crate::cli::ResetArgs;
use crate::facts::Facts;
use crate::host::Host;
use crate::paths::STATE_FILE;
use crate::plan::Plan;
use crate::runner::Runner;
use crate::txn::{self, Finish, Meta, State};
use crate::ui::Ui;
use crate::undo::Owner;
use anyhow::Result;
use items::{journalled, marked, Item};
use legacy::legacy;
use order::{regeneration_order, update_commands};
use report::{describe, dry_run, finish, nothing_to_reset};
use std::path::PathBuf;

pub fn run(host: &Host, ui: &Ui, args: &ResetArgs) -> Result<u8> {
    let session = Session::start(
        host,
        ui,
        args.dry_run,
        args.yes,
        "gpt reset changes /etc and /boot: run it with sudo (or add --dry-run to see what it would do)",
    )?;
    // What `gpt bind` bound goes back first: the binding ends before its configuration does.
    super::bind::hand_back_all(host, ui, args.dry_run)?;
    let state = State::load(host)?;
    let facts = Facts::read_for(host, args.boot_loader.map(|b| b.choice()))?;
    let stack = stack_now(ui, &facts, state.as_ref());
    // Whose reading of an argument file counts: the stack gpt configured, else the host's.
    let owner = Some(
        state
            .as_ref()
            .and_then(|s| s.config.as_ref())
            .map_or(stack.loader, |c| Stack::of(c.boot).loader),
    );
    // The arguments gpt added, for argument files that can hold no mark of gpt's.
    let added: Vec<String> = state
        .as_ref()
        .and_then(|s| s.config.as_ref())
        .map(|c| c.added_args.clone())
        .unwrap_or_default();
    let mut items = items_to_reset(host, ui, state.as_ref(), &stack, &added, owner)?;
    for item in &items {
        describe(ui, item);
    }
    let mut plan = Plan::default();
    let mut metas = Vec::new();
    for item in items.iter().filter(|i| i.changes()) {
        plan.files.push(item.change());
        if let Some(m) = item.meta {
            metas.push((item.path.clone(), m));
        }
    }
    if !plan.files.is_empty() {
        session.show(&plan.render());
        if !session.confirm("Reset these files?")? {
            ui.info("nothing was changed");
            return Ok(1);
        }
    }

    if args.legacy {
        legacy(host, &session, &mut plan, &mut items)?;
    }

    let update_owed = state.as_ref().is_some_and(|s| s.update_needed);
    let commands = update_commands(&facts, &stack, &plan, update_owed, owner);
    let (run_now, manual) = if args.no_update {
        (Vec::new(), commands)
    } else {
        (commands, Vec::new())
    };

    if plan.files.is_empty() && run_now.is_empty() && manual.is_empty() {
        return nothing_to_reset(host, &session, state.is_some(), &items);
    }
    let runs = Plan {
        commands: run_now.clone(),
        ..plan.clone()
    };
    session.trust_tree(host, &runs)?;
    if session.dry_run() {
        return dry_run(ui, &items, &run_now, &manual);
    }
    let trap = regeneration_order(ui, args, &mut plan, &added, !run_now.is_empty(), owner)?;
    let lock = session.lock().expect("a real run holds the lock");
    plan.commands = run_now;
    let outcome = apply(host, ui, lock, &facts, &stack, &plan, &metas, &added)?;
    finish(ui, &plan, &items, &outcome, &manual, &trap)
}

/// What reset does to each file: the journalled ones, then gpt's marks in files the journal
/// does not cover (all of them, without a journal).
fn items_to_reset(
    host: &Host,
    ui: &Ui,
    state: Option<&State>,
    stack: &Stack,
    added: &[String],
    owner: Owner,
) -> Result<Vec<Item>> {
    let mut items = match state {
        Some(s) => journalled(host, s, added, owner)?,
        None => Vec::new(),
    };
    for item in marked(host, owner)? {
        if !items.iter().any(|i| i.path == item.path) {
            items.push(item);
        }
    }
    if state.is_none() && !stack.loader.marks_in_file() {
        ui.warn(format!(
            "no journal ({STATE_FILE}): gpt cannot tell the arguments it may have added to {} \
             from yours, since that file can hold no mark of gpt's; if `gpt check` or the file \
             shows vfio-pci.ids= or IOMMU arguments you did not add, remove them yourself and run `{}`",
            stack.loader.entries_source(),
            stack.loader.regenerate_hint()
        ));
    }
    if state.is_none() && items.iter().any(Item::changes) {
        ui.info(format!(
            "no journal ({STATE_FILE}): undoing what gpt marked as its own in the files themselves"
        ));
    }

    Ok(items)
}

/// Apply the reset, with the loader's own check that the entries were regenerated.
#[allow(clippy::too_many_arguments)]
fn apply(
    host: &Host,
    ui: &Ui,
    lock: &txn::Lock,
    facts: &Facts,
    stack: &Stack,
    plan: &Plan,
    metas: &[(PathBuf, Meta)],
    added: &[String],
) -> Result<txn::Outcome> {
    let loader_steps = stack.loader.regenerate(facts);
    let entries_regenerated = plan
        .commands
        .iter()
        .any(|c| loader_steps.iter().any(|r| r.argv == c.argv));
    let confirm = |runner: &Runner| {
        if entries_regenerated {
            // A loader whose entries gpt cannot read says so (the Proxmox ESPs it could not mount).
            if let crate::boot::Entries::Unchecked(why) = stack.loader.entries(host, facts, added) {
                runner.progress().info(&format!("note: {why}"));
            }
            stack.loader.confirm(host, facts, &[], added)
        } else {
            Ok(())
        }
    };
    txn::apply_verified(
        &Runner::new(host, ui),
        lock,
        plan,
        Finish::Forget,
        metas,
        &confirm,
    )
}

/// The stack to regenerate with: the host's as it is now; if that cannot be told, the one gpt
/// configured. Says so when they differ (a generator installed since `gpt full`).
fn stack_now(ui: &Ui, facts: &Facts, state: Option<&State>) -> Stack {
    let configured = state.and_then(|s| s.config.as_ref()).map(|c| c.boot);
    match (&facts.boot, configured) {
        (Some(Ok(now)), Some(then)) if *now != then => {
            ui.info(format!(
                "gpt configured this host when it had {then}; it now has {now}: undoing both, regenerating with the latter"
            ));
            Stack::of(*now)
        }
        (Some(Ok(now)), _) => Stack::of(*now),
        (Some(Err(why)), Some(then)) => {
            ui.warn(format!(
                "{why}; regenerating with what gpt configured ({then})"
            ));
            Stack::of(then)
        }
        (_, then) => Stack::of(then.unwrap_or_default()),
    }
}
