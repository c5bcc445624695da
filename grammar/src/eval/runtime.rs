//! Runtime values of the evaluator. Thunks and scopes live in arenas owned by
//! the [`super::machine::Machine`] and are named by index: values never own
//! each other through `Rc` cycles or chains, so dropping them never recurses
//! and a self-referential value cannot leak.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use super::builtins::Builtin;
use crate::source::Span;
use crate::syntax::{ExprId, Name};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ThunkId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EnvId(pub u32);

/// A value in weak head normal form, with the span of the expression that
/// produced it.
#[derive(Clone, Debug)]
pub(crate) struct Value {
    pub kind: ValueKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub(crate) enum ValueKind {
    Null,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
    /// Absolute and lexically normalised.
    Path(Rc<Path>),
    List(Rc<[ThunkId]>),
    Attrs(Rc<AttrMap>),
    Closure {
        lambda: ExprId,
        env: EnvId,
    },
    /// A builtin with the arguments it has been applied to so far.
    Builtin {
        builtin: Builtin,
        args: PartialArgs,
    },
}

/// The arguments of a partially applied builtin, kept inline: builtins
/// take at most three, so at most two are ever waiting.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PartialArgs {
    len: u8,
    items: [Option<ThunkId>; 2],
}

impl PartialArgs {
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn iter(&self) -> impl Iterator<Item = ThunkId> + '_ {
        self.items.iter().take(self.len()).flatten().copied()
    }

    /// These arguments plus one more; `None` past two.
    pub fn push(self, argument: ThunkId) -> Option<PartialArgs> {
        let mut next = self;
        let slot = next.items.get_mut(self.len())?;
        *slot = Some(argument);
        next.len += 1;
        Some(next)
    }
}

pub(crate) type AttrMap = BTreeMap<Name, AttrSlot>;

#[derive(Clone, Copy, Debug)]
pub(crate) struct AttrSlot {
    pub name_span: Span,
    pub value: ThunkId,
}

impl ValueKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueKind::Null => "null",
            ValueKind::Bool(_) => "a boolean",
            ValueKind::Int(_) => "an integer",
            ValueKind::Str(_) => "a string",
            ValueKind::Path(_) => "a path",
            ValueKind::List(_) => "a list",
            ValueKind::Attrs(_) => "an attribute set",
            ValueKind::Closure { .. } | ValueKind::Builtin { .. } => "a function",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Thunk {
    /// Not evaluated yet.
    Expr {
        expr: ExprId,
        env: EnvId,
    },
    /// `function argument`, created lazily by builtins such as `map`.
    Apply {
        function: ThunkId,
        argument: ThunkId,
        span: Span,
    },
    /// `source.name`, from `inherit (source) name;`.
    Select {
        source: ThunkId,
        name: Name,
        span: Span,
    },
    /// Being evaluated: reaching it again means infinite recursion.
    Blackhole {
        span: Span,
    },
    Done(Value),
}

/// One scope: the names come from the binder (a `let`, a `rec` set or a
/// function's parameters), the values from `vars`, in binder order.
#[derive(Debug)]
pub(crate) struct Scope {
    pub binder: Option<ExprId>,
    pub vars: Vars,
    pub parent: Option<EnvId>,
}

#[derive(Debug)]
pub(crate) enum Vars {
    One(ThunkId),
    Many(Box<[ThunkId]>),
}

impl Vars {
    pub fn get(&self, index: usize) -> Option<ThunkId> {
        match self {
            Vars::One(thunk) if index == 0 => Some(*thunk),
            Vars::One(_) => None,
            Vars::Many(thunks) => thunks.get(index).copied(),
        }
    }
}
