#![no_main]
//! See `repram::fuzzing::cluster_inputs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    repram::fuzzing::cluster_inputs(data);
});
