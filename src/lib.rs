//! kiln: a declarative, hermetic build runner. See ARCHITECTURE.md.

pub mod cli;
pub mod image;
pub mod sandbox;
