//! The journal in `/var/lib/gpt`: `state.json`, holding copies of every file's original bytes
//! and of what gpt wrote, so that `reset` can return each file to its pre-gpt bytes and tell a
//! user's later edit from gpt's own.
//!
//! ```json
//! {
//!   "version": 1,
//!   "config": { … what `full` configured (model::Config) … },
//!   "files": [
//!     {"path": "/etc/default/grub", "existed": true, "mode": 420, "uid": 0, "gid": 0,
//!      "original": "originals/1", "written": "written/1.2"}
//!   ],
//!   "created_dirs": [],
//!   "update_needed": false,
//!   "generation": 2,
//!   "blobs": {"originals/1": "GRUB_DEFAULT=0\n…", "written/1.2": "…"}
//! }
//! ```
//!
//! - `original` names the copy of the file as it was before gpt first touched it (`null` when
//!   it did not exist); it is made once and kept by later runs. `mode`/`uid`/`gid` are the
//!   original's.
//! - `written` names the copy of what gpt last wrote (`null`: gpt left the file absent). Its
//!   name carries the generation, so a name a saved state points at never changes meaning.
//! - `blobs`: the copies, by name: a string when the bytes are UTF-8, else an array of byte
//!   values. They live in `state.json` itself, so the whole journal is one atomic write (one
//!   file and folder `fsync` instead of two per copy). A name missing from `blobs` is a file
//!   `/var/lib/gpt/NAME`: journals of earlier gpt builds kept their copies that way, and they
//!   still load, reset and are cleaned up.
//! - `created_dirs`: folders gpt created, removed again by `reset` when empty.
//! - `update_needed`: `/etc` may be ahead of grub.cfg and the initramfs (a run was stopped,
//!   a rollback could not re-run a command, or `--no-update`): the next `full` or `reset`
//!   runs update-grub and update-initramfs even if no file changes.
//! - Deterministic: no timestamps; the same runs give the same bytes.
//! - Data, not instructions: every journal loaded is checked against what gpt writes
//!   (`journal_rules`), and one that is not is refused before anything changes.

use super::fs::{self as tfs, Meta};
use crate::host::Host;
pub use crate::model::{Blob, Entry, State, JOURNAL_VERSION as VERSION};
use crate::paths::{STATE_DIR, STATE_FILE};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

const ORIGINALS: &str = "originals";
const WRITTEN: &str = "written";

impl Entry {
    pub fn original_meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }

    /// The original's mode and owner, to give back to the file whose mode and owner are now
    /// `current`: refused when the owner is neither root nor the file's own (the journal is
    /// data: gpt never hands a file to another user on its word).
    pub fn meta_to_restore(&self, current: Option<Meta>) -> Result<Meta> {
        use nix::unistd::{getegid, geteuid};
        let me = (!geteuid().is_root()).then(|| (geteuid().as_raw(), getegid().as_raw()));
        let now = current.map(|m| (m.uid, m.gid));
        if !crate::journal_rules::owner_allowed((self.uid, self.gid), now, me) {
            bail!(
                "{STATE_FILE} gives {} to {}:{}, which is neither root nor its owner now, so gpt \
                 does not act on it: move it aside and run `gpt reset` to clean up from the files themselves",
                self.path,
                self.uid,
                self.gid
            );
        }
        Ok(self.original_meta())
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

    /// Read a blob this state points at: from `blobs`, else from its file (earlier builds).
    pub fn blob(&self, host: &Host, rel: &str) -> Result<Vec<u8>> {
        if let Some(b) = self.blobs.get(rel) {
            return Ok(b.bytes().to_vec());
        }
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
            .map(|r| self.blob(host, r))
            .transpose()
    }

    /// What gpt last wrote (`None`: gpt left the file absent).
    pub fn written(&self, host: &Host, e: &Entry) -> Result<Option<Vec<u8>>> {
        e.written.as_deref().map(|r| self.blob(host, r)).transpose()
    }

    /// Keep a copy of `bytes` under `name`, in the state itself.
    pub fn keep_blob(&mut self, name: &str, bytes: &[u8]) {
        self.blobs.insert(name.to_string(), Blob::new(bytes));
    }

    /// Forget the copies no entry points at any more.
    pub fn prune_blobs(&mut self) {
        let used = self.referenced();
        self.blobs.retain(|name, _| used.contains(name));
    }
}

pub(crate) fn load_raw(host: &Host) -> Result<Option<Vec<u8>>> {
    Ok(tfs::read(host, Path::new(STATE_FILE))?.map(|c| c.bytes))
}

/// The journal from its bytes, trusted only as data: its format and version
/// ([`State::parse`]), then gpt's rules for what a journal it wrote can hold
/// ([`crate::journal_rules`]).
pub(crate) fn parse(raw: &[u8]) -> Result<State> {
    let state = State::parse(raw)?;
    if let Some(why) = crate::journal_rules::check(&state) {
        bail!(
            "{STATE_FILE} is not a journal gpt wrote ({why}), so gpt does not act on it: \
             move it aside and run `gpt reset` to clean up from the files themselves"
        );
    }
    Ok(state)
}

pub(crate) fn original_name(index: usize) -> String {
    format!("{ORIGINALS}/{index}")
}

pub(crate) fn written_name(index: usize, generation: u64) -> String {
    format!("{WRITTEN}/{index}.{generation}")
}

/// Remove the blob files (journals of earlier builds) `old` points at and `new` does not (a
/// blob no saved state points at is never read; blobs of unknown origin, such as those of a
/// journal moved aside, are left). Blobs inside the state go with it.
pub(crate) fn drop_blobs(host: &Host, old: Option<&State>, new: Option<&State>) -> Result<()> {
    let keep = new.map(State::referenced).unwrap_or_default();
    let Some(old) = old else { return Ok(()) };
    for rel in old.referenced() {
        if !keep.contains(&rel) && !old.blobs.contains_key(&rel) {
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

    /// /etc/default/grub as journalled by generation `g` of a first run.
    fn grub_entry(g: u64) -> Entry {
        Entry {
            path: "/etc/default/grub".into(),
            existed: true,
            mode: 0o644,
            uid: 0,
            gid: 0,
            original: Some(original_name(1)),
            written: Some(written_name(1, g)),
        }
    }

    #[test]
    fn the_state_format_is_stable() {
        let s = State {
            files: vec![grub_entry(2)],
            generation: 2,
            ..State::default()
        };
        let json = String::from_utf8(s.to_json()).unwrap();
        assert!(json.starts_with("{\n  \"version\": 1,\n  \"config\": null,\n  \"files\": [\n"));
        assert!(json.contains("\"original\": \"originals/1\""));
        assert!(json.contains("\"written\": \"written/1.2\""));
        assert_eq!(State::parse(json.as_bytes()).unwrap(), s);
        // Older or hand-made files with only the required keys load too.
        let min = State::parse(br#"{"version":1,"config":null}"#).unwrap();
        assert_eq!(min, State::default());
        assert!(State::parse(b"{not json").is_err());
        let err = State::parse(br#"{"version":7,"config":null}"#).unwrap_err();
        assert!(format!("{err:#}").contains("version 7"));
    }

    #[test]
    fn copies_live_in_the_state_as_text_or_bytes_and_unused_ones_are_pruned() {
        let mut s = State::default();
        s.files.push(grub_entry(1));
        s.keep_blob("originals/1", b"GRUB_DEFAULT=0\n");
        s.keep_blob("written/1.1", b"# caf\xe9\nGRUB_DEFAULT=0\n"); // Latin-1, not UTF-8
        s.keep_blob("written/1.0", b"stale");
        s.prune_blobs();
        let json = String::from_utf8(s.to_json()).unwrap();
        assert!(
            json.contains("\"originals/1\": \"GRUB_DEFAULT=0\\n\""),
            "{json}"
        );
        assert!(json.contains("\"written/1.1\": [\n"), "{json}");
        assert!(!json.contains("written/1.0"), "{json}");
        let back = State::parse(json.as_bytes()).unwrap();
        assert_eq!(back, s);
        let tmp = tempfile::tempdir().unwrap();
        let host = Host::new(tmp.path());
        let e = &back.files[0];
        assert_eq!(
            back.original(&host, e).unwrap().unwrap(),
            b"GRUB_DEFAULT=0\n"
        );
        assert_eq!(
            back.written(&host, e).unwrap().unwrap(),
            b"# caf\xe9\nGRUB_DEFAULT=0\n"
        );
        // A name that is not in the state is a file of an earlier build's journal.
        let mut old = back.clone();
        old.blobs.clear();
        let err = old.original(&host, e).unwrap_err();
        assert!(
            format!("{err:#}").contains("originals/1 is missing"),
            "{err:#}"
        );
        std::fs::create_dir_all(tmp.path().join("var/lib/gpt/originals")).unwrap();
        std::fs::write(tmp.path().join("var/lib/gpt/originals/1"), b"from a file").unwrap();
        assert_eq!(old.original(&host, e).unwrap().unwrap(), b"from a file");
    }
}
