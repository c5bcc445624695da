//! What a manifest can read (design §10): files under its project root or
//! an `--allow-path`, never quoted unless they are manifests; and what its
//! evaluation may allocate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_grammar::load::{LoadOptions, Loaded, load};

/// A project directory (`<tmp>/project`) next to a directory it may not
/// read (`<tmp>/outside`), canonical.
struct Layout {
    _dir: tempfile::TempDir,
    project: PathBuf,
    outside: PathBuf,
}

fn layout() -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let project = base.join("project");
    let outside = base.join("outside");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    Layout {
        _dir: dir,
        project,
        outside,
    }
}

fn load_text(manifest: &Path, text: &str, allow: &[PathBuf]) -> (Loaded, String) {
    std::fs::write(manifest, text).unwrap();
    let options = LoadOptions {
        allow_paths: allow.to_vec(),
        ..LoadOptions::default()
    };
    let loaded = load(manifest, &options);
    let rendered = loaded.render_diagnostics();
    (loaded, rendered)
}

const SECRET: &str = "root:$6$very-secret-hash:19000:0:99999:7:::\n";

#[test]
fn import_outside_the_project_is_refused_before_reading_and_allow_path_widens_it() {
    let layout = layout();
    let secret = layout.outside.join("shadow");
    std::fs::write(&secret, SECRET).unwrap();
    let manifest = layout.project.join("build.kiln");
    let text = "import ../outside/shadow\n";
    let (loaded, rendered) = load_text(&manifest, text, &[]);
    assert!(loaded.result.is_err());
    assert!(rendered.contains("build.kiln:1:8"), "{rendered}");
    assert!(
        rendered.contains(&secret.display().to_string()),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!(
            "outside the project root `{}`",
            layout.project.display()
        )),
        "{rendered}"
    );
    assert!(rendered.contains("--allow-path"), "{rendered}");
    assert!(!rendered.contains("very-secret"), "{rendered}");
    // Not read at all: the file is not among the sources.
    assert!(loaded.sources.files().all(|(_, file)| file.path != secret));

    // Control: allowed, the file is read (and, not being a manifest that
    // parses, named without being quoted).
    let (loaded, rendered) = load_text(&manifest, text, std::slice::from_ref(&layout.outside));
    assert!(loaded.result.is_err());
    assert!(rendered.contains("it is not a kiln manifest"), "{rendered}");
    assert!(!rendered.contains("very-secret"), "{rendered}");
    assert!(!rendered.contains("root:"), "{rendered}");
}

#[test]
fn a_symlink_out_of_the_project_is_resolved_and_refused() {
    let layout = layout();
    std::fs::write(layout.outside.join("lib.kiln"), "{ x = 1; }\n").unwrap();
    std::os::unix::fs::symlink(&layout.outside, layout.project.join("link")).unwrap();
    let manifest = layout.project.join("build.kiln");
    let (_, rendered) = load_text(&manifest, "(import ./link/lib.kiln).x\n", &[]);
    assert!(rendered.contains("resolved to"), "{rendered}");
    assert!(rendered.contains("outside the project root"), "{rendered}");
    // Control: the same import through the link works once allowed.
    let (loaded, rendered) = load_text(
        &manifest,
        "(import ./link/lib.kiln).x\n",
        std::slice::from_ref(&layout.outside),
    );
    // A number is not a manifest: it gets that far, past the import.
    assert!(!rendered.contains("outside"), "{rendered}");
    assert!(loaded.result.is_err());
}

#[test]
fn hash_file_and_path_sources_outside_are_refused_with_a_location() {
    let layout = layout();
    std::fs::write(layout.outside.join("data"), "x").unwrap();
    let manifest = layout.project.join("build.kiln");
    let (_, rendered) = load_text(
        &manifest,
        "{\n  v = builtins.hashFile (./. + \"/../outside/data\");\n}\n",
        &[],
    );
    assert!(rendered.contains("build.kiln:2:7"), "{rendered}");
    assert!(rendered.contains("cannot hash"), "{rendered}");
    let (_, rendered) = load_text(&manifest, "{\n  sources = [ ../outside ];\n}\n", &[]);
    assert!(rendered.contains("build.kiln:2:15"), "{rendered}");
    assert!(rendered.contains("cannot use the path"), "{rendered}");
}

#[test]
fn the_git_root_is_the_project_root() {
    let layout = layout();
    std::fs::create_dir_all(layout.project.join(".git")).unwrap();
    std::fs::create_dir_all(layout.project.join("ci")).unwrap();
    std::fs::write(layout.project.join("common.kiln"), "{ env.A = \"1\"; }\n").unwrap();
    let manifest = layout.project.join("ci/build.kiln");
    let (loaded, rendered) = load_text(
        &manifest,
        "(import ../common.kiln) // { driver = { type = \"host\"; }; stages = [ \"s\" ]; jobs.a = { stage = \"s\"; commands = [ \"true\" ]; }; }\n",
        &[],
    );
    assert!(loaded.result.is_ok(), "{rendered}");
    let manifest = loaded.result.unwrap();
    assert_eq!(
        manifest.roots.roots(),
        std::slice::from_ref(&layout.project)
    );
}

#[test]
fn a_manifest_that_does_not_parse_is_quoted_a_non_manifest_is_not() {
    let layout = layout();
    std::fs::write(layout.project.join("notes.txt"), SECRET).unwrap();
    std::fs::write(layout.project.join("broken.kiln"), SECRET).unwrap();
    let manifest = layout.project.join("build.kiln");
    let (_, rendered) = load_text(&manifest, "import ./notes.txt\n", &[]);
    assert!(rendered.contains("notes.txt"), "{rendered}");
    assert!(rendered.contains("line 1, column"), "{rendered}");
    assert!(!rendered.contains("root"), "{rendered}");
    // Control: the same text in a `.kiln` file is a manifest, quoted.
    let (_, rendered) = load_text(&manifest, "import ./broken.kiln\n", &[]);
    assert!(rendered.contains("very-secret"), "{rendered}");
    // Not valid UTF-8 either.
    std::fs::write(layout.project.join("blob.bin"), b"root:\xff\xfe secret").unwrap();
    let (_, rendered) = load_text(&manifest, "import ./blob.bin\n", &[]);
    assert!(rendered.contains("blob.bin"), "{rendered}");
    assert!(!rendered.contains("root"), "{rendered}");
}

#[test]
fn an_amplified_string_fails_fast_with_the_located_memory_budget_error() {
    let layout = layout();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/err/lang/memory_budget.kiln"),
    )
    .unwrap();
    assert!(text.len() < 300);
    let manifest = layout.project.join("build.kiln");
    let started = Instant::now();
    let (loaded, rendered) = load_text(&manifest, &text, &[]);
    assert!(loaded.result.is_err());
    assert!(
        rendered
            .contains("build.kiln:2:12: error: evaluation exceeded its memory budget of 1024 MiB"),
        "{rendered}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
