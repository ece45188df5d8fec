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

use crate::cli::ResetArgs;
use crate::edit;
use crate::host::Host;
use crate::plan::{FileAction, FileChange, Plan, Step};
use crate::state::STATE_FILE;
use crate::txn::{self, fs as tfs, Finish, Lock, Meta, Runner, State};
use crate::ui::Ui;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

const GRUB: &str = "/etc/default/grub";
const GRUB_D: &str = "/etc/default/grub.d";
const MODULES: &str = "/etc/initramfs-tools/modules";
const MODPROBE_D: &str = "/etc/modprobe.d";

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
struct FileJson {
    path: String,
    action: FileAction,
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
    if !args.dry_run && host.is_real_root() && !nix::unistd::geteuid().is_root() {
        bail!(
            "gpt reset changes /etc and /boot: run it with sudo (or add --dry-run to see what it would do)"
        );
    }
    let lock = if args.dry_run {
        None
    } else {
        Some(Lock::acquire(host)?)
    };
    let state = State::load(host)?;
    let mut items = match &state {
        Some(s) => journalled(host, s)?,
        None => Vec::new(),
    };
    // gpt's marks in files the journal does not cover (all of them, without a journal).
    for item in marked(host)? {
        if !items.iter().any(|i| i.path == item.path) {
            items.push(item);
        }
    }
    if state.is_none() && items.iter().any(Item::changes) {
        ui.info(format!(
            "no journal ({STATE_FILE}): undoing what gpt marked as its own in the files themselves"
        ));
    }

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
        show(ui, args, &plan.render());
        if !confirm(ui, args, "Reset these files?")? {
            ui.info("nothing was changed");
            return Ok(1);
        }
    }

    if args.legacy {
        legacy(host, ui, args, &mut plan, &mut items)?;
    }

    let update_owed = state.as_ref().is_some_and(|s| s.update_needed);
    let commands = update_commands(host, &plan, update_owed)?;
    let (run_now, manual) = if args.no_update {
        (Vec::new(), commands)
    } else {
        (commands, Vec::new())
    };

    if plan.files.is_empty() && run_now.is_empty() && manual.is_empty() {
        if state.is_some() && !args.dry_run {
            // A journal whose files are all back already (restored by hand): drop it.
            let lock = lock.as_ref().expect("taken unless --dry-run");
            txn::apply_with(
                &Runner::new(host, ui),
                lock,
                &Plan::default(),
                Finish::Forget,
                &[],
            )?;
            ui.ok("nothing to reset: gpt's files are already as they were (removed its journal)");
        } else {
            ui.ok("nothing to reset");
        }
        if ui.json {
            report(ui, false, args.dry_run, &items, Vec::new(), false)?;
        }
        return Ok(0);
    }

    if args.dry_run {
        let shown: Vec<Vec<String>> = run_now.iter().map(|s| s.argv.clone()).collect();
        if !ui.json {
            if !run_now.is_empty() {
                crate::ui::out("\nCommands:\n");
                for c in &run_now {
                    crate::ui::out(&format!("  {}\n", c.shell_line()));
                }
            }
        } else {
            report(ui, false, true, &items, shown, false)?;
        }
        print_manual(ui, &manual);
        ui.info("dry run: nothing was changed");
        return Ok(0);
    }

    let lock = lock.expect("taken unless --dry-run");
    plan.commands = run_now;
    let outcome = txn::apply_with(&Runner::new(host, ui), &lock, &plan, Finish::Forget, &metas)?;
    let changed = !plan.files.is_empty();
    print_manual(ui, &manual);
    if ui.json {
        report(
            ui,
            changed,
            false,
            &items,
            outcome.commands.clone(),
            changed,
        )?;
    }
    if changed {
        ui.ok(format!(
            "reset {} file{}; reboot to give the GPU back to its driver",
            plan.files.len(),
            if plan.files.len() == 1 { "" } else { "s" }
        ));
    } else {
        ui.ok("grub.cfg and the initramfs match /etc again");
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
            .map(|i| FileJson {
                path: i.path.display().to_string(),
                action: i.action,
            })
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
        "--no-update: grub.cfg and the initramfs still carry gpt's configuration until you run: {} \
         (or `gpt reset` again, which runs them)",
        manual
            .iter()
            .map(|s| format!("`{}`", s.shell_line()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

/// Diffs are the product of a dry run (stdout); otherwise they go with the question (stderr).
fn show(ui: &Ui, args: &ResetArgs, text: &str) {
    if args.dry_run && !ui.json {
        crate::ui::out(text);
    } else if !args.dry_run {
        eprint!("{text}");
    }
}

/// Ask, unless `--yes` or `--dry-run`; refuse rather than hang without a terminal.
fn confirm(ui: &Ui, args: &ResetArgs, question: &str) -> Result<bool> {
    if args.yes || args.dry_run {
        return Ok(true);
    }
    if !ui.interactive {
        bail!(
            "no terminal to ask on: re-run with --yes to apply this, or --dry-run to only see it; nothing was changed"
        );
    }
    Ok(dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()?)
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

fn is_grub_file(path: &Path) -> bool {
    path == Path::new(GRUB)
        || (path.starts_with(GRUB_D) && path.extension().is_some_and(|e| e == "cfg"))
}

/// What to do with each journalled file.
fn journalled(host: &Host, state: &State) -> Result<Vec<Item>> {
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
            edited(&path, cur.as_ref(), written.as_deref(), original.as_deref())?
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
        .is_some_and(edit::modprobe::is_gpt_owned);
    let kept = "you changed it after gpt wrote it: removed only gpt's part and kept your changes";
    if is_grub_file(path) {
        let after = edit::grub::reverse(&content)
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
    if path == Path::new(MODULES) {
        let after = edit::modules::reverse(&content);
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

/// gpt's marks found in the files themselves: grub markers, the modules block, the owned
/// modprobe.d files.
fn marked(host: &Host) -> Result<Vec<Item>> {
    let mut candidates = vec![PathBuf::from(GRUB)];
    for name in host.list_dir(GRUB_D)? {
        if name.ends_with(".cfg") {
            candidates.push(Path::new(GRUB_D).join(name));
        }
    }
    candidates.push(PathBuf::from(MODULES));
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
        let (after, note) = if is_grub_file(&path) {
            if edit::grub::added_tokens(&content).is_empty() {
                continue;
            }
            let after = edit::grub::reverse(&content).with_context(|| {
                format!("cannot take gpt's arguments out of {}", path.display())
            })?;
            (
                Some(after),
                "removed the arguments gpt's marker lists, and the marker",
            )
        } else if path == Path::new(MODULES) {
            if !edit::modules::has_block(&content) {
                continue;
            }
            (
                Some(edit::modules::reverse(&content)),
                "removed gpt's block",
            )
        } else if edit::modprobe::is_gpt_owned(&content) {
            (None, "gpt's own file (says its first line)")
        } else {
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

/// `--legacy`: find the old setup.sh's leftovers as the files will be after this reset, show
/// each one, and add those the user accepts to the plan.
fn legacy(
    host: &Host,
    ui: &Ui,
    args: &ResetArgs,
    plan: &mut Plan,
    items: &mut Vec<Item>,
) -> Result<()> {
    // A scratch copy of the files legacy::scan reads, as they will be after the reset.
    let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
    let view = Host::new(scratch.path());
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in ["/etc/default", MODPROBE_D, "/etc/initramfs-tools"] {
        for name in host.list_dir(dir)? {
            paths.push(Path::new(dir).join(name));
        }
    }
    for p in &paths {
        let planned = plan.files.iter().find(|f| &f.path == p);
        let bytes = match planned {
            Some(f) => f.after.clone(),
            None => match tfs::read(host, p) {
                Ok(c) => c.map(|c| c.bytes),
                Err(_) => None, // folders and the like: legacy::scan does not read them
            },
        };
        if let Some(b) = bytes {
            let at = view.path(p);
            std::fs::create_dir_all(at.parent().expect("under a folder"))?;
            std::fs::write(at, b)?;
        }
    }
    let leftovers = crate::legacy::scan(&view)?;
    if leftovers.is_empty() {
        ui.info("no leftovers of the old setup.sh");
        return Ok(());
    }
    for left in leftovers {
        ui.step(format!("old setup.sh leftover: {}", left.description));
        let diffs: String = left.changes.iter().map(FileChange::diff).collect();
        show(ui, args, &diffs);
        if !confirm(ui, args, "Remove it?")? {
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
                    // The real file is what the scratch copy was made from.
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

/// update-grub when a grub file changed; depmod and update-initramfs when an initramfs
/// input changed; all of them when an earlier run left an update owed.
fn update_commands(host: &Host, plan: &Plan, owed: bool) -> Result<Vec<Step>> {
    let grub = owed || plan.files.iter().any(|f| is_grub_file(&f.path));
    let initramfs = owed
        || plan
            .files
            .iter()
            .any(|f| !is_grub_file(&f.path) && !f.path.starts_with("/etc/default"));
    let mut steps = Vec::new();
    if grub {
        steps.push(Step::new("Regenerating grub.cfg", &["update-grub"]));
    }
    if initramfs {
        for k in host.list_dir("/lib/modules")? {
            if host.resolve(format!("/lib/modules/{k}"))?.is_dir() {
                steps.push(Step::new(
                    &format!("Updating module dependencies for {k}"),
                    &["depmod", "-a", &k],
                ));
            }
        }
        steps.push(Step::new(
            "Rebuilding the initramfs images",
            &["update-initramfs", "-u", "-k", "all"],
        ));
    }
    Ok(steps)
}
