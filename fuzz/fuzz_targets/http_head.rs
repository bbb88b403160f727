#![no_main]
//! See `repram::fuzzing::http_heads`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    repram::fuzzing::http_heads(data);
});
