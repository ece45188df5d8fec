//! gpt: prepare a Debian or Ubuntu host for GPU passthrough (VFIO), and undo it exactly.
//!
//! Read the host → decide → plan → apply → verify. Pure modules (`pci`, `pciids`, `edit`,
//! `select`) do no I/O; everything that touches the host takes a [`host::Host`].

pub mod edit;
