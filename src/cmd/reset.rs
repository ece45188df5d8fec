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
//! left, one leftover at a time. Then update-grub, depmod and update-initramfs run (only for
//! what changed) through the same transaction and rollback as `full`, and the journal goes.

use super::session::{FileJson, Session};
use crate::boot::{self, Stack};
use crate::cli::ResetArgs;
use crate::edit;
use crate::facts::Facts;
use crate::host::Host;
use crate::paths::MODPROBE_D;
use crate::plan::{FileAction, FileChange, Plan, Step};
use crate::state::STATE_FILE;
use crate::txn::{self, fs as tfs, Finish, Meta, Runner, State};
use crate::ui::Ui;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One file and what reset does to it.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    action: FileAction,
    /// What a person should know (an edit kept, a file left alone).
    note: Option<String>,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    /// Exact mode and owner to give the file (restoring an original).
    meta: Option<Meta>,
}

impl Item {
    fn unchanged(path: &Path, note: Option<String>) -> Item {
        Item {
            path: path.to_path_buf(),
            action: FileAction::Unchanged,
            note,
            before: None,
            after: None,
            meta: None,
        }
    }

    fn changes(&self) -> bool {
        self.action != FileAction::Unchanged
    }

    fn change(&self) -> FileChange {
        let mut c = FileChange::new(&self.path, self.before.clone(), self.after.clone());
        if let Some(m) = self.meta {
            c.new_mode = m.mode;
        }
        c
    }
}

#[derive(Serialize)]
struct Report {
    changed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    files: Vec<FileJson>,
    commands: Vec<Vec<String>>,
    reboot_required: bool,
}

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
    // The arguments gpt added, for argument files that can hold no mark of gpt's.
    let added: Vec<String> = state
        .as_ref()
        .and_then(|s| s.config.as_ref())
        .map(|c| c.added_args.clone())
        .unwrap_or_default();
    let mut items = items_to_reset(host, ui, state.as_ref(), &stack, &added)?;
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
    let commands = update_commands(&facts, &stack, &plan, update_owed);
    let (run_now, manual) = if args.no_update {
        (Vec::new(), commands)
    } else {
        (commands, Vec::new())
    };

    if plan.files.is_empty() && run_now.is_empty() && manual.is_empty() {
        return nothing_to_reset(host, &session, state.is_some(), &items);
    }
    if session.dry_run() {
        return dry_run(ui, &items, &run_now, &manual);
    }
    let trap = regeneration_order(ui, args, &mut plan, &added, !run_now.is_empty())?;
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
) -> Result<Vec<Item>> {
    let mut items = match state {
        Some(s) => journalled(host, s, added)?,
        None => Vec::new(),
    };
    for item in marked(host)? {
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

fn dry_run(ui: &Ui, items: &[Item], run_now: &[Step], manual: &[Step]) -> Result<u8> {
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
    ui.info("dry run: nothing was changed");
    Ok(0)
}

/// The fallback trap: without the file gpt created, kernel-install reads /proc/cmdline,
/// which holds gpt's arguments while the host runs with them. So the cleaned line is
/// written first, the entries are regenerated and checked from it, and only then does the
/// file go (the paths returned). A file the regeneration rewrites (kernelstub) gets reset's
/// bytes back after it.
fn regeneration_order(
    ui: &Ui,
    args: &ResetArgs,
    plan: &mut Plan,
    added: &[String],
    regenerates: bool,
) -> Result<Vec<String>> {
    let mut trap = Vec::new();
    let mut rewritten = Vec::new();
    for change in plan.files.iter_mut() {
        if let Some(after) = &change.after {
            if args_owner(&change.path).is_some_and(|l| l.rewritten_by_regeneration()) {
                // The regeneration (kernelstub) rewrites the file: these bytes go back after it.
                rewritten.push(FileChange::new(
                    &change.path,
                    Some(after.clone()),
                    Some(after.clone()),
                ));
            }
        }
        let Some(loader) = args_owner(&change.path).filter(|l| l.remove_after_regeneration())
        else {
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
                "--no-update: {} keeps your line without gpt's arguments; remove it yourself once the entries are regenerated (without it, kernel-install reads /proc/cmdline, which still holds gpt's arguments until you reboot)",
                change.path.display()
            ));
        } else {
            plan.after_commands
                .push(FileChange::new(&change.path, Some(cleaned), None));
            trap.push(change.path.display().to_string());
        }
    }

    if regenerates {
        plan.after_commands.extend(rewritten);
    }
    Ok(trap)
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
                runner.ui().info(format!("note: {why}"));
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

/// What reset tells: the trap's warning, the commands left to run, the JSON, the result.
fn finish(
    ui: &Ui,
    plan: &Plan,
    items: &[Item],
    outcome: &txn::Outcome,
    manual: &[Step],
    trap: &[String],
) -> Result<u8> {
    for path in trap {
        ui.warn(format!(
            "removed {path}, which gpt had created: until you reboot, a kernel or initramfs update makes kernel-install read /proc/cmdline, which still holds gpt's arguments; reboot soon (`gpt check` flags an entry that carries them)"
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
    } else {
        ui.ok("the boot entries and the initramfs match /etc again");
    }
    Ok(0)
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

fn nothing_to_reset(host: &Host, session: &Session, journal: bool, items: &[Item]) -> Result<u8> {
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

fn report(
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

fn print_manual(ui: &Ui, manual: &[Step]) {
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

fn describe(ui: &Ui, item: &Item) {
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

fn text(path: &Path, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .with_context(|| format!("{} is not text; gpt leaves it alone", path.display()))
}

/// The loader, of every loader gpt knows, whose argument file `path` is.
fn args_owner(path: &Path) -> Option<&'static dyn boot::Loader> {
    boot::loaders().into_iter().find(|l| l.owns(path))
}

/// The generator, of every generator gpt knows, whose modules file `path` is.
fn modules_owner(path: &Path) -> Option<&'static dyn boot::Generator> {
    boot::generators().into_iter().find(|g| g.owns(path))
}

/// What to do with each journalled file.
fn journalled(host: &Host, state: &State, added: &[String]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for e in &state.files {
        let path = PathBuf::from(&e.path);
        let cur = tfs::read(host, &path)?;
        let cur_bytes = cur.as_ref().map(|c| c.bytes.clone());
        let original = state.original(host, e)?;
        let written = state.written(host, e)?;
        let item = if cur_bytes == original {
            Item::unchanged(&path, None)
        } else if cur_bytes == written {
            // Exactly as gpt left it: the original comes back, mode and owner too.
            Item {
                action: if original.is_some() {
                    FileAction::Restored
                } else {
                    FileAction::Removed
                },
                note: None,
                before: cur_bytes,
                after: original,
                meta: Some(e.original_meta()),
                path,
            }
        } else {
            edited(
                &path,
                cur.as_ref(),
                written.as_deref(),
                original.as_deref(),
                added,
            )?
        };
        items.push(item);
    }
    Ok(items)
}

/// A journalled file the user changed after gpt wrote it: take out only gpt's part.
fn edited(
    path: &Path,
    cur: Option<&tfs::Current>,
    written: Option<&[u8]>,
    original: Option<&[u8]>,
    added: &[String],
) -> Result<Item> {
    let Some(cur) = cur else {
        return Ok(Item::unchanged(
            path,
            Some("it was removed after gpt wrote it; left absent".into()),
        ));
    };
    let content = text(path, &cur.bytes)?;
    let with = |after: Option<String>, action: FileAction, note: &str| Item {
        path: path.to_path_buf(),
        action,
        note: Some(note.to_string()),
        before: Some(cur.bytes.clone()),
        after: after.map(String::into_bytes),
        meta: None,
    };
    let gpt_conf = written
        .and_then(|w| std::str::from_utf8(w).ok())
        .is_some_and(|w| edit::modprobe::is_gpt_owned(w) || edit::early::is_gpt_script(w));
    let kept = "you changed it after gpt wrote it: removed only gpt's part and kept your changes";
    if let Some(loader) = args_owner(path) {
        let after = loader
            .strip_args(path, &content, added)
            .with_context(|| format!("cannot take gpt's arguments out of {}", path.display()))?;
        if after == content {
            return Ok(Item::unchanged(
                path,
                Some(
                    "you changed it after gpt wrote it and gpt's marker is gone; left as is".into(),
                ),
            ));
        }
        return Ok(with(Some(after), FileAction::Edited, kept));
    }
    if let Some(Some(after)) = modules_owner(path)
        .map(|g| g.strip(path, &content))
        .transpose()?
    {
        if after == content {
            return Ok(Item::unchanged(
                path,
                Some(
                    "you changed it after gpt wrote it and gpt's block is gone; left as is".into(),
                ),
            ));
        }
        return Ok(with(Some(after), FileAction::Edited, kept));
    }
    // Other files (gpt-vfio.conf above all): remove the lines gpt wrote, keep the user's.
    let written = std::str::from_utf8(written.unwrap_or_default()).unwrap_or_default();
    let original = std::str::from_utf8(original.unwrap_or_default()).unwrap_or_default();
    let mut gpt_lines: Vec<&str> = written.lines().collect();
    for l in original.lines() {
        if let Some(k) = gpt_lines.iter().position(|g| *g == l) {
            gpt_lines.remove(k);
        }
    }
    let (rest, _) = edit::modules::remove_lines(&content, |l| {
        let l = l.strip_suffix('\r').unwrap_or(l);
        gpt_lines.contains(&l)
    });
    let only_comments = rest
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if gpt_conf && original.is_empty() && only_comments {
        return Ok(with(
            None,
            FileAction::Removed,
            "gpt's own file, which you changed only by comments or blank lines: removed",
        ));
    }
    if rest == content {
        return Ok(Item::unchanged(
            path,
            Some(
                "you changed it after gpt wrote it and none of gpt's lines are left; left as is"
                    .into(),
            ),
        ));
    }
    let note = if gpt_conf {
        "you added lines to gpt's own file: removed gpt's lines and kept yours (the file is no longer gpt's)"
    } else {
        kept
    };
    Ok(with(Some(rest), FileAction::Edited, note))
}

/// gpt's marks found in the files themselves: in every boot stack's argument and module
/// files (the host's stack may have changed since), and gpt's own modprobe.d files.
fn marked(host: &Host) -> Result<Vec<Item>> {
    let mut candidates = Vec::new();
    for l in boot::loaders() {
        candidates.extend(l.files(host)?);
    }
    for g in boot::generators() {
        candidates.extend(g.files(host)?);
    }
    for name in host.list_dir(MODPROBE_D)? {
        if name.ends_with(".conf") {
            candidates.push(Path::new(MODPROBE_D).join(name));
        }
    }
    let mut items = Vec::new();
    for path in candidates {
        let Some(cur) = tfs::read(host, &path).ok().flatten() else {
            continue;
        };
        let Ok(content) = String::from_utf8(cur.bytes.clone()) else {
            continue;
        };
        let Some((after, note)) = unmark(&path, &content)? else {
            continue;
        };
        if after.as_deref() == Some(content.as_str()) {
            continue;
        }
        items.push(Item {
            action: if after.is_some() {
                FileAction::Edited
            } else {
                FileAction::Removed
            },
            note: Some(note.to_string()),
            before: Some(cur.bytes),
            after: after.map(String::into_bytes),
            meta: None,
            path,
        });
    }
    Ok(items)
}

/// `content` without gpt's marked part (`None` inside: the file goes), and what was done;
/// `None` when the file carries no mark of gpt's.
fn unmark(path: &Path, content: &str) -> Result<Option<(Option<String>, &'static str)>> {
    if let Some(loader) = args_owner(path) {
        if !loader.has_marks(content) {
            return Ok(None);
        }
        let after = loader
            .strip(path, content)
            .with_context(|| format!("cannot take gpt's arguments out of {}", path.display()))?;
        return Ok(Some((
            Some(after),
            "removed the arguments gpt's marker lists, and the marker",
        )));
    }
    if let Some(g) = modules_owner(path) {
        if !g.has_marks(content) {
            return Ok(None);
        }
        return Ok(Some(match g.strip(path, content)? {
            Some(after) => (Some(after), "removed gpt's block"),
            None => (None, "gpt's own file (says its first line)"),
        }));
    }
    Ok(edit::modprobe::is_gpt_owned(content)
        .then_some((None, "gpt's own file (says its first line)")))
}

/// `--legacy`: find the old setup.sh's leftovers as the files will be after this reset, show
/// each one, and add those the user accepts to the plan.
fn legacy(host: &Host, session: &Session, plan: &mut Plan, items: &mut Vec<Item>) -> Result<()> {
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

/// The boot entries when an argument file changed; the images when anything else under /etc
/// changed that can go into them (not /etc/default); all of it when an earlier run left an
/// update owed.
fn update_commands(facts: &Facts, stack: &Stack, plan: &Plan, owed: bool) -> Vec<Step> {
    let args = owed || plan.files.iter().any(|f| args_owner(&f.path).is_some());
    let images = owed
        || plan
            .files
            .iter()
            .any(|f| args_owner(&f.path).is_none() && !f.path.starts_with("/etc/default"));
    stack.regenerate(facts, args, images)
}
