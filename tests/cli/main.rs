//! The real binary against host trees built in temp folders.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod check;
mod concurrency;
mod docs;
mod example;
mod full;
mod iommu;
mod layouts;
mod legacy;
mod qemu;
mod reset;
mod txn;
