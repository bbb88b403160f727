#![no_main]
//! See `repram::fuzzing::resp_commands`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    repram::fuzzing::resp_commands(data);
});
