//! `kiln bundle import`: the air-gap bundle header, then the store bundle,
//! bundle.json and the project restore, into a fresh store and a directory
//! inside the jail. Raw bytes, or a bundle built with the right digests and
//! a top tree `{bundle.json, project}` so the fuzzer reaches the restore.
//! Nothing may be written outside the target directory.
#![no_main]

use std::sync::OnceLock;

use kiln_fuzz::{
    BundleSpec, Jail, NodeSpec, PathBytes, Piece, Record, TreeEntrySpec, build_bundle,
};
use kiln_store::Store;
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Built {
        name: String,
        bundle: BundleSpec,
        /// bundle.json: arbitrary bytes, or a plausible index.
        index: Option<Vec<u8>>,
        results: Vec<(u8, u8)>,
        header_lie: bool,
    },
}

fn jail() -> &'static Jail {
    static JAIL: OnceLock<Jail> = OnceLock::new();
    JAIL.get_or_init(|| Jail::new("offline_bundle"))
}

fn name(text: &str) -> PathBytes {
    PathBytes(vec![Piece::Raw(text.as_bytes().to_vec())])
}

fuzz_target!(|input: Input| {
    let jail = jail();
    jail.clear_scratch();
    let bytes = match input {
        Input::Raw(bytes) => bytes,
        Input::Built {
            name: bundle_name,
            mut bundle,
            index,
            results,
            header_lie,
        } => {
            let index = index.unwrap_or_else(|| {
                let digest = |n: u8| format!("blake3:{}", blake3::hash(&[n]).to_hex());
                serde_json::to_vec(&serde_json::json!({
                    "format": 1,
                    "name": bundle_name,
                    "manifest": "kiln.kiln",
                    "build": null,
                    "lock": null,
                    "job_results": results.iter().map(|(k, o)| serde_json::json!({
                        "job": "j", "key": digest(*k), "output_layer": digest(*o),
                        "log": null, "artifacts": [],
                    })).collect::<Vec<_>>(),
                }))
                .expect("json")
            });
            // The project is the last tree the fuzzer built (if any); then
            // bundle.json and the top tree.
            let trees = bundle
                .records
                .iter()
                .filter(|r| matches!(r, Record::Tree { .. } | Record::RawTree(_)))
                .count();
            let at = bundle.records.len().min(60);
            bundle.records.truncate(at);
            bundle.records.push(Record::Chunk {
                data: index,
                size_lie: None,
            });
            let chunks = bundle
                .records
                .iter()
                .filter(|r| matches!(r, Record::Chunk { .. }))
                .count();
            bundle.records.push(Record::Blob {
                chunks: vec![(chunks - 1) as u8],
                size_lie: None,
            });
            let blobs = bundle
                .records
                .iter()
                .filter(|r| matches!(r, Record::Blob { .. }))
                .count();
            let mut entries = vec![TreeEntrySpec {
                name: name("bundle.json"),
                node: NodeSpec::File {
                    blob: (blobs - 1) as u8,
                    executable: false,
                    size_lie: None,
                },
            }];
            if trees > 0 {
                entries.push(TreeEntrySpec {
                    name: name("project"),
                    node: NodeSpec::Dir {
                        tree: (trees - 1) as u8,
                        size_lie: None,
                    },
                });
            }
            bundle.records.push(Record::Tree {
                opaque: false,
                entries,
            });
            let (store_bundle, top) = build_bundle(&bundle);
            let top = top.unwrap_or([0; 32]);
            let header = serde_json::to_vec(&serde_json::json!({
                "format": if header_lie { 2 } else { 1 },
                "kiln_version": "0.1.0",
                "name": bundle_name,
                "tree": format!("blake3:{}", blake3::Hash::from_bytes(top).to_hex()),
            }))
            .expect("json");
            let mut out = b"KILNAIRB".to_vec();
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(blake3::hash(&header).as_bytes());
            out.extend_from_slice(&store_bundle);
            out
        }
    };
    let work = jail.scratch.join("work");
    std::fs::create_dir(&work).expect("work dir");
    let path = work.join("fuzz.kilnbundle");
    std::fs::write(&path, &bytes).expect("write the bundle");
    let mut store = Store::open(work.join("store")).expect("open a fresh store");
    let target = work.join("project");
    let _ = kiln::offline::bundle::import(&mut store, &path, Some(&target), &Default::default());
    jail.check("bundle import");
});
