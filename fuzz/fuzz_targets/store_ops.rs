#![no_main]
//! See `repram::fuzzing::store_ops`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    repram::fuzzing::store_ops(data);
});
