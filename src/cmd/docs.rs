//! `gpt completions SHELL` and `gpt man [COMMAND]`: generated from the clap definition in
//! `cli`, so they never disagree with `--help`.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use anyhow::{Context, Result};
use clap::CommandFactory;

pub fn completions(args: &CompletionsArgs) -> Result<u8> {
    let mut cmd = without_hidden(Cli::command());
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "gpt", &mut script);
    crate::ui::out(&String::from_utf8_lossy(&script));
    Ok(0)
}

/// `cmd` without its hidden subcommands (gpt's internal `__read-esps`), which the completion
/// generators would offer: gpt with its version, arguments and visible subcommands.
fn without_hidden(cmd: clap::Command) -> clap::Command {
    let mut out = clap::Command::new("gpt").version(env!("CARGO_PKG_VERSION"));
    if let Some(a) = cmd.get_about() {
        out = out.about(a.clone());
    }
    if let Some(a) = cmd.get_long_about() {
        out = out.long_about(a.clone());
    }
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if !matches!(a.get_id().as_str(), "help" | "version") {
            out = out.arg(a.clone());
        }
    }
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        out = out.subcommand(sub.clone());
    }
    out
}

pub fn man(args: &ManArgs) -> Result<u8> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Built, every command knows its full name (`gpt-full`), which becomes its page's title.
    cmd.build();
    let page = match &args.command {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                let names: Vec<&str> = cmd
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|c| c.get_name())
                    .collect();
                crate::usage!(
                    "gpt man {name}: there is no such command; give one of {}, or nothing for gpt's own page",
                    names.join(", ")
                );
            };
            sub.clone()
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .source(format!("gpt {}", env!("CARGO_PKG_VERSION")))
        .manual("gpt manual")
        .render(&mut roff)
        .context("cannot render the manual page")?;
    crate::ui::out(&String::from_utf8_lossy(&roff));
    Ok(0)
}
