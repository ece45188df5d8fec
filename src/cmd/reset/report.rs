//! What reset shows: each file, the dry run, the commands left to run, the JSON, the result.

use super::items::Item;
use crate::cmd::session::{FileJson, Session};
use crate::host::Host;
use crate::plan::{FileAction, Plan, Step};
use crate::runner::Runner;
use crate::txn::{self, Finish};
use crate::ui::Ui;
use anyhow::Result;
use serde::Serialize;

#[derive(Serialize)]
pub(super) struct Report {
    changed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    files: Vec<FileJson>,
    commands: Vec<Vec<String>>,
    reboot_required: bool,
}

pub(super) fn dry_run(ui: &Ui, items: &[Item], run_now: &[Step], manual: &[Step]) -> Result<u8> {
    let shown: Vec<Vec<String>> = run_now.iter().map(|s| s.argv.clone()).collect();
    if !ui.json {
        if !run_now.is_empty() {
            crate::ui::out("\nCommands:\n");
            for c in run_now {
                crate::ui::out(&format!("  {}\n", c.shell_line()));
            }
        }
    } else {
        report(ui, false, true, items, shown, false)?;
    }
    print_manual(ui, manual);
    ui.info("dry run: nothing was changed; run the same command without --dry-run to apply it");
    Ok(0)
}

/// What reset tells: the trap's warning, the commands left to run, the JSON, the result.
pub(super) fn finish(
    ui: &Ui,
    plan: &Plan,
    items: &[Item],
    outcome: &txn::Outcome,
    manual: &[Step],
    trap: &[(String, &str)],
) -> Result<u8> {
    for (path, tool) in trap {
        ui.warn(format!(
            "removed {path}, which gpt had created: until you reboot, a kernel or initramfs update makes {tool} read /proc/cmdline, which still holds gpt's arguments; reboot soon (`gpt check` flags an entry that carries them)"
        ));
    }
    let changed = !plan.files.is_empty();
    print_manual(ui, manual);
    if ui.json {
        report(ui, changed, false, items, outcome.commands.clone(), changed)?;
    }
    if changed {
        ui.ok(format!(
            "reset {} file{}; reboot to give the GPU back to its driver",
            plan.files.len(),
            if plan.files.len() == 1 { "" } else { "s" }
        ));
    } else if !manual.is_empty() {
        ui.ok(
            "nothing of gpt's is left in /etc; the boot entries and the initramfs follow once you \
             run the commands above",
        );
    } else {
        ui.ok("the boot entries and the initramfs match /etc again");
    }
    Ok(0)
}

pub(super) fn nothing_to_reset(
    host: &Host,
    session: &Session,
    journal: bool,
    items: &[Item],
) -> Result<u8> {
    let ui = session.ui;
    match session.lock() {
        Some(lock) if journal => {
            // A journal whose files are all back already (restored by hand): drop it.
            txn::apply_with(
                &Runner::new(host, ui),
                lock,
                &Plan::default(),
                Finish::Forget,
                &[],
            )?;
            ui.ok("nothing to reset: gpt's files are already as they were (removed its journal)");
        }
        _ => ui.ok("nothing to reset"),
    }
    if ui.json {
        report(ui, false, session.dry_run(), items, Vec::new(), false)?;
    }
    Ok(0)
}

pub(super) fn report(
    ui: &Ui,
    changed: bool,
    dry_run: bool,
    items: &[Item],
    commands: Vec<Vec<String>>,
    reboot_required: bool,
) -> Result<()> {
    ui.print_json(&Report {
        changed,
        dry_run,
        files: items
            .iter()
            .map(|i| FileJson::new(&i.path, i.action))
            .collect(),
        commands,
        reboot_required,
    })
}

pub(super) fn print_manual(ui: &Ui, manual: &[Step]) {
    if manual.is_empty() {
        return;
    }
    ui.warn(format!(
        "--no-update: the boot entries and the initramfs still carry gpt's configuration until you run: {} \
         (or `gpt reset` again, which runs them)",
        manual
            .iter()
            .map(|s| format!("`{}`", s.shell_line()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

pub(super) fn describe(ui: &Ui, item: &Item) {
    let path = item.path.display();
    let what = match item.action {
        FileAction::Restored => format!("restore {path}: back to its bytes from before gpt"),
        FileAction::Removed => format!("remove {path}"),
        FileAction::Edited => format!("edit {path}"),
        FileAction::Created => format!("create {path}"),
        FileAction::Modified => format!("change {path}"),
        FileAction::Unchanged => format!("leave {path}"),
    };
    match &item.note {
        Some(n) if item.action == FileAction::Unchanged => ui.warn(format!("{what}: {n}")),
        Some(n) => ui.info(format!("{what}: {n}")),
        None if item.action == FileAction::Unchanged => {}
        None => ui.info(what),
    }
}
