//! The kiln manifest language and the typed build description.
//!
//! Pipeline: text → [`syntax`] (nom parser, spanned AST) → [`eval`] (lazy
//! evaluator) → [`value::Node`] (forced data with spans) → [`manifest`]
//! (typed, validated `Manifest`). Djinn YAML enters at [`djinn`] and produces
//! the same `Node` tree.
//!
//! Architecture invariant: this crate does no IO beyond reading the files it
//! is asked to parse and import (and hashing path literals' content).

pub mod diagnostic;
pub mod djinn;
pub mod eval;
pub mod load;
pub mod manifest;
pub mod roots;
pub mod source;
pub mod syntax;
pub mod value;

pub use diagnostic::{Diagnostic, Phase, Severity};
pub use source::{FileId, SourceMap, Span};
pub use value::{Attr, Data, Node};
