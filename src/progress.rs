//! How long work shows that it is running: a small trait the screen ([`crate::ui::Ui`])
//! implements, so that the command runner and the transaction report progress without
//! knowing the screen.

/// Where progress goes.
pub trait Progress: std::fmt::Debug {
    /// Whether spinners can be drawn (stderr is a terminal).
    fn spinners(&self) -> bool;
    /// A step begins or ends (`==> …`).
    fn step(&self, msg: &str);
    /// Something a person should know.
    fn warn(&self, msg: &str);
    /// A plain line.
    fn info(&self, msg: &str);
}

/// Shows nothing: for the reader's read-only queries, which draw no spinner.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn spinners(&self) -> bool {
        false
    }
    fn step(&self, _msg: &str) {}
    fn warn(&self, _msg: &str) {}
    fn info(&self, _msg: &str) {}
}
