//! The Djinn front end: YAML text → [`Node`] tree with real spans.
//!
//! Built on `granit-parser` (the event parser under serde-saphyr) rather
//! than a serde data model, because the schema check needs the span of
//! every key and value, and Djinn's rules need the raw scalars. The tree is
//! built with an explicit stack, YAML nesting is bounded by the parser, and
//! alias expansion is bounded here, so no input can overflow the stack or
//! blow up memory ("billion laughs").
//!
//! Scalars follow the YAML 1.2 core schema, except that floats stay strings
//! (manifests have no floats). Duplicate keys are an error, merge keys
//! (`<<: *base`) are honoured, multiple documents are refused.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use granit_parser::{Event, Marker, Options, Parser, ScalarStyle, Tag};

use crate::diagnostic::{Diagnostic, Phase};
use crate::source::{FileId, SourceMap, Span};
use crate::value::{Attr, Data, Node};

/// Most nodes a document may expand to through aliases.
const MAX_NODES: usize = 1_000_000;
/// Deepest nesting a document may reach through aliases.
const MAX_DEPTH: usize = 256;

/// Reads Djinn YAML from bytes: the file is added to `sources` (lossily when
/// it is not UTF-8, so the error can point at the bad byte).
pub fn parse_bytes(path: &Path, bytes: &[u8], sources: &mut SourceMap) -> Result<Node, Diagnostic> {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let file = sources.add(path, text);
            parse(text, file)
        }
        Err(error) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            let file = sources.add(path, text);
            let at = error.valid_up_to();
            Err(Diagnostic::error(
                Phase::Syntax,
                "the manifest is not valid UTF-8",
                Some(Span::new(file, at, at + 1)),
            )
            .with_label("invalid byte here"))
        }
    }
}

/// Parses one YAML document into a [`Node`] tree whose spans point into `file`.
pub fn parse(text: &str, file: FileId) -> Result<Node, Diagnostic> {
    let mut options = Options::default();
    options.emit_comments = false;
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
        nodes: 0,
    };
    for next in Parser::new_from_str_with_options(text, options) {
        let (event, span) = next.map_err(|error| {
            let at = offset(error.marker());
            Diagnostic::error(
                Phase::Syntax,
                format!("invalid YAML: {}", error.info()),
                Some(Span::new(file, at, at + 1)),
            )
        })?;
        let start = offset(&span.start);
        let end = offset(&span.end).max(start);
        builder.event(event, Span::new(file, start, end))?;
    }
    Ok(builder.root.unwrap_or_else(|| Node {
        data: Data::Null,
        span: Span::new(file, 0, 0),
    }))
}

fn offset(marker: &Marker) -> usize {
    marker.byte_offset().unwrap_or_else(|| marker.index())
}

struct Anchored {
    node: Node,
    size: usize,
    depth: usize,
}

enum Frame {
    Sequence {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
        nodes_before: usize,
        depth: usize,
    },
    Mapping {
        span: Span,
        anchor: usize,
        entries: BTreeMap<String, Attr>,
        key: Option<(String, Span)>,
        merges: Vec<Node>,
        nodes_before: usize,
        depth: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Anchored>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), Diagnostic> {
        match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Diagnostic::error(
                        Phase::Syntax,
                        "a manifest is a single YAML document, this is a second one",
                        Some(span),
                    ));
                }
                Ok(())
            }
            Event::Scalar(value, style, anchor, tag) => {
                let data = scalar(&value, style, tag.as_deref())
                    .map_err(|message| Diagnostic::error(Phase::Syntax, message, Some(span)))?;
                self.complete(Node { data, span }, anchor, 1, 1, 1)
            }
            Event::SequenceStart(_, anchor, _) => {
                self.open(span)?;
                self.stack.push(Frame::Sequence {
                    span,
                    anchor,
                    items: Vec::new(),
                    nodes_before: self.nodes,
                    depth: 0,
                });
                Ok(())
            }
            Event::MappingStart(_, anchor, _) => {
                self.open(span)?;
                self.stack.push(Frame::Mapping {
                    span,
                    anchor,
                    entries: BTreeMap::new(),
                    key: None,
                    merges: Vec::new(),
                    nodes_before: self.nodes,
                    depth: 0,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Sequence {
                    span: start,
                    anchor,
                    items,
                    nodes_before,
                    depth,
                }) => {
                    let node = Node {
                        data: Data::List(items),
                        span: start.to(span),
                    };
                    let size = self.nodes - nodes_before + 1;
                    self.complete(node, anchor, 1, size, depth + 1)
                }
                _ => Err(internal(span)),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Mapping {
                    span: start,
                    anchor,
                    mut entries,
                    merges,
                    nodes_before,
                    depth,
                    ..
                }) => {
                    // YAML merge keys: explicit keys win, then earlier merges.
                    for merged in merges {
                        let maps = match merged.data {
                            Data::Attrs(map) => vec![map],
                            Data::List(items) => {
                                let mut maps = Vec::new();
                                for item in items {
                                    match item.data {
                                        Data::Attrs(map) => maps.push(map),
                                        _ => return Err(bad_merge(item.span)),
                                    }
                                }
                                maps
                            }
                            _ => return Err(bad_merge(merged.span)),
                        };
                        for map in maps {
                            for (key, attr) in map {
                                entries.entry(key).or_insert(attr);
                            }
                        }
                    }
                    let node = Node {
                        data: Data::Attrs(entries),
                        span: start.to(span),
                    };
                    let size = self.nodes - nodes_before + 1;
                    self.complete(node, anchor, 1, size, depth + 1)
                }
                _ => Err(internal(span)),
            },
            Event::Alias(id) => {
                let Some(anchored) = self.anchors.get(&id) else {
                    return Err(Diagnostic::error(
                        Phase::Syntax,
                        "this alias refers to a node that contains it",
                        Some(span),
                    ));
                };
                let (size, depth) = (anchored.size, anchored.depth);
                if self.nodes.saturating_add(size) > MAX_NODES {
                    return Err(too_big(span));
                }
                let mut node = anchored.node.clone();
                // Point at the use; the definition is one anchor away.
                node.span = span;
                self.complete(node, 0, size, size, depth)
            }
            Event::UnresolvedAlias(name) => Err(Diagnostic::error(
                Phase::Syntax,
                format!("unknown anchor `{name}`"),
                Some(span),
            )),
            _ => Ok(()),
        }
    }

    /// A collection starts: it may not be a mapping key.
    fn open(&mut self, span: Span) -> Result<(), Diagnostic> {
        if let Some(Frame::Mapping { key: None, .. }) = self.stack.last() {
            return Err(not_a_key(span));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(too_deep(span));
        }
        Ok(())
    }

    fn complete(
        &mut self,
        node: Node,
        anchor: usize,
        added: usize,
        size: usize,
        depth: usize,
    ) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(added);
        if self.nodes > MAX_NODES {
            return Err(too_big(node.span));
        }
        if self.stack.len() + depth > MAX_DEPTH {
            return Err(too_deep(node.span));
        }
        if anchor != 0 {
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    size,
                    depth,
                },
            );
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Sequence {
                items, depth: max, ..
            }) => {
                *max = (*max).max(depth);
                items.push(node);
                Ok(())
            }
            Some(Frame::Mapping {
                entries,
                key,
                merges,
                depth: max,
                ..
            }) => {
                *max = (*max).max(depth);
                match key.take() {
                    None => {
                        let name = match node.data {
                            Data::Str(text) => text,
                            Data::Int(number) => number.to_string(),
                            Data::Bool(flag) => flag.to_string(),
                            _ => return Err(not_a_key(node.span)),
                        };
                        *key = Some((name, node.span));
                        Ok(())
                    }
                    Some((name, _)) if name == "<<" => {
                        merges.push(node);
                        Ok(())
                    }
                    Some((name, name_span)) => {
                        if let Some(first) = entries.get(&name) {
                            return Err(Diagnostic::error(
                                Phase::Syntax,
                                format!("duplicate key `{name}`"),
                                Some(name_span),
                            )
                            .with_related(first.name_span, "first defined here"));
                        }
                        entries.insert(
                            name,
                            Attr {
                                name_span,
                                value: node,
                            },
                        );
                        Ok(())
                    }
                }
            }
        }
    }
}

/// YAML 1.2 core schema, floats kept as strings.
fn scalar(value: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Data, String> {
    if let Some(tag) = tag {
        let core = |suffix| tag.is_yaml_core_schema_tag(suffix);
        if core("str") || core("float") || (tag.handle() == "!" && tag.suffix().is_empty()) {
            return Ok(Data::Str(value.to_string()));
        }
        if core("int") {
            return parse_int(value)
                .map(Data::Int)
                .ok_or_else(|| format!("`{value}` is not an integer"));
        }
        if core("bool") {
            return parse_bool(value)
                .map(Data::Bool)
                .ok_or_else(|| format!("`{value}` is not a boolean"));
        }
        if core("null") {
            return Ok(Data::Null);
        }
        return Err(format!(
            "unsupported YAML tag `{}{}`",
            tag.handle(),
            tag.suffix()
        ));
    }
    if style != ScalarStyle::Plain {
        return Ok(Data::Str(value.to_string()));
    }
    if matches!(value, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Data::Null);
    }
    if let Some(flag) = parse_bool(value) {
        return Ok(Data::Bool(flag));
    }
    if let Some(number) = parse_int(value) {
        return Ok(Data::Int(number));
    }
    Ok(Data::Str(value.to_string()))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_int(value: &str) -> Option<i64> {
    let digits_only = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = value.strip_prefix("0x") {
        return digits_only(hex, 16)
            .then(|| i64::from_str_radix(hex, 16).ok())
            .flatten();
    }
    if let Some(octal) = value.strip_prefix("0o") {
        return digits_only(octal, 8)
            .then(|| i64::from_str_radix(octal, 8).ok())
            .flatten();
    }
    let unsigned = value.strip_prefix(['-', '+']).unwrap_or(value);
    if !digits_only(unsigned, 10) {
        return None;
    }
    value.parse().ok()
}

fn not_a_key(span: Span) -> Diagnostic {
    Diagnostic::error(Phase::Syntax, "a mapping key must be a string", Some(span))
}

fn bad_merge(span: Span) -> Diagnostic {
    Diagnostic::error(
        Phase::Syntax,
        "a merge key (`<<`) takes a mapping or a list of mappings",
        Some(span),
    )
}

fn too_big(span: Span) -> Diagnostic {
    Diagnostic::error(
        Phase::Syntax,
        format!("the document expands to more than {MAX_NODES} nodes through aliases"),
        Some(span),
    )
}

fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::error(
        Phase::Syntax,
        format!("the document nests deeper than {MAX_DEPTH} levels"),
        Some(span),
    )
}

fn internal(span: Span) -> Diagnostic {
    Diagnostic::error(Phase::Syntax, "unbalanced YAML events", Some(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Node, String> {
        let mut sources = SourceMap::new();
        parse_bytes(Path::new("t.yml"), text.as_bytes(), &mut sources)
            .map_err(|d| d.render(&sources))
    }

    fn attrs(node: &Node) -> &BTreeMap<String, Attr> {
        match &node.data {
            Data::Attrs(attrs) => attrs,
            other => panic!("not attrs: {other:?}"),
        }
    }

    #[test]
    fn scalars_and_spans() {
        let node = parse_text("a: 1\nb: \"2\"\nc: true\nd: ~\ne: 1.5\nf: hi there\n").unwrap();
        let map = attrs(&node);
        assert_eq!(map["a"].value.data, Data::Int(1));
        assert_eq!(map["b"].value.data, Data::Str("2".into()));
        assert_eq!(map["c"].value.data, Data::Bool(true));
        assert_eq!(map["d"].value.data, Data::Null);
        assert_eq!(map["e"].value.data, Data::Str("1.5".into()));
        assert_eq!(map["f"].value.data, Data::Str("hi there".into()));
        let span = map["f"].value.span;
        assert_eq!((span.start, span.end), (35, 43));
        assert_eq!((map["f"].name_span.start, map["f"].name_span.end), (32, 33));
    }

    #[test]
    fn aliases_and_merges() {
        let node = parse_text("base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\nlist: [*b]\n").unwrap();
        let map = attrs(&node);
        let used = attrs(&map["use"].value);
        assert_eq!(used["x"].value.data, Data::Int(1));
        assert_eq!(used["y"].value.data, Data::Int(3));
    }

    #[test]
    fn refuses_bad_documents() {
        let dup = parse_text("a: 1\na: 2\n").unwrap_err();
        assert!(dup.contains("t.yml:2:1: error: duplicate key `a`"), "{dup}");
        assert!(dup.contains("first defined here"), "{dup}");
        let two = parse_text("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(two.contains("single YAML document"), "{two}");
        let key = parse_text("[a]: 1\n").unwrap_err();
        assert!(key.contains("mapping key"), "{key}");
        let unknown = parse_text("a: *nope\n").unwrap_err();
        assert!(unknown.contains("error"), "{unknown}");
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
        let laughs = parse_text(laughs).unwrap_err();
        assert!(laughs.contains("more than"), "{laughs}");
        let mut sources = SourceMap::new();
        let bad = parse_bytes(Path::new("t.yml"), b"a: \xff\n", &mut sources).unwrap_err();
        assert_eq!(
            bad.render(&sources),
            "t.yml:1:4: error: the manifest is not valid UTF-8\n  |\n1 | a: \u{fffd}\n  |    ^ invalid byte here\n"
        );
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse_text("").unwrap().data, Data::Null);
        assert_eq!(parse_text("# only a comment\n").unwrap().data, Data::Null);
    }
}
