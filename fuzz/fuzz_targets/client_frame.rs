#![no_main]
//! See `repram::fuzzing::client_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    repram::fuzzing::client_frames(data);
});
