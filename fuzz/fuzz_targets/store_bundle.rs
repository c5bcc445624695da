//! `Store::import` of a store bundle into a fresh temporary store: raw bytes,
//! or a bundle built record by record with the right digests (so checksums
//! do not stop the fuzzer). After an import the store passes `fsck`; after a
//! refused one it holds no root and still passes `fsck`.
#![no_main]

use kiln_fuzz::{BundleSpec, build_bundle};
use kiln_store::{FsckOptions, Store};
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Built(BundleSpec),
}

fuzz_target!(|input: Input| {
    let bytes = match &input {
        Input::Raw(bytes) => bytes.clone(),
        Input::Built(spec) => build_bundle(spec).0,
    };
    // On tmpfs: the store syncs every import, which costs a second on a
    // busy disk.
    let dir = tempfile::tempdir_in("/dev/shm").expect("temp dir");
    let mut store = Store::open(dir.path().join("store")).expect("open a fresh store");
    let result = store.import(&mut bytes.as_slice());
    if let Err(error) = &result {
        assert!(!error.to_string().is_empty());
        let roots = store.list_roots(None).expect("list roots");
        assert!(
            roots.is_empty(),
            "a refused import left roots: {roots:?} ({error})"
        );
    }
    let report = store
        .fsck(&FsckOptions {
            repair: false,
            progress: None,
        })
        .expect("fsck runs");
    assert!(report.is_clean(), "after import {result:?}: {report:?}");
});
