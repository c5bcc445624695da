//! kiln: a declarative, hermetic build runner. See ARCHITECTURE.md.

pub mod cli;
pub mod color;
pub mod controller;
pub mod driver;
pub mod events;
pub mod graph;
pub mod image;
pub mod layers;
pub mod offline;

pub mod repro;
pub mod resolve;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod trust;
pub mod vm;
