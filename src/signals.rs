//! Holding off SIGINT, SIGTERM and SIGHUP while a transaction commits.
//!
//! Outside a [`Hold`] these signals do what they always do (end the process). Inside, they
//! only set a flag: the transaction checks it between steps and rolls back cleanly instead
//! of dying with half the files written. SIGKILL cannot be held off; the journal covers it.

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// True while no hold is active: the handlers then run the default action.
static OUTSIDE: AtomicBool = AtomicBool::new(true);
/// The signal received during a hold (0: none).
static RECEIVED: AtomicUsize = AtomicUsize::new(0);
/// How many holds are active (they nest).
static DEPTH: Mutex<usize> = Mutex::new(0);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

fn install() -> Result<()> {
    INSTALLED
        .get_or_init(|| {
            for sig in SIGNALS {
                // Order matters: the default action runs first when outside a hold.
                signal_hook::flag::register_conditional_default(sig, &OUTSIDE)
                    .and_then(|_| signal_hook::flag::register_usize(sig, &RECEIVED, sig as usize))
                    .map_err(|e| format!("cannot install the handler for signal {sig}: {e}"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
        .context("cannot hold off interrupts during the transaction")
}

/// While alive, SIGINT/SIGTERM/SIGHUP are recorded instead of ending the process.
#[derive(Debug)]
pub struct Hold {
    _private: (),
}

/// Start holding off the signals.
pub fn hold() -> Result<Hold> {
    install()?;
    let mut depth = DEPTH.lock().unwrap_or_else(|e| e.into_inner());
    if *depth == 0 {
        RECEIVED.store(0, Ordering::SeqCst);
        OUTSIDE.store(false, Ordering::SeqCst);
    }
    *depth += 1;
    Ok(Hold { _private: () })
}

/// Whether a hold is active (the runner then starts commands in their own process group, so a
/// Ctrl-C on the terminal reaches gpt, which waits, and not update-initramfs, which would die).
pub fn holding() -> bool {
    !OUTSIDE.load(Ordering::SeqCst)
}

impl Hold {
    /// The name of the signal received since the hold started, if any.
    pub fn interrupted(&self) -> Option<&'static str> {
        received()
    }
}

/// The name of the signal received during the current hold, if any.
pub fn received() -> Option<&'static str> {
    match RECEIVED.load(Ordering::SeqCst) as i32 {
        0 => None,
        SIGINT => Some("SIGINT"),
        SIGTERM => Some("SIGTERM"),
        SIGHUP => Some("SIGHUP"),
        _ => Some("a signal"),
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut depth = DEPTH.lock().unwrap_or_else(|e| e.into_inner());
        *depth = depth.saturating_sub(1);
        if *depth == 0 {
            OUTSIDE.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_during_a_hold_is_recorded_not_fatal() {
        let h = hold().unwrap();
        assert!(holding());
        signal_hook::low_level::raise(SIGHUP).unwrap();
        assert_eq!(h.interrupted(), Some("SIGHUP"));
        drop(h);
        assert!(!holding());
    }
}
