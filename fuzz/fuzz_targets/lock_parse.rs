//! `kiln.lock`: any text parses or fails with an error naming the file; a
//! parsed lock round-trips through `to_text`.
#![no_main]

use std::path::Path;

use kiln::offline::lock::Lock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/kiln.lock");
    match Lock::parse(path, text) {
        Ok(lock) => {
            let again = Lock::parse(path, &lock.to_text()).expect("to_text output parses");
            assert_eq!(again, lock);
            let _ = lock.drift(&again);
        }
        Err(error) => assert!(error.to_string().contains("kiln.lock"), "{error}"),
    }
});
