//! Data-driven tests of the typed manifest and the Djinn front end.
//!
//! - `tests/ok/manifest/*.{kiln,yml}`: must load; the canonical JSON is
//!   compared with `NAME.json` beside it, warnings (if any) with
//!   `NAME.warnings`.
//! - `tests/err/manifest/*.{kiln,yml}`: must fail; the rendered diagnostics
//!   are compared with `NAME.err`.
//! - `tests/{ok,err}/manifest/kiln-schema/*.yml`: YAML documents converted
//!   with the *kiln* schema rules (unknown attributes are errors, all job
//!   fields allowed), which exercises the schema without the evaluator.
//! - `tests/corpus/djinn/*.yml`: real Djinn manifests, which must check
//!   cleanly (no errors, no warnings); their JSON is in `NAME.json`.
//!
//! A `.kiln` case may start with `# args: NAME=VALUE ...` for `--arg`.
//! Regenerate expectations with `UPDATE_EXPECT=1 cargo test -p kiln-grammar`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use expect_test::expect_file;
use kiln_grammar::load::{self, LoadOptions};
use kiln_grammar::manifest::{self, Format};
use kiln_grammar::{Severity, SourceMap, djinn};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Case files in `dir` (relative to the crate), sorted.
fn cases(dir: &str, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|error| panic!("{dir}: {error}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.contains(&e))
        })
        .map(|path| Path::new(dir).join(path.file_name().unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {dir}");
    files
}

fn expected(case: &Path, extension: &str) -> PathBuf {
    root().join(case.with_extension(extension))
}

fn options_for(case: &Path) -> LoadOptions {
    let text = std::fs::read(root().join(case)).unwrap();
    let text = String::from_utf8_lossy(&text);
    let mut args = BTreeMap::new();
    if let Some(rest) = text.lines().next().and_then(|l| l.strip_prefix("# args:")) {
        for pair in rest.split_whitespace() {
            let (name, value) = pair.split_once('=').expect("NAME=VALUE in # args:");
            args.insert(name.to_string(), value.to_string());
        }
    }
    LoadOptions { args }
}

/// Loads a case as `kiln check` would, from the crate directory so file
/// names in diagnostics are `tests/...`.
fn load_case(case: &Path) -> load::Loaded {
    std::env::set_current_dir(root()).unwrap();
    load::load(case, &options_for(case))
}

fn check_warnings(case: &Path, rendered: String) {
    let path = expected(case, "warnings");
    if rendered.is_empty() {
        assert!(
            !path.exists(),
            "{}: stale {}",
            case.display(),
            path.display()
        );
    } else {
        expect_file![path].assert_eq(&rendered);
    }
}

#[test]
fn ok_manifests() {
    for case in cases("tests/ok/manifest", &["kiln", "yml", "yaml"]) {
        let loaded = load_case(&case);
        let manifest = match &loaded.result {
            Ok(manifest) => manifest,
            Err(_) => panic!("{}:\n{}", case.display(), loaded.render_diagnostics()),
        };
        expect_file![expected(&case, "json")].assert_eq(&manifest.to_canonical_json());
        check_warnings(&case, loaded.render_diagnostics());
    }
}

#[test]
fn err_manifests() {
    for case in cases("tests/err/manifest", &["kiln", "yml", "yaml"]) {
        let loaded = load_case(&case);
        assert!(
            loaded.result.is_err(),
            "{} loaded but should fail",
            case.display()
        );
        expect_file![expected(&case, "err")].assert_eq(&loaded.render_diagnostics());
    }
}

/// YAML converted with the kiln schema rules.
fn convert_kiln_schema(case: &Path) -> (Result<manifest::Manifest, ()>, String) {
    let bytes = std::fs::read(root().join(case)).unwrap();
    let mut sources = SourceMap::new();
    let node = match djinn::parse_bytes(case, &bytes, &mut sources) {
        Ok(node) => node,
        Err(diagnostic) => return (Err(()), diagnostic.render(&sources)),
    };
    let converted = manifest::from_node(&node, Format::Kiln, &root().join(case).with_file_name(""));
    let rendered: String = converted
        .diagnostics
        .iter()
        .map(|diagnostic| diagnostic.render(&sources))
        .collect();
    (converted.manifest.ok_or(()), rendered)
}

#[test]
fn ok_kiln_schema() {
    for case in cases("tests/ok/manifest/kiln-schema", &["yml"]) {
        let (manifest, rendered) = convert_kiln_schema(&case);
        let manifest = manifest.unwrap_or_else(|()| panic!("{}:\n{rendered}", case.display()));
        expect_file![expected(&case, "json")].assert_eq(&manifest.to_canonical_json());
        check_warnings(&case, rendered);
    }
}

#[test]
fn err_kiln_schema() {
    for case in cases("tests/err/manifest/kiln-schema", &["yml"]) {
        let (manifest, rendered) = convert_kiln_schema(&case);
        assert!(
            manifest.is_err(),
            "{} converted but should fail",
            case.display()
        );
        expect_file![expected(&case, "err")].assert_eq(&rendered);
    }
}

#[test]
fn djinn_corpus() {
    for case in cases("tests/corpus/djinn", &["yml", "yaml"]) {
        let loaded = load_case(&case);
        let rendered = loaded.render_diagnostics();
        let manifest = match &loaded.result {
            Ok(manifest) => manifest,
            Err(_) => panic!("{}:\n{rendered}", case.display()),
        };
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| w.severity == Severity::Warning)
                && rendered.is_empty(),
            "{} has warnings:\n{rendered}",
            case.display()
        );
        assert!(manifest.sequential && manifest.format == Format::Djinn);
        expect_file![expected(&case, "json")].assert_eq(&manifest.to_canonical_json());
    }
}

/// The script is exactly Djinn's.
#[test]
fn job_script() {
    let case = Path::new("tests/corpus/djinn/djinn-ci_docs_.djinn.yml");
    let loaded = load_case(case);
    let manifest = loaded.result.unwrap();
    let job = manifest.job("lint.1").unwrap();
    assert_eq!(
        job.script(),
        "#!/bin/sh\nexec 2>&1\nset -ex\ncd docs\nmake lint\n"
    );
}

/// Equivalent manifests print the same bytes.
#[test]
fn equivalent_manifests_print_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yml");
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &a,
        "stages: [build]\ndriver: {type: docker, image: golang}\nenv: [A=1, B=2]\njobs:\n- {stage: build, commands: [make]}\n",
    )
    .unwrap();
    std::fs::write(
        &b,
        "# same build, written differently\njobs:\n  - commands:\n      - make\n    stage: build\nenv:\n  B: \"2\"\n  A: 1\ndriver:\n  image: golang\n  type: docker\n  workspace: /work/\nstages:\n  - build\n",
    )
    .unwrap();
    let json = |path: &Path| {
        load::load(path, &LoadOptions::default())
            .result
            .unwrap()
            .to_canonical_json()
    };
    assert_eq!(json(&a), json(&b));
}
