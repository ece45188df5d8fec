//! The real binary against host trees built in temp folders.

#[path = "../support/mod.rs"]
mod support;

mod example;
mod iommu;
mod reset;
mod txn;
