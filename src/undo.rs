//! What `gpt reset` does to a file gpt changed that the user edited afterwards, or to a file
//! that carries gpt's marks: take out only gpt's part, keep everything else. Pure: the file's
//! bytes in, the decision out; the boot stacks say which file is whose.

use crate::boot;
use crate::edit::{early, modprobe, modules};
use crate::plan::FileAction;
use anyhow::{Context, Result};
use std::path::Path;

/// What reset does to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Leave it as it is, and why.
    Unchanged(&'static str),
    /// Write `after` (`None`: remove the file).
    Write {
        after: Option<String>,
        action: FileAction,
        note: &'static str,
    },
}

/// The loader whose reading of an argument file counts (see [`args_owner`]).
pub type Owner = Option<&'static dyn boot::Loader>;

/// The loader whose argument file `path` is: `first` (the loader of the stack gpt
/// configured, as its journal records it) when it owns the path, else the first loader gpt
/// knows that does. Two loaders can own one file and read it differently
/// (`/etc/kernel/cmdline`: kernel-install reads every line, proxmox-boot-tool the first).
pub fn args_owner(path: &Path, first: Owner) -> Option<&'static dyn boot::Loader> {
    first
        .into_iter()
        .chain(boot::loaders())
        .find(|l| l.owns(path))
}

/// The generator, of every generator gpt knows, whose modules file `path` is.
pub fn modules_owner(path: &Path) -> Option<&'static dyn boot::Generator> {
    boot::generators().into_iter().find(|g| g.owns(path))
}

/// A journalled file the user changed after gpt wrote it (`content`, as text): take out only
/// gpt's part of it. `written` is what gpt last wrote, `original` the file before gpt, `added`
/// the arguments gpt added to an argument file.
pub fn edited(
    path: &Path,
    content: &str,
    written: Option<&[u8]>,
    original: Option<&[u8]>,
    added: &[String],
    owner: Owner,
) -> Result<Undo> {
    let gpt_conf = written
        .and_then(|w| std::str::from_utf8(w).ok())
        .is_some_and(|w| modprobe::is_gpt_owned(w) || early::is_gpt_script(w));
    let kept = "you changed it after gpt wrote it: removed only gpt's part and kept your changes";
    if let Some(loader) = args_owner(path, owner) {
        let after = loader
            .strip_args(path, content, added)
            .with_context(|| format!("cannot take gpt's arguments out of {}", path.display()))?;
        if after == content {
            return Ok(Undo::Unchanged(
                "you changed it after gpt wrote it and gpt's marker is gone; left as is",
            ));
        }
        return Ok(Undo::Write {
            after: Some(after),
            action: FileAction::Edited,
            note: kept,
        });
    }
    if let Some(Some(after)) = modules_owner(path)
        .map(|g| g.strip(path, content))
        .transpose()?
    {
        if after == content {
            return Ok(Undo::Unchanged(
                "you changed it after gpt wrote it and gpt's block is gone; left as is",
            ));
        }
        return Ok(Undo::Write {
            after: Some(after),
            action: FileAction::Edited,
            note: kept,
        });
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
    let (rest, _) = modules::remove_lines(content, |l| {
        let l = l.strip_suffix('\r').unwrap_or(l);
        gpt_lines.contains(&l)
    });
    let only_comments = rest
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if gpt_conf && original.is_empty() && only_comments {
        return Ok(Undo::Write {
            after: None,
            action: FileAction::Removed,
            note: "gpt's own file, which you changed only by comments or blank lines: removed",
        });
    }
    if rest == content {
        return Ok(Undo::Unchanged(
            "you changed it after gpt wrote it and none of gpt's lines are left; left as is",
        ));
    }
    let note = if gpt_conf {
        "you added lines to gpt's own file: removed gpt's lines and kept yours (the file is no longer gpt's)"
    } else {
        kept
    };
    Ok(Undo::Write {
        after: Some(rest),
        action: FileAction::Edited,
        note,
    })
}

/// `content` without gpt's marked part (`None` inside: the file goes), and what was done;
/// `None` when the file carries no mark of gpt's.
pub fn unmark(
    path: &Path,
    content: &str,
    owner: Owner,
) -> Result<Option<(Option<String>, &'static str)>> {
    if let Some(loader) = args_owner(path, owner) {
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
    Ok(modprobe::is_gpt_owned(content).then_some((None, "gpt's own file (says its first line)")))
}
