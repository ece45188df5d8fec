//! In which order reset's writes and the regeneration go, and which regeneration is due.

use super::items::text;
use crate::boot::Stack;
use crate::cli::ResetArgs;
use crate::facts::Facts;
use crate::plan::{FileChange, Plan, Step};
use crate::ui::Ui;
use crate::undo::{args_owner, Owner};
use anyhow::Result;

/// The fallback trap: without the file gpt created, the loader's tool reads /proc/cmdline,
/// which holds gpt's arguments while the host runs with them. So the cleaned line is
/// written first, the entries are regenerated and checked from it, and only then does the
/// file go (the paths returned). A file the regeneration rewrites (kernelstub) gets reset's
/// bytes back after it.
pub(super) fn regeneration_order(
    ui: &Ui,
    args: &ResetArgs,
    plan: &mut Plan,
    added: &[String],
    regenerates: bool,
    owner: Owner,
) -> Result<Vec<(String, &'static str)>> {
    let mut trap = Vec::new();
    let mut rewritten = Vec::new();
    for change in plan.files.iter_mut() {
        if let Some(after) = &change.after {
            if args_owner(&change.path, owner).is_some_and(|l| l.rewritten_by_regeneration()) {
                // The regeneration (kernelstub) rewrites the file: these bytes go back after it.
                rewritten.push(FileChange::new(
                    &change.path,
                    Some(after.clone()),
                    Some(after.clone()),
                ));
            }
        }
        let Some(loader) = args_owner(&change.path, owner) else {
            continue;
        };
        let Some(tool) = loader.falls_back_to_proc_cmdline() else {
            continue;
        };
        if change.after.is_some() {
            continue;
        }
        let now = text(&change.path, change.before.as_deref().unwrap_or_default())?;
        let cleaned = loader.strip_args(&change.path, &now, added)?.into_bytes();
        change.after = Some(cleaned.clone());
        if args.no_update {
            ui.warn(format!(
                "--no-update: {} keeps your line without gpt's arguments; remove it yourself once the entries are regenerated (without it, {tool} reads /proc/cmdline, which still holds gpt's arguments until you reboot)",
                change.path.display()
            ));
        } else {
            plan.after_commands
                .push(FileChange::new(&change.path, Some(cleaned), None));
            trap.push((change.path.display().to_string(), tool));
        }
    }

    if regenerates {
        plan.after_commands.extend(rewritten);
    }
    Ok(trap)
}

/// The boot entries when an argument file changed; the images when anything else under /etc
/// changed that can go into them (not /etc/default); all of it when an earlier run left an
/// update owed.
pub(super) fn update_commands(
    facts: &Facts,
    stack: &Stack,
    plan: &Plan,
    owed: bool,
    owner: Owner,
) -> Vec<Step> {
    let args = owed
        || plan
            .files
            .iter()
            .any(|f| args_owner(&f.path, owner).is_some());
    let images = owed
        || plan.files.iter().any(|f| {
            args_owner(&f.path, owner).is_none()
                && !f.path.starts_with("/etc/default")
                && !f.path.starts_with(crate::single_gpu::HOOK_DIR)
        });
    stack.regenerate(facts, args, images)
}
