//! The real binary against host trees built in temp folders.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod bind;
mod check;
mod concurrency;
mod docs;
mod dracut;
mod early;
mod example;
mod full;
mod iommu;
mod journal_trust;
mod kernelstub;
mod layouts;
mod legacy;
mod printable;
mod proxmox;
mod qemu;
mod reset;
mod reset_power;
mod rom;
mod sdboot;
mod single_gpu;
mod swap_race;
mod synth;
mod tree_programs;
mod tree_trust;
