//! Write a synthetic host tree of N PCI functions, for the benchmark (`scripts/bench.sh`).
//!
//! ```sh
//! cargo run --example gen_tree -- DIR N [--pci-ids FILE]
//! ```
//!
//! DIR must not exist yet (or be empty). The layout is described in `tests/support/synth.rs`.
//! `--pci-ids FILE` puts that database under the tree (use the full one for realistic names and
//! timings); without it, the small test fixture is used.

#[path = "../tests/support/hosts.rs"]
mod hosts;
#[path = "../tests/support/synth.rs"]
mod synth;
#[path = "../tests/support/tree.rs"]
mod tree;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: gen_tree DIR N [--pci-ids FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, n, ids) = match args.as_slice() {
        [dir, n] => (dir, n, None),
        [dir, n, flag, ids] if flag == "--pci-ids" => (dir, n, Some(ids)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Ok(n) = n.parse::<usize>() else {
        eprintln!("error: N must be a number of PCI functions, not '{n}'\n{USAGE}");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        eprintln!("error: {} is not empty", dir.display());
        return ExitCode::from(1);
    }
    let pci_ids = match ids {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                eprintln!("error: cannot read {path}: {e}");
                return ExitCode::from(1);
            }
        },
        None => hosts::PCI_IDS.to_string(),
    };
    synth::synth(&dir, n, &pci_ids);
    println!("{}: {n} PCI functions", dir.display());
    ExitCode::SUCCESS
}
