//! Data-driven tests of the kiln language (rust-analyzer style).
//!
//! - `tests/ok/lang/NAME.kiln` evaluates; its JSON is `NAME.json` beside it.
//! - `tests/err/lang/NAME.kiln` fails; its rendered diagnostic is `NAME.txt`.
//!
//! A first line `# args: a=1 b=2` passes `--arg`s. Expected files are
//! checked strictly; regenerate them with `UPDATE_EXPECT=1 cargo test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use expect_test::expect_file;
use kiln_grammar::SourceMap;
use kiln_grammar::eval::{EvalOptions, eval_file};

fn cases(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "kiln"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no test cases in {}", dir.display());
    files
}

/// The path as the test names it (relative to the crate, so diagnostics do
/// not depend on where the checkout is).
fn relative(path: &Path) -> PathBuf {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .expect("test files live in the crate")
        .to_path_buf()
}

fn options_for(path: &Path) -> EvalOptions {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut args = BTreeMap::new();
    if let Some(line) = text.lines().next().and_then(|l| l.strip_prefix("# args:")) {
        for pair in line.split_whitespace() {
            let (name, value) = pair.split_once('=').expect("args are NAME=VALUE");
            args.insert(name.to_string(), value.to_string());
        }
    }
    EvalOptions {
        args,
        ..EvalOptions::default()
    }
}

#[test]
fn ok_cases_evaluate_to_the_expected_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).expect("cd to the crate");
    for case in cases("tests/ok/lang") {
        let mut sources = SourceMap::new();
        let name = relative(&case);
        let actual = match eval_file(&name, &options_for(&case), &mut sources) {
            Ok(evaluated) => {
                let base = case.parent().expect("a directory");
                let json = evaluated.value.to_json(base);
                serde_json::to_string_pretty(&json).expect("JSON") + "\n"
            }
            Err(diagnostic) => panic!(
                "{} failed:\n{}",
                name.display(),
                diagnostic.render(&sources)
            ),
        };
        expect_file![case.with_extension("json")].assert_eq(&actual);
    }
}

#[test]
fn err_cases_fail_with_the_expected_diagnostic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).expect("cd to the crate");
    for case in cases("tests/err/lang") {
        let mut sources = SourceMap::new();
        let name = relative(&case);
        let actual = match eval_file(&name, &options_for(&case), &mut sources) {
            Ok(evaluated) => panic!(
                "{} evaluated but should fail: {}",
                name.display(),
                evaluated.value.to_json(Path::new("."))
            ),
            Err(diagnostic) => diagnostic.render(&sources),
        };
        expect_file![case.with_extension("txt")].assert_eq(&actual);
    }
}

#[test]
fn evaluated_files_list_the_manifest_imports_and_paths() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ok/lang");
    let mut sources = SourceMap::new();
    let evaluated = eval_file(
        &dir.join("import.kiln"),
        &EvalOptions::default(),
        &mut sources,
    )
    .unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    let relative: Vec<String> = evaluated
        .files
        .iter()
        .map(|f| {
            f.strip_prefix(&dir)
                .expect("files are absolute, under the test directory")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        relative,
        // In order of first use: attributes are forced in key order, so
        // `directory` (importing ./lib) comes before `greeting`.
        [
            "import.kiln",
            "lib",
            "lib/default.kiln",
            "lib/helper.kiln",
            "lib/data.kiln",
        ]
    );
    let mut sources = SourceMap::new();
    let evaluated = eval_file(
        &dir.join("builtins_misc.kiln"),
        &EvalOptions::default(),
        &mut sources,
    )
    .unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    assert!(
        evaluated
            .files
            .iter()
            .any(|f| f.ends_with("data/hello.txt"))
    );
    assert!(evaluated.files.iter().any(|f| f.ends_with("data/dir")));
}

#[test]
fn a_missing_manifest_is_an_io_error() {
    let mut sources = SourceMap::new();
    let error = eval_file(
        Path::new("does/not/exist.kiln"),
        &EvalOptions::default(),
        &mut sources,
    )
    .expect_err("missing file");
    assert_eq!(error.phase, kiln_grammar::Phase::Io);
    assert!(error.render(&sources).contains("does/not/exist.kiln"));
}
