#![no_main]
//! See `repram::fuzzing::peer_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    repram::fuzzing::peer_frame(data);
});
