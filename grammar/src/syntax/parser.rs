//! The nom parser: text → [`Ast`]. The grammar is `grammar/kiln.ebnf`; each
//! function below is named after the rule it implements.
//!
//! Errors: `nom::Err::Error` means "this alternative does not apply" (the
//! caller may try another); `nom::Err::Failure` is a committed syntax error
//! that aborts the parse with a message saying what was expected.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use nom::error::{ErrorKind, ParseError};
use nom::{IResult, Input as _};
use nom_locate::LocatedSpan;

use super::ast::*;
use super::bindings::BindingsBuilder;
use super::strings::{IndentedPart, strip_indentation};
use super::{MAX_NESTING, SyntaxError};
use crate::source::{FileId, Span};

pub(super) struct State<'a> {
    pub file: FileId,
    pub text: &'a str,
    pub ast: RefCell<&'a mut Ast>,
    depth: Cell<usize>,
    names: RefCell<HashSet<Name>>,
    /// The last whitespace run skipped: (offset, length). Several rules look
    /// past the same whitespace in turn; this scans it once.
    last_ws: Cell<(usize, usize)>,
}

pub(super) type Input<'a> = LocatedSpan<&'a str, &'a State<'a>>;
pub(super) type PResult<'a, T> = IResult<Input<'a>, T, PError>;

/// The parser's error type: empty while backtracking (which is frequent and
/// must cost nothing), the boxed [`SyntaxError`] once committed.
#[derive(Debug)]
pub(super) struct PError(Option<Box<SyntaxError>>);

impl From<SyntaxError> for PError {
    fn from(error: SyntaxError) -> PError {
        PError(Some(Box::new(error)))
    }
}

impl PError {
    pub(super) fn into_inner(self) -> SyntaxError {
        match self.0 {
            Some(error) => *error,
            None => SyntaxError::new(0, "syntax error"),
        }
    }
}

impl<'a> ParseError<Input<'a>> for PError {
    fn from_error_kind(_: Input<'a>, _: ErrorKind) -> PError {
        PError(None)
    }

    fn append(_: Input<'a>, _: ErrorKind, other: PError) -> PError {
        other
    }

    fn or(self, other: PError) -> PError {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) if a.offset > b.offset => self,
            (Some(_), None) => self,
            _ => other,
        }
    }
}

/// Parses a whole file into `ast`, returning its root expression.
pub(super) fn parse_file(file: FileId, text: &str, ast: &mut Ast) -> Result<ExprId, SyntaxError> {
    let state = State {
        file,
        text,
        ast: RefCell::new(ast),
        depth: Cell::new(0),
        names: RefCell::new(HashSet::new()),
        last_ws: Cell::new((usize::MAX, 0)),
    };
    let input = Input::new_extra(text, &state);
    let result = (|| -> PResult<'_, ExprId> {
        let (i, root) = required_expr(input, "")?;
        let (i, ()) = ws(i)?;
        if !i.fragment().is_empty() {
            return Err(unexpected(i, "expected an operator or the end of the file"));
        }
        Ok((i, root))
    })();
    match result {
        Ok((_, root)) => Ok(root),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
            let mut e = e.into_inner();
            // An error at the end of the file is shown right after the last
            // token (the line the user has to fix), not on a line of its own.
            let content_end = text.trim_end().len();
            if e.offset > content_end && text[content_end..].trim().is_empty() {
                e.offset = content_end;
            }
            if text.trim().is_empty() {
                e.message = "the file is empty: expected an expression".to_string();
            }
            Err(e)
        }
        Err(nom::Err::Incomplete(_)) => Err(SyntaxError::new(text.len(), "unexpected end of file")),
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn offset(i: &Input) -> usize {
    i.location_offset()
}

fn span_from(start: usize, end: &Input) -> Span {
    Span::new(end.extra.file, start, offset(end))
}

fn alloc(i: &Input, kind: ExprKind, span: Span) -> ExprId {
    i.extra.ast.borrow_mut().alloc(Expr { kind, span })
}

fn intern(i: &Input, name: &str) -> Name {
    let mut names = i.extra.names.borrow_mut();
    if let Some(existing) = names.get(name) {
        return existing.clone();
    }
    let name: Name = name.into();
    names.insert(name.clone());
    name
}

fn expr_span(i: &Input, id: ExprId) -> Span {
    i.extra.ast.borrow()[id].span
}

fn advance<'a>(i: Input<'a>, n: usize) -> Input<'a> {
    i.take_from(n)
}

fn not_this<T>(i: Input) -> PResult<T> {
    // No message: backtracking is frequent and must not allocate.
    let _ = i;
    Err(nom::Err::Error(PError(None)))
}

/// A committed error at `i`, labelled with what is actually there.
fn unexpected(i: Input, message: impl Into<String>) -> nom::Err<PError> {
    let (found, len) = describe_next(i.fragment());
    let mut error = SyntaxError::new(offset(&i), message);
    error.len = len;
    error.label = Some(format!("found {found}"));
    nom::Err::Failure(error.into())
}

/// How the upcoming token is shown in "found ..." labels.
fn describe_next(rest: &str) -> (String, usize) {
    let Some(c) = rest.chars().next() else {
        return ("the end of the file".to_string(), 0);
    };
    if is_ident_start(c) {
        let len = rest
            .char_indices()
            .find(|&(_, c)| !is_ident_continue(c))
            .map_or(rest.len(), |(n, _)| n);
        return (format!("`{}`", &rest[..len]), len);
    }
    for op in [
        "...", "++", "//", "==", "!=", "<=", ">=", "&&", "||", "${", "''",
    ] {
        if rest.starts_with(op) {
            return (format!("`{op}`"), op.len());
        }
    }
    (format!("`{}`", c.escape_debug()), c.len_utf8())
}

/// Runs `f` one nesting level deeper, failing cleanly past [`MAX_NESTING`]
/// so that no input can overflow the parser's stack.
fn nested<'a, T>(i: Input<'a>, f: impl FnOnce(Input<'a>) -> PResult<'a, T>) -> PResult<'a, T> {
    let depth = i.extra.depth.get() + 1;
    if depth > MAX_NESTING {
        let mut error = SyntaxError::new(
            offset(&i),
            format!("expression nested too deeply (more than {MAX_NESTING} levels)"),
        );
        error.help = Some("split the expression with `let` bindings".to_string());
        return Err(nom::Err::Failure(error.into()));
    }
    i.extra.depth.set(depth);
    let result = f(i);
    i.extra.depth.set(depth - 1);
    result
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '\'' || c == '-'
}

const KEYWORDS: &[&str] = &[
    "let", "in", "if", "then", "else", "inherit", "rec", "or", "true", "false", "null",
];

fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// Skips whitespace and comments.
pub(super) fn ws(i: Input) -> PResult<()> {
    let bytes = i.fragment().as_bytes();
    // Every token boundary calls this many times: leave at once when there
    // is nothing to skip.
    if !matches!(
        bytes.first(),
        Some(b' ' | b'\t' | b'\n' | b'\r' | b'#' | b'/')
    ) {
        return Ok((i, ()));
    }
    let (cached_at, cached_len) = i.extra.last_ws.get();
    if cached_at == offset(&i) {
        return Ok((advance(i, cached_len), ()));
    }
    let mut n = 0;
    loop {
        match bytes.get(n) {
            Some(b' ' | b'\t' | b'\n' | b'\r') => n += 1,
            Some(b'#') => {
                n += memchr_newline(&bytes[n..]);
            }
            Some(b'/') if bytes.get(n + 1) == Some(&b'*') => {
                let body = &bytes[n + 2..];
                match body.windows(2).position(|w| w == b"*/") {
                    Some(end) => n += 2 + end + 2,
                    None => {
                        let mut error =
                            SyntaxError::new(offset(&i) + n, "unterminated block comment");
                        error.len = 2;
                        error.help = Some("close the comment with `*/`".to_string());
                        return Err(nom::Err::Failure(error.into()));
                    }
                }
            }
            _ => break,
        }
    }
    i.extra.last_ws.set((offset(&i), n));
    Ok((advance(i, n), ()))
}

fn memchr_newline(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len())
}

/// The raw identifier-shaped word at `i` (no whitespace skipping).
fn word(i: Input) -> PResult<Input> {
    let len = ident_len(i.fragment().as_bytes());
    if len == 0 {
        return not_this(i);
    }
    let (rest, word) = i.take_split(len);
    Ok((rest, word))
}

/// Length of the identifier-shaped word at the start of `bytes` (0 if none).
fn ident_len(bytes: &[u8]) -> usize {
    match bytes.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => bytes
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'\'' | b'-')))
            .unwrap_or(bytes.len()),
        _ => 0,
    }
}

/// Whether the text after a `{` could be formals (`}`, `...`, or a name
/// followed by `,`, `?` or `}`) rather than an attribute set: a cheap look
/// so sets are not parsed twice. Comments make it answer "maybe" (true).
fn looks_like_formals(after_brace: &[u8]) -> bool {
    let rest = after_brace.trim_ascii_start();
    if rest.starts_with(b"#") || rest.starts_with(b"/*") {
        return true;
    }
    if rest.starts_with(b"}") || rest.starts_with(b"...") {
        return true;
    }
    let len = ident_len(rest);
    if len == 0 {
        return false;
    }
    let after = rest[len..].trim_ascii_start();
    matches!(after.first(), Some(b',' | b'?' | b'}' | b'#' | b'/'))
}

/// Keyword `kw` after whitespace; `Error` if something else is there.
fn keyword<'a>(i: Input<'a>, kw: &str) -> PResult<'a, Span> {
    let (i, ()) = ws(i)?;
    let start = offset(&i);
    match word(i) {
        Ok((rest, w)) if *w.fragment() == kw => Ok((rest, span_from(start, &rest))),
        _ => not_this(i),
    }
}

fn peek_keyword(i: &Input, kw: &str) -> bool {
    keyword(*i, kw).is_ok()
}

/// A non-keyword identifier after whitespace.
fn identifier(i: Input) -> PResult<(Name, Span)> {
    let (i, ()) = ws(i)?;
    let start = offset(&i);
    let (rest, w) = word(i)?;
    if is_keyword(w.fragment()) {
        return not_this(i);
    }
    let name = intern(&rest, w.fragment());
    let span = span_from(start, &rest);
    Ok((rest, (name, span)))
}

/// Punctuation `s` after whitespace, not followed by a character that would
/// make it a longer operator. `Error` if absent.
fn punct<'a>(i: Input<'a>, s: &str) -> PResult<'a, Span> {
    let (i, ()) = ws(i)?;
    let rest = i.fragment();
    if !rest.starts_with(s) {
        return not_this(i);
    }
    let after = &rest[s.len()..];
    let longer = match s {
        "+" => after.starts_with('+'),
        "/" => after.starts_with('/') || after.starts_with('*'),
        "<" | ">" | "!" => after.starts_with('='),
        "=" => after.starts_with('='),
        "." => after.starts_with('.') || after.starts_with('/'),
        "-" => after.starts_with('>'),
        "|" | "&" => true,
        _ => false,
    };
    if longer {
        return not_this(i);
    }
    let start = offset(&i);
    let rest = advance(i, s.len());
    Ok((rest, span_from(start, &rest)))
}

/// Punctuation that must be there: a committed error naming it otherwise,
/// placed right after the previous token.
fn expect<'a>(i: Input<'a>, s: &str, context: &str) -> PResult<'a, Span> {
    match punct(i, s) {
        Ok(ok) => Ok(ok),
        Err(nom::Err::Error(_)) => {
            let (after_ws, ()) = ws(i)?;
            let (found, _) = describe_next(after_ws.fragment());
            let mut error = SyntaxError::new(offset(&i), format!("expected `{s}` {context}"));
            error.label = Some(format!("found {found}"));
            Err(nom::Err::Failure(error.into()))
        }
        Err(e) => Err(e),
    }
}

fn expect_keyword<'a>(i: Input<'a>, kw: &str, context: &str) -> PResult<'a, Span> {
    match keyword(i, kw) {
        Ok(ok) => Ok(ok),
        Err(nom::Err::Error(_)) => {
            let (after_ws, ()) = ws(i)?;
            let (found, _) = describe_next(after_ws.fragment());
            let mut error = SyntaxError::new(offset(&i), format!("expected `{kw}` {context}"));
            error.label = Some(format!("found {found}"));
            Err(nom::Err::Failure(error.into()))
        }
        Err(e) => Err(e),
    }
}

/// An expression that must be there.
fn required_expr<'a>(i: Input<'a>, context: &str) -> PResult<'a, ExprId> {
    match expr(i) {
        Err(nom::Err::Error(_)) => {
            let (i, ()) = ws(i)?;
            Err(unexpected(
                i,
                format!("expected an expression {context}")
                    .trim_end()
                    .to_string(),
            ))
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Expressions, lowest precedence first.

pub(super) fn expr(i: Input) -> PResult<ExprId> {
    nested(i, |i| {
        let (i, ()) = ws(i)?;
        // Decide from the raw text which form this is, so that the common
        // case (an operator expression) costs no failed attempts.
        let rest = i.fragment().as_bytes();
        let word_len = ident_len(rest);
        match &rest[..word_len] {
            b"let" => return let_expr(i),
            b"if" => return if_expr(i),
            _ => {}
        }
        let maybe_lambda = if word_len > 0 {
            let after = rest[word_len..].trim_ascii_start();
            // A comment before `:` or `@` is rare; let the real parser decide.
            matches!(after.first(), Some(b':' | b'@' | b'#')) || after.starts_with(b"/*")
        } else {
            rest.first() == Some(&b'{') && looks_like_formals(&rest[1..])
        };
        if maybe_lambda && let Some(result) = try_lambda(i) {
            return result;
        }
        or_expr(i)
    })
}

fn let_expr(i: Input) -> PResult<ExprId> {
    let start = offset(&i);
    let (i, let_span) = keyword(i, "let")?;
    let (i, builder) = bindings(i, BindingContext::Let, let_span)?;
    let (i, _) = expect_keyword(i, "in", "after the bindings of `let`")?;
    let (i, body) = required_expr(i, "after `in`")?;
    let bindings = builder.finish_static(&i)?;
    let span = span_from(start, &i);
    let id = alloc(&i, ExprKind::Let(Box::new(Let { bindings, body })), span);
    Ok((i, id))
}

fn if_expr(i: Input) -> PResult<ExprId> {
    let start = offset(&i);
    let (i, _) = keyword(i, "if")?;
    let (i, condition) = required_expr(i, "after `if`")?;
    let (i, _) = expect_keyword(i, "then", "after the condition of `if`")?;
    let (i, then_branch) = required_expr(i, "after `then`")?;
    let (i, _) = expect_keyword(i, "else", "after the `then` branch (`if` needs an `else`)")?;
    let (i, else_branch) = required_expr(i, "after `else`")?;
    let span = span_from(start, &i);
    let kind = ExprKind::If {
        condition,
        then_branch,
        else_branch,
    };
    let id = alloc(&i, kind, span);
    Ok((i, id))
}

/// `x: body`, `x @ { ... }: body`, `{ ... }: body`, `{ ... } @ x: body`.
/// Returns `None` when the input is not a function.
fn try_lambda(i: Input) -> Option<PResult<ExprId>> {
    let start = offset(&i);
    if let Ok((rest, (name, name_span))) = identifier(i) {
        if let Ok((rest, _)) = punct(rest, ":") {
            return Some(lambda_body(rest, start, Param::Ident(name, name_span)));
        }
        if let Ok((rest, _)) = punct(rest, "@") {
            return Some((|| {
                let (rest, ()) = ws(rest)?;
                let (rest, mut formals) = match formals(rest) {
                    Ok(ok) => ok,
                    Err(nom::Err::Error(_)) => {
                        return Err(unexpected(
                            rest,
                            "expected `{` starting the formals after `@`",
                        ));
                    }
                    Err(e) => return Err(e),
                };
                formals.bind_as = Some((name, name_span));
                let (rest, _) = expect(rest, ":", "after the formals of a function")?;
                lambda_body(rest, start, Param::Formals(formals))
            })());
        }
        return None;
    }
    if !i.fragment().starts_with('{') {
        return None;
    }
    match formals(i) {
        Ok((rest, mut formals)) => {
            if let Ok((rest, _)) = punct(rest, ":") {
                return Some(lambda_body(rest, start, Param::Formals(formals)));
            }
            if let Ok((rest, _)) = punct(rest, "@") {
                return Some((|| {
                    let (rest, (name, name_span)) = match identifier(rest) {
                        Ok(ok) => ok,
                        Err(nom::Err::Error(_)) => {
                            let (rest, ()) = ws(rest)?;
                            return Err(unexpected(rest, "expected a name after `@`"));
                        }
                        Err(e) => return Err(e),
                    };
                    formals.bind_as = Some((name, name_span));
                    let (rest, _) = expect(rest, ":", "after the formals of a function")?;
                    lambda_body(rest, start, Param::Formals(formals))
                })());
            }
            // `{ a, b }` without `:` is neither a function nor a valid set.
            if !formals.formals.is_empty() || formals.ellipsis {
                return Some(Err(unexpected(
                    ws(rest).map(|(r, ())| r).ok()?,
                    "expected `:` after the formals of a function",
                )));
            }
            None
        }
        Err(nom::Err::Failure(e)) => Some(Err(nom::Err::Failure(e))),
        Err(_) => None,
    }
}

fn lambda_body(i: Input, start: usize, param: Param) -> PResult<ExprId> {
    let (i, body) = required_expr(i, "as the body of the function")?;
    let span = span_from(start, &i);
    let id = alloc(&i, ExprKind::Lambda(Box::new(Lambda { param, body })), span);
    Ok((i, id))
}

/// `{ a, b ? default, ... }`. `Error` (so the caller backtracks to an
/// attribute set) unless the braces hold formals.
fn formals(i: Input) -> PResult<Formals> {
    let (i, ()) = ws(i)?;
    let start = offset(&i);
    let (mut i, _) = punct(i, "{")?;
    let mut formals = Vec::<Formal>::new();
    let mut ellipsis = false;
    loop {
        if let Ok((rest, _)) = punct(i, "}") {
            i = rest;
            break;
        }
        if ellipsis {
            let (rest, ()) = ws(i)?;
            return Err(unexpected(
                rest,
                "expected `}` after `...` (it must come last)",
            ));
        }
        if let Ok((rest, _)) = punct(i, "...") {
            ellipsis = true;
            i = rest;
        } else {
            let (rest, (name, span)) = identifier(i)?;
            let (rest, default) = match punct(rest, "?") {
                Ok((rest, _)) => {
                    let (rest, default) = required_expr(rest, "as the default of a formal")?;
                    (rest, Some(default))
                }
                Err(_) => (rest, None),
            };
            if let Some(previous) = formals.iter().find(|f| f.name == name) {
                let mut error = SyntaxError::new(
                    span.start as usize,
                    format!("duplicate formal argument `{name}`"),
                );
                error.len = (span.end - span.start) as usize;
                error
                    .related
                    .push((previous.span, "first declared here".to_string()));
                return Err(nom::Err::Failure(error.into()));
            }
            formals.push(Formal {
                name,
                span,
                default,
            });
            i = rest;
        }
        match punct(i, ",") {
            Ok((rest, _)) => i = rest,
            Err(_) => {
                let (rest, _) = punct(i, "}")?;
                i = rest;
                break;
            }
        }
    }
    let span = span_from(start, &i);
    Ok((
        i,
        Formals {
            formals,
            ellipsis,
            bind_as: None,
            span,
        },
    ))
}

/// An infix operator (or the `?` test) and how tightly it binds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Infix {
    Binary(BinaryOp),
    HasAttr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Assoc {
    Left,
    Right,
    None,
}

// Binding powers, loosest first; the table in manifest.md §1 and the
// levels of kiln.ebnf, in the same order.
const BP_OR: u8 = 1;
const BP_AND: u8 = 2;
const BP_EQ: u8 = 3;
const BP_CMP: u8 = 4;
const BP_UPDATE: u8 = 5;
/// The operand of `!` (which sits between `//` and `+`).
const BP_NOT: u8 = 6;
const BP_ADD: u8 = 7;
const BP_MUL: u8 = 8;
const BP_CONCAT: u8 = 9;
const BP_HAS_ATTR: u8 = 10;
/// The operand of prefix `-` (which sits between `?` and application).
const BP_NEGATE: u8 = 11;

/// The infix operator at the start of `rest`, its length, binding power and
/// associativity. A pure look at the text: no allocation, no error.
fn peek_infix(rest: &str) -> Option<(Infix, &'static str, u8, Assoc)> {
    use BinaryOp::*;
    let bytes = rest.as_bytes();
    let second = bytes.get(1).copied();
    let binary = |op, symbol, bp, assoc| Some((Infix::Binary(op), symbol, bp, assoc));
    match (bytes.first()?, second) {
        (b'|', Some(b'|')) => binary(Or, "||", BP_OR, Assoc::Left),
        (b'&', Some(b'&')) => binary(And, "&&", BP_AND, Assoc::Left),
        (b'=', Some(b'=')) => binary(Eq, "==", BP_EQ, Assoc::None),
        (b'!', Some(b'=')) => binary(NotEq, "!=", BP_EQ, Assoc::None),
        (b'<', Some(b'=')) => binary(LessEq, "<=", BP_CMP, Assoc::None),
        (b'>', Some(b'=')) => binary(GreaterEq, ">=", BP_CMP, Assoc::None),
        (b'<', _) => binary(Less, "<", BP_CMP, Assoc::None),
        (b'>', _) => binary(Greater, ">", BP_CMP, Assoc::None),
        (b'/', Some(b'/')) => binary(Update, "//", BP_UPDATE, Assoc::Right),
        (b'+', Some(b'+')) => binary(Concat, "++", BP_CONCAT, Assoc::Right),
        (b'+', _) => binary(Add, "+", BP_ADD, Assoc::Left),
        (b'-', Some(b'>')) => None,
        (b'-', _) => binary(Sub, "-", BP_ADD, Assoc::Left),
        (b'*', _) => binary(Mul, "*", BP_MUL, Assoc::Left),
        (b'/', Some(b'*')) => None,
        (b'/', _) => binary(Div, "/", BP_MUL, Assoc::Left),
        (b'?', _) => Some((Infix::HasAttr, "?", BP_HAS_ATTR, Assoc::None)),
        _ => None,
    }
}

/// Operator expressions by precedence climbing: one loop instead of one
/// function per level, so an operand costs one whitespace skip, not twelve.
/// Only operators binding at least as tightly as `min_bp` are consumed.
fn binary(i: Input, min_bp: u8) -> PResult<ExprId> {
    let (i, mut lhs) = prefix(i, min_bp)?;
    let mut i = i;
    let mut previous: Option<(u8, &'static str)> = None;
    loop {
        let (after_ws, ()) = ws(i)?;
        let Some((infix, symbol, bp, assoc)) = peek_infix(after_ws.fragment()) else {
            return Ok((i, lhs));
        };
        if bp < min_bp {
            return Ok((i, lhs));
        }
        if let Some((previous_bp, previous_symbol)) = previous
            && previous_bp == bp
        {
            let mut error = SyntaxError::new(
                offset(&after_ws),
                format!("`{previous_symbol}` and `{symbol}` cannot be chained"),
            );
            error.len = symbol.len();
            error.help = Some("add parentheses".to_string());
            return Err(nom::Err::Failure(error.into()));
        }
        let op_start = offset(&after_ws);
        let rest = advance(after_ws, symbol.len());
        let op_span = span_from(op_start, &rest);
        match infix {
            Infix::HasAttr => {
                let (rest, path) = attr_path(rest, "after `?`")?;
                let span = expr_span(&rest, lhs).to(span_from(offset(&rest), &rest));
                lhs = alloc(&rest, ExprKind::HasAttr { subject: lhs, path }, span);
                i = rest;
            }
            Infix::Binary(op) if assoc == Assoc::Right => {
                // Collect the whole chain, then build it from the right: no
                // recursion per operator, however long the chain.
                let (mut rest, first) = required_binary(rest, bp + 1, symbol)?;
                let mut operands = vec![lhs, first];
                let mut op_spans = vec![op_span];
                loop {
                    let (after, ()) = ws(rest)?;
                    match peek_infix(after.fragment()) {
                        Some((Infix::Binary(next), _, _, _)) if next == op => {
                            let start = offset(&after);
                            let after_op = advance(after, symbol.len());
                            op_spans.push(span_from(start, &after_op));
                            let (after_operand, operand) =
                                required_binary(after_op, bp + 1, symbol)?;
                            operands.push(operand);
                            rest = after_operand;
                        }
                        _ => break,
                    }
                }
                let mut rhs = operands.pop().unwrap_or(lhs);
                while let (Some(left), Some(op_span)) = (operands.pop(), op_spans.pop()) {
                    let span = expr_span(&rest, left).to(expr_span(&rest, rhs));
                    let kind = ExprKind::Binary {
                        op,
                        op_span,
                        lhs: left,
                        rhs,
                    };
                    rhs = alloc(&rest, kind, span);
                }
                lhs = rhs;
                i = rest;
            }
            Infix::Binary(op) => {
                let (rest, rhs) = required_binary(rest, bp + 1, symbol)?;
                let span = expr_span(&rest, lhs).to(expr_span(&rest, rhs));
                let kind = ExprKind::Binary {
                    op,
                    op_span,
                    lhs,
                    rhs,
                };
                lhs = alloc(&rest, kind, span);
                i = rest;
            }
        }
        previous = (assoc == Assoc::None).then_some((bp, symbol));
    }
}

/// An operand: `!e` and `-e` where the binding power allows them, else an
/// application.
fn prefix(i: Input, min_bp: u8) -> PResult<ExprId> {
    let (i, ()) = ws(i)?;
    let start = offset(&i);
    let rest = *i.fragment();
    if min_bp <= BP_NOT && rest.starts_with('!') && !rest.starts_with("!=") {
        return nested(advance(i, 1), |rest| {
            let (rest, operand) = required_binary(rest, BP_NOT, "!")?;
            let span = span_from(start, &rest);
            let id = alloc(&rest, ExprKind::Not(operand), span);
            Ok((rest, id))
        });
    }
    if min_bp <= BP_NEGATE && rest.starts_with('-') && !rest.starts_with("->") {
        let rest = advance(i, 1);
        // `-7` is an integer literal (so `-9223372036854775808` fits).
        if rest.fragment().starts_with(|c: char| c.is_ascii_digit()) {
            let (rest, literal) = integer(rest, start, true)?;
            return application(rest, literal);
        }
        return nested(rest, |rest| {
            let (rest, operand) = required_binary(rest, BP_NEGATE, "-")?;
            let span = span_from(start, &rest);
            let id = alloc(&rest, ExprKind::Negate(operand), span);
            Ok((rest, id))
        });
    }
    app_expr(i)
}

/// The operand after `symbol`, which must be there.
fn required_binary<'a>(i: Input<'a>, min_bp: u8, symbol: &str) -> PResult<'a, ExprId> {
    match binary(i, min_bp) {
        Err(nom::Err::Error(_)) => {
            let (i, ()) = ws(i)?;
            // `a + if c then 1 else 2` and friends: Nix needs parentheses too.
            let help = ["let", "if"]
                .iter()
                .find(|kw| peek_keyword(&i, kw))
                .map(|kw| format!("put the `{kw}` expression in parentheses"));
            let mut error = match unexpected(i, format!("expected an expression after `{symbol}`"))
            {
                nom::Err::Failure(e) => e.into_inner(),
                _ => unreachable_error(),
            };
            error.help = help;
            Err(nom::Err::Failure(error.into()))
        }
        other => other,
    }
}

fn unreachable_error() -> SyntaxError {
    SyntaxError::new(0, "internal parser error")
}

fn or_expr(i: Input) -> PResult<ExprId> {
    binary(i, 0)
}

fn app_expr(i: Input) -> PResult<ExprId> {
    let (i, function) = select_expr(i)?;
    application(i, function)
}

/// `function arg arg ...`, left-associative.
fn application(i: Input, mut function: ExprId) -> PResult<ExprId> {
    let mut i = i;
    loop {
        let (next, ()) = ws(i)?;
        if !starts_atom(&next) {
            return Ok((i, function));
        }
        let (rest, argument) = select_expr(next)?;
        let span = expr_span(&rest, function).to(expr_span(&rest, argument));
        function = alloc(&rest, ExprKind::Apply { function, argument }, span);
        i = rest;
    }
}

/// Whether the input (after whitespace) can start an atom; lets the
/// application loop stop at `then`, `;`, `)` and friends without trying.
fn starts_atom(i: &Input) -> bool {
    let rest = i.fragment();
    match rest.as_bytes().first() {
        Some(b'0'..=b'9' | b'"' | b'(' | b'[' | b'{') => true,
        Some(b'\'') => rest.starts_with("''"),
        Some(b'.') => rest.starts_with("./") || rest.starts_with("../"),
        Some(c) if is_ident_start(*c as char) => match word(*i) {
            Ok((_, w)) => {
                !is_keyword(w.fragment())
                    || *w.fragment() == "rec"
                    || is_literal_keyword(w.fragment())
            }
            Err(_) => false,
        },
        _ => false,
    }
}

fn is_literal_keyword(w: &str) -> bool {
    matches!(w, "true" | "false" | "null")
}

fn select_expr(i: Input) -> PResult<ExprId> {
    let (i, subject) = atom(i)?;
    match punct(i, ".") {
        Ok((rest, _)) => {
            let (rest, path) = attr_path(rest, "after `.`")?;
            let (rest, default) = match keyword(rest, "or") {
                Ok((rest, _)) => {
                    let (rest, default) = match select_expr(rest) {
                        Err(nom::Err::Error(_)) => {
                            let (rest, ()) = ws(rest)?;
                            return Err(unexpected(rest, "expected an expression after `or`"));
                        }
                        other => other?,
                    };
                    (rest, Some(default))
                }
                Err(_) => (rest, None),
            };
            let span = expr_span(&rest, subject).to(span_from(offset(&rest), &rest));
            let id = alloc(
                &rest,
                ExprKind::Select {
                    subject,
                    path,
                    default,
                },
                span,
            );
            Ok((rest, id))
        }
        Err(_) => Ok((i, subject)),
    }
}

/// `a.b."c".${d}` (at least one name).
fn attr_path<'a>(i: Input<'a>, context: &str) -> PResult<'a, Vec<AttrName>> {
    let (mut i, first) = attr_name(i, context)?;
    let mut path = vec![first];
    while let Ok((rest, _)) = punct(i, ".") {
        let (rest, name) = attr_name(rest, "after `.`")?;
        path.push(name);
        i = rest;
    }
    Ok((i, path))
}

fn attr_name<'a>(i: Input<'a>, context: &str) -> PResult<'a, AttrName> {
    let (i, ()) = ws(i)?;
    let start = offset(&i);
    if let Ok((rest, w)) = word(i) {
        let text = *w.fragment();
        if is_keyword(text) && text != "or" {
            // Keywords are fine as attribute names (`x.if`, `{ in = 1; }`
            // would be ambiguous only for `or` and `inherit`).
            if text != "inherit" {
                let name = intern(&rest, text);
                return Ok((rest, AttrName::Static(name, span_from(start, &rest))));
            }
        }
        if !is_keyword(text) {
            let name = intern(&rest, text);
            return Ok((rest, AttrName::Static(name, span_from(start, &rest))));
        }
    }
    if i.fragment().starts_with("${") {
        let (rest, id) = interpolation(i)?;
        return Ok((rest, AttrName::Dynamic(id)));
    }
    if i.fragment().starts_with('"') {
        let (rest, id) = string(i)?;
        let static_name = {
            let ast = rest.extra.ast.borrow();
            match &ast[id].kind {
                ExprKind::Str(parts) if parts.iter().all(|p| matches!(p, StrPart::Literal(_))) => {
                    Some(
                        parts
                            .iter()
                            .map(|p| match p {
                                StrPart::Literal(s) => &**s,
                                StrPart::Interpolation(_) => "",
                            })
                            .collect::<String>(),
                    )
                }
                _ => None,
            }
        };
        return Ok(match static_name {
            Some(text) => {
                let name = intern(&rest, &text);
                (rest, AttrName::Static(name, span_from(start, &rest)))
            }
            None => (rest, AttrName::Dynamic(id)),
        });
    }
    Err(unexpected(
        i,
        format!("expected an attribute name {context}"),
    ))
}

/// `${ expr }`, returning the expression.
fn interpolation(i: Input) -> PResult<ExprId> {
    let i = advance(i, 2);
    let (i, id) = required_expr(i, "inside `${ }`")?;
    let (i, _) = expect(i, "}", "to close `${`")?;
    Ok((i, id))
}

fn atom(i: Input) -> PResult<ExprId> {
    let (i, ()) = ws(i)?;
    nested(i, |i| {
        let start = offset(&i);
        let rest = *i.fragment();
        let Some(first) = rest.chars().next() else {
            return not_this(i);
        };
        match first {
            '0'..='9' => integer(i, start, false),
            '"' => string(i),
            '\'' if rest.starts_with("''") => indented_string(i),
            '.' if rest.starts_with("./") || rest.starts_with("../") => path(i),
            '(' => {
                let (i, _) = punct(i, "(")?;
                let (i, inner) = required_expr(i, "after `(`")?;
                let (i, _) = expect(i, ")", "to close `(`")?;
                Ok((i, inner))
            }
            '[' => list(i),
            '{' => attr_set(i, start, false),
            c if is_ident_start(c) => {
                let (after, w) = word(i)?;
                let span = span_from(start, &after);
                let kind = match *w.fragment() {
                    "true" => ExprKind::Bool(true),
                    "false" => ExprKind::Bool(false),
                    "null" => ExprKind::Null,
                    "rec" => {
                        let (after, ()) = ws(after)?;
                        if !after.fragment().starts_with('{') {
                            return Err(unexpected(after, "expected `{` after `rec`"));
                        }
                        return attr_set(after, start, true);
                    }
                    text if is_keyword(text) => return not_this(i),
                    text => ExprKind::Var(intern(&after, text)),
                };
                let id = alloc(&after, kind, span);
                Ok((after, id))
            }
            _ => not_this(i),
        }
    })
}

fn integer(i: Input, start: usize, negative: bool) -> PResult<ExprId> {
    let digits = i
        .fragment()
        .bytes()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let (rest, text) = i.take_split(digits);
    let span = span_from(start, &rest);
    let value: Option<i64> = text.fragment().parse::<u64>().ok().and_then(|magnitude| {
        if negative {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        }
    });
    let Some(value) = value else {
        let mut error = SyntaxError::new(start, "integer literal out of range");
        error.len = offset(&rest) - start;
        error.help = Some(
            "integers are 64-bit signed: -9223372036854775808 ..= 9223372036854775807".to_string(),
        );
        return Err(nom::Err::Failure(error.into()));
    };
    if rest.fragment().starts_with(is_ident_start) {
        let mut error = SyntaxError::new(offset(&rest), "unexpected letter after a number");
        error.len = 1;
        return Err(nom::Err::Failure(error.into()));
    }
    let id = alloc(&rest, ExprKind::Int(value), span);
    Ok((rest, id))
}

fn path(i: Input) -> PResult<ExprId> {
    let start = offset(&i);
    let len = i
        .fragment()
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'/'))
        .count();
    let (rest, text) = i.take_split(len);
    let text = *text.fragment();
    if text.ends_with('/') {
        let mut error = SyntaxError::new(start, "a path literal must not end with `/`");
        error.len = len;
        error.help = Some(format!("write `{}`", text.trim_end_matches('/')));
        return Err(nom::Err::Failure(error.into()));
    }
    if text.contains("//") {
        let mut error = SyntaxError::new(start, "a path literal must not contain `//`");
        error.len = len;
        return Err(nom::Err::Failure(error.into()));
    }
    let span = span_from(start, &rest);
    let id = alloc(&rest, ExprKind::Path(intern(&rest, text)), span);
    Ok((rest, id))
}

fn list(i: Input) -> PResult<ExprId> {
    let start = offset(&i);
    let (mut i, _) = punct(i, "[")?;
    let mut items = Vec::new();
    loop {
        let (rest, ()) = ws(i)?;
        i = rest;
        if let Ok((rest, _)) = punct(i, "]") {
            i = rest;
            break;
        }
        let item_start = offset(&i);
        // `[ -1 ]`: a negative literal is an element, not a subtraction.
        if i.fragment().starts_with('-')
            && i.fragment()[1..].starts_with(|c: char| c.is_ascii_digit())
        {
            let (rest, literal) = integer(advance(i, 1), item_start, true)?;
            items.push(literal);
            i = rest;
            continue;
        }
        match select_expr(i) {
            Ok((rest, item)) => {
                items.push(item);
                i = rest;
            }
            Err(nom::Err::Error(_)) => {
                let mut error = match unexpected(i, "expected a list element or `]`") {
                    nom::Err::Failure(e) => e.into_inner(),
                    _ => unreachable_error(),
                };
                if i.fragment()
                    .starts_with(|c: char| "+-*/=!<>&|?".contains(c))
                {
                    error.help = Some("list elements are separated by spaces; put an operation on elements in parentheses".to_string());
                } else if i.fragment().is_empty() {
                    error.related.push((
                        Span::new(i.extra.file, start, start + 1),
                        "the list starts here".to_string(),
                    ));
                }
                return Err(nom::Err::Failure(error.into()));
            }
            Err(e) => return Err(e),
        }
    }
    let span = span_from(start, &i);
    let id = alloc(&i, ExprKind::List(items), span);
    Ok((i, id))
}

fn attr_set(i: Input, start: usize, recursive: bool) -> PResult<ExprId> {
    let (i, open) = punct(i, "{")?;
    let context = if recursive {
        BindingContext::RecSet
    } else {
        BindingContext::Set
    };
    let (i, builder) = bindings(i, context, open)?;
    let (i, _) = expect(i, "}", "to close the attribute set")?;
    let span = span_from(start, &i);
    let set = builder.finish(&i, recursive)?;
    let id = alloc(&i, ExprKind::Attrs(Box::new(set)), span);
    Ok((i, id))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BindingContext {
    Set,
    RecSet,
    Let,
}

/// `binding*` up to (not including) `}` or `in`.
fn bindings<'a>(
    i: Input<'a>,
    context: BindingContext,
    opener: Span,
) -> PResult<'a, BindingsBuilder> {
    let mut builder = BindingsBuilder::new(context);
    let mut i = i;
    loop {
        let (rest, ()) = ws(i)?;
        i = rest;
        let at_end = match context {
            BindingContext::Let => peek_keyword(&i, "in"),
            _ => i.fragment().starts_with('}'),
        };
        if at_end {
            return Ok((i, builder));
        }
        if i.fragment().is_empty() {
            let (what, close) = match context {
                BindingContext::Let => ("`let`", "`in`"),
                _ => ("the attribute set", "`}`"),
            };
            let mut error = SyntaxError::new(
                offset(&i),
                format!("unexpected end of file: expected {close}"),
            );
            error.related.push((opener, format!("{what} starts here")));
            return Err(nom::Err::Failure(error.into()));
        }
        let stmt_start = offset(&i);
        if let Ok((rest, _)) = keyword(i, "inherit") {
            let (rest, ()) = ws(rest)?;
            let (rest, source) = if rest.fragment().starts_with('(') {
                let (rest, _) = punct(rest, "(")?;
                let (rest, source) = required_expr(rest, "after `inherit (`")?;
                let (rest, _) = expect(rest, ")", "to close `inherit (`")?;
                (rest, Some(source))
            } else {
                (rest, None)
            };
            let mut rest = rest;
            loop {
                match attr_name(rest, "") {
                    Ok((after, AttrName::Static(name, span))) => {
                        builder.inherit(&after, name, span, source)?;
                        rest = after;
                    }
                    Ok((after, AttrName::Dynamic(_))) => {
                        let mut error = SyntaxError::new(
                            offset(&rest),
                            "dynamic attribute names cannot be inherited",
                        );
                        error.len = offset(&after) - offset(&rest);
                        return Err(nom::Err::Failure(error.into()));
                    }
                    Err(_) => break,
                }
            }
            let (rest, _) = expect(rest, ";", "after the names of `inherit`")?;
            i = rest;
            continue;
        }
        let (rest, path) = match attr_path(i, "") {
            Ok(ok) => ok,
            Err(_) => {
                let message = match context {
                    BindingContext::Let => "expected a binding (`name = value;`) or `in`",
                    _ => "expected an attribute (`name = value;`) or `}`",
                };
                return Err(unexpected(i, message));
            }
        };
        let (rest, _) = match expect(rest, "=", "after the attribute name") {
            Err(nom::Err::Failure(error)) if context == BindingContext::Let => {
                let mut error = error.into_inner();
                error.help =
                    Some("if this is the body of the `let`, write `in` before it".to_string());
                return Err(nom::Err::Failure(error.into()));
            }
            other => other?,
        };
        let (rest, value) = required_expr(rest, "after `=`")?;
        let (rest, _) = match expect(rest, ";", "after the attribute value") {
            Ok(ok) => ok,
            Err(nom::Err::Failure(error)) => {
                return Err(nom::Err::Failure(
                    forgotten_semicolon(&rest, value)
                        .map(PError::from)
                        .unwrap_or(error),
                ));
            }
            Err(e) => return Err(e),
        };
        let statement = span_from(stmt_start, &rest);
        builder.define(&rest, path, value, statement)?;
        i = rest;
    }
}

fn string(i: Input) -> PResult<ExprId> {
    let start = offset(&i);
    let mut i = advance(i, 1);
    let mut parts = Vec::new();
    let mut literal = String::new();
    loop {
        let rest = *i.fragment();
        let Some(stop) = rest.bytes().position(|b| matches!(b, b'"' | b'\\' | b'$')) else {
            let mut error = SyntaxError::new(start, "unterminated string");
            error.len = 1;
            error.help = Some("close the string with `\"`".to_string());
            return Err(nom::Err::Failure(error.into()));
        };
        literal.push_str(&rest[..stop]);
        let tail = &rest[stop..];
        if tail.starts_with('"') {
            i = advance(i, stop + 1);
            break;
        } else if let Some(escaped) = tail.strip_prefix('\\') {
            let Some(c) = escaped.chars().next() else {
                i = advance(i, stop + 1);
                continue;
            };
            let unescaped = match c {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                '\\' | '"' | '$' => c,
                _ => {
                    let mut error = SyntaxError::new(
                        offset(&i) + stop,
                        format!("unknown escape `\\{}` in a string", c.escape_debug()),
                    );
                    error.len = 1 + c.len_utf8();
                    error.help = Some(
                        "the escapes are \\n \\t \\r \\\\ \\\" \\$; write `\\\\` for a backslash"
                            .to_string(),
                    );
                    return Err(nom::Err::Failure(error.into()));
                }
            };
            literal.push(unescaped);
            i = advance(i, stop + 1 + c.len_utf8());
        } else if tail.starts_with("$${") {
            literal.push_str("${");
            i = advance(i, stop + 3);
        } else if tail.starts_with("${") {
            if !literal.is_empty() {
                parts.push(StrPart::Literal(std::mem::take(&mut literal).into()));
            }
            let (rest, id) = interpolation(advance(i, stop))?;
            parts.push(StrPart::Interpolation(id));
            i = rest;
        } else {
            literal.push('$');
            i = advance(i, stop + 1);
        }
    }
    if !literal.is_empty() || parts.is_empty() {
        parts.push(StrPart::Literal(literal.into()));
    }
    let span = span_from(start, &i);
    let id = alloc(&i, ExprKind::Str(parts), span);
    Ok((i, id))
}

fn indented_string(i: Input) -> PResult<ExprId> {
    let start = offset(&i);
    let mut i = advance(i, 2);
    let mut parts: Vec<IndentedPart> = Vec::new();
    loop {
        let rest = *i.fragment();
        let Some(stop) = rest.bytes().position(|b| matches!(b, b'\'' | b'$')) else {
            let mut error = SyntaxError::new(start, "unterminated indented string");
            error.len = 2;
            error.help = Some("close the string with `''`".to_string());
            return Err(nom::Err::Failure(error.into()));
        };
        if stop > 0 {
            parts.push(IndentedPart::Text(rest[..stop].to_string()));
        }
        let tail = &rest[stop..];
        if let Some(after) = tail.strip_prefix("''") {
            if after.starts_with('\'') {
                parts.push(IndentedPart::Escaped("''".to_string()));
                i = advance(i, stop + 3);
            } else if after.starts_with('$') {
                parts.push(IndentedPart::Escaped("$".to_string()));
                i = advance(i, stop + 3);
            } else if let Some(escaped) = after.strip_prefix('\\') {
                let Some(c) = escaped.chars().next() else {
                    i = advance(i, stop + 3);
                    continue;
                };
                let text = match c {
                    'n' => "\n".to_string(),
                    't' => "\t".to_string(),
                    'r' => "\r".to_string(),
                    other => other.to_string(),
                };
                parts.push(IndentedPart::Escaped(text));
                i = advance(i, stop + 3 + c.len_utf8());
            } else {
                i = advance(i, stop + 2);
                break;
            }
        } else if tail.starts_with("$${") {
            parts.push(IndentedPart::Escaped("${".to_string()));
            i = advance(i, stop + 3);
        } else if tail.starts_with("${") {
            let (rest, id) = interpolation(advance(i, stop))?;
            parts.push(IndentedPart::Interpolation(id));
            i = rest;
        } else {
            parts.push(IndentedPart::Text(tail[..1].to_string()));
            i = advance(i, stop + 1);
        }
    }
    let parts = strip_indentation(parts);
    let span = span_from(start, &i);
    let id = alloc(&i, ExprKind::Str(parts), span);
    Ok((i, id))
}

/// `a = f\n  b = 2;` parses `f b` as a call and then trips over `=`. When a
/// value is a call whose argument starts on a later line, the likely mistake
/// is a missing `;` at the end of the earlier line: say so, there.
fn forgotten_semicolon(i: &Input, value: ExprId) -> Option<SyntaxError> {
    let ast = i.extra.ast.borrow();
    let mut chain = Vec::new();
    let mut current = value;
    while let ExprKind::Apply { function, argument } = &ast[current].kind {
        chain.push(*argument);
        current = *function;
    }
    let text = i.extra.text;
    let mut previous_end = ast[current].span.end as usize;
    for argument in chain.into_iter().rev() {
        let start = ast[argument].span.start as usize;
        if text
            .get(previous_end..start)
            .is_some_and(|gap| gap.contains('\n'))
        {
            let mut error =
                SyntaxError::new(previous_end, "expected `;` after the attribute value");
            error.label = Some("expected `;` here".to_string());
            error.help = Some(
                "without `;` the next line is read as an argument of a function call".to_string(),
            );
            return Some(error);
        }
        previous_end = ast[argument].span.end as usize;
    }
    None
}
