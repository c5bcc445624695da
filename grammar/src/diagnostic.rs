//! Diagnostics: one error or warning, with the span it is about.
//!
//! Architecture invariant: every error the grammar crate reports about a
//! manifest carries a span, so the user always sees `file:line:col` and the
//! offending source line. Only IO errors about a file as a whole may lack one.

use crate::source::{SourceMap, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Which stage of loading found the problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading a file failed.
    Io,
    /// The text is not valid kiln language or YAML.
    Syntax,
    /// Evaluation failed (type error, missing attribute, budget, ...).
    Eval,
    /// The value does not describe a valid build.
    Schema,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub phase: Phase,
    pub message: String,
    pub span: Option<Span>,
    /// Short text shown at the span.
    pub label: Option<String>,
    /// "did you mean ..." and similar.
    pub help: Option<String>,
    /// Secondary locations ("first defined here", evaluation trace).
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn error(phase: Phase, message: impl Into<String>, span: Option<Span>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            phase,
            message: message.into(),
            span,
            label: None,
            help: None,
            related: Vec::new(),
        }
    }

    pub fn warning(phase: Phase, message: impl Into<String>, span: Option<Span>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(phase, message, span)
        }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn with_related(mut self, span: Span, note: impl Into<String>) -> Diagnostic {
        self.related.push((span, note.into()));
        self
    }

    /// Plain-text rendering: `file:line:col: error: message`, the source line,
    /// a caret under the span, then help and related notes. Stable (no colour,
    /// no terminal width), so tests can compare it byte for byte.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.span {
            Some(span) => out.push_str(&format!(
                "{}: {severity}: {}\n",
                sources.location(span),
                self.message
            )),
            None => out.push_str(&format!("{severity}: {}\n", self.message)),
        }
        if let Some(span) = self.span {
            render_snippet(&mut out, sources, span, self.label.as_deref());
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("  = help: {help}\n"));
        }
        for (span, note) in &self.related {
            out.push_str(&format!("  = note: {}: {note}\n", sources.location(*span)));
        }
        out
    }
}

fn render_snippet(out: &mut String, sources: &SourceMap, span: Span, label: Option<&str>) {
    let text = &sources.file(span.file).text;
    let (line, col) = sources.line_col(span.file, span.start);
    let Some(source_line) = text.lines().nth(line - 1) else {
        return;
    };
    let source_line = source_line.trim_end_matches('\r');
    // Long lines (minified input, huge strings) are cut so a diagnostic stays readable.
    const MAX: usize = 200;
    let shown: String = source_line.chars().take(MAX).collect();
    let ellipsis = if source_line.chars().count() > MAX {
        " …"
    } else {
        ""
    };
    let gutter = line.to_string();
    let pad = " ".repeat(gutter.len());
    let (end_line, end_col) = sources.line_col(span.file, span.end.max(span.start));
    let caret_len = if end_line == line {
        end_col.saturating_sub(col).max(1)
    } else {
        shown.chars().count().saturating_sub(col - 1).max(1)
    };
    let caret_start = (col - 1).min(MAX);
    let caret_len = caret_len.min(MAX + 1 - caret_start).max(1);
    out.push_str(&format!("{pad} |\n{gutter} | {shown}{ellipsis}\n"));
    out.push_str(&format!(
        "{pad} | {}{}",
        " ".repeat(caret_start),
        "^".repeat(caret_len)
    ));
    if let Some(label) = label {
        out.push(' ');
        out.push_str(label);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn renders_location_snippet_and_caret() {
        let mut sources = SourceMap::new();
        let file = sources.add(Path::new("build.kiln"), "{\n  a = 1 +;\n}\n");
        let diagnostic = Diagnostic::error(
            Phase::Syntax,
            "expected an expression",
            Some(Span::new(file, 11, 12)),
        )
        .with_label("here")
        .with_help("write a value after `+`");
        assert_eq!(
            diagnostic.render(&sources),
            "build.kiln:2:10: error: expected an expression\n  |\n2 |   a = 1 +;\n  |          ^ here\n  = help: write a value after `+`\n"
        );
    }
}
