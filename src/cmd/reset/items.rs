//! What reset does to each file gpt touched: the journalled ones, and gpt's marks found in
//! the files themselves.

use crate::boot::{self};
use crate::host::Host;
use crate::paths::MODPROBE_D;
use crate::plan::{FileAction, FileChange};
use crate::txn::{fs as tfs, Meta, State};
use crate::undo::{Owner, Undo};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// One file and what reset does to it.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) path: PathBuf,
    pub(super) action: FileAction,
    /// What a person should know (an edit kept, a file left alone).
    pub(super) note: Option<String>,
    pub(super) before: Option<Vec<u8>>,
    pub(super) after: Option<Vec<u8>>,
    /// Exact mode and owner to give the file (restoring an original).
    pub(super) meta: Option<Meta>,
}

impl Item {
    pub(super) fn unchanged(path: &Path, note: Option<String>) -> Item {
        Item {
            path: path.to_path_buf(),
            action: FileAction::Unchanged,
            note,
            before: None,
            after: None,
            meta: None,
        }
    }

    pub(super) fn changes(&self) -> bool {
        self.action != FileAction::Unchanged
    }

    pub(super) fn change(&self) -> FileChange {
        let mut c = FileChange::new(&self.path, self.before.clone(), self.after.clone());
        if let Some(m) = self.meta {
            c.new_mode = m.mode;
        }
        c
    }
}

pub(super) fn text(path: &Path, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .with_context(|| format!("{} is not text; gpt leaves it alone", path.display()))
}

/// What to do with each journalled file.
pub(super) fn journalled(
    host: &Host,
    state: &State,
    added: &[String],
    owner: Owner,
) -> Result<Vec<Item>> {
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
                meta: Some(e.meta_to_restore(cur.as_ref().map(|c| c.meta))?),
                path,
            }
        } else {
            edited(
                &path,
                cur.as_ref(),
                written.as_deref(),
                original.as_deref(),
                added,
                owner,
            )?
        };
        items.push(item);
    }
    Ok(items)
}

/// A journalled file the user changed after gpt wrote it: take out only gpt's part.
pub(super) fn edited(
    path: &Path,
    cur: Option<&tfs::Current>,
    written: Option<&[u8]>,
    original: Option<&[u8]>,
    added: &[String],
    owner: Owner,
) -> Result<Item> {
    let Some(cur) = cur else {
        return Ok(Item::unchanged(
            path,
            Some("it was removed after gpt wrote it; left absent".into()),
        ));
    };
    let content = text(path, &cur.bytes)?;
    Ok(
        match crate::undo::edited(path, &content, written, original, added, owner)? {
            Undo::Unchanged(note) => Item::unchanged(path, Some(note.into())),
            Undo::Write {
                after,
                action,
                note,
            } => Item {
                path: path.to_path_buf(),
                action,
                note: Some(note.to_string()),
                before: Some(cur.bytes.clone()),
                after: after.map(String::into_bytes),
                meta: None,
            },
        },
    )
}

/// gpt's marks found in the files themselves: in every boot stack's argument and module
/// files (the host's stack may have changed since), and gpt's own modprobe.d files.
pub(super) fn marked(host: &Host, owner: Owner) -> Result<Vec<Item>> {
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
        let Some((after, note)) = crate::undo::unmark(&path, &content, owner)? else {
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
