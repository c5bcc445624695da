//! A `.kiln` manifest end to end: parse, evaluate (with small step and depth
//! budgets so one input stays fast) and convert to the typed `Manifest`;
//! every diagnostic is rendered. Path literals and imports resolve in an
//! empty temporary directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kiln_grammar::SourceMap;
use kiln_grammar::eval::{EvalOptions, eval_str};
use kiln_grammar::manifest::{Format, from_node};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir").keep())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = EvalOptions {
        max_steps: 200_000,
        max_depth: 200,
        ..EvalOptions::default()
    };
    let mut sources = SourceMap::new();
    let path = dir().join("fuzz.kiln");
    match eval_str(&path, text, &options, &mut sources) {
        Ok(evaluated) => {
            let converted = from_node(&evaluated.value, Format::Kiln, dir());
            for diagnostic in &converted.diagnostics {
                let _ = diagnostic.render(&sources);
            }
            if let Some(manifest) = converted.manifest {
                let _ = manifest.to_canonical_json();
            }
        }
        Err(diagnostic) => {
            let rendered = diagnostic.render(&sources);
            assert!(!rendered.contains("internal error"), "{rendered}");
        }
    }
});
