//! Fail points for the reliability suite: with the `failpoints` cargo feature, setting
//! `GPT_FAILPOINT=<name>` makes the process stop dead (`abort()`, as a power cut or SIGKILL
//! would) when it reaches the point of that name. Without the feature the points compile to
//! nothing.
//!
//! The transaction's points, in the order a run reaches them:
//!
//! | name | where |
//! | --- | --- |
//! | `after-journal` | the journal (originals, what will be written, `update_needed`) is on disk, no file changed yet |
//! | `after-write:N` | the N-th file of the plan (1-based) has been written or removed |
//! | `before-command:N` | the N-th command is about to start |
//! | `after-command:N` | the N-th command has finished successfully |
//! | `before-commit` | every file and command is done, the final state is not saved yet |
//! | `after-commit` | the final state is saved (or, for `reset`, the journal is gone) |
//! | `rollback-after-restore:N` | while rolling back, the N-th restored file is back |
//!
//! `gpt bind` (`txn::live`) has its own: `bind-after-step:N`, after the N-th sysfs step of
//! the run (a write or its check), and `bind-after-function:N`, once the N-th function moved.

/// The environment variable naming the point to stop at.
pub const ENV: &str = "GPT_FAILPOINT";

/// Stop the process dead if `GPT_FAILPOINT` names this point (only with the `failpoints`
/// feature). Use the [`failpoint!`](crate::failpoint) macro for names with a number.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if std::env::var(ENV).is_ok_and(|want| want == name) {
        eprintln!("gpt: fail point {name}: stopping dead");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// `failpoint!("after-write:{}", n)`: a fail point whose name is formatted only in builds
/// with the `failpoints` feature.
#[macro_export]
macro_rules! failpoint {
    ($($arg:tt)*) => {
        #[cfg(feature = "failpoints")]
        $crate::txn::failpoint::hit(&format!($($arg)*));
    };
}
