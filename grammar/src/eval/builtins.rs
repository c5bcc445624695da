//! The builtins: in scope by name and as `builtins.NAME`.

use std::rc::Rc;

use super::machine::{
    ATTR_ENTRY, BoxedDiagnostic, EvalResult, LIST_ITEM, MAX_VALUE_DEPTH, Machine, THUNK, error,
};
use super::runtime::*;
use crate::source::Span;
use crate::syntax::Name;

macro_rules! builtins {
    ($($variant:ident = $name:literal / $arity:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Builtin { $($variant,)* }

        impl Builtin {
            pub const ALL: &'static [Builtin] = &[$(Builtin::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Builtin::$variant => $name,)* }
            }

            pub fn arity(self) -> usize {
                match self { $(Builtin::$variant => $arity,)* }
            }

            pub fn from_name(name: &str) -> Option<Builtin> {
                match name { $($name => Some(Builtin::$variant),)* _ => None }
            }
        }
    };
}

builtins! {
    Import = "import" / 1,
    Map = "map" / 2,
    Filter = "filter" / 2,
    FoldlStrict = "foldl'" / 3,
    Length = "length" / 1,
    Head = "head" / 1,
    Tail = "tail" / 1,
    ElemAt = "elemAt" / 2,
    Elem = "elem" / 2,
    AttrNames = "attrNames" / 1,
    AttrValues = "attrValues" / 1,
    HasAttr = "hasAttr" / 2,
    GetAttr = "getAttr" / 2,
    ListToAttrs = "listToAttrs" / 1,
    MapAttrs = "mapAttrs" / 2,
    ConcatLists = "concatLists" / 1,
    ConcatMap = "concatMap" / 2,
    ConcatStringsSep = "concatStringsSep" / 2,
    GenList = "genList" / 2,
    ToString = "toString" / 1,
    ToJson = "toJSON" / 1,
    Throw = "throw" / 1,
    ReplaceStrings = "replaceStrings" / 3,
    SplitString = "splitString" / 2,
    HashFile = "hashFile" / 1,
}

const ORDINALS: [&str; 3] = ["first", "second", "third"];

impl Machine<'_> {
    pub(crate) fn call_builtin(
        &mut self,
        builtin: Builtin,
        args: &[ThunkId],
        span: Span,
    ) -> EvalResult<Value> {
        let arg = |n: usize| args.get(n).copied().unwrap_or(ThunkId(0));
        let value = |kind| Ok(Value { kind, span });
        match builtin {
            Builtin::Import => {
                let path = self.want_path(arg(0), builtin, 0, span)?;
                self.import(&path, span)
            }
            Builtin::Map => {
                let items = self.want_list(arg(1), builtin, 1, span)?;
                self.charge(items.len(), span)?;
                self.allocate(items.len() * LIST_ITEM, span)?;
                let mapped: Rc<[ThunkId]> = items
                    .iter()
                    .map(|&item| {
                        self.alloc_thunk(Thunk::Apply {
                            function: arg(0),
                            argument: item,
                            span,
                        })
                    })
                    .collect();
                value(ValueKind::List(mapped))
            }
            Builtin::Filter => {
                let function = self.force(arg(0))?;
                let items = self.want_list(arg(1), builtin, 1, span)?;
                let mut kept = Vec::new();
                for &item in items.iter() {
                    let keep = self.apply(function.clone(), item, span)?;
                    match keep.kind {
                        ValueKind::Bool(true) => kept.push(item),
                        ValueKind::Bool(false) => {}
                        other => {
                            return Err(error(
                                span,
                                format!(
                                    "the function given to `filter` must return a boolean, it returned {}",
                                    other.type_name()
                                ),
                            ));
                        }
                    }
                }
                value(ValueKind::List(kept.into()))
            }
            Builtin::FoldlStrict => {
                let function = self.force(arg(0))?;
                let items = self.want_list(arg(2), builtin, 2, span)?;
                let mut accumulator = self.force(arg(1))?;
                for &item in items.iter() {
                    let acc = self.done(accumulator);
                    let partial = self.apply(function.clone(), acc, span)?;
                    accumulator = self.apply(partial, item, span)?;
                }
                Ok(accumulator)
            }
            Builtin::Length => {
                let items = self.want_list(arg(0), builtin, 0, span)?;
                value(ValueKind::Int(items.len() as i64))
            }
            Builtin::Head => {
                let items = self.want_list(arg(0), builtin, 0, span)?;
                match items.first() {
                    Some(&first) => self.force(first),
                    None => Err(error(span, "`head` of an empty list")),
                }
            }
            Builtin::Tail => {
                let items = self.want_list(arg(0), builtin, 0, span)?;
                if items.is_empty() {
                    return Err(error(span, "`tail` of an empty list"));
                }
                self.charge(items.len(), span)?;
                self.allocate(items.len() * LIST_ITEM, span)?;
                value(ValueKind::List(items[1..].into()))
            }
            Builtin::ElemAt => {
                let items = self.want_list(arg(0), builtin, 0, span)?;
                let index = self.want_int(arg(1), builtin, 1, span)?;
                match usize::try_from(index).ok().and_then(|i| items.get(i)) {
                    Some(&item) => self.force(item),
                    None => Err(error(
                        span,
                        format!(
                            "`elemAt`: index {index} is out of bounds for a list of length {}",
                            items.len()
                        ),
                    )),
                }
            }
            Builtin::Elem => {
                let needle = self.force(arg(0))?;
                let items = self.want_list(arg(1), builtin, 1, span)?;
                for &item in items.iter() {
                    let candidate = self.force(item)?;
                    if self.deep_equal(&needle, &candidate, 0, span)? {
                        return value(ValueKind::Bool(true));
                    }
                }
                value(ValueKind::Bool(false))
            }
            Builtin::AttrNames => {
                let attrs = self.want_attrs(arg(0), builtin, 0, span)?;
                self.charge(attrs.len(), span)?;
                self.allocate(attrs.len() * (LIST_ITEM + ATTR_ENTRY), span)?;
                let names: Vec<ThunkId> = attrs
                    .iter()
                    .map(|(name, slot)| {
                        self.done(Value {
                            kind: ValueKind::Str(name.clone()),
                            span: slot.name_span,
                        })
                    })
                    .collect();
                value(ValueKind::List(names.into()))
            }
            Builtin::AttrValues => {
                let attrs = self.want_attrs(arg(0), builtin, 0, span)?;
                self.charge(attrs.len(), span)?;
                self.allocate(attrs.len() * LIST_ITEM, span)?;
                let values: Vec<ThunkId> = attrs.values().map(|slot| slot.value).collect();
                value(ValueKind::List(values.into()))
            }
            Builtin::HasAttr => {
                let name = self.want_string(arg(0), builtin, 0, span)?;
                let attrs = self.want_attrs(arg(1), builtin, 1, span)?;
                value(ValueKind::Bool(attrs.contains_key(&*name)))
            }
            Builtin::GetAttr => {
                let name = self.want_string(arg(0), builtin, 0, span)?;
                let set = self.force(arg(1))?;
                let ValueKind::Attrs(attrs) = &set.kind else {
                    return Err(self.wrong_type(builtin, 1, "an attribute set", &set, span));
                };
                match attrs.get(&*name) {
                    Some(slot) => self.force(slot.value),
                    None => Err(self.missing_attribute(&name, &set, span)),
                }
            }
            Builtin::ListToAttrs => {
                let items = self.want_list(arg(0), builtin, 0, span)?;
                self.charge(items.len(), span)?;
                self.allocate(items.len() * ATTR_ENTRY, span)?;
                let mut attrs = AttrMap::new();
                for &item in items.iter() {
                    let entry = self.force(item)?;
                    let ValueKind::Attrs(fields) = &entry.kind else {
                        return Err(error(
                            entry.span,
                            format!("`listToAttrs` expects a list of `{{ name; value; }}` sets, found {}", entry.kind.type_name()),
                        )
                        .with_related(span, "in this call"));
                    };
                    let (Some(name), Some(value)) = (fields.get("name"), fields.get("value"))
                    else {
                        return Err(error(
                            entry.span,
                            "`listToAttrs` expects sets with the attributes `name` and `value`",
                        )
                        .with_related(span, "in this call"));
                    };
                    let value = value.value;
                    let name_value = self.force(name.value)?;
                    let ValueKind::Str(name) = &name_value.kind else {
                        return Err(error(
                            name_value.span,
                            format!(
                                "an attribute name must be a string, found {}",
                                name_value.kind.type_name()
                            ),
                        ));
                    };
                    // As in Nix, the first occurrence of a name wins.
                    attrs.entry(name.clone()).or_insert(AttrSlot {
                        name_span: name_value.span,
                        value,
                    });
                }
                value(ValueKind::Attrs(Rc::new(attrs)))
            }
            Builtin::MapAttrs => {
                let attrs = self.want_attrs(arg(1), builtin, 1, span)?;
                self.charge(attrs.len(), span)?;
                self.allocate(attrs.len() * ATTR_ENTRY, span)?;
                let mut mapped = AttrMap::new();
                for (name, slot) in attrs.iter() {
                    let name_thunk = self.done(Value {
                        kind: ValueKind::Str(name.clone()),
                        span: slot.name_span,
                    });
                    let partial = self.alloc_thunk(Thunk::Apply {
                        function: arg(0),
                        argument: name_thunk,
                        span,
                    });
                    let value = self.alloc_thunk(Thunk::Apply {
                        function: partial,
                        argument: slot.value,
                        span,
                    });
                    mapped.insert(
                        name.clone(),
                        AttrSlot {
                            name_span: slot.name_span,
                            value,
                        },
                    );
                }
                value(ValueKind::Attrs(Rc::new(mapped)))
            }
            Builtin::ConcatLists => {
                let lists = self.want_list(arg(0), builtin, 0, span)?;
                let mut out = Vec::new();
                for &list in lists.iter() {
                    let inner = self.force(list)?;
                    let ValueKind::List(items) = &inner.kind else {
                        return Err(error(
                            inner.span,
                            format!(
                                "`concatLists` expects a list of lists, found {} in it",
                                inner.kind.type_name()
                            ),
                        )
                        .with_related(span, "in this call"));
                    };
                    self.charge(items.len(), span)?;
                    self.allocate(items.len() * LIST_ITEM, span)?;
                    out.extend_from_slice(items);
                }
                value(ValueKind::List(out.into()))
            }
            Builtin::ConcatMap => {
                let function = self.force(arg(0))?;
                let items = self.want_list(arg(1), builtin, 1, span)?;
                let mut out = Vec::new();
                for &item in items.iter() {
                    let result = self.apply(function.clone(), item, span)?;
                    let ValueKind::List(mapped) = &result.kind else {
                        return Err(error(
                            span,
                            format!(
                                "the function given to `concatMap` must return a list, it returned {}",
                                result.kind.type_name()
                            ),
                        ));
                    };
                    self.charge(mapped.len(), span)?;
                    self.allocate(mapped.len() * LIST_ITEM, span)?;
                    out.extend_from_slice(mapped);
                }
                value(ValueKind::List(out.into()))
            }
            Builtin::ConcatStringsSep => {
                let separator = self.want_string(arg(0), builtin, 0, span)?;
                let items = self.want_list(arg(1), builtin, 1, span)?;
                let mut out = String::new();
                for (n, &item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push_str(&separator);
                    }
                    let v = self.force(item)?;
                    self.coerce_to_string(&v, &mut out, "join", span)?;
                    self.check_string_len(out.len(), span)?;
                }
                self.charge(out.len() / 256, span)?;
                self.allocate(out.len(), span)?;
                value(ValueKind::Str(out.into()))
            }
            Builtin::GenList => {
                let count = self.want_int(arg(1), builtin, 1, span)?;
                let Ok(count) = usize::try_from(count) else {
                    return Err(error(
                        span,
                        format!("`genList` needs a non-negative length, got {count}"),
                    ));
                };
                self.charge(count, span)?;
                self.allocate(count.saturating_mul(LIST_ITEM), span)?;
                let items: Rc<[ThunkId]> = (0..count)
                    .map(|index| {
                        let index = self.done(Value {
                            kind: ValueKind::Int(index as i64),
                            span,
                        });
                        self.alloc_thunk(Thunk::Apply {
                            function: arg(0),
                            argument: index,
                            span,
                        })
                    })
                    .collect();
                value(ValueKind::List(items))
            }
            Builtin::ToString => {
                let v = self.force(arg(0))?;
                if let ValueKind::Str(text) = &v.kind {
                    return value(ValueKind::Str(text.clone()));
                }
                let mut out = std::mem::take(&mut self.scratch);
                out.clear();
                self.write_to_string(&v, &mut out, 0, span)?;
                self.allocate(out.len(), span)?;
                let text: Rc<str> = Rc::from(out.as_str());
                self.scratch = out;
                value(ValueKind::Str(text))
            }
            Builtin::ToJson => {
                let v = self.force(arg(0))?;
                let json = self.json_of(v, 0, span)?;
                let text = serde_json::to_string(&json).unwrap_or_default();
                self.check_string_len(text.len(), span)?;
                self.allocate(text.len(), span)?;
                value(ValueKind::Str(text.into()))
            }
            Builtin::Throw => {
                let message = self.force(arg(0))?;
                let mut text = String::new();
                self.coerce_to_string(&message, &mut text, "throw", span)?;
                Err(error(span, text).with_label("thrown here"))
            }
            Builtin::ReplaceStrings => {
                let from = self.want_list(arg(0), builtin, 0, span)?;
                let to = self.want_list(arg(1), builtin, 1, span)?;
                if from.len() != to.len() {
                    return Err(error(
                        span,
                        format!(
                            "`replaceStrings` needs lists of the same length, got {} and {}",
                            from.len(),
                            to.len()
                        ),
                    ));
                }
                let mut patterns = Vec::with_capacity(from.len());
                for &pattern in from.iter() {
                    patterns.push(self.want_string(pattern, builtin, 0, span)?);
                }
                let mut replacements = Vec::with_capacity(to.len());
                for &replacement in to.iter() {
                    replacements.push(self.want_string(replacement, builtin, 1, span)?);
                }
                let subject = self.want_string(arg(2), builtin, 2, span)?;
                let out = replace_strings(&subject, &patterns, &replacements);
                self.check_string_len(out.len(), span)?;
                self.charge(out.len() / 256, span)?;
                self.allocate(out.len(), span)?;
                value(ValueKind::Str(out.into()))
            }
            Builtin::SplitString => {
                let separator = self.want_string(arg(0), builtin, 0, span)?;
                if separator.is_empty() {
                    return Err(error(span, "`splitString` needs a non-empty separator"));
                }
                let subject = self.want_string(arg(1), builtin, 1, span)?;
                let pieces: Vec<&str> = subject.split(&*separator).collect();
                self.charge(pieces.len(), span)?;
                self.allocate(subject.len() + pieces.len() * (LIST_ITEM + THUNK), span)?;
                let items: Vec<ThunkId> = pieces
                    .into_iter()
                    .map(|piece| {
                        self.done(Value {
                            kind: ValueKind::Str(piece.into()),
                            span,
                        })
                    })
                    .collect();
                value(ValueKind::List(items.into()))
            }
            Builtin::HashFile => {
                let path = self.want_path(arg(0), builtin, 0, span)?;
                self.confine(&path, span, "hash")?;
                self.record_file(&path);
                match super::hash::hash_path(&path) {
                    Ok(hex) => value(ValueKind::Str(hex.into())),
                    Err(e) => Err(Box::new(crate::diagnostic::Diagnostic::error(
                        crate::diagnostic::Phase::Io,
                        format!(
                            "`hashFile`: cannot read `{}`: {e}",
                            self.display_name(&path).display()
                        ),
                        Some(span),
                    ))),
                }
            }
        }
    }

    fn wrong_type(
        &self,
        builtin: Builtin,
        position: usize,
        wanted: &str,
        found: &Value,
        span: Span,
    ) -> Box<crate::Diagnostic> {
        let ordinal = if builtin.arity() == 1 {
            "its argument".to_string()
        } else {
            format!(
                "its {} argument",
                ORDINALS.get(position).copied().unwrap_or("next")
            )
        };
        error(
            span,
            format!(
                "`{}` expects {wanted} as {ordinal}, found {}",
                builtin.name(),
                found.kind.type_name()
            ),
        )
        .with_related(found.span, format!("this is {}", found.kind.type_name()))
    }

    fn want_list(
        &mut self,
        thunk: ThunkId,
        builtin: Builtin,
        position: usize,
        span: Span,
    ) -> EvalResult<Rc<[ThunkId]>> {
        let v = self.force(thunk)?;
        match &v.kind {
            ValueKind::List(items) => Ok(items.clone()),
            _ => Err(self.wrong_type(builtin, position, "a list", &v, span)),
        }
    }

    fn want_attrs(
        &mut self,
        thunk: ThunkId,
        builtin: Builtin,
        position: usize,
        span: Span,
    ) -> EvalResult<Rc<AttrMap>> {
        let v = self.force(thunk)?;
        match &v.kind {
            ValueKind::Attrs(attrs) => Ok(attrs.clone()),
            _ => Err(self.wrong_type(builtin, position, "an attribute set", &v, span)),
        }
    }

    fn want_string(
        &mut self,
        thunk: ThunkId,
        builtin: Builtin,
        position: usize,
        span: Span,
    ) -> EvalResult<Name> {
        let v = self.force(thunk)?;
        match &v.kind {
            ValueKind::Str(s) => Ok(s.clone()),
            _ => Err(self.wrong_type(builtin, position, "a string", &v, span)),
        }
    }

    fn want_int(
        &mut self,
        thunk: ThunkId,
        builtin: Builtin,
        position: usize,
        span: Span,
    ) -> EvalResult<i64> {
        let v = self.force(thunk)?;
        match &v.kind {
            ValueKind::Int(n) => Ok(*n),
            _ => Err(self.wrong_type(builtin, position, "an integer", &v, span)),
        }
    }

    fn want_path(
        &mut self,
        thunk: ThunkId,
        builtin: Builtin,
        position: usize,
        span: Span,
    ) -> EvalResult<std::path::PathBuf> {
        let v = self.force(thunk)?;
        match &v.kind {
            ValueKind::Path(p) => Ok(p.to_path_buf()),
            _ => Err(self
                .wrong_type(builtin, position, "a path", &v, span)
                .with_help("write a path literal such as `./file.kiln`")),
        }
    }

    /// `toString`: as in Nix, `true` is "1", `false` and `null` are "", and
    /// lists are joined with spaces.
    fn write_to_string(
        &mut self,
        v: &Value,
        out: &mut String,
        depth: usize,
        span: Span,
    ) -> EvalResult<()> {
        if depth > MAX_VALUE_DEPTH {
            return Err(error(span, "value nested too deeply for `toString`"));
        }
        match &v.kind {
            ValueKind::Bool(true) => out.push('1'),
            ValueKind::Bool(false) | ValueKind::Null => {}
            ValueKind::List(items) => {
                let items = items.clone();
                for (n, &item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(' ');
                    }
                    let item = self.force(item)?;
                    self.write_to_string(&item, out, depth + 1, span)?;
                    self.check_string_len(out.len(), span)?;
                }
            }
            ValueKind::Str(_) | ValueKind::Int(_) | ValueKind::Path(_) => {
                self.coerce_to_string(v, out, "convert", span)?;
            }
            other => {
                return Err(error(
                    span,
                    format!("`toString` cannot convert {}", other.type_name()),
                )
                .with_related(v.span, format!("this is {}", other.type_name()))
                .with_help("use `toJSON` for attribute sets"));
            }
        }
        Ok(())
    }

    fn json_of(&mut self, v: Value, depth: usize, span: Span) -> EvalResult<serde_json::Value> {
        if depth > MAX_VALUE_DEPTH {
            return Err(error(
                span,
                "value nested too deeply for `toJSON` (is it self-referential?)",
            ));
        }
        self.charge(1, span)?;
        Ok(match v.kind {
            ValueKind::Null => serde_json::Value::Null,
            ValueKind::Bool(b) => serde_json::Value::Bool(b),
            ValueKind::Int(n) => serde_json::Value::from(n),
            ValueKind::Str(s) => serde_json::Value::String(String::from(&*s)),
            ValueKind::Path(p) => serde_json::Value::String(p.to_string_lossy().into_owned()),
            ValueKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for &item in items.iter() {
                    let item = self.force(item)?;
                    out.push(self.json_of(item, depth + 1, span)?);
                }
                serde_json::Value::Array(out)
            }
            ValueKind::Attrs(attrs) => {
                let mut out = serde_json::Map::new();
                for (name, slot) in attrs.iter() {
                    let item = self.force(slot.value)?;
                    out.insert(String::from(&**name), self.json_of(item, depth + 1, span)?);
                }
                serde_json::Value::Object(out)
            }
            ValueKind::Closure { .. } | ValueKind::Builtin { .. } => {
                return Err(error(span, "`toJSON` cannot convert a function")
                    .with_related(v.span, "this is a function"));
            }
        })
    }
}

/// Nix's `replaceStrings`: at each position the first pattern that matches
/// is replaced and matching resumes after it; an empty pattern matches at
/// every position (inserting its replacement before each character and at
/// the end).
pub(crate) fn replace_strings(subject: &str, patterns: &[Name], replacements: &[Name]) -> String {
    let mut out = String::with_capacity(subject.len());
    let mut position = 0;
    loop {
        let rest = &subject[position..];
        let matched = patterns
            .iter()
            .zip(replacements)
            .find(|(pattern, _)| rest.starts_with(&***pattern));
        match matched {
            Some((pattern, replacement)) => {
                out.push_str(replacement);
                if pattern.is_empty() {
                    let Some(c) = rest.chars().next() else { break };
                    out.push(c);
                    position += c.len_utf8();
                } else {
                    position += pattern.len();
                }
            }
            None => {
                let Some(c) = rest.chars().next() else { break };
                out.push(c);
                position += c.len_utf8();
            }
        }
        if position > subject.len() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<Name> {
        items.iter().map(|s| Name::from(*s)).collect()
    }

    #[test]
    fn replace_strings_like_nix() {
        assert_eq!(
            replace_strings("abc", &names(&["b"]), &names(&["X"])),
            "aXc"
        );
        assert_eq!(
            replace_strings("ab", &names(&[""]), &names(&["-"])),
            "-a-b-"
        );
        assert_eq!(
            replace_strings("aaa", &names(&["aa", "a"]), &names(&["1", "2"])),
            "12"
        );
    }
}
