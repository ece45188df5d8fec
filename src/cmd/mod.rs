//! One module per subcommand; each takes the host, the UI and its arguments and returns the
//! exit code (0 success, 1 failure or refusal).

pub mod check;
pub mod iommu;
pub mod qemu;

use crate::cli::{Cli, Command};
use crate::host::Host;
use crate::ui::Ui;
use anyhow::{bail, Result};

pub fn run(cli: Cli) -> Result<u8> {
    let host = Host::new(&cli.root);
    if !host.root().is_dir() {
        crate::usage!(
            "--root {}: not a directory; give the top of a host tree (the folder holding etc/, sys/, ...)",
            cli.root.display()
        );
    }
    let ui = Ui::new(cli.json);
    match &cli.command {
        Command::Iommu(args) => iommu::run(&host, &ui, args),
        Command::Full(_) => bail!("`gpt full` is not built yet"),
        Command::Reset(_) => bail!("`gpt reset` is not built yet"),
        Command::Check(args) => check::run(&host, &ui, args),
        Command::Qemu(args) => qemu::run(&host, &ui, args),
    }
}
