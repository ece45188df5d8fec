//! gpt: prepare a Debian or Ubuntu host for GPU passthrough (VFIO), and undo it exactly.
//!
//! Read the host → decide → plan → apply → verify. Pure modules (`pci`, `pciids`, `describe`,
//! `edit`) do no I/O; everything that touches the host takes a [`host::Host`].

pub mod boot;
pub mod cli;
pub mod cmd;
pub(crate) mod describe;
pub mod edit;
pub mod facts;
pub mod holders;
pub mod host;
pub(crate) mod ioerr;
pub mod journal_rules;
pub mod leftovers;
pub mod model;
pub mod passthrough;
pub mod paths;
pub mod pci;
pub mod pciids;
pub mod plan;
pub mod planner;
pub mod printable;
pub mod progress;
pub mod refusal;
pub mod reset_facts;
pub mod resetability;
pub mod rom;
pub mod rom_read;
pub mod runner;
pub mod runtime_bind;
pub mod select;
pub mod signals;
pub mod single_gpu;
pub mod sysfs;
pub mod tree_trust;
pub mod txn;
pub mod ui;
pub mod undo;
