//! `gpt`: prints an error once, as `error: …` with its whole chain, and exits 1 (2 for usage).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    gpt::ui::init_colors();
    let cli = gpt::cli::Cli::parse();
    match gpt::cmd::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", gpt::printable::clean(&format!("{err:#}")));
            let usage = err.downcast_ref::<gpt::cli::UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
