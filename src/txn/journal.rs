//! The journal in `/var/lib/gpt`: `state.json` plus copies of every file's original bytes and
//! of what gpt wrote, so that `reset` can return each file to its pre-gpt bytes and tell a
//! user's later edit from gpt's own.
//!
//! ```json
//! {
//!   "version": 1,
//!   "config": { … what `full` configured (state::Config) … },
//!   "files": [
//!     {"path": "/etc/default/grub", "existed": true, "mode": 420, "uid": 0, "gid": 0,
//!      "original": "originals/1", "written": "written/1.2"}
//!   ],
//!   "created_dirs": [],
//!   "update_needed": false,
//!   "generation": 2
//! }
//! ```
//!
//! - `original` is the file as it was before gpt first touched it (`null` when it did not
//!   exist); it is written once and kept by later runs. `mode`/`uid`/`gid` are the original's.
//! - `written` is what gpt last wrote (`null`: gpt left the file absent). Its name carries the
//!   generation, so a blob a saved state points at is never overwritten.
//! - `created_dirs`: folders gpt created, removed again by `reset` when empty.
//! - `update_needed`: `/etc` may be ahead of grub.cfg and the initramfs (a run was stopped,
//!   a rollback could not re-run a command, or `--no-update`): the next `full` or `reset`
//!   runs update-grub and update-initramfs even if no file changes.
//! - Deterministic: no timestamps; the same runs give the same bytes.

use super::fs::{self as tfs, Meta};
use crate::host::Host;
use crate::state::{Config, STATE_DIR, STATE_FILE};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const VERSION: u32 = 1;
const ORIGINALS: &str = "originals";
const WRITTEN: &str = "written";

/// One journalled file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// As on the target host.
    pub path: String,
    pub existed: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Blob with the original bytes, relative to the state folder.
    pub original: Option<String>,
    /// Blob with what gpt last wrote; `None`: gpt left the file absent.
    pub written: Option<String>,
}

impl Entry {
    pub fn original_meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub config: Option<Config>,
    #[serde(default)]
    pub files: Vec<Entry>,
    #[serde(default)]
    pub created_dirs: Vec<String>,
    #[serde(default)]
    pub update_needed: bool,
    #[serde(default)]
    pub generation: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: VERSION,
            config: None,
            files: Vec::new(),
            created_dirs: Vec::new(),
            update_needed: false,
            generation: 0,
        }
    }
}

fn blob_abs(rel: &str) -> PathBuf {
    Path::new(STATE_DIR).join(rel)
}

impl State {
    /// The journal of this host: `None` when there is none. A corrupt one is an error that
    /// says what to do.
    pub fn load(host: &Host) -> Result<Option<State>> {
        let Some(raw) = load_raw(host)? else {
            return Ok(None);
        };
        Ok(Some(parse(&raw)?))
    }

    pub fn entry(&self, path: &Path) -> Option<&Entry> {
        self.files.iter().find(|e| Path::new(&e.path) == path)
    }

    /// Read a blob this state points at.
    pub fn blob(host: &Host, rel: &str) -> Result<Vec<u8>> {
        let abs = blob_abs(rel);
        match tfs::read(host, &abs)? {
            Some(c) => Ok(c.bytes),
            None => bail!(
                "the journal is damaged: {} is missing; move {STATE_FILE} aside and run `gpt reset` \
                 to clean up from the files themselves",
                abs.display()
            ),
        }
    }

    /// The original bytes of an entry (`None`: the file did not exist).
    pub fn original(&self, host: &Host, e: &Entry) -> Result<Option<Vec<u8>>> {
        e.original
            .as_deref()
            .map(|r| Self::blob(host, r))
            .transpose()
    }

    /// What gpt last wrote (`None`: gpt left the file absent).
    pub fn written(&self, host: &Host, e: &Entry) -> Result<Option<Vec<u8>>> {
        e.written
            .as_deref()
            .map(|r| Self::blob(host, r))
            .transpose()
    }

    /// Every blob this state points at.
    fn blobs(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .flat_map(|e| [e.original.clone(), e.written.clone()])
            .flatten()
            .collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut s = serde_json::to_string_pretty(self).expect("the state serializes");
        s.push('\n');
        s.into_bytes()
    }
}

pub(crate) fn load_raw(host: &Host) -> Result<Option<Vec<u8>>> {
    Ok(tfs::read(host, Path::new(STATE_FILE))?.map(|c| c.bytes))
}

pub(crate) fn parse(raw: &[u8]) -> Result<State> {
    let state: State = serde_json::from_slice(raw).with_context(|| {
        format!(
            "{STATE_FILE} is corrupt; move it aside and run `gpt reset` to clean up from the files themselves"
        )
    })?;
    if state.version != VERSION {
        bail!(
            "{STATE_FILE} has version {} and this gpt reads version {VERSION}: use the gpt that wrote it",
            state.version
        );
    }
    Ok(state)
}

/// Write a blob (mode 0600: it may be a copy of a private file) and return the folders made.
pub(crate) fn write_blob(host: &Host, rel: &str, bytes: &[u8]) -> Result<Vec<PathBuf>> {
    tfs::write(
        host,
        &blob_abs(rel),
        bytes,
        Some(Meta::new_file(0o600)),
        0o600,
    )
}

pub(crate) fn original_name(index: usize) -> String {
    format!("{ORIGINALS}/{index}")
}

pub(crate) fn written_name(index: usize, generation: u64) -> String {
    format!("{WRITTEN}/{index}.{generation}")
}

/// Remove the blobs `old` points at and `new` does not (a blob no saved state points at is
/// never read; blobs of unknown origin, such as those of a journal moved aside, are left).
pub(crate) fn drop_blobs(host: &Host, old: Option<&State>, new: Option<&State>) -> Result<()> {
    let keep = new.map(State::blobs).unwrap_or_default();
    for rel in old.map(State::blobs).unwrap_or_default() {
        if !keep.contains(&rel) {
            tfs::remove(host, &blob_abs(&rel))?;
        }
    }
    Ok(())
}

/// Stale temp files in the state folders.
pub(crate) fn clean_temps(host: &Host) -> Result<()> {
    for dir in [
        PathBuf::from(STATE_DIR),
        Path::new(STATE_DIR).join(ORIGINALS),
        Path::new(STATE_DIR).join(WRITTEN),
    ] {
        tfs::clean_temps(host, &dir)?;
    }
    Ok(())
}

/// Remove the journal `state` (the state file first: from then on there is no journal),
/// then its blobs — every blob, with `all_blobs`, when `state` was a valid journal and so
/// owns the folder — then the state folders and the folders gpt created, when empty.
pub(crate) fn remove_all(host: &Host, state: &State, all_blobs: bool) -> Result<()> {
    tfs::remove(host, Path::new(STATE_FILE))?;
    drop_blobs(host, Some(state), None)?;
    if all_blobs {
        for sub in [ORIGINALS, WRITTEN] {
            let dir = Path::new(STATE_DIR).join(sub);
            for name in host.list_dir(&dir)? {
                tfs::remove(host, &dir.join(name))?;
            }
        }
    }
    let mut dirs: Vec<PathBuf> = vec![
        Path::new(STATE_DIR).join(ORIGINALS),
        Path::new(STATE_DIR).join(WRITTEN),
        PathBuf::from(STATE_DIR),
    ];
    dirs.extend(state.created_dirs.iter().map(PathBuf::from));
    tfs::remove_dirs_if_empty(host, &dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_format_is_stable() {
        let s = State {
            files: vec![Entry {
                path: "/etc/default/grub".into(),
                existed: true,
                mode: 0o644,
                uid: 0,
                gid: 0,
                original: Some(original_name(1)),
                written: Some(written_name(1, 2)),
            }],
            generation: 2,
            ..State::default()
        };
        let json = String::from_utf8(s.to_json()).unwrap();
        assert!(json.starts_with("{\n  \"version\": 1,\n  \"config\": null,\n  \"files\": [\n"));
        assert!(json.contains("\"original\": \"originals/1\""));
        assert!(json.contains("\"written\": \"written/1.2\""));
        assert_eq!(parse(json.as_bytes()).unwrap(), s);
        // Older or hand-made files with only the required keys load too.
        let min = parse(br#"{"version":1,"config":null}"#).unwrap();
        assert_eq!(min, State::default());
        assert!(parse(b"{not json").is_err());
        let err = parse(br#"{"version":7,"config":null}"#).unwrap_err();
        assert!(format!("{err:#}").contains("version 7"));
    }
}
