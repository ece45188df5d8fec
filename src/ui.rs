//! Human output: messages to stderr, colours only on a terminal and never with `NO_COLOR`.
//!
//! With `--json`, stdout carries exactly one JSON document, so everything meant for a person
//! goes to stderr.

use crate::printable::clean;
pub use crate::refusal::{Refusal, UsageError};
use console::{Style, Term};
use std::fmt::Display;

#[derive(Debug, Clone)]
pub struct Ui {
    pub json: bool,
    /// Set once a JSON document went to stdout (an error then prints no second one).
    printed_json: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether stdin is a terminal a person can answer a prompt on.
    pub interactive: bool,
}

/// Turn colours off when `NO_COLOR` is set (to anything non-empty), as no-color.org asks.
pub fn init_colors() {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        console::set_colors_enabled(false);
        console::set_colors_enabled_stderr(false);
    }
}

impl Ui {
    pub fn new(json: bool) -> Ui {
        use std::io::IsTerminal;
        Ui {
            json,
            printed_json: Default::default(),
            interactive: std::io::stdin().is_terminal(),
        }
    }

    /// Whether stderr shows spinners (a terminal, and not silenced).
    pub fn spinners(&self) -> bool {
        Term::stderr().is_term()
    }

    pub fn info(&self, msg: impl Display) {
        eprintln!("{}", clean(&msg.to_string()));
    }

    pub fn step(&self, msg: impl Display) {
        eprintln!(
            "{} {}",
            Style::new().for_stderr().cyan().bold().apply_to("==>"),
            clean(&msg.to_string())
        );
    }

    pub fn warn(&self, msg: impl Display) {
        eprintln!(
            "{} {}",
            Style::new()
                .for_stderr()
                .yellow()
                .bold()
                .apply_to("warning:"),
            clean(&msg.to_string())
        );
    }

    pub fn ok(&self, msg: impl Display) {
        eprintln!(
            "{} {}",
            Style::new().for_stderr().green().bold().apply_to("ok:"),
            clean(&msg.to_string())
        );
    }

    /// Print a JSON document on stdout (one line, then a newline).
    pub fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        write_stdout(&format!("{}\n", serde_json::to_string(value)?));
        self.printed_json
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether this run already printed its JSON document.
    pub fn printed_json(&self) -> bool {
        self.printed_json.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The JSON document of a command that failed: `ok: false`, the kind of failure (a
/// [`Refusal`]'s, `usage` or `error`), the text, the devices involved and what to do.
pub fn error_json(err: &anyhow::Error) -> serde_json::Value {
    let (kind, devices, todo) = match err.downcast_ref::<Refusal>() {
        Some(r) => (r.kind, r.devices.clone(), r.todo.clone()),
        None if err.downcast_ref::<UsageError>().is_some() => ("usage", Vec::new(), String::new()),
        None => ("error", Vec::new(), String::new()),
    };
    serde_json::json!({
        "ok": false,
        "kind": kind,
        "message": format!("{err:#}"),
        "devices": devices,
        "todo": todo,
    })
}

/// Write text for a person to stdout, without control characters (see [`crate::printable`];
/// gpt's own colours stay when colours are on). A reader that stopped early (`gpt … | head`)
/// is not an error, and never a panic as with `print!`; another write error is said on stderr.
pub fn out(text: &str) {
    if console::colors_enabled() {
        write_stdout(&crate::printable::clean_keep_colours(text));
    } else {
        write_stdout(&clean(text));
    }
}

/// Write `text` to stdout as it is (JSON: it escapes control characters itself).
fn write_stdout(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => eprintln!("error: cannot write to stdout: {e}"),
        Ok(()) => {}
    }
}

impl crate::progress::Progress for Ui {
    fn spinners(&self) -> bool {
        Ui::spinners(self)
    }
    fn step(&self, msg: &str) {
        Ui::step(self, msg)
    }
    fn warn(&self, msg: &str) {
        Ui::warn(self, msg)
    }
    fn info(&self, msg: &str) {
        Ui::info(self, msg)
    }
}
