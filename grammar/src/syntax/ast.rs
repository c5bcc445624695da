//! The syntax tree. Nodes live in one arena ([`Ast`]) and refer to each other
//! by [`ExprId`], so the evaluator can keep cheap `Copy` references to code in
//! closures and thunks, and dropping a tree never recurses.
//!
//! Binding lists are already desugared: `a.b = 1; a.c = 2;` is one binding
//! `a` whose value is the attribute set `{ b = 1; c = 2; }`, and every static
//! name occurs once per set.

use std::rc::Rc;

use crate::source::Span;

/// Index of an [`Expr`] in an [`Ast`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExprId(pub u32);

/// The arena holding every node of one or more parsed files.
#[derive(Debug, Default)]
pub struct Ast {
    exprs: Vec<Expr>,
}

impl Ast {
    pub fn new() -> Ast {
        Ast::default()
    }

    pub fn alloc(&mut self, expr: Expr) -> ExprId {
        let id = ExprId(u32::try_from(self.exprs.len()).unwrap_or(u32::MAX));
        self.exprs.push(expr);
        id
    }

    pub fn len(&self) -> usize {
        self.exprs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exprs.is_empty()
    }
}

impl std::ops::Index<ExprId> for Ast {
    type Output = Expr;
    fn index(&self, id: ExprId) -> &Expr {
        &self.exprs[id.0 as usize]
    }
}

/// Identifiers and attribute names are shared, not copied, between the tree
/// and the values built from it.
pub type Name = Rc<str>;

#[derive(Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug)]
pub enum ExprKind {
    Null,
    Bool(bool),
    Int(i64),
    /// A string literal (plain or indented), already unescaped and with
    /// indentation stripped; interpolations are kept in order.
    Str(Vec<StrPart>),
    /// A path literal as written (`./a/b`), resolved against the directory
    /// of the file it appears in when evaluated.
    Path(Name),
    Var(Name),
    List(Vec<ExprId>),
    Attrs(Box<AttrSet>),
    Let(Box<Let>),
    Lambda(Box<Lambda>),
    Apply {
        function: ExprId,
        argument: ExprId,
    },
    Select {
        subject: ExprId,
        path: Vec<AttrName>,
        default: Option<ExprId>,
    },
    HasAttr {
        subject: ExprId,
        path: Vec<AttrName>,
    },
    If {
        condition: ExprId,
        then_branch: ExprId,
        else_branch: ExprId,
    },
    Not(ExprId),
    Negate(ExprId),
    Binary {
        op: BinaryOp,
        op_span: Span,
        lhs: ExprId,
        rhs: ExprId,
    },
}

#[derive(Debug)]
pub enum StrPart {
    Literal(Name),
    Interpolation(ExprId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    NotEq,
    Less,
    LessEq,
    Greater,
    GreaterEq,
    Update,
    Add,
    Sub,
    Mul,
    Div,
    Concat,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::NotEq => "!=",
            BinaryOp::Less => "<",
            BinaryOp::LessEq => "<=",
            BinaryOp::Greater => ">",
            BinaryOp::GreaterEq => ">=",
            BinaryOp::Update => "//",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Concat => "++",
        }
    }
}

/// One element of an attribute path (`a."b".${c}`).
#[derive(Debug, Clone)]
pub enum AttrName {
    Static(Name, Span),
    /// `${e}` or a quoted name with interpolation; must evaluate to a string.
    Dynamic(ExprId),
}

/// `{ ... }` or `rec { ... }`.
#[derive(Debug)]
pub struct AttrSet {
    pub recursive: bool,
    /// Unique static names, in source order.
    pub bindings: Vec<Binding>,
    /// `${k} = v;` entries (only in non-recursive sets), in source order.
    pub dynamic: Vec<DynamicBinding>,
}

#[derive(Debug)]
pub struct Let {
    pub bindings: Vec<Binding>,
    pub body: ExprId,
}

#[derive(Debug)]
pub struct Binding {
    pub name: Name,
    pub name_span: Span,
    pub value: BindingValue,
}

#[derive(Debug)]
pub enum BindingValue {
    /// `name = e;` (also the desugared nested sets of `name.x = e;`).
    Expr(ExprId),
    /// `inherit name;`: the variable of the same name in the enclosing scope.
    Inherit,
    /// `inherit (e) name;`: `e.name`.
    InheritFrom(ExprId),
}

#[derive(Debug)]
pub struct DynamicBinding {
    /// Evaluates to the attribute's name.
    pub name: ExprId,
    pub value: ExprId,
}

#[derive(Debug)]
pub struct Lambda {
    pub param: Param,
    pub body: ExprId,
}

#[derive(Debug)]
pub enum Param {
    /// `x: body`
    Ident(Name, Span),
    /// `{ a, b ? 1, ... }: body`, optionally bound as a whole with `@`.
    Formals(Formals),
}

#[derive(Debug)]
pub struct Formals {
    pub formals: Vec<Formal>,
    pub ellipsis: bool,
    /// `args @ { ... }` or `{ ... } @ args`.
    pub bind_as: Option<(Name, Span)>,
    /// The braces, for "unknown argument" errors.
    pub span: Span,
}

#[derive(Debug)]
pub struct Formal {
    pub name: Name,
    pub span: Span,
    pub default: Option<ExprId>,
}

impl Formals {
    /// Names bound in the function body, in the order their thunks are kept.
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.formals
            .iter()
            .map(|f| &f.name)
            .chain(self.bind_as.as_ref().map(|(n, _)| n))
    }
}
