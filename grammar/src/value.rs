//! The evaluated, fully forced value of a manifest, with the span each part
//! came from. This is where the two front ends (the kiln language and Djinn
//! YAML) meet: both produce a [`Node`] tree, and `manifest` turns that tree
//! into a typed [`crate::manifest::Manifest`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub data: Data,
    /// Where the value was written (the expression that produced it).
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    /// A path literal, resolved to an absolute, lexically normalised path
    /// (relative to the file it was written in). Its content is an input.
    Path(PathBuf),
    List(Vec<Node>),
    Attrs(BTreeMap<String, Attr>),
    /// A function value: not data, so the manifest schema always rejects it,
    /// but it must be reported as "a function", not crash.
    Function,
}

/// One attribute of an attribute set.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    /// Where the attribute's name was written.
    pub name_span: Span,
    pub value: Node,
}

impl Data {
    /// The type's name as shown in error messages ("a string", "a list", ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::Null => "null",
            Data::Bool(_) => "a boolean",
            Data::Int(_) => "an integer",
            Data::Str(_) => "a string",
            Data::Path(_) => "a path",
            Data::List(_) => "a list",
            Data::Attrs(_) => "an attribute set",
            Data::Function => "a function",
        }
    }
}
