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
mod kernelstub;
mod layouts;
mod legacy;
mod proxmox;
mod qemu;
mod reset;
mod reset_power;
mod sdboot;
mod synth;
