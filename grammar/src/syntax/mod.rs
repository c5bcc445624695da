//! Syntax: the spanned syntax tree of the kiln language and its nom parser.
//!
//! Architecture invariant: parsing is a pure function of the text (no IO, no
//! evaluation), every node carries the span it was parsed from, and nesting
//! is bounded by [`MAX_NESTING`] so no input can exhaust the parser's stack.

pub mod ast;
mod bindings;
mod parser;
mod strings;

pub use ast::*;

use crate::diagnostic::{Diagnostic, Phase};
use crate::source::{FileId, SourceMap, Span};

/// How deeply brackets, `let`s, functions and unary operators may nest.
/// Real manifests stay far below; the limit exists so that 100k `(` is an
/// error, not a stack overflow.
pub const MAX_NESTING: usize = 1000;

/// Stack the parser needs for [`MAX_NESTING`] levels, with room to spare
/// (debug builds have large frames). [`crate::eval`] parses on a thread with
/// at least this much stack.
pub const PARSER_STACK: usize = 256 << 20;

/// A syntax error: where, what was expected, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// Byte offset in the file.
    pub offset: usize,
    /// Length of the offending text (0: a position, shown as one caret).
    pub len: usize,
    pub message: String,
    pub label: Option<String>,
    pub help: Option<String>,
    pub related: Vec<(Span, String)>,
}

impl SyntaxError {
    pub fn new(offset: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            offset,
            len: 0,
            message: message.into(),
            label: None,
            help: None,
            related: Vec::new(),
        }
    }

    pub fn into_diagnostic(self, file: FileId) -> Diagnostic {
        let span = Span::new(file, self.offset, self.offset + self.len);
        let mut diagnostic = Diagnostic::error(Phase::Syntax, self.message, Some(span));
        diagnostic.label = self.label;
        diagnostic.help = self.help;
        diagnostic.related = self.related;
        diagnostic
    }
}

/// Parses one file (already in `sources` as `file`) into `ast`, returning the
/// root expression. Needs up to [`PARSER_STACK`] bytes of stack on deeply
/// nested input: call it from a thread with a large stack.
pub fn parse(file: FileId, sources: &SourceMap, ast: &mut Ast) -> Result<ExprId, Diagnostic> {
    let text = sources.file(file).text.clone();
    parser::parse_file(file, &text, ast).map_err(|e| e.into_diagnostic(file))
}

/// Parses `text` as a file named `name` on a thread with enough stack: for
/// tools and tests that only want to know whether text parses.
pub fn parse_str(name: &std::path::Path, text: &str) -> Result<(), String> {
    let mut sources = SourceMap::new();
    let file = sources.add(name, text);
    let run = || {
        let mut ast = Ast::new();
        parse(file, &sources, &mut ast)
            .map(|_| ())
            .map_err(|d| d.render(&sources))
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, run)
            .map_err(|e| format!("cannot start the parser thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the parser panicked".to_string()))
    })
}
