//! The evaluator: a lazy interpreter for the kiln language, from a file to a
//! fully forced [`Node`] tree.
//!
//! Architecture invariant: evaluation is pure and bounded. It reads no
//! environment, clock or network, and no file except the manifest, its
//! imports and the paths it hashes; a step budget and a depth limit (both in
//! [`EvalOptions`]) turn runaway recursion into an error with a span. It runs
//! on its own thread with a stack sized for those limits, so no input can
//! overflow the caller's stack.

mod builtins;
mod hash;
mod json;
mod machine;
pub mod paths;
mod runtime;
mod suggest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::diagnostic::{Diagnostic, Phase};
use crate::roots::AllowedRoots;
use crate::source::{SourceMap, Span};
use crate::syntax::{ExprKind, PARSER_STACK, Param};
use crate::value::Node;
use machine::{BoxedDiagnostic, EvalResult, Machine, error};
use runtime::{AttrMap, AttrSlot, Value, ValueKind};

pub use hash::hash_path;

/// Limits and inputs of one evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// `--arg NAME=VALUE` pairs: the argument set of a top-level function.
    pub args: BTreeMap<String, String>,
    /// Evaluation steps (roughly: expressions evaluated plus list elements
    /// and string kilobytes built) before giving up.
    pub max_steps: u64,
    /// How deeply evaluation may nest (expressions within expressions,
    /// function calls within calls).
    pub max_depth: usize,
    /// Bytes of values evaluation may build (strings, lists, attribute
    /// sets, thunks, and the forced result, where every occurrence of a
    /// shared string counts again) before it stops with an error located
    /// at the expression that went over.
    pub max_memory: u64,
    /// The directories imports, path literals and `hashFile` may reach;
    /// `None`: the project root of the file evaluated
    /// ([`AllowedRoots::for_manifest`] without `--allow-path`).
    pub roots: Option<AllowedRoots>,
}

/// The default memory budget of an evaluation: 1 GiB.
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;

impl Default for EvalOptions {
    /// Generous: a manifest generating 10,000 jobs uses about 2% of the
    /// step budget; runaway recursion still stops within about a second.
    fn default() -> EvalOptions {
        EvalOptions {
            args: BTreeMap::new(),
            max_steps: 20_000_000,
            max_depth: 20_000,
            max_memory: DEFAULT_MAX_MEMORY,
            roots: None,
        }
    }
}

/// The result of evaluating a manifest.
#[derive(Debug)]
pub struct Evaluated {
    /// The value, fully forced.
    pub value: Node,
    /// Every file read: the manifest, its imports, and the paths named by
    /// path literals or hashed (absolute, normalised, in order of first use).
    pub files: Vec<PathBuf>,
}

/// Stack bytes reserved per level of `max_depth`. Measured: about 7.5 KiB
/// per level in debug builds and under 2 KiB in release; twice that here.
const STACK_PER_LEVEL: usize = if cfg!(debug_assertions) {
    16 << 10
} else {
    4 << 10
};

/// Reads, parses and evaluates the manifest at `path`.
pub fn eval_file(
    path: &Path,
    options: &EvalOptions,
    sources: &mut SourceMap,
) -> Result<Evaluated, Diagnostic> {
    let bytes = std::fs::read(path).map_err(|e| {
        Diagnostic::error(
            Phase::Io,
            format!("cannot read `{}`: {e}", path.display()),
            None,
        )
    })?;
    run(path, bytes, options, sources)
}

/// Evaluates `text` as if it were the file `name` (path literals and imports
/// resolve relative to `name`'s directory).
pub fn eval_str(
    name: &Path,
    text: &str,
    options: &EvalOptions,
    sources: &mut SourceMap,
) -> Result<Evaluated, Diagnostic> {
    run(name, text.as_bytes().to_vec(), options, sources)
}

fn run(
    path: &Path,
    bytes: Vec<u8>,
    options: &EvalOptions,
    sources: &mut SourceMap,
) -> Result<Evaluated, Diagnostic> {
    let stack = PARSER_STACK.max(options.max_depth.saturating_mul(STACK_PER_LEVEL)) + (16 << 20);
    std::thread::scope(|scope| {
        let evaluation = std::thread::Builder::new()
            .name("kiln-eval".to_string())
            .stack_size(stack)
            .spawn_scoped(scope, || evaluate(path, bytes, options, sources))
            .map_err(|e| {
                Diagnostic::error(
                    Phase::Io,
                    format!("cannot start the evaluator thread: {e}"),
                    None,
                )
            })?;
        evaluation.join().unwrap_or_else(|_| {
            Err(Diagnostic::error(
                Phase::Eval,
                "internal error: the evaluator panicked (please report this with the manifest)",
                None,
            ))
        })
    })
}

fn evaluate(
    path: &Path,
    bytes: Vec<u8>,
    options: &EvalOptions,
    sources: &mut SourceMap,
) -> Result<Evaluated, Diagnostic> {
    let absolute = paths::absolute(path);
    let root_dir = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
    let display_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let roots = match &options.roots {
        Some(roots) => roots.clone(),
        None => AllowedRoots::for_manifest(&absolute, &[])
            .map_err(|e| Diagnostic::error(Phase::Io, e.to_string(), None))?,
    };
    let mut machine = Machine::new(sources, options, root_dir, display_dir, roots);
    let result = (|| -> EvalResult<Evaluated> {
        let file = machine::load_text(machine.sources, &absolute, path, bytes)?;
        let root = machine.eval_loaded_file(file, &absolute)?;
        let root = call_with_arguments(&mut machine, root, &options.args)?;
        let value = machine.force_node(root, 0)?;
        Ok(Evaluated {
            value,
            files: std::mem::take(&mut machine.files),
        })
    })();
    result.map_err(|boxed| *boxed)
}

/// A manifest that is a function is called with the `--arg` set.
fn call_with_arguments(
    machine: &mut Machine,
    root: Value,
    args: &BTreeMap<String, String>,
) -> EvalResult<Value> {
    let lambda = match &root.kind {
        ValueKind::Closure { lambda, .. } => lambda,
        ValueKind::Builtin { .. } => {
            return Err(error(
                root.span,
                "the manifest evaluates to a builtin function, not a build description",
            ));
        }
        _ => match args.keys().next() {
            Some(name) => {
                return Err(error(
                    root.span,
                    format!("`--arg {name}=...` was given, but the manifest is not a function"),
                )
                .with_help("to take arguments, make the manifest a function: `{ NAME ? \"default\" }: { ... }`"));
            }
            None => return Ok(root),
        },
    };
    let lambda = *lambda;
    let (param_span, formals_info) = match &machine.ast[lambda].kind {
        ExprKind::Lambda(def) => match &def.param {
            Param::Ident(_, span) => (*span, None),
            Param::Formals(formals) => (
                formals.span,
                Some((
                    formals.ellipsis,
                    formals
                        .formals
                        .iter()
                        .map(|f| (f.name.clone(), f.span, f.default.is_some()))
                        .collect::<Vec<_>>(),
                )),
            ),
        },
        _ => return Ok(root),
    };
    if let Some((ellipsis, formals)) = &formals_info {
        for name in args.keys() {
            if !ellipsis && !formals.iter().any(|(f, _, _)| &**f == name) {
                let accepted: Vec<&str> = formals.iter().map(|(f, _, _)| &**f).collect();
                let mut diagnostic = error(
                    param_span,
                    format!("unknown argument `{name}` (given with `--arg {name}=...`)"),
                )
                .with_label("the manifest's arguments");
                diagnostic = match suggest::did_you_mean(name, accepted.iter().copied()) {
                    Some(s) => diagnostic.with_help(format!("did you mean `{s}`?")),
                    None if accepted.is_empty() => {
                        diagnostic.with_help("the manifest takes no arguments")
                    }
                    None => diagnostic.with_help(format!(
                        "the manifest takes {}",
                        accepted
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                return Err(diagnostic);
            }
        }
        for (name, span, has_default) in formals {
            if !has_default && !args.contains_key(&**name) {
                return Err(error(*span, format!("missing argument `{name}`"))
                    .with_help(format!("pass it with `--arg {name}=VALUE`, or give it a default: `{name} ? \"...\"`")));
            }
        }
    }
    let mut attrs = AttrMap::new();
    for (name, text) in args {
        let value = machine.done(Value {
            kind: ValueKind::Str(text.as_str().into()),
            span: param_span,
        });
        attrs.insert(
            name.as_str().into(),
            AttrSlot {
                name_span: param_span,
                value,
            },
        );
    }
    let argument = machine.done(Value {
        kind: ValueKind::Attrs(Rc::new(attrs)),
        span: param_span,
    });
    let span: Span = root.span;
    machine.apply(root, argument, span)
}
