//! The store's tree decoder: strict, so whatever it accepts re-encodes to the
//! same bytes (one encoding per tree, hence one digest).
#![no_main]

use kiln_store::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = Tree::decode(data) {
        assert_eq!(tree.encode(), data, "a decoded tree re-encodes differently");
        let _ = tree.size();
        let _ = tree.digest();
    }
});
