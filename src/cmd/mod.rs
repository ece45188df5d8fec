//! One module per subcommand; each takes the host, the UI and its arguments and returns the
//! exit code (0 success, 1 failure or refusal).

pub mod bind;
pub mod check;
pub mod docs;
pub mod full;
pub mod iommu;
pub mod qemu;
pub mod reset;
pub mod rom;
mod session;
pub mod single_gpu;

use crate::cli::{Cli, Command};
use crate::host::Host;
use crate::ui::Ui;
use anyhow::Result;

pub fn run(cli: Cli) -> Result<u8> {
    // These two print what gpt's command line is; they read nothing of any host.
    match &cli.command {
        Command::Completions(args) => return without_json(&cli, || docs::completions(args)),
        Command::Man(args) => return without_json(&cli, || docs::man(args)),
        _ => {}
    }
    let host = Host::new(&cli.root);
    if !host.root().exists() {
        crate::usage!(
            "--root {}: no such folder; give the top of a host tree (the folder holding etc/, sys/, ...)",
            cli.root.display()
        );
    }
    if !host.root().is_dir() {
        crate::usage!(
            "--root {}: not a directory; give the top of a host tree (the folder holding etc/, sys/, ...)",
            cli.root.display()
        );
    }
    let ui = Ui::new(cli.json);
    let result = match &cli.command {
        Command::Iommu(args) => iommu::run(&host, &ui, args),
        Command::Full(args) => full::run(&host, &ui, args),
        Command::Reset(args) => reset::run(&host, &ui, args),
        Command::Check(args) => check::run(&host, &ui, args),
        Command::Qemu(args) => qemu::run(&host, &ui, args),
        Command::Rom(args) => rom::run(&host, &ui, args),
        Command::Bind(args) => bind::bind(&host, &ui, args),
        Command::Unbind(args) => bind::unbind(&host, &ui, args),
        Command::SingleGpu(args) => single_gpu::run(&host, &ui, args),
        Command::SysfsWrite(args) => {
            crate::txn::live::write_helper(&host, &args.path, &args.value).map(|()| 0)
        }
        Command::ReadEsps(args) => crate::facts::pve_esp::helper(&host, &args.uuids),
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    };
    // `--json` promises one document on stdout: a refusal or an error is one too.
    if let Err(err) = &result {
        if ui.json && !ui.printed_json() {
            let _ = ui.print_json(&crate::ui::error_json(err));
        }
    }
    result
}

/// `gpt completions` and `gpt man` print a script or roff: with `--json` they refuse, as
/// `--json` promises one JSON document on stdout.
fn without_json(cli: &Cli, print: impl FnOnce() -> Result<u8>) -> Result<u8> {
    if cli.json {
        crate::usage!(
            "--json: `gpt completions` and `gpt man` print a script or a manual page, not JSON; leave --json out"
        );
    }
    print()
}
