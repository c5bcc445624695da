//! No input may panic, hang or overflow the stack: arbitrary text and bytes,
//! mutated valid manifests, deep nesting, huge strings, runaway recursion.
//! Each case must end in a clean `Ok` or a diagnostic with a location.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_grammar::eval::{EvalOptions, eval_file, eval_str};
use kiln_grammar::{Diagnostic, SourceMap};
use proptest::prelude::*;

/// Evaluates `text`; panics (failing the test) only if evaluation panicked.
fn check(text: &str) -> Result<(), String> {
    let mut sources = SourceMap::new();
    let options = EvalOptions::default();
    let result = eval_str(Path::new("fuzz.kiln"), text, &options, &mut sources);
    outcome(result.map(|_| ()), &sources)
}

fn outcome(result: Result<(), Diagnostic>, sources: &SourceMap) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(diagnostic) => {
            let rendered = diagnostic.render(sources);
            assert!(
                !rendered.contains("internal error"),
                "evaluation failed internally:\n{rendered}"
            );
            Err(rendered)
        }
    }
}

fn valid_manifests() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ok/lang");
    let mut texts: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("ok cases")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_string_lossy().into_owned();
            // The long generated chains are slow to mutate one by one.
            if path.extension()? != "kiln" || name.starts_with("long_") {
                return None;
            }
            Some((name, std::fs::read_to_string(&path).ok()?))
        })
        .collect();
    texts.sort();
    texts.into_iter().map(|(_, text)| text).collect()
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ";",
    "=",
    ":",
    "@",
    "...",
    ",",
    ".",
    "?",
    "or",
    "let",
    "in",
    "rec",
    "inherit",
    "if",
    "then",
    "else",
    "\"",
    "''",
    "${",
    "$${",
    "}",
    "//",
    "++",
    "+",
    "-",
    "*",
    "/",
    "==",
    "!",
    "&&",
    "||",
    "<",
    "./",
    "../x",
    "x",
    "f",
    "1",
    "-1",
    "9223372036854775807",
    "null",
    "true",
    "#",
    "/*",
    "*/",
    "\\",
    "\n",
    " ",
    "é",
    "\u{0}",
    "import",
    "throw",
    "builtins",
    "genList",
    "map",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let clamp = |at: usize| {
        if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        }
    };
    let mut out: Vec<char> = chars.clone();
    match *mutation {
        Mutation::Delete { at, len } => {
            let at = clamp(at);
            out.drain(at..(at + len).min(chars.len()));
        }
        Mutation::Insert { at, token } => {
            let at = clamp(at);
            for (n, c) in TOKENS[token].chars().enumerate() {
                out.insert(at + n, c);
            }
        }
        Mutation::Duplicate { at, len } => {
            let at = clamp(at);
            let slice: Vec<char> = chars[at..(at + len).min(chars.len())].to_vec();
            for (n, c) in slice.into_iter().enumerate() {
                out.insert(at + n, c);
            }
        }
        Mutation::Truncate { at } => out.truncate(clamp(at)),
    }
    out.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_is_ok_or_a_diagnostic(text in "\\PC{0,300}") {
        let _ = check(&text);
    }

    #[test]
    fn token_soup_is_ok_or_a_diagnostic(tokens in prop::collection::vec(0..TOKENS.len(), 0..60)) {
        let text: String = tokens.iter().map(|&t| TOKENS[t]).collect::<Vec<_>>().join(" ");
        let _ = check(&text);
    }

    #[test]
    fn mutated_manifests_are_ok_or_a_diagnostic(
        case in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let manifests = valid_manifests();
        let mut text = case.get(&manifests).clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        // Evaluated beside the real cases so imports and paths resolve.
        let mut sources = SourceMap::new();
        let name = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ok/lang/mutated.kiln");
        let result = eval_str(&name, &text, &EvalOptions::default(), &mut sources);
        let _ = outcome(result.map(|_| ()), &sources);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_in_a_file_are_ok_or_a_diagnostic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bytes.kiln");
        std::fs::write(&path, &bytes).expect("write");
        let mut sources = SourceMap::new();
        let result = eval_file(&path, &EvalOptions::default(), &mut sources);
        let _ = outcome(result.map(|_| ()), &sources);
    }
}

fn assert_fails_with(text: &str, needle: &str) {
    let start = Instant::now();
    match check(text) {
        Ok(()) => panic!("should fail: {}", &text[..text.len().min(80)]),
        Err(rendered) => assert!(
            rendered.contains(needle),
            "expected {needle:?} in:\n{rendered}"
        ),
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}

const DEEP: usize = 100_000;

#[test]
fn deep_nesting_is_a_clean_syntax_error() {
    let nested = |open: &str, middle: &str, close: &str| {
        format!("{}{middle}{}", open.repeat(DEEP), close.repeat(DEEP))
    };
    for text in [
        nested("(", "1", ")"),
        nested("[", "", "]"),
        nested("{ a = ", "1", "; }"),
        nested("let a = 1; in ", "a", ""),
        nested("x: ", "x", ""),
        nested("!", "true", ""),
        nested("-", "1", ""),
        nested("\"${", "\"x\"", "}\""),
        nested("''${", "1", "}''"),
        nested("if true then ", "1", " else 2"),
        nested("rec { a = ", "1", "; }"),
        nested("{ a ? ", "1", " }: a"),
        nested("a.${", "b", "}"),
    ] {
        assert_fails_with(&text, "nested too deeply");
    }
}

#[test]
fn long_flat_inputs_evaluate() {
    let list = format!("[ {} ]", "1 ".repeat(DEEP));
    check(&list).expect("a long list");
    let sum = vec!["1"; DEEP].join(" + ");
    check(&sum).expect("a long sum");
    let concat = vec!["[ 1 ]"; 10_000].join(" ++ ");
    check(&concat).expect("a long concatenation");
    let bindings: String = (0..DEEP).map(|n| format!("a{n} = {n}; ")).collect();
    check(&format!("let s = {{ {bindings}}}; in s.a99999")).expect("a large set");
    check(&format!("let {bindings} in a99999")).expect("a large let");
}

#[test]
fn long_application_chains_fail_cleanly() {
    let chain = format!("(x: x) {}", "(x: x) ".repeat(DEEP));
    assert_fails_with(&chain, "nested too deeply");
}

#[test]
fn huge_strings_evaluate_or_fail_cleanly() {
    let huge = format!("\"{}\"", "x".repeat(16 << 20));
    check(&huge).expect("a 16 MiB string literal");
    let doubling =
        "let double = n: s: if n == 0 then s else double (n - 1) (s + s); in double 40 \"x\"";
    assert_fails_with(doubling, "string too long");
    let huge_indented = format!("''\n  {}\n''", "y".repeat(1 << 20));
    check(&huge_indented).expect("a 1 MiB indented string");
}

#[test]
fn runaway_evaluation_stops_within_the_budget() {
    assert_fails_with("let f = x: f x; in f 1", "nested too deeply");
    assert_fails_with("let x = x; in x", "infinite recursion");
    assert_fails_with(
        "builtins.\"foldl'\" (acc: x: acc + 1) 0 (genList (x: x) 100000000)",
        "budget",
    );
    assert_fails_with(
        "let grow = l: if length l < 0 then l else grow (l ++ l); in grow [ 1 ]",
        "budget",
    );
    assert_fails_with("let x = [ x ]; in x", "nested more than");
}

#[test]
fn tight_limits_are_respected() {
    let options = EvalOptions {
        max_steps: 1_000,
        max_depth: 50,
        ..EvalOptions::default()
    };
    let mut sources = SourceMap::new();
    let deep = "let f = n: if n == 0 then 0 else 1 + f (n - 1); in f 100";
    let error = eval_str(Path::new("tight.kiln"), deep, &options, &mut sources).expect_err("depth");
    assert!(error.render(&sources).contains("more than 50 levels"));
    let long = "builtins.length (genList (x: x) 5000)";
    let error = eval_str(Path::new("tight.kiln"), long, &options, &mut sources).expect_err("steps");
    assert!(error.render(&sources).contains("budget of 1000 steps"));
}
