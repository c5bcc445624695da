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
    LoadOptions {
        args,
        ..LoadOptions::default()
    }
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

/// No input, however malformed, panics the YAML reader or the schema.
mod properties {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use kiln_grammar::manifest::{self, Format};
    use kiln_grammar::value::{Attr, Data, Node};
    use kiln_grammar::{FileId, SourceMap, Span, djinn};
    use proptest::prelude::*;

    const KEYS: &[&str] = &[
        "driver",
        "type",
        "image",
        "workspace",
        "memory",
        "cpus",
        "pids",
        "kernel",
        "accel",
        "env",
        "sources",
        "objects",
        "stages",
        "allow_failures",
        "timeout",
        "jobs",
        "stage",
        "name",
        "commands",
        "artifacts",
        "needs",
        "inputs",
        "network",
        "caches",
        "key",
        "paths",
        "url",
        "ref",
        "rev",
        "dir",
        "path",
        "src",
        "dst",
        "namespace",
        "<<",
        "x",
    ];
    const STRINGS: &[&str] = &[
        "build",
        "test",
        "docker",
        "qemu",
        "container",
        "host",
        "os",
        "kvm",
        "default",
        "A=1",
        "NOEQ",
        "=x",
        "a => b",
        "../x",
        "/abs",
        "*.o",
        "1h30m",
        "0s",
        "90",
        "",
        " ",
        "=>",
        "https://e.x/r.git main => d",
        "build.1",
        "é",
        "0123456789abcdef0123456789abcdef01234567",
    ];

    fn span() -> Span {
        Span::new(FileId(0), 0, 0)
    }

    fn node(data: Data) -> Node {
        Node { data, span: span() }
    }

    fn arbitrary_node() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            Just(node(Data::Null)),
            any::<bool>().prop_map(|b| node(Data::Bool(b))),
            any::<i64>().prop_map(|i| node(Data::Int(i))),
            (-2i64..5).prop_map(|i| node(Data::Int(i))),
            proptest::sample::select(STRINGS).prop_map(|s| node(Data::Str(s.to_string()))),
            ".{0,12}".prop_map(|s| node(Data::Str(s))),
            proptest::sample::select(&["/m", "/m/lib", "/", "/other/x"][..])
                .prop_map(|p| node(Data::Path(PathBuf::from(p)))),
            Just(node(Data::Function)),
        ];
        leaf.prop_recursive(6, 200, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| node(Data::List(items))),
                proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..8).prop_map(
                    |entries| {
                        let map: BTreeMap<String, Attr> = entries
                            .into_iter()
                            .map(|(key, value)| {
                                (
                                    key.to_string(),
                                    Attr {
                                        name_span: span(),
                                        value,
                                    },
                                )
                            })
                            .collect();
                        node(Data::Attrs(map))
                    }
                ),
            ]
        })
    }

    fn corpus() -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/djinn");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    fn load_yaml(bytes: &[u8]) {
        let mut sources = SourceMap::new();
        if let Ok(node) = djinn::parse_bytes(Path::new("fuzz.yml"), bytes, &mut sources) {
            for format in [Format::Djinn, Format::Kiln] {
                let converted = manifest::from_node(&node, format, Path::new("/m"));
                for diagnostic in &converted.diagnostics {
                    // Rendering must not panic either, and every diagnostic has a span.
                    assert!(diagnostic.span.is_some());
                    diagnostic.render(&sources);
                }
                if let Some(manifest) = converted.manifest {
                    manifest.to_canonical_json();
                }
            }
        } else if let Err(diagnostic) =
            djinn::parse_bytes(Path::new("fuzz.yml"), bytes, &mut sources)
        {
            diagnostic.render(&sources);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            load_yaml(&bytes);
        }

        #[test]
        fn yaml_like_text(text in "([a-z_<>&*!|>:,\\[\\]{}\\-#'\" =./\n]|  |\t){0,200}") {
            load_yaml(text.as_bytes());
        }

        #[test]
        fn mutated_corpus(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8),
        ) {
            let corpus = corpus();
            let mut bytes = corpus[which % corpus.len()].clone();
            for (at, kind, byte) in edits {
                let len = bytes.len();
                match kind {
                    0 => { let i = at.index(len + 1); bytes.insert(i, byte); }
                    1 if len > 0 => { let i = at.index(len); bytes.remove(i); }
                    _ if len > 0 => { let i = at.index(len); bytes[i] = byte; }
                    _ => {}
                }
            }
            load_yaml(&bytes);
        }

        #[test]
        fn arbitrary_nodes(root in arbitrary_node()) {
            for format in [Format::Djinn, Format::Kiln] {
                let converted = manifest::from_node(&root, format, Path::new("/m"));
                prop_assert!(converted.diagnostics.iter().all(|d| d.span.is_some()));
                prop_assert!(converted.manifest.is_some() || converted.diagnostics.iter().any(|d| d.severity == kiln_grammar::Severity::Error));
                if let Some(manifest) = converted.manifest {
                    manifest.to_canonical_json();
                }
            }
        }
    }

    /// The whole kiln pipeline (parse, evaluate, convert) on mutations of
    /// the spec example.
    fn load_kiln(text: &str) {
        let mut sources = SourceMap::new();
        let options = kiln_grammar::eval::EvalOptions {
            max_steps: 100_000,
            ..Default::default()
        };
        let name = Path::new("/m/build.kiln");
        match kiln_grammar::eval::eval_str(name, text, &options, &mut sources) {
            Ok(evaluated) => {
                let converted =
                    manifest::from_node(&evaluated.value, Format::Kiln, Path::new("/m"));
                for diagnostic in &converted.diagnostics {
                    assert!(diagnostic.span.is_some());
                    diagnostic.render(&sources);
                }
            }
            Err(diagnostic) => {
                diagnostic.render(&sources);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn mutated_kiln_example(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, proptest::sample::select(&b"{}[]();=:.\"$'#/ a1?@,-+"[..])), 1..6),
        ) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ok/manifest/spec-example.kiln");
            let mut bytes = std::fs::read(path).unwrap();
            for (at, kind, byte) in edits {
                let len = bytes.len();
                match kind {
                    0 => { let i = at.index(len + 1); bytes.insert(i, byte); }
                    1 if len > 0 => { let i = at.index(len); bytes.remove(i); }
                    _ if len > 0 => { let i = at.index(len); bytes[i] = byte; }
                    _ => {}
                }
            }
            load_kiln(&String::from_utf8_lossy(&bytes));
        }
    }

    /// Deep nesting and huge documents end in an error, not a crash.
    #[test]
    fn deep_and_huge_yaml() {
        for depth in [100, 300, 10_000] {
            load_yaml(format!("{}{}", "[".repeat(depth), "]".repeat(depth)).as_bytes());
            load_yaml("- ".repeat(depth).as_bytes());
            let mut nested = String::new();
            for level in 0..depth.min(2000) {
                nested.push_str(&" ".repeat(level));
                nested.push_str("a:\n");
            }
            load_yaml(nested.as_bytes());
        }
        let long = format!("stages: [\"{}\"]\n", "x".repeat(2 << 20));
        load_yaml(long.as_bytes());
    }
}
