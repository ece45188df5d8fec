//! A plan: the file changes and commands a command will carry out, decided before anything is
//! touched. It renders as unified diffs for `--dry-run` and the confirmation prompt. Pure.

use serde::{Deserialize, Serialize};
use similar::TextDiff;
use std::path::PathBuf;

/// One file's change. `before`/`after` of `None` mean the file is absent (created / removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The path as on the target host (`/etc/default/grub`).
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
    /// Mode for a file that gpt creates (existing files keep theirs).
    pub new_mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Created,
    Modified,
    Removed,
    Unchanged,
    Restored,
    Edited,
}

impl FileChange {
    pub fn new(path: impl Into<PathBuf>, before: Option<Vec<u8>>, after: Option<Vec<u8>>) -> Self {
        FileChange {
            path: path.into(),
            before,
            after,
            new_mode: 0o644,
        }
    }

    pub fn is_noop(&self) -> bool {
        self.before == self.after
    }

    pub fn action(&self) -> FileAction {
        match (&self.before, &self.after) {
            (a, b) if a == b => FileAction::Unchanged,
            (None, Some(_)) => FileAction::Created,
            (Some(_), None) => FileAction::Removed,
            _ => FileAction::Modified,
        }
    }

    /// A unified diff (`--- a/etc/default/grub` / `+++ b/etc/default/grub`), empty if unchanged.
    pub fn diff(&self) -> String {
        if self.is_noop() {
            return String::new();
        }
        let rel = self
            .path
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        let old = String::from_utf8_lossy(self.before.as_deref().unwrap_or_default());
        let new = String::from_utf8_lossy(self.after.as_deref().unwrap_or_default());
        let (a, b) = (
            if self.before.is_some() {
                format!("a/{rel}")
            } else {
                "/dev/null".into()
            },
            if self.after.is_some() {
                format!("b/{rel}")
            } else {
                "/dev/null".into()
            },
        );
        TextDiff::from_lines(old.as_ref(), new.as_ref())
            .unified_diff()
            .context_radius(3)
            .header(&a, &b)
            .missing_newline_hint(true)
            .to_string()
    }
}

/// An external command of a plan: `argv[0]` is looked up on PATH when it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub argv: Vec<String>,
    /// What a person sees next to the spinner: "Regenerating grub.cfg".
    pub label: String,
    /// Whether it rebuilds boot files from /etc (set by the boot stack): such a command runs
    /// again after a rollback, so /boot matches the restored files.
    #[serde(default)]
    pub regenerates: bool,
}

impl Step {
    pub fn new(label: &str, argv: &[&str]) -> Step {
        Step {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            label: label.to_string(),
            regenerates: false,
        }
    }

    pub fn shell_line(&self) -> String {
        self.argv.join(" ")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Only files that change.
    pub files: Vec<FileChange>,
    /// Commands to run after the files are written, in order.
    pub commands: Vec<Step>,
    /// Changes made after the commands (and the check after them), to files already in
    /// `files`: a file gpt created is removed only once the boot entries were regenerated
    /// from its cleaned content. A rollback puts such a file back as it was at the start.
    pub after_commands: Vec<FileChange>,
}

impl Plan {
    pub fn push_file(&mut self, change: FileChange) {
        if !change.is_noop() {
            self.files.push(change);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.commands.is_empty()
    }

    /// Every diff, then the commands, as `--dry-run` prints them.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.files {
            out.push_str(&f.diff());
        }
        if !self.commands.is_empty() {
            out.push_str("\nCommands:\n");
            for c in &self.commands {
                out.push_str(&format!("  {}\n", c.shell_line()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_paths_as_on_the_host() {
        let c = FileChange::new(
            "/etc/default/grub",
            Some(b"A=1\nB=\"quiet\"\n".to_vec()),
            Some(b"A=1\nB=\"quiet iommu=pt\"\n".to_vec()),
        );
        assert_eq!(c.action(), FileAction::Modified);
        assert_eq!(
            c.diff(),
            "--- a/etc/default/grub\n+++ b/etc/default/grub\n@@ -1,2 +1,2 @@\n A=1\n-B=\"quiet\"\n+B=\"quiet iommu=pt\"\n"
        );
        let new = FileChange::new("/etc/modprobe.d/gpt-vfio.conf", None, Some(b"x\n".to_vec()));
        assert_eq!(new.action(), FileAction::Created);
        assert!(new
            .diff()
            .starts_with("--- /dev/null\n+++ b/etc/modprobe.d/gpt-vfio.conf\n"));
    }

    #[test]
    fn unchanged_files_are_left_out() {
        let mut p = Plan::default();
        p.push_file(FileChange::new(
            "/x",
            Some(b"a".to_vec()),
            Some(b"a".to_vec()),
        ));
        assert!(p.is_empty());
        p.commands
            .push(Step::new("Regenerating grub.cfg", &["update-grub"]));
        assert_eq!(p.render(), "\nCommands:\n  update-grub\n");
    }
}
