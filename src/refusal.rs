//! Why gpt declined to go ahead: a [`Refusal`] (a reason a script can act on) or a
//! [`UsageError`] (the command line is wrong: exit 2). Plain errors every layer may return;
//! the face prints them.

/// gpt declined to go ahead, for a reason a script can act on: a stable `kind`, the devices
/// involved and what to do. Printed as `error: {message}` and, under `--json`, as the one
/// JSON document on stdout (`"ok": false`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// Stable, snake_case: `shared_group`, `bridge_with_driver`, `host_critical`, …
    pub kind: &'static str,
    /// The whole explanation, as printed after `error:`.
    pub message: String,
    /// Full PCI addresses of the devices involved.
    pub devices: Vec<String>,
    /// What the user can do about it.
    pub todo: String,
}

impl Refusal {
    /// The refusal as an error to return.
    pub fn error(
        kind: &'static str,
        devices: impl IntoIterator<Item = impl ToString>,
        message: impl Into<String>,
        todo: impl Into<String>,
    ) -> anyhow::Error {
        anyhow::Error::new(Refusal {
            kind,
            message: message.into(),
            devices: devices.into_iter().map(|d| d.to_string()).collect(),
            todo: todo.into(),
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if !self.todo.is_empty() && !self.message.contains(&self.todo) {
            let sep = if self.message.ends_with('\n') {
                ""
            } else {
                " "
            };
            write!(f, "{sep}{}", self.todo)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// An error in how gpt was called: printed like any error, but exit code 2 as for clap's.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Bail out with a usage error (exit 2).
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::refusal::UsageError(format!($($arg)*))))
    };
}
