//! What `gpt bind` and `gpt unbind` print: the steps, the dry run or the question, and the one
//! JSON document under `--json`.

use crate::cmd::session::Session;
use crate::runtime_bind::Step;
use crate::ui::Ui;
use anyhow::Result;
use serde::Serialize;

#[derive(Serialize)]
pub(super) struct BindJson {
    ok: bool,
    changed: bool,
    dry_run: bool,
    /// Each function: where it was and where it goes.
    devices: Vec<DeviceJson>,
    steps: Vec<String>,
    warnings: Vec<String>,
}

#[derive(Clone, Serialize)]
pub(super) struct DeviceJson {
    pub(super) address: String,
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
}

pub(super) fn print_steps(ui: &Ui, steps: &[Step]) {
    for s in steps {
        ui.info(format!("    {}", s.describe()));
    }
}

/// A dry run prints what would be done and ends (exit 0); otherwise ask. `Some(code)` when
/// nothing more is to be done.
pub(super) fn dry_run_or_ask(
    ui: &Ui,
    session: &Session,
    question: &str,
    print: impl FnOnce() -> Result<()>,
) -> Result<Option<u8>> {
    if session.dry_run() {
        print()?;
        ui.info("dry run: nothing was changed; run the same command without --dry-run to apply it");
        return Ok(Some(0));
    }
    if !session.confirm(question)? {
        ui.info("nothing was changed");
        return Ok(Some(1));
    }
    Ok(None)
}

pub(super) fn print(
    ui: &Ui,
    changed: bool,
    dry_run: bool,
    devices: Vec<DeviceJson>,
    steps: &[Step],
    warnings: &[String],
) -> Result<()> {
    if ui.json {
        ui.print_json(&BindJson {
            ok: true,
            changed,
            dry_run,
            devices,
            steps: steps.iter().map(Step::describe).collect(),
            warnings: warnings.to_vec(),
        })?;
    }
    Ok(())
}
