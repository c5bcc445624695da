//! `kiln image import` of a tar, tar.gz, tar.zst or OCI archive (raw bytes,
//! or tar / OCI archives built entry by entry with the right digests),
//! unpacked in the jail's scratch area; then the image's config is read
//! back and its tree restored in the scratch area. Nothing may be written
//! outside the scratch area, and the unpacker's scratch directory must be
//! gone afterwards.
#![no_main]

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use kiln::image::{self, ImageRef, ImportOptions};
use kiln_fuzz::{Jail, OciSpec, TarEntry, build_oci, build_tar};
use kiln_store::{RestoreOptions, Store};
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(arbitrary::Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    Tar(Vec<TarEntry>),
    Oci(OciSpec),
}

#[derive(arbitrary::Arbitrary, Debug)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    compression: Compression,
    /// Last, so a seed is 8 zero bytes then the archive (`Raw`).
    body: Body,
}

struct State {
    jail: Jail,
    store: Store,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let jail = Jail::new("image_unpack");
        let store = Store::open(&jail.store).expect("open the store");
        Mutex::new(State { jail, store })
    })
}

fuzz_target!(|input: Input| {
    let mut state = state().lock().unwrap_or_else(|e| e.into_inner());
    let State { jail, store } = &mut *state;
    jail.clear_scratch();
    let tar = match &input.body {
        Body::Raw(bytes) => bytes.clone(),
        Body::Tar(entries) => build_tar(entries),
        Body::Oci(spec) => build_oci(spec),
    };
    let bytes = match input.compression {
        Compression::None => tar,
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&tar).expect("gzip");
            encoder.finish().expect("gzip")
        }
        Compression::Zstd => zstd::encode_all(tar.as_slice(), 1).expect("zstd"),
    };
    let archive = jail.scratch.join("image.tar");
    std::fs::write(&archive, &bytes).expect("write the archive");
    let unpack = jail.scratch.join("unpack");
    std::fs::create_dir(&unpack).expect("unpack dir");
    let options = ImportOptions {
        progress: None,
        scratch_dir: Some(&unpack),
    };
    let result = image::import(store, "fuzz/image", &archive, &options);
    jail.check("image import");
    let left: Vec<_> = std::fs::read_dir(&unpack)
        .expect("unpack dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.is_empty(),
        "the import left {left:?} behind ({result:?})"
    );
    if let Ok(report) = result {
        let image = ImageRef::Tree {
            name: report.name.clone(),
            digest: report.digest,
        };
        let _ = image::image_config(store, &image).expect("the stored config reads back");
        store
            .restore(
                &report.digest,
                &jail.scratch.join("restored"),
                &RestoreOptions::default(),
            )
            .expect("an imported image restores");
        jail.check("image restore");
    }
});
