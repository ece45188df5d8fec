//! One line of `gpt check`: a name, `PASS`/`WARN`/`FAIL` and the detail.

use console::Style;
use serde::Serialize;

/// Drivers that leave a device free for vfio (pci-stub holds it without using it).
pub(super) const NEUTRAL_DRIVERS: [&str; 2] = ["vfio-pci", "pci-stub"];
pub(super) const FULL: &str = "`sudo gpt full VENDOR` (try `--dry-run` first)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// The reset and power facts of every function the line speaks for (the reset checks, one
    /// line per card where its functions say the same): its detail shows on PASS too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resets: Vec<crate::resetability::Report>,
    /// Its detail shows on PASS too (how a function came to vfio-pci).
    #[serde(skip)]
    pub explain: bool,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            resets: Vec::new(),
            explain: false,
        }
    }
    /// A PASS whose detail is the point: it shows in the text output too.
    pub(crate) fn pass_explained(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            explain: true,
            ..Check::new(name, Status::Pass, detail)
        }
    }
    pub(crate) fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Pass, detail)
    }
    pub(crate) fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail)
    }
    pub(crate) fn fail(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail)
    }

    /// `Checking for NAME` padded to `width`, then `: PASS` / `: WARN (detail)`.
    pub(super) fn line(&self, width: usize) -> String {
        let title = format!("Checking for {}", self.name);
        let (word, style) = match self.status {
            Status::Pass => ("PASS", Style::new().green().bold()),
            Status::Warn => ("WARN", Style::new().yellow().bold()),
            Status::Fail => ("FAIL", Style::new().red().bold()),
        };
        let status = match self.status {
            Status::Pass if self.resets.is_empty() && !self.explain => {
                style.apply_to(word.to_string())
            }
            _ => style.apply_to(format!(
                "{word} ({})",
                crate::printable::clean(&self.detail)
            )),
        };
        let title = crate::printable::clean(&title);
        format!("{title:<width$} : {status}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_padded_and_only_problems_carry_a_detail() {
        console::set_colors_enabled(false);
        let pass = Check::pass("x", "fine");
        let warn = Check::warn("longer name", "why");
        assert_eq!(pass.line(24), "Checking for x           : PASS");
        assert_eq!(warn.line(24), "Checking for longer name : WARN (why)");
    }
}
