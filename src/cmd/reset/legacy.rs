//! `--legacy`: the old setup.sh's leftovers, one at a time.

use super::items::Item;
use crate::cmd::session::Session;
use crate::host::Host;
use crate::plan::{FileAction, FileChange, Plan};
use crate::txn::fs as tfs;
use anyhow::Result;

/// `--legacy`: find the old setup.sh's leftovers as the files will be after this reset, show
/// each one, and add those the user accepts to the plan.
pub(super) fn legacy(
    host: &Host,
    session: &Session,
    plan: &mut Plan,
    items: &mut Vec<Item>,
) -> Result<()> {
    let ui = session.ui;
    let leftovers = crate::leftovers::find(&crate::leftovers::Files::read(host, plan)?)?;
    if leftovers.is_empty() {
        ui.info("no leftovers of the old setup.sh");
        return Ok(());
    }
    for left in leftovers {
        ui.step(format!("old setup.sh leftover: {}", left.description));
        let diffs: String = left.changes.iter().map(FileChange::diff).collect();
        session.show(&diffs);
        if !session.confirm("Remove it?")? {
            ui.info("kept");
            continue;
        }
        for c in left.changes {
            let action = match (&c.before, &c.after) {
                (None, Some(_)) => FileAction::Created,
                (Some(_), None) => FileAction::Removed,
                _ => FileAction::Edited,
            };
            match plan.files.iter_mut().find(|f| f.path == c.path) {
                Some(f) => f.after = c.after.clone(),
                None => {
                    let before = tfs::read(host, &c.path)?.map(|x| x.bytes);
                    let mut change = FileChange::new(&c.path, before, c.after.clone());
                    change.new_mode = c.new_mode;
                    plan.files.push(change);
                }
            }
            match items.iter_mut().find(|i| i.path == c.path) {
                Some(i) if i.action == FileAction::Unchanged => i.action = action,
                Some(_) => {}
                None => items.push(Item {
                    path: c.path.clone(),
                    action,
                    note: None,
                    before: c.before,
                    after: c.after,
                    meta: None,
                }),
            }
        }
    }
    plan.files.retain(|f| !f.is_noop());
    Ok(())
}
