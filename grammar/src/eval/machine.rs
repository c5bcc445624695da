//! The evaluator: a lazy, call-by-need interpreter over the arena AST.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::EvalOptions;
use super::builtins::Builtin;
use super::paths::{normalize, relative_to};
use super::runtime::*;
use crate::diagnostic::{Diagnostic, Phase};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::{
    self, Ast, AttrName, BinaryOp, BindingValue, ExprId, ExprKind, Name, Param, StrPart,
};
use crate::value::{Attr, Data, Node};

/// Strings longer than this are an error: doubling a string in a loop must
/// fail cleanly, not exhaust memory.
pub(crate) const MAX_STRING: usize = 64 << 20;

/// What the memory budget counts per list element (a thunk id), per
/// attribute (name, span, thunk id and the map's overhead) and per thunk.
pub(crate) const LIST_ITEM: usize = std::mem::size_of::<ThunkId>();
pub(crate) const ATTR_ENTRY: usize = 64;
pub(crate) const THUNK: usize = std::mem::size_of::<Thunk>();

/// How deeply a forced value may nest (lists in sets in lists ...).
/// Self-referential values (`let x = [ x ]; in x`) hit this.
pub(crate) const MAX_VALUE_DEPTH: usize = 1000;

/// Errors are boxed: evaluation returns results through every level of
/// recursion, and a small `Result` keeps that cheap.
pub(crate) type EvalResult<T> = Result<T, Box<Diagnostic>>;

/// The builder methods of [`Diagnostic`], on a boxed one.
pub(crate) trait BoxedDiagnostic {
    fn with_label(self, label: impl Into<String>) -> Self;
    fn with_help(self, help: impl Into<String>) -> Self;
    fn with_related(self, span: Span, note: impl Into<String>) -> Self;
}

impl BoxedDiagnostic for Box<Diagnostic> {
    fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn with_related(mut self, span: Span, note: impl Into<String>) -> Self {
        self.related.push((span, note.into()));
        self
    }
}

pub(crate) struct Machine<'s> {
    pub ast: Ast,
    pub thunks: Vec<Thunk>,
    pub envs: Vec<Scope>,
    pub sources: &'s mut SourceMap,
    options: &'s EvalOptions,
    steps: u64,
    /// Bytes of strings, lists, attribute sets and forced values built so
    /// far (the thunk and scope arenas are counted by their length).
    allocated: u64,
    depth: usize,
    /// Every file read, in order of first use, without duplicates.
    pub files: Vec<PathBuf>,
    seen_files: HashSet<PathBuf>,
    /// Absolute directory of each parsed file (path literals resolve here).
    file_dirs: HashMap<FileId, PathBuf>,
    /// Directory and display prefix of the root manifest, so imported files
    /// are named relative to it in diagnostics (independent of the checkout).
    root_dir: PathBuf,
    root_display_dir: PathBuf,
    imports: HashMap<PathBuf, Value>,
    import_stack: Vec<PathBuf>,
    builtins_set: Option<Value>,
    /// The directories files may be read from.
    roots: crate::roots::AllowedRoots,
    /// Reused buffer for building strings.
    pub scratch: String,
}

fn internal(span: Span) -> Box<Diagnostic> {
    error(span, "internal error: unexpected expression")
}

pub(crate) fn error(span: Span, message: impl Into<String>) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(Phase::Eval, message, Some(span)))
}

impl<'s> Machine<'s> {
    pub fn new(
        sources: &'s mut SourceMap,
        options: &'s EvalOptions,
        root_dir: PathBuf,
        root_display_dir: PathBuf,
        roots: crate::roots::AllowedRoots,
    ) -> Machine<'s> {
        Machine {
            ast: Ast::new(),
            thunks: Vec::with_capacity(1 << 12),
            // EnvId(0): the top scope; lookups falling through it reach the builtins.
            envs: vec![Scope {
                binder: None,
                vars: Vars::Many(Box::new([])),
                parent: None,
            }],
            sources,
            options,
            steps: 0,
            allocated: 0,
            depth: 0,
            files: Vec::new(),
            seen_files: HashSet::new(),
            file_dirs: HashMap::new(),
            root_dir,
            root_display_dir,
            imports: HashMap::new(),
            import_stack: Vec::new(),
            builtins_set: None,
            roots,
            scratch: String::new(),
        }
    }

    pub fn record_file(&mut self, path: &Path) {
        if self.seen_files.insert(path.to_path_buf()) {
            self.files.push(path.to_path_buf());
        }
    }

    /// Parses an already loaded file and evaluates it to weak head normal form.
    pub fn eval_loaded_file(&mut self, file: FileId, absolute: &Path) -> EvalResult<Value> {
        let dir = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
        self.file_dirs.insert(file, dir);
        self.record_file(absolute);
        let root = match syntax::parse(file, self.sources, &mut self.ast) {
            Ok(root) => root,
            Err(diagnostic) if !self.import_stack.is_empty() && !is_manifest_name(absolute) => {
                return Err(self.not_a_manifest(file, &diagnostic));
            }
            Err(diagnostic) => return Err(Box::new(diagnostic)),
        };
        self.eval(root, EnvId(0))
    }

    /// The error for an imported file that is not named like a manifest
    /// and does not parse as one: it names the file and where parsing
    /// stopped, but quotes nothing of it (it may be any file, a secret).
    fn not_a_manifest(&mut self, file: FileId, diagnostic: &Diagnostic) -> Box<Diagnostic> {
        let name = self.sources.file(file).name.clone();
        let at = diagnostic
            .span
            .filter(|span| span.file == file)
            .map(|span| {
                let (line, col) = self.sources.line_col(file, span.start);
                format!(" (it stops parsing at line {line}, column {col})")
            });
        self.sources.redact(file);
        Box::new(
            Diagnostic::error(
                Phase::Syntax,
                format!(
                    "cannot import `{name}`: it is not a kiln manifest{}",
                    at.unwrap_or_default()
                ),
                None,
            )
            .with_help(
                "only kiln manifests can be imported; kiln shows no excerpt of a file that is not one",
            ),
        )
    }

    /// `path` may be read, or the located error saying why not.
    pub fn confine(&self, path: &Path, span: Span, what: &str) -> EvalResult<()> {
        self.roots.check(path).map(|_| ()).map_err(|outside| {
            error(span, format!("cannot {what} {outside}"))
                .with_label("this path is outside the project")
        })
    }

    // -----------------------------------------------------------------------
    // Arenas

    pub fn alloc_thunk(&mut self, thunk: Thunk) -> ThunkId {
        let id = ThunkId(u32::try_from(self.thunks.len()).unwrap_or(u32::MAX));
        self.thunks.push(thunk);
        id
    }

    pub fn done(&mut self, value: Value) -> ThunkId {
        self.alloc_thunk(Thunk::Done(value))
    }

    fn alloc_env(&mut self, scope: Scope) -> EnvId {
        let id = EnvId(u32::try_from(self.envs.len()).unwrap_or(u32::MAX));
        self.envs.push(scope);
        id
    }

    /// A thunk for `expr` in `env`, avoiding an allocation when the value is
    /// already known (literals, functions, variables).
    fn thunk_for(&mut self, expr: ExprId, env: EnvId) -> ThunkId {
        let span = self.ast[expr].span;
        let known = match &self.ast[expr].kind {
            ExprKind::Var(name) => {
                if let Some(thunk) = self.lookup(env, name) {
                    return thunk;
                }
                None
            }
            ExprKind::Int(n) => Some(ValueKind::Int(*n)),
            ExprKind::Bool(b) => Some(ValueKind::Bool(*b)),
            ExprKind::Null => Some(ValueKind::Null),
            ExprKind::Str(parts) => match parts.as_slice() {
                [StrPart::Literal(text)] => Some(ValueKind::Str(text.clone())),
                _ => None,
            },
            ExprKind::Lambda(_) => Some(ValueKind::Closure { lambda: expr, env }),
            _ => None,
        };
        match known {
            Some(kind) => self.done(Value { kind, span }),
            None => self.alloc_thunk(Thunk::Expr { expr, env }),
        }
    }

    fn lookup(&self, mut env: EnvId, name: &Name) -> Option<ThunkId> {
        // Names are interned per file, so a match is usually the same pointer.
        let same = |candidate: &Name| Rc::ptr_eq(candidate, name) || **candidate == **name;
        loop {
            let scope = &self.envs[env.0 as usize];
            if let Some(binder) = scope.binder {
                let index = match &self.ast[binder].kind {
                    ExprKind::Let(let_) => let_.bindings.iter().position(|b| same(&b.name)),
                    ExprKind::Attrs(set) => set.bindings.iter().position(|b| same(&b.name)),
                    ExprKind::Lambda(lambda) => match &lambda.param {
                        Param::Ident(param, _) => same(param).then_some(0),
                        Param::Formals(formals) => formals.names().position(same),
                    },
                    _ => None,
                };
                if let Some(thunk) = index.and_then(|i| scope.vars.get(i)) {
                    return Some(thunk);
                }
            }
            env = scope.parent?;
        }
    }

    /// Every name visible from `env`, for "did you mean" hints.
    fn visible_names(&self, mut env: EnvId) -> Vec<String> {
        let mut names: Vec<String> = Builtin::ALL.iter().map(|b| b.name().to_string()).collect();
        names.push("builtins".to_string());
        loop {
            let scope = &self.envs[env.0 as usize];
            if let Some(binder) = scope.binder {
                match &self.ast[binder].kind {
                    ExprKind::Let(let_) => {
                        names.extend(let_.bindings.iter().map(|b| b.name.to_string()))
                    }
                    ExprKind::Attrs(set) => {
                        names.extend(set.bindings.iter().map(|b| b.name.to_string()))
                    }
                    ExprKind::Lambda(lambda) => match &lambda.param {
                        Param::Ident(param, _) => names.push(param.to_string()),
                        Param::Formals(formals) => {
                            names.extend(formals.names().map(|n| n.to_string()))
                        }
                    },
                    _ => {}
                }
            }
            match scope.parent {
                Some(parent) => env = parent,
                None => return names,
            }
        }
    }

    // -----------------------------------------------------------------------
    // Budget

    #[inline]
    fn tick(&mut self, span: Span) -> EvalResult<()> {
        self.steps += 1;
        if self.steps > self.options.max_steps {
            return Err(self.budget_exhausted(span));
        }
        if self.memory_used() > self.options.max_memory {
            return Err(self.memory_exhausted(span));
        }
        Ok(())
    }

    /// Bytes the evaluation holds by the memory budget's count.
    fn memory_used(&self) -> u64 {
        self.allocated
            + (self.thunks.len() * THUNK) as u64
            + (self.envs.len() * std::mem::size_of::<Scope>()) as u64
    }

    /// Counts `bytes` about to be allocated for a value built at `span`
    /// against [`EvalOptions::max_memory`].
    pub fn allocate(&mut self, bytes: usize, span: Span) -> EvalResult<()> {
        self.allocated = self.allocated.saturating_add(bytes as u64);
        if self.memory_used() > self.options.max_memory {
            return Err(self.memory_exhausted(span));
        }
        Ok(())
    }

    #[cold]
    fn memory_exhausted(&self, span: Span) -> Box<Diagnostic> {
        error(
            span,
            format!(
                "evaluation exceeded its memory budget of {} MiB",
                self.options.max_memory >> 20
            ),
        )
        .with_label("building this value when the budget ran out")
        .with_help(
            "the manifest builds more data than a build description needs (large strings copied many times?); \
             the budget is `EvalOptions::max_memory`",
        )
    }

    #[cold]
    fn budget_exhausted(&self, span: Span) -> Box<Diagnostic> {
        error(
            span,
            format!(
                "evaluation exceeded its budget of {} steps",
                self.options.max_steps
            ),
        )
        .with_label("evaluating this when the budget ran out")
        .with_help("is there runaway recursion? (a larger budget is an `EvalOptions` setting)")
    }

    /// Charges `n` steps at once (list and string building).
    pub fn charge(&mut self, n: usize, span: Span) -> EvalResult<()> {
        self.steps = self.steps.saturating_add(n as u64);
        self.tick(span)
    }

    #[inline]
    fn enter(&mut self, span: Span) -> EvalResult<()> {
        self.depth += 1;
        if self.depth > self.options.max_depth {
            return Err(self.too_deep(span));
        }
        Ok(())
    }

    #[cold]
    fn too_deep(&self, span: Span) -> Box<Diagnostic> {
        error(
            span,
            format!(
                "evaluation nested too deeply (more than {} levels)",
                self.options.max_depth
            ),
        )
        .with_label("while evaluating this")
        .with_help("this is usually infinite or very deep recursion")
    }

    // -----------------------------------------------------------------------
    // Forcing

    pub fn force(&mut self, thunk: ThunkId) -> EvalResult<Value> {
        if let Thunk::Done(value) = &self.thunks[thunk.0 as usize] {
            return Ok(value.clone());
        }
        let state = std::mem::replace(
            &mut self.thunks[thunk.0 as usize],
            Thunk::Blackhole {
                span: Span::new(FileId(0), 0, 0),
            },
        );
        let (value, blackhole_span) = match state {
            Thunk::Done(value) => {
                let copy = value.clone();
                self.thunks[thunk.0 as usize] = Thunk::Done(value);
                return Ok(copy);
            }
            Thunk::Blackhole { span } => {
                self.thunks[thunk.0 as usize] = Thunk::Blackhole { span };
                return Err(
                    error(span, "infinite recursion: this value depends on itself")
                        .with_label("evaluating this requires its own value"),
                );
            }
            Thunk::Expr { expr, env } => {
                let span = self.ast[expr].span;
                self.thunks[thunk.0 as usize] = Thunk::Blackhole { span };
                (self.eval(expr, env), span)
            }
            Thunk::Apply {
                function,
                argument,
                span,
            } => {
                self.thunks[thunk.0 as usize] = Thunk::Blackhole { span };
                let result = self
                    .force(function)
                    .and_then(|f| self.apply(f, argument, span));
                (result, span)
            }
            Thunk::Select { source, name, span } => {
                self.thunks[thunk.0 as usize] = Thunk::Blackhole { span };
                let result = self.force(source).and_then(|set| match &set.kind {
                    ValueKind::Attrs(attrs) => match attrs.get(&name) {
                        Some(slot) => self.force(slot.value),
                        None => Err(self.missing_attribute(&name, &set, span)),
                    },
                    other => Err(error(
                        span,
                        format!("cannot inherit `{name}` from {}", other.type_name()),
                    )),
                });
                (result, span)
            }
        };
        let _ = blackhole_span;
        let value = value?;
        self.thunks[thunk.0 as usize] = Thunk::Done(value.clone());
        Ok(value)
    }

    // -----------------------------------------------------------------------
    // Evaluation

    pub fn eval(&mut self, expr: ExprId, env: EnvId) -> EvalResult<Value> {
        let span = self.ast[expr].span;
        self.tick(span)?;
        self.enter(span)?;
        let result = self.eval_inner(expr, env, span);
        self.depth -= 1;
        result
    }

    /// Dispatches to one small function per construct: in debug builds a
    /// single big `match` would give every recursion level a frame as large
    /// as all arms together.
    fn eval_inner(&mut self, expr: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let kind = match &self.ast[expr].kind {
            ExprKind::Null => ValueKind::Null,
            ExprKind::Bool(b) => ValueKind::Bool(*b),
            ExprKind::Int(n) => ValueKind::Int(*n),
            ExprKind::Lambda(_) => ValueKind::Closure { lambda: expr, env },
            ExprKind::Str(_) => return self.eval_string(expr, env, span),
            ExprKind::Path(_) => return self.eval_path(expr, span),
            ExprKind::Var(_) => return self.eval_var(expr, env, span),
            ExprKind::List(_) => return self.eval_list(expr, env, span),
            ExprKind::Attrs(_) => return self.eval_attrs(expr, env, span),
            ExprKind::Let(let_) => {
                let body = let_.body;
                let new_env = self.bind_recursive(expr, env)?;
                return self.eval(body, new_env);
            }
            ExprKind::Apply { function, argument } => {
                let (function, argument) = (*function, *argument);
                return self.eval_apply(function, argument, env, span);
            }
            ExprKind::Select { .. } => return self.eval_select(expr, env),
            ExprKind::HasAttr { .. } => return self.eval_has_attr(expr, env, span),
            ExprKind::If {
                condition,
                then_branch,
                else_branch,
            } => {
                let (condition, then_branch, else_branch) =
                    (*condition, *then_branch, *else_branch);
                let branch = self.eval_condition(condition, env)?;
                return self.eval(if branch { then_branch } else { else_branch }, env);
            }
            ExprKind::Not(operand) => {
                let operand = *operand;
                return self.eval_not(operand, env, span);
            }
            ExprKind::Negate(operand) => {
                let operand = *operand;
                return self.eval_negate(operand, env, span);
            }
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let (op, op_span, lhs, rhs) = (*op, *op_span, *lhs, *rhs);
                return self.eval_binary(op, op_span, lhs, rhs, env, span);
            }
        };
        Ok(Value { kind, span })
    }

    #[inline(never)]
    fn eval_string(&mut self, expr: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let ExprKind::Str(parts) = &self.ast[expr].kind else {
            return Err(internal(span));
        };
        if let [StrPart::Literal(text)] = parts.as_slice() {
            return Ok(Value {
                kind: ValueKind::Str(text.clone()),
                span,
            });
        }
        let count = parts.len();
        let literal_len: usize = parts
            .iter()
            .map(|p| match p {
                StrPart::Literal(text) => text.len(),
                StrPart::Interpolation(_) => 16,
            })
            .sum();
        // Built in a reused buffer, then copied once into its `Rc<str>`.
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.reserve(literal_len);
        for index in 0..count {
            // Re-borrow the tree each time: evaluating an interpolation may
            // import files, which grows it.
            let interpolation = match &self.ast[expr].kind {
                ExprKind::Str(parts) => match parts.get(index) {
                    Some(StrPart::Literal(text)) => {
                        out.push_str(text);
                        None
                    }
                    Some(StrPart::Interpolation(id)) => Some(*id),
                    None => None,
                },
                _ => None,
            };
            if let Some(id) = interpolation {
                let v = self.eval(id, env)?;
                let site = self.ast[id].span;
                self.coerce_to_string(&v, &mut out, "interpolate", site)?;
            }
            self.check_string_len(out.len(), span)?;
        }
        self.allocate(out.len(), span)?;
        let text: Rc<str> = Rc::from(out.as_str());
        self.scratch = out;
        Ok(Value {
            kind: ValueKind::Str(text),
            span,
        })
    }

    #[inline(never)]
    fn eval_path(&mut self, expr: ExprId, span: Span) -> EvalResult<Value> {
        let ExprKind::Path(text) = &self.ast[expr].kind else {
            return Err(internal(span));
        };
        let text = text.clone();
        let dir = self.file_dirs.get(&span.file).cloned().unwrap_or_default();
        let path = normalize(&dir.join(&*text));
        self.confine(&path, span, "use the path")?;
        self.record_file(&path);
        Ok(Value {
            kind: ValueKind::Path(path.into()),
            span,
        })
    }

    #[inline(never)]
    fn eval_var(&mut self, expr: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let ExprKind::Var(name) = &self.ast[expr].kind else {
            return Err(internal(span));
        };
        if let Some(thunk) = self.lookup(env, name) {
            return self.force(thunk);
        }
        let name = name.clone();
        match Builtin::from_name(&name) {
            Some(builtin) => Ok(Value {
                kind: ValueKind::Builtin {
                    builtin,
                    args: PartialArgs::default(),
                },
                span,
            }),
            None if &*name == "builtins" => Ok(self.builtins_set(span)),
            None => Err(self.undefined_variable(&name, env, span)),
        }
    }

    #[inline(never)]
    fn eval_list(&mut self, expr: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let ExprKind::List(items) = &self.ast[expr].kind else {
            return Err(internal(span));
        };
        let count = items.len();
        self.allocate(count * LIST_ITEM, span)?;
        let thunks: Rc<[ThunkId]> = (0..count)
            .map(|index| {
                let item = match &self.ast[expr].kind {
                    ExprKind::List(items) => items[index],
                    _ => expr,
                };
                self.thunk_for(item, env)
            })
            .collect();
        Ok(Value {
            kind: ValueKind::List(thunks),
            span,
        })
    }

    #[inline(never)]
    fn eval_attrs(&mut self, expr: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let ExprKind::Attrs(set) = &self.ast[expr].kind else {
            return Err(internal(span));
        };
        let attrs = if set.recursive {
            let new_env = self.bind_recursive(expr, env)?;
            self.scope_as_attrs(expr, new_env)
        } else {
            self.eval_plain_set(expr, env)?
        };
        self.allocate(attrs.len() * ATTR_ENTRY, span)?;
        Ok(Value {
            kind: ValueKind::Attrs(Rc::new(attrs)),
            span,
        })
    }

    #[inline(never)]
    fn eval_apply(
        &mut self,
        function: ExprId,
        argument: ExprId,
        env: EnvId,
        span: Span,
    ) -> EvalResult<Value> {
        let f = self.eval(function, env)?;
        let arg = self.thunk_for(argument, env);
        self.apply(f, arg, span)
    }

    #[inline(never)]
    fn eval_select(&mut self, expr: ExprId, env: EnvId) -> EvalResult<Value> {
        let ExprKind::Select {
            subject,
            path,
            default,
        } = &self.ast[expr].kind
        else {
            return Err(internal(self.ast[expr].span));
        };
        let (subject, count, default) = (*subject, path.len(), *default);
        let mut current = self.eval(subject, env)?;
        for index in 0..count {
            let name = match &self.ast[expr].kind {
                ExprKind::Select { path, .. } => path[index].clone(),
                _ => return Err(internal(self.ast[expr].span)),
            };
            let (name, name_span) = self.attr_name(&name, env)?;
            let found = match &current.kind {
                ValueKind::Attrs(attrs) => attrs.get(&*name).copied(),
                _ => None,
            };
            match found {
                Some(slot) => current = self.force(slot.value)?,
                None => {
                    if let Some(default) = default {
                        return self.eval(default, env);
                    }
                    return Err(match &current.kind {
                        ValueKind::Attrs(_) => self.missing_attribute(&name, &current, name_span),
                        other => error(
                            name_span,
                            format!(
                                "cannot select attribute `{name}` from {}",
                                other.type_name()
                            ),
                        )
                        .with_related(current.span, format!("this is {}", other.type_name())),
                    });
                }
            }
        }
        Ok(current)
    }

    #[inline(never)]
    fn eval_has_attr(&mut self, expr: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let ExprKind::HasAttr { subject, path } = &self.ast[expr].kind else {
            return Err(internal(span));
        };
        let (subject, path) = (*subject, path.clone());
        let mut current = self.eval(subject, env)?;
        let last = path.len().saturating_sub(1);
        let mut has = true;
        for (n, name) in path.iter().enumerate() {
            let (name, _) = self.attr_name(name, env)?;
            let found = match &current.kind {
                ValueKind::Attrs(attrs) => attrs.get(&*name).copied(),
                _ => None,
            };
            match found {
                Some(_) if n == last => break,
                Some(slot) => current = self.force(slot.value)?,
                None => {
                    has = false;
                    break;
                }
            }
        }
        Ok(Value {
            kind: ValueKind::Bool(has),
            span,
        })
    }

    #[inline(never)]
    fn eval_condition(&mut self, condition: ExprId, env: EnvId) -> EvalResult<bool> {
        let c = self.eval(condition, env)?;
        match c.kind {
            ValueKind::Bool(b) => Ok(b),
            other => Err(error(
                self.ast[condition].span,
                format!(
                    "the condition of `if` must be a boolean, found {}",
                    other.type_name()
                ),
            )),
        }
    }

    #[inline(never)]
    fn eval_not(&mut self, operand: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let v = self.eval(operand, env)?;
        match v.kind {
            ValueKind::Bool(b) => Ok(Value {
                kind: ValueKind::Bool(!b),
                span,
            }),
            other => Err(error(
                self.ast[operand].span,
                format!("`!` needs a boolean, found {}", other.type_name()),
            )),
        }
    }

    #[inline(never)]
    fn eval_negate(&mut self, operand: ExprId, env: EnvId, span: Span) -> EvalResult<Value> {
        let v = self.eval(operand, env)?;
        match v.kind {
            ValueKind::Int(n) => match n.checked_neg() {
                Some(n) => Ok(Value {
                    kind: ValueKind::Int(n),
                    span,
                }),
                None => Err(error(span, "integer overflow in negation")),
            },
            other => Err(error(
                self.ast[operand].span,
                format!("`-` needs an integer, found {}", other.type_name()),
            )),
        }
    }

    #[inline(never)]
    fn eval_binary(
        &mut self,
        op: BinaryOp,
        op_span: Span,
        lhs: ExprId,
        rhs: ExprId,
        env: EnvId,
        span: Span,
    ) -> EvalResult<Value> {
        // Chains of one operator (`a + b + c`, `a ++ b ++ c`) are walked
        // iteratively: a long chain must not nest evaluation once per term.
        let value = |kind| Ok(Value { kind, span });
        match op {
            BinaryOp::Or | BinaryOp::And => {
                let mut rights = vec![rhs];
                let mut leftmost = lhs;
                while let ExprKind::Binary {
                    op: inner,
                    lhs: l,
                    rhs: r,
                    ..
                } = &self.ast[leftmost].kind
                    && *inner == op
                {
                    rights.push(*r);
                    leftmost = *l;
                }
                let mut result = self.eval_bool(leftmost, env, op)?;
                for &right in rights.iter().rev() {
                    if result == (op == BinaryOp::Or) {
                        break;
                    }
                    result = self.eval_bool(right, env, op)?;
                }
                value(ValueKind::Bool(result))
            }
            BinaryOp::Eq | BinaryOp::NotEq => {
                let l = self.eval(lhs, env)?;
                let r = self.eval(rhs, env)?;
                let equal = self.deep_equal(&l, &r, 0, span)?;
                value(ValueKind::Bool(equal == (op == BinaryOp::Eq)))
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
                let mut rights = vec![(op, op_span, rhs, span)];
                let mut leftmost = lhs;
                while let ExprKind::Binary {
                    op: inner @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div),
                    op_span: inner_span,
                    lhs: l,
                    rhs: r,
                } = &self.ast[leftmost].kind
                {
                    rights.push((*inner, *inner_span, *r, self.ast[leftmost].span));
                    leftmost = *l;
                }
                let mut result = self.eval(leftmost, env)?;
                for (op, op_span, right, span) in rights.into_iter().rev() {
                    self.tick(span)?;
                    let r = self.eval(right, env)?;
                    let kind = self.binary_values(op, op_span, &result, &r, span)?;
                    result = Value { kind, span };
                }
                Ok(result)
            }
            BinaryOp::Concat | BinaryOp::Update => {
                let mut operands = vec![lhs];
                let mut op_spans = vec![op_span];
                let mut rightmost = rhs;
                while let ExprKind::Binary {
                    op: inner,
                    op_span: inner_span,
                    lhs: l,
                    rhs: r,
                } = &self.ast[rightmost].kind
                    && *inner == op
                {
                    operands.push(*l);
                    op_spans.push(*inner_span);
                    rightmost = *r;
                }
                operands.push(rightmost);
                if operands.len() == 2 {
                    let l = self.eval(lhs, env)?;
                    let r = self.eval(rhs, env)?;
                    let kind = self.binary_values(op, op_span, &l, &r, span)?;
                    return value(kind);
                }
                let mut values = Vec::with_capacity(operands.len());
                for &operand in &operands {
                    values.push(self.eval(operand, env)?);
                }
                self.combine_chain(op, &op_spans, values, span)
            }
            _ => {
                let l = self.eval(lhs, env)?;
                let r = self.eval(rhs, env)?;
                let kind = self.binary_values(op, op_span, &l, &r, span)?;
                value(kind)
            }
        }
    }

    /// `a ++ b ++ c` or `a // b // c` in one pass over the operands' values.
    fn combine_chain(
        &mut self,
        op: BinaryOp,
        op_spans: &[Span],
        values: Vec<Value>,
        span: Span,
    ) -> EvalResult<Value> {
        let (wanted, verb) = match op {
            BinaryOp::Concat => ("a list", "`++` joins lists"),
            _ => ("an attribute set", "`//` merges attribute sets"),
        };
        let mut items: Vec<ThunkId> = Vec::new();
        let mut attrs = AttrMap::new();
        for (n, v) in values.iter().enumerate() {
            match (&v.kind, op) {
                (ValueKind::List(list), BinaryOp::Concat) => {
                    self.charge(list.len(), span)?;
                    self.allocate(list.len() * LIST_ITEM, span)?;
                    items.extend_from_slice(list);
                }
                (ValueKind::Attrs(set), BinaryOp::Update) => {
                    self.charge(set.len(), span)?;
                    self.allocate(set.len() * ATTR_ENTRY, span)?;
                    attrs.extend(set.iter().map(|(k, slot)| (k.clone(), *slot)));
                }
                (other, _) => {
                    let at = op_spans[n.saturating_sub(1).min(op_spans.len() - 1)];
                    return Err(error(
                        at,
                        format!("{verb}: expected {wanted}, found {}", other.type_name()),
                    )
                    .with_related(v.span, format!("this is {}", other.type_name())));
                }
            }
        }
        let kind = match op {
            BinaryOp::Concat => ValueKind::List(items.into()),
            _ => ValueKind::Attrs(Rc::new(attrs)),
        };
        Ok(Value { kind, span })
    }

    fn eval_bool(&mut self, expr: ExprId, env: EnvId, op: BinaryOp) -> EvalResult<bool> {
        let v = self.eval(expr, env)?;
        match v.kind {
            ValueKind::Bool(b) => Ok(b),
            other => Err(error(
                self.ast[expr].span,
                format!(
                    "`{}` needs booleans, found {}",
                    op.symbol(),
                    other.type_name()
                ),
            )),
        }
    }

    pub fn binary_values(
        &mut self,
        op: BinaryOp,
        op_span: Span,
        l: &Value,
        r: &Value,
        span: Span,
    ) -> EvalResult<ValueKind> {
        use ValueKind::*;
        let overflow = || error(span, format!("integer overflow in `{}`", op.symbol()));
        let mismatch = |what: &str| {
            error(
                op_span,
                format!(
                    "cannot {what} {} and {}",
                    l.kind.type_name(),
                    r.kind.type_name()
                ),
            )
            .with_related(l.span, format!("this is {}", l.kind.type_name()))
            .with_related(r.span, format!("this is {}", r.kind.type_name()))
        };
        Ok(match (op, &l.kind, &r.kind) {
            (BinaryOp::Add, Int(a), Int(b)) => Int(a.checked_add(*b).ok_or_else(overflow)?),
            (BinaryOp::Sub, Int(a), Int(b)) => Int(a.checked_sub(*b).ok_or_else(overflow)?),
            (BinaryOp::Mul, Int(a), Int(b)) => Int(a.checked_mul(*b).ok_or_else(overflow)?),
            (BinaryOp::Div, Int(_), Int(0)) => {
                return Err(error(span, "division by zero").with_related(r.span, "this is zero"));
            }
            (BinaryOp::Div, Int(a), Int(b)) => Int(a.checked_div(*b).ok_or_else(overflow)?),
            (BinaryOp::Add, Str(a), Str(b)) => {
                self.check_string_len(a.len() + b.len(), span)?;
                self.charge((a.len() + b.len()) / 256, span)?;
                self.allocate(a.len() + b.len(), span)?;
                Str(format!("{a}{b}").into())
            }
            (BinaryOp::Add, Path(a), Str(b)) => {
                let joined = format!("{}{b}", a.display());
                Path(normalize(std::path::Path::new(&joined)).into())
            }
            (BinaryOp::Add, Path(a), Path(b)) => {
                let joined = format!("{}{}", a.display(), b.display());
                Path(normalize(std::path::Path::new(&joined)).into())
            }
            (BinaryOp::Add, Str(a), Path(b)) => {
                let joined = format!("{a}{}", b.display());
                self.check_string_len(joined.len(), span)?;
                self.allocate(joined.len(), span)?;
                Str(joined.into())
            }
            (BinaryOp::Add, _, _) => return Err(mismatch("add")),
            (BinaryOp::Sub, _, _) => return Err(mismatch("subtract")),
            (BinaryOp::Mul, _, _) => return Err(mismatch("multiply")),
            (BinaryOp::Div, _, _) => return Err(mismatch("divide")),
            (BinaryOp::Concat, List(a), List(b)) => {
                self.charge(a.len() + b.len(), span)?;
                self.allocate((a.len() + b.len()) * LIST_ITEM, span)?;
                let mut items = Vec::with_capacity(a.len() + b.len());
                items.extend_from_slice(a);
                items.extend_from_slice(b);
                List(items.into())
            }
            (BinaryOp::Concat, _, _) => {
                return Err(mismatch("concatenate (`++` joins lists)"));
            }
            (BinaryOp::Update, Attrs(a), Attrs(b)) => {
                self.charge(a.len() + b.len(), span)?;
                self.allocate((a.len() + b.len()) * ATTR_ENTRY, span)?;
                if a.is_empty() {
                    Attrs(b.clone())
                } else if b.is_empty() {
                    Attrs(a.clone())
                } else {
                    let mut merged = (**a).clone();
                    merged.extend(b.iter().map(|(k, v)| (k.clone(), *v)));
                    Attrs(Rc::new(merged))
                }
            }
            (BinaryOp::Update, _, _) => {
                return Err(mismatch("update (`//` merges attribute sets)"));
            }
            (BinaryOp::Less | BinaryOp::LessEq | BinaryOp::Greater | BinaryOp::GreaterEq, _, _) => {
                let ordering = match (&l.kind, &r.kind) {
                    (Int(a), Int(b)) => a.cmp(b),
                    (Str(a), Str(b)) => a.cmp(b),
                    _ => return Err(mismatch("compare")),
                };
                Bool(match op {
                    BinaryOp::Less => ordering.is_lt(),
                    BinaryOp::LessEq => ordering.is_le(),
                    BinaryOp::Greater => ordering.is_gt(),
                    _ => ordering.is_ge(),
                })
            }
            (BinaryOp::Or | BinaryOp::And | BinaryOp::Eq | BinaryOp::NotEq, _, _) => {
                return Err(error(span, "internal error: unexpected operator"));
            }
        })
    }

    pub fn deep_equal(
        &mut self,
        a: &Value,
        b: &Value,
        depth: usize,
        span: Span,
    ) -> EvalResult<bool> {
        use ValueKind::*;
        if depth > MAX_VALUE_DEPTH {
            return Err(error(
                span,
                "values compared are nested too deeply (are they self-referential?)",
            ));
        }
        self.tick(span)?;
        Ok(match (&a.kind, &b.kind) {
            (Null, Null) => true,
            (Bool(x), Bool(y)) => x == y,
            (Int(x), Int(y)) => x == y,
            (Str(x), Str(y)) => x == y,
            (Path(x), Path(y)) => x == y,
            (List(x), List(y)) => {
                if x.len() != y.len() {
                    return Ok(false);
                }
                let (x, y) = (x.clone(), y.clone());
                for (&tx, &ty) in x.iter().zip(y.iter()) {
                    let vx = self.force(tx)?;
                    let vy = self.force(ty)?;
                    if !self.deep_equal(&vx, &vy, depth + 1, span)? {
                        return Ok(false);
                    }
                }
                true
            }
            (Attrs(x), Attrs(y)) => {
                if x.len() != y.len() || !x.keys().eq(y.keys()) {
                    return Ok(false);
                }
                let (x, y) = (x.clone(), y.clone());
                for (sx, sy) in x.values().zip(y.values()) {
                    let vx = self.force(sx.value)?;
                    let vy = self.force(sy.value)?;
                    if !self.deep_equal(&vx, &vy, depth + 1, span)? {
                        return Ok(false);
                    }
                }
                true
            }
            _ => false,
        })
    }

    fn attr_name(&mut self, name: &AttrName, env: EnvId) -> EvalResult<(Name, Span)> {
        match name {
            AttrName::Static(name, span) => Ok((name.clone(), *span)),
            AttrName::Dynamic(expr) => {
                let expr = *expr;
                let v = self.eval(expr, env)?;
                match v.kind {
                    ValueKind::Str(s) => Ok((s, self.ast[expr].span)),
                    other => Err(error(
                        self.ast[expr].span,
                        format!(
                            "an attribute name must be a string, found {}",
                            other.type_name()
                        ),
                    )),
                }
            }
        }
    }

    /// Creates the scope of a `let` or `rec` set: every binding can see
    /// every other one (lazily, so order does not matter).
    fn bind_recursive(&mut self, binder: ExprId, env: EnvId) -> EvalResult<EnvId> {
        let bindings = match &self.ast[binder].kind {
            ExprKind::Let(let_) => &let_.bindings,
            ExprKind::Attrs(set) => &set.bindings,
            _ => return Err(error(self.ast[binder].span, "internal error: not a binder")),
        };
        let count = bindings.len();
        let new_env = self.alloc_env(Scope {
            binder: Some(binder),
            vars: Vars::Many(Box::new([])),
            parent: Some(env),
        });
        let mut vars = Vec::with_capacity(count);
        let mut sources: Vec<(ExprId, ThunkId)> = Vec::new();
        for index in 0..count {
            let Some((name, name_span, plan)) = self.binding_plan(binder, index) else {
                break;
            };
            let thunk = match plan {
                BindingPlan::Expr(e) => self.alloc_thunk(Thunk::Expr {
                    expr: e,
                    env: new_env,
                }),
                BindingPlan::Inherit => self.inherit_var(&name, name_span, env)?,
                BindingPlan::From(source) => {
                    let source = self.shared_source(&mut sources, source, new_env, false);
                    self.alloc_thunk(Thunk::Select {
                        source,
                        name,
                        span: name_span,
                    })
                }
            };
            vars.push(thunk);
        }
        self.envs[new_env.0 as usize].vars = Vars::Many(vars.into_boxed_slice());
        Ok(new_env)
    }

    fn shared_source(
        &mut self,
        sources: &mut Vec<(ExprId, ThunkId)>,
        expr: ExprId,
        env: EnvId,
        env_complete: bool,
    ) -> ThunkId {
        if let Some(&(_, thunk)) = sources.iter().find(|(e, _)| *e == expr) {
            return thunk;
        }
        // In a scope still being filled, names must be looked up lazily.
        let thunk = if env_complete {
            self.thunk_for(expr, env)
        } else {
            self.alloc_thunk(Thunk::Expr { expr, env })
        };
        sources.push((expr, thunk));
        thunk
    }

    fn inherit_var(&mut self, name: &Name, span: Span, env: EnvId) -> EvalResult<ThunkId> {
        match self.lookup(env, name) {
            Some(thunk) => Ok(thunk),
            None => {
                if let Some(builtin) = Builtin::from_name(name) {
                    return Ok(self.done(Value {
                        kind: ValueKind::Builtin {
                            builtin,
                            args: PartialArgs::default(),
                        },
                        span,
                    }));
                }
                if &**name == "builtins" {
                    let set = self.builtins_set(span);
                    return Ok(self.done(set));
                }
                Err(self.undefined_variable(name, env, span))
            }
        }
    }

    /// The attribute set of a `rec` set's scope.
    fn scope_as_attrs(&self, binder: ExprId, env: EnvId) -> AttrMap {
        let mut attrs = AttrMap::new();
        if let ExprKind::Attrs(set) = &self.ast[binder].kind {
            for (n, binding) in set.bindings.iter().enumerate() {
                if let Some(value) = self.envs[env.0 as usize].vars.get(n) {
                    attrs.insert(
                        binding.name.clone(),
                        AttrSlot {
                            name_span: binding.name_span,
                            value,
                        },
                    );
                }
            }
        }
        attrs
    }

    fn eval_plain_set(&mut self, expr: ExprId, env: EnvId) -> EvalResult<AttrMap> {
        let ExprKind::Attrs(set) = &self.ast[expr].kind else {
            return Ok(AttrMap::new());
        };
        let count = set.bindings.len();
        let dynamic: Vec<(ExprId, ExprId)> =
            set.dynamic.iter().map(|d| (d.name, d.value)).collect();
        let mut attrs = AttrMap::new();
        let mut sources: Vec<(ExprId, ThunkId)> = Vec::new();
        for index in 0..count {
            let Some((name, name_span, plan)) = self.binding_plan(expr, index) else {
                break;
            };
            let value = match plan {
                BindingPlan::Expr(e) => self.thunk_for(e, env),
                BindingPlan::Inherit => self.inherit_var(&name, name_span, env)?,
                BindingPlan::From(source) => {
                    let source = self.shared_source(&mut sources, source, env, true);
                    self.alloc_thunk(Thunk::Select {
                        source,
                        name: name.clone(),
                        span: name_span,
                    })
                }
            };
            attrs.insert(name, AttrSlot { name_span, value });
        }
        for (name_expr, value_expr) in dynamic {
            let name_value = self.eval(name_expr, env)?;
            let name_span = self.ast[name_expr].span;
            let name: Name = match name_value.kind {
                ValueKind::Str(s) => s,
                // As in Nix: `{ ${null} = 1; }` defines nothing.
                ValueKind::Null => continue,
                other => {
                    return Err(error(
                        name_span,
                        format!(
                            "an attribute name must be a string, found {}",
                            other.type_name()
                        ),
                    ));
                }
            };
            if let Some(existing) = attrs.get(&name) {
                return Err(
                    error(name_span, format!("attribute `{name}` is already defined"))
                        .with_related(existing.name_span, "first defined here"),
                );
            }
            let value = self.thunk_for(value_expr, env);
            attrs.insert(name, AttrSlot { name_span, value });
        }
        Ok(attrs)
    }

    // -----------------------------------------------------------------------
    // Application

    pub fn apply(&mut self, function: Value, argument: ThunkId, span: Span) -> EvalResult<Value> {
        self.tick(span)?;
        self.enter(span)?;
        let result = self.apply_inner(function, argument, span);
        self.depth -= 1;
        result
    }

    fn apply_inner(&mut self, function: Value, argument: ThunkId, span: Span) -> EvalResult<Value> {
        match function.kind {
            ValueKind::Closure { lambda, env } => self.call_closure(lambda, env, argument, span),
            ValueKind::Builtin { builtin, args } => {
                if args.len() + 1 < builtin.arity()
                    && let Some(args) = args.push(argument)
                {
                    return Ok(Value {
                        kind: ValueKind::Builtin { builtin, args },
                        span,
                    });
                }
                // Builtins take at most three arguments: no allocation.
                let mut all = [ThunkId(0); 3];
                let mut count = 0;
                for (slot, thunk) in all.iter_mut().zip(args.iter().chain([argument])) {
                    *slot = thunk;
                    count += 1;
                }
                self.call_builtin(builtin, &all[..count], span)
            }
            other => Err(error(
                span,
                format!(
                    "attempt to call {}, which is not a function",
                    other.type_name()
                ),
            )
            .with_related(function.span, format!("this is {}", other.type_name()))),
        }
    }

    fn call_closure(
        &mut self,
        lambda: ExprId,
        env: EnvId,
        argument: ThunkId,
        span: Span,
    ) -> EvalResult<Value> {
        let ExprKind::Lambda(def) = &self.ast[lambda].kind else {
            return Err(error(span, "internal error: not a function"));
        };
        let body = def.body;
        let formals = match &def.param {
            Param::Ident(..) => {
                let new_env = self.alloc_env(Scope {
                    binder: Some(lambda),
                    vars: Vars::One(argument),
                    parent: Some(env),
                });
                return self.eval(body, new_env);
            }
            Param::Formals(formals) => formals,
        };
        let formals_span = formals.span;
        let ellipsis = formals.ellipsis;
        let has_bind_as = formals.bind_as.is_some();
        let list: Vec<(Name, Option<ExprId>)> = formals
            .formals
            .iter()
            .map(|f| (f.name.clone(), f.default))
            .collect();
        let arg = self.force(argument)?;
        let ValueKind::Attrs(attrs) = &arg.kind else {
            return Err(error(
                span,
                format!(
                    "this function expects an attribute set argument, but was called with {}",
                    arg.kind.type_name()
                ),
            )
            .with_related(formals_span, "the function's formals are here"));
        };
        if !ellipsis {
            for (name, slot) in attrs.iter() {
                if !list.iter().any(|(n, _)| n == name) {
                    let expected: Vec<&str> = list.iter().map(|(n, _)| &**n).collect();
                    let mut diagnostic = error(
                        span,
                        format!("function called with unexpected argument `{name}`"),
                    )
                    .with_related(slot.name_span, "the argument is given here")
                    .with_related(formals_span, "the function's formals are here");
                    diagnostic = match super::suggest::did_you_mean(name, expected.iter().copied()) {
                        Some(s) => diagnostic.with_help(format!("did you mean `{s}`?")),
                        None if expected.is_empty() => diagnostic.with_help("the function takes no arguments; add `...` to the formals to allow any"),
                        None => diagnostic.with_help(format!(
                            "the function takes {}; add `...` to the formals to allow others",
                            expected.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                        )),
                    };
                    return Err(diagnostic);
                }
            }
        }
        let attrs = attrs.clone();
        let new_env = self.alloc_env(Scope {
            binder: Some(lambda),
            vars: Vars::Many(Box::new([])),
            parent: Some(env),
        });
        let mut vars = Vec::with_capacity(list.len() + 1);
        for (name, default) in list {
            let thunk = match (attrs.get(&name), default) {
                (Some(slot), _) => slot.value,
                // The scope is still being filled: no shortcut through
                // `thunk_for`, which would look names up in it too early.
                (None, Some(default)) => self.alloc_thunk(Thunk::Expr {
                    expr: default,
                    env: new_env,
                }),
                (None, None) => {
                    return Err(error(
                        span,
                        format!("function called without required argument `{name}`"),
                    )
                    .with_related(formals_span, "the function's formals are here"));
                }
            };
            vars.push(thunk);
        }
        if has_bind_as {
            vars.push(argument);
        }
        self.envs[new_env.0 as usize].vars = Vars::Many(vars.into_boxed_slice());
        self.eval(body, new_env)
    }

    // -----------------------------------------------------------------------
    // Errors and helpers

    fn undefined_variable(&self, name: &str, env: EnvId, span: Span) -> Box<Diagnostic> {
        let names = self.visible_names(env);
        let mut diagnostic = error(span, format!("undefined variable `{name}`"));
        if let Some(s) = super::suggest::did_you_mean(name, names.iter().map(String::as_str)) {
            diagnostic = diagnostic.with_help(format!("did you mean `{s}`?"));
        }
        diagnostic
    }

    pub fn missing_attribute(&self, name: &str, set: &Value, span: Span) -> Box<Diagnostic> {
        let mut diagnostic = error(span, format!("attribute `{name}` missing"));
        if let ValueKind::Attrs(attrs) = &set.kind {
            if let Some(s) = super::suggest::did_you_mean(name, attrs.keys().map(|k| &**k)) {
                diagnostic = diagnostic.with_help(format!("did you mean `{s}`?"));
            } else if attrs.is_empty() {
                diagnostic = diagnostic.with_help("the attribute set is empty");
            }
        }
        diagnostic = diagnostic.with_related(set.span, "the attribute set is defined here");
        diagnostic
    }

    pub fn check_string_len(&self, len: usize, span: Span) -> EvalResult<()> {
        if len > MAX_STRING {
            return Err(error(
                span,
                format!("string too long ({len} bytes; the limit is {MAX_STRING})"),
            ));
        }
        Ok(())
    }

    /// Appends a value that may appear in a string (string, integer, path).
    pub fn coerce_to_string(
        &mut self,
        v: &Value,
        out: &mut String,
        verb: &str,
        site: Span,
    ) -> EvalResult<()> {
        match &v.kind {
            ValueKind::Str(s) => out.push_str(s),
            ValueKind::Int(n) => push_int(out, *n),
            ValueKind::Path(p) => out.push_str(&p.to_string_lossy()),
            other => {
                let mut diagnostic = error(
                    site,
                    format!("cannot {verb} {} into a string", other.type_name()),
                )
                .with_help(
                    "only strings, integers and paths can be; convert others with `toString` or `toJSON`",
                );
                if v.span != site {
                    diagnostic =
                        diagnostic.with_related(v.span, format!("this is {}", other.type_name()));
                }
                return Err(diagnostic);
            }
        }
        Ok(())
    }

    pub fn builtins_set(&mut self, span: Span) -> Value {
        if let Some(set) = &self.builtins_set {
            return set.clone();
        }
        let mut attrs = AttrMap::new();
        for builtin in Builtin::ALL {
            let value = self.done(Value {
                kind: ValueKind::Builtin {
                    builtin: *builtin,
                    args: PartialArgs::default(),
                },
                span,
            });
            attrs.insert(
                builtin.name().into(),
                AttrSlot {
                    name_span: span,
                    value,
                },
            );
        }
        let set = Value {
            kind: ValueKind::Attrs(Rc::new(attrs)),
            span,
        };
        self.builtins_set = Some(set.clone());
        set
    }

    // -----------------------------------------------------------------------
    // Imports

    pub fn import(&mut self, path: &Path, span: Span) -> EvalResult<Value> {
        self.confine(path, span, "import")?;
        let path = if path.is_dir() {
            path.join("default.kiln")
        } else {
            path.to_path_buf()
        };
        if let Some(value) = self.imports.get(&path) {
            return Ok(value.clone());
        }
        if let Some(start) = self.import_stack.iter().position(|p| *p == path) {
            let chain: Vec<String> = self.import_stack[start..]
                .iter()
                .chain(std::iter::once(&path))
                .map(|p| self.display_name(p).display().to_string())
                .collect();
            return Err(error(span, format!("import cycle: {}", chain.join(" → ")))
                .with_label("this import closes the cycle"));
        }
        self.confine(&path, span, "import")?;
        let bytes = std::fs::read(&path).map_err(|e| {
            Diagnostic::error(
                Phase::Io,
                format!(
                    "cannot import `{}`: {e}",
                    self.display_name(&path).display()
                ),
                Some(span),
            )
        })?;
        let display = self.display_name(&path);
        let file = match load_text(self.sources, &path, &display, bytes) {
            Ok(file) => file,
            Err(diagnostic) if !is_manifest_name(&path) => {
                let file = diagnostic.span.map(|span| span.file);
                return Err(match file {
                    Some(file) => self.not_a_manifest(file, &diagnostic),
                    None => diagnostic,
                });
            }
            Err(diagnostic) => return Err(diagnostic),
        };
        self.import_stack.push(path.clone());
        let result = self.eval_loaded_file(file, &path);
        self.import_stack.pop();
        let value = result?;
        self.imports.insert(path, value.clone());
        Ok(value)
    }

    /// How a file is named in diagnostics: relative to the root manifest's
    /// directory, prefixed the way the root manifest was named.
    pub fn display_name(&self, path: &Path) -> PathBuf {
        normalize_display(
            &self
                .root_display_dir
                .join(relative_to(path, &self.root_dir)),
        )
    }

    // -----------------------------------------------------------------------
    // Deep forcing

    pub fn force_node(&mut self, value: Value, depth: usize) -> EvalResult<Node> {
        if depth > MAX_VALUE_DEPTH {
            return Err(error(
                value.span,
                format!("value nested more than {MAX_VALUE_DEPTH} levels deep"),
            )
            .with_help("is it self-referential, like `let x = [ x ]; in x`?"));
        }
        self.tick(value.span)?;
        let data = match value.kind {
            ValueKind::Null => Data::Null,
            ValueKind::Bool(b) => Data::Bool(b),
            ValueKind::Int(n) => Data::Int(n),
            ValueKind::Str(s) => {
                // Each occurrence of a shared string becomes its own copy.
                self.allocate(s.len(), value.span)?;
                Data::Str(String::from(&*s))
            }
            ValueKind::Path(p) => {
                self.allocate(p.as_os_str().len(), value.span)?;
                Data::Path(p.to_path_buf())
            }
            ValueKind::List(items) => {
                self.allocate(items.len() * std::mem::size_of::<Node>(), value.span)?;
                let mut nodes = Vec::with_capacity(items.len());
                for &item in items.iter() {
                    let v = self.force(item)?;
                    nodes.push(self.force_node(v, depth + 1)?);
                }
                Data::List(nodes)
            }
            ValueKind::Attrs(attrs) => {
                // Already in key order: collecting builds the map in bulk.
                self.allocate(
                    attrs.len() * (std::mem::size_of::<Node>() + ATTR_ENTRY),
                    value.span,
                )?;
                let mut entries = Vec::with_capacity(attrs.len());
                for (name, slot) in attrs.iter() {
                    let v = self.force(slot.value)?;
                    let node = self.force_node(v, depth + 1)?;
                    let attr = Attr {
                        name_span: slot.name_span,
                        value: node,
                    };
                    entries.push((String::from(&**name), attr));
                }
                Data::Attrs(entries.into_iter().collect::<BTreeMap<_, _>>())
            }
            ValueKind::Closure { .. } | ValueKind::Builtin { .. } => Data::Function,
        };
        Ok(Node {
            data,
            span: value.span,
        })
    }
}

impl Machine<'_> {
    /// The `index`th binding of a `let` or set, without borrowing the tree.
    fn binding_plan(&self, binder: ExprId, index: usize) -> Option<(Name, Span, BindingPlan)> {
        let bindings = match &self.ast[binder].kind {
            ExprKind::Let(let_) => &let_.bindings,
            ExprKind::Attrs(set) => &set.bindings,
            _ => return None,
        };
        let binding = bindings.get(index)?;
        let plan = match &binding.value {
            BindingValue::Expr(e) => BindingPlan::Expr(*e),
            BindingValue::Inherit => BindingPlan::Inherit,
            BindingValue::InheritFrom(e) => BindingPlan::From(*e),
        };
        Some((binding.name.clone(), binding.name_span, plan))
    }
}

enum BindingPlan {
    Expr(ExprId),
    Inherit,
    From(ExprId),
}

/// Whether a file is named like a kiln manifest (`.kiln`): only those are
/// quoted in diagnostics when they do not parse.
fn is_manifest_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension == "kiln")
}

fn normalize_display(path: &Path) -> PathBuf {
    // Keep a leading `..` (display names may point above the root's dir).
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if matches!(
                    out.components().next_back(),
                    Some(std::path::Component::Normal(_))
                ) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Appends the decimal form of `n` (without the formatting machinery,
/// which is several times slower for this hot case).
pub(crate) fn push_int(out: &mut String, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// Adds a file's bytes to `sources`, or explains where it is not UTF-8.
pub(crate) fn load_text(
    sources: &mut SourceMap,
    path: &Path,
    display: &Path,
    bytes: Vec<u8>,
) -> EvalResult<FileId> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(sources.add_named(path, &display.display().to_string(), text)),
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let file = sources.add_named(path, &display.display().to_string(), text);
            Err(Box::new(
                Diagnostic::error(
                    Phase::Syntax,
                    format!("the file is not valid UTF-8 (invalid byte at offset {offset})"),
                    Some(Span::new(file, offset, offset + 1)),
                )
                .with_help("kiln manifests must be UTF-8 text"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_int;

    #[test]
    fn integers_format_like_display() {
        for n in [0, 7, -7, 10, 1234567890, i64::MAX, i64::MIN] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
