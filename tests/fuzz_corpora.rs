//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the same harness the
//! fuzzer runs (`repram::fuzzing`), so a decoder regression fails plain `cargo test` without a
//! nightly toolchain. Crashes the fuzzer finds are kept in the corpus, and so replayed here.

use std::path::Path;

type Harness = fn(&[u8]) -> usize;

const TARGETS: [(&str, Harness); 5] = [
    ("client_frame", repram::fuzzing::client_frames),
    ("peer_frame", repram::fuzzing::peer_frame),
    ("resp_command", repram::fuzzing::resp_commands),
    ("http_head", repram::fuzzing::http_heads),
    ("cluster_inputs", repram::fuzzing::cluster_inputs),
];

#[test]
fn every_committed_fuzz_input_runs_through_its_harness_without_a_panic() {
    for (target, harness) in TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let (mut inputs, mut readable) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            if harness(&bytes) >= 1 {
                readable += 1;
            }
            // Prefixes too: a connection sees inputs cut anywhere.
            for cut in [1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                harness(&bytes[..cut.min(bytes.len())]);
            }
            inputs += 1;
        }
        // The seeds are real inputs the decoder reads whole (the rest is what the fuzzer
        // kept: garbage that found new paths).
        assert!(
            readable >= 5,
            "{target}: {readable} of {inputs} inputs in {} read as whole items",
            dir.display()
        );
    }
}
