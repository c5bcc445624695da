//! Typed reading of [`Node`]s: every mismatch becomes a diagnostic with the
//! span of the offending value, and conversion goes on so one run reports
//! as many errors as possible.

use std::collections::BTreeMap;

use crate::diagnostic::{Diagnostic, Phase, Severity};
use crate::manifest::Format;
use crate::source::Span;
use crate::value::{Attr, Data, Node};

/// Marks that an error was recorded in the [`Context`]; the caller skips
/// the value and carries on with its siblings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reported;

pub(crate) type Checked<T> = Result<T, Reported>;

pub(crate) struct Context {
    pub format: Format,
    pub diagnostics: Vec<Diagnostic>,
}

impl Context {
    pub fn new(format: Format) -> Context {
        Context {
            format,
            diagnostics: Vec::new(),
        }
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn push(&mut self, diagnostic: Diagnostic) -> Reported {
        self.diagnostics.push(diagnostic);
        Reported
    }

    pub fn error(&mut self, span: Span, message: impl Into<String>) -> Reported {
        self.push(Diagnostic::error(Phase::Schema, message, Some(span)))
    }

    pub fn mismatch(&mut self, node: &Node, expected: &str) -> Reported {
        let found = node.data.type_name();
        self.push(
            Diagnostic::error(
                Phase::Schema,
                format!("expected {expected}, found {found}"),
                Some(node.span),
            )
            .with_label(format!("this is {found}")),
        )
    }

    /// An attribute set whose keys must come from `known`. Unknown keys are
    /// errors in kiln manifests and warnings (the key is ignored) in Djinn.
    pub fn attrs<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Checked<&'n BTreeMap<String, Attr>> {
        let Data::Attrs(attrs) = &node.data else {
            return Err(self.mismatch(node, &format!("an attribute set ({what})")));
        };
        let mut failed = false;
        for (name, attr) in attrs {
            if known.contains(&name.as_str()) {
                continue;
            }
            let message = format!("unknown attribute `{name}` in {what}");
            let mut diagnostic = match self.format {
                Format::Kiln => Diagnostic::error(Phase::Schema, message, Some(attr.name_span)),
                Format::Djinn => Diagnostic::warning(
                    Phase::Schema,
                    format!("{message} (ignored)"),
                    Some(attr.name_span),
                ),
            };
            diagnostic = match did_you_mean(name, known) {
                Some(hint) => diagnostic.with_help(format!("did you mean `{hint}`?")),
                None => diagnostic.with_help(format!("known attributes: {}", known.join(", "))),
            };
            failed |= diagnostic.severity == Severity::Error;
            self.diagnostics.push(diagnostic);
        }
        if failed { Err(Reported) } else { Ok(attrs) }
    }

    pub fn required<'n>(
        &mut self,
        attrs: &'n BTreeMap<String, Attr>,
        span: Span,
        name: &str,
        what: &str,
    ) -> Checked<&'n Node> {
        match attrs.get(name) {
            Some(attr) => Ok(&attr.value),
            None => Err(self.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("{what} is missing the required attribute `{name}`"),
                    Some(span),
                )
                .with_label(format!("`{name}` is not set here")),
            )),
        }
    }

    /// A string. Djinn's YAML reader (Go's yaml.v2) turns any scalar into a
    /// string where one is expected, so Djinn manifests do too.
    pub fn string(&mut self, node: &Node) -> Checked<String> {
        match (&node.data, self.format) {
            (Data::Str(text), _) => Ok(text.clone()),
            (Data::Int(number), Format::Djinn) => Ok(number.to_string()),
            (Data::Bool(flag), Format::Djinn) => Ok(flag.to_string()),
            _ => Err(self.mismatch(node, "a string")),
        }
    }

    pub fn non_empty_string(&mut self, node: &Node, what: &str) -> Checked<String> {
        let text = self.string(node)?;
        if text.trim().is_empty() {
            return Err(self.error(node.span, format!("{what} must not be empty")));
        }
        Ok(text)
    }

    pub fn bool(&mut self, node: &Node) -> Checked<bool> {
        match &node.data {
            Data::Bool(flag) => Ok(*flag),
            _ => Err(self.mismatch(node, "a boolean")),
        }
    }

    pub fn positive_int(&mut self, node: &Node, what: &str) -> Checked<u64> {
        match &node.data {
            Data::Int(number) if *number > 0 => Ok(*number as u64),
            Data::Int(_) => Err(self.error(node.span, format!("{what} must be at least 1"))),
            _ => Err(self.mismatch(node, "an integer")),
        }
    }

    pub fn list<'n>(&mut self, node: &'n Node, expected: &str) -> Checked<&'n [Node]> {
        match &node.data {
            Data::List(items) => Ok(items),
            _ => Err(self.mismatch(node, expected)),
        }
    }

    /// A list of strings; every bad element is reported.
    pub fn strings(&mut self, node: &Node) -> Checked<Vec<(String, Span)>> {
        let items = self.list(node, "a list of strings")?;
        let mut out = Vec::with_capacity(items.len());
        let mut failed = false;
        for item in items {
            match self.string(item) {
                Ok(text) => out.push((text, item.span)),
                Err(Reported) => failed = true,
            }
        }
        if failed { Err(Reported) } else { Ok(out) }
    }
}

/// The closest known name, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), *candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn suggests_close_names() {
        let known = ["stage", "commands", "artifacts", "needs"];
        assert_eq!(did_you_mean("comands", &known), Some("commands"));
        assert_eq!(did_you_mean("artefacts", &known), Some("artifacts"));
        assert_eq!(did_you_mean("stages", &known), Some("stage"));
        assert_eq!(did_you_mean("zzz", &known), None);
    }
}
