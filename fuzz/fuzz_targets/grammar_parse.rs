//! The kiln language parser alone: any text parses or fails with a located
//! error; never a panic, hang or stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(rendered) = kiln_grammar::syntax::parse_str(std::path::Path::new("fuzz.kiln"), &text)
    {
        assert!(!rendered.contains("panicked"), "{rendered}");
    }
});
