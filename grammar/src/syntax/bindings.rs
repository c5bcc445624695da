//! Collects the bindings of a set or `let` and desugars nested attribute
//! paths: `a.b = 1; a.c = 2;` becomes `a = { b = 1; c = 2; };`.

use std::collections::HashMap;

use super::SyntaxError;
use super::ast::*;
use super::parser::{BindingContext, Input, PError};
use crate::source::Span;

pub(super) struct BindingsBuilder {
    context: BindingContext,
    entries: Vec<Entry>,
    /// Name → index in `entries` (large sets must not be quadratic).
    index: HashMap<Name, usize>,
    dynamic: Vec<DynamicBinding>,
}

struct Entry {
    name: Name,
    name_span: Span,
    definition: Definition,
}

enum Definition {
    Value(BindingValue),
    /// Built from `name.rest = value;` statements; `span` is the first one.
    Nested(Box<BindingsBuilder>, Span),
}

type Result<T> = std::result::Result<T, nom::Err<PError>>;

fn duplicate(name: &str, span: Span, first: Span) -> nom::Err<PError> {
    let mut error = SyntaxError::new(
        span.start as usize,
        format!("attribute `{name}` is already defined"),
    );
    error.len = (span.end - span.start) as usize;
    error
        .related
        .push((first, "first defined here".to_string()));
    nom::Err::Failure(error.into())
}

impl BindingsBuilder {
    pub(super) fn new(context: BindingContext) -> BindingsBuilder {
        BindingsBuilder {
            context,
            entries: Vec::new(),
            index: HashMap::new(),
            dynamic: Vec::new(),
        }
    }

    fn find(&mut self, name: &str) -> Option<&mut Entry> {
        if self.index.is_empty() {
            return self.entries.iter_mut().find(|e| &*e.name == name);
        }
        let index = *self.index.get(name)?;
        self.entries.get_mut(index)
    }

    /// Small sets are searched linearly; an index is built once a set grows.
    fn push(&mut self, entry: Entry) {
        const INDEX_FROM: usize = 16;
        if self.entries.len() == INDEX_FROM {
            for (n, e) in self.entries.iter().enumerate() {
                self.index.insert(e.name.clone(), n);
            }
        }
        if self.entries.len() >= INDEX_FROM {
            self.index.insert(entry.name.clone(), self.entries.len());
        }
        self.entries.push(entry);
    }

    pub(super) fn define(
        &mut self,
        i: &Input,
        path: Vec<AttrName>,
        value: ExprId,
        statement: Span,
    ) -> Result<()> {
        self.define_path(i, &path, value, statement)
    }

    fn define_path(
        &mut self,
        i: &Input,
        path: &[AttrName],
        value: ExprId,
        statement: Span,
    ) -> Result<()> {
        let Some((first, rest)) = path.split_first() else {
            return Ok(());
        };
        match first {
            AttrName::Static(name, span) => {
                if rest.is_empty() {
                    if let Some(existing) = self.find(name) {
                        return Err(duplicate(name, *span, existing.name_span));
                    }
                    self.push(Entry {
                        name: name.clone(),
                        name_span: *span,
                        definition: Definition::Value(BindingValue::Expr(value)),
                    });
                    return Ok(());
                }
                match self.find(name) {
                    Some(Entry {
                        definition: Definition::Nested(nested, _),
                        ..
                    }) => nested.define_path(i, rest, value, statement),
                    Some(existing) => Err(duplicate(name, *span, existing.name_span)),
                    None => {
                        let mut nested = BindingsBuilder::new(BindingContext::Set);
                        nested.define_path(i, rest, value, statement)?;
                        self.push(Entry {
                            name: name.clone(),
                            name_span: *span,
                            definition: Definition::Nested(Box::new(nested), statement),
                        });
                        Ok(())
                    }
                }
            }
            AttrName::Dynamic(name) => {
                if self.context != BindingContext::Set {
                    let span = i.extra.ast.borrow()[*name].span;
                    let mut error = SyntaxError::new(
                        span.start as usize,
                        "dynamic attribute names are not allowed in `let` or `rec` sets",
                    );
                    error.len = (span.end - span.start) as usize;
                    error.help =
                        Some("use a plain (non-`rec`) attribute set, or `listToAttrs`".to_string());
                    return Err(nom::Err::Failure(error.into()));
                }
                let value = if rest.is_empty() {
                    value
                } else {
                    let mut nested = BindingsBuilder::new(BindingContext::Set);
                    nested.define_path(i, rest, value, statement)?;
                    nested.lower(i, statement)?
                };
                self.dynamic.push(DynamicBinding { name: *name, value });
                Ok(())
            }
        }
    }

    pub(super) fn inherit(
        &mut self,
        _i: &Input,
        name: Name,
        span: Span,
        source: Option<ExprId>,
    ) -> Result<()> {
        if let Some(existing) = self.find(&name) {
            return Err(duplicate(&name, span, existing.name_span));
        }
        let value = match source {
            Some(source) => BindingValue::InheritFrom(source),
            None => BindingValue::Inherit,
        };
        self.push(Entry {
            name,
            name_span: span,
            definition: Definition::Value(value),
        });
        Ok(())
    }

    fn lower(self, i: &Input, span: Span) -> Result<ExprId> {
        let set = self.finish(i, false)?;
        Ok(i.extra.ast.borrow_mut().alloc(Expr {
            kind: ExprKind::Attrs(Box::new(set)),
            span,
        }))
    }

    pub(super) fn finish(self, i: &Input, recursive: bool) -> Result<AttrSet> {
        let mut bindings = Vec::with_capacity(self.entries.len());
        for entry in self.entries {
            let value = match entry.definition {
                Definition::Value(value) => value,
                Definition::Nested(nested, span) => BindingValue::Expr(nested.lower(i, span)?),
            };
            bindings.push(Binding {
                name: entry.name,
                name_span: entry.name_span,
                value,
            });
        }
        Ok(AttrSet {
            recursive,
            bindings,
            dynamic: self.dynamic,
        })
    }

    /// For `let`: the bindings (dynamic names were already refused).
    pub(super) fn finish_static(self, i: &Input) -> Result<Vec<Binding>> {
        Ok(self.finish(i, true)?.bindings)
    }
}
