//! The Djinn YAML front end: bytes → `Node` → typed `Manifest`, every
//! diagnostic rendered.
#![no_main]

use std::path::Path;

use kiln_grammar::SourceMap;
use kiln_grammar::manifest::{Format, from_node};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sources = SourceMap::new();
    let path = Path::new("/fuzz/.djinn.yml");
    match kiln_grammar::djinn::parse_bytes(path, data, &mut sources) {
        Ok(node) => {
            let converted = from_node(&node, Format::Djinn, Path::new("/fuzz"));
            for diagnostic in &converted.diagnostics {
                let _ = diagnostic.render(&sources);
            }
            if let Some(manifest) = converted.manifest {
                let _ = manifest.to_canonical_json();
            }
        }
        Err(diagnostic) => {
            let _ = diagnostic.render(&sources);
        }
    }
});
