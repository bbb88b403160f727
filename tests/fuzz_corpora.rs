//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the same harness the
//! fuzzer runs (`repram::fuzzing`), so a decoder regression fails plain `cargo test` without a
//! nightly toolchain. Crashes the fuzzer finds are kept in the corpus, and so replayed here.
//! Then a short, seeded burst of mutations of each corpus (flips, cuts, inserts, splices, the
//! moves a fuzzer makes), so CI fuzzes every target briefly on every change.

use std::path::Path;

type Harness = fn(&[u8]) -> usize;

const TARGETS: [(&str, Harness); 6] = [
    ("client_frame", repram::fuzzing::client_frames),
    ("peer_frame", repram::fuzzing::peer_frame),
    ("resp_command", repram::fuzzing::resp_commands),
    ("http_head", repram::fuzzing::http_heads),
    ("cluster_inputs", repram::fuzzing::cluster_inputs),
    ("store_ops", repram::fuzzing::store_ops),
];

#[test]
fn every_committed_fuzz_input_runs_through_its_harness_without_a_panic() {
    for (target, harness) in TARGETS {
        let dir = corpus_dir(target);
        let (mut inputs, mut readable) = (0, 0);
        for bytes in corpus(target) {
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

fn corpus_dir(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every input of `target`'s corpus, in a fixed order.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("corpus file"))
        .collect()
}

/// xorshift64*: a fixed sequence, so a failure here repeats exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n.max(1)
    }
}

/// Mutated inputs per target (a few seconds in all on this machine).
const MUTATIONS_PER_TARGET: usize = 50_000;

#[test]
fn every_harness_survives_a_seeded_burst_of_mutations_of_its_corpus() {
    let mut rng = Rng(0x5eed_f00d_cafe_d00d);
    for (target, harness) in TARGETS {
        let inputs = corpus(target);
        for round in 0..MUTATIONS_PER_TARGET {
            let mut bytes = inputs[rng.below(inputs.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len() + 1);
                match rng.below(6) {
                    0 if !bytes.is_empty() => {
                        let i = at.min(bytes.len() - 1);
                        bytes[i] ^= 1 << rng.below(8);
                    }
                    1 if !bytes.is_empty() => {
                        let i = at.min(bytes.len() - 1);
                        bytes[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
                    }
                    2 => bytes.truncate(at),
                    3 => bytes.insert(at, rng.below(256) as u8),
                    4 if at < bytes.len() => {
                        let end = (at + 1 + rng.below(16)).min(bytes.len());
                        bytes.drain(at..end);
                    }
                    _ => {
                        // Splice: the start of this input, the end of another.
                        let other = &inputs[rng.below(inputs.len())];
                        let from = rng.below(other.len() + 1);
                        bytes.truncate(at);
                        bytes.extend_from_slice(&other[from..]);
                    }
                }
            }
            let caught = std::panic::catch_unwind(|| harness(&bytes));
            assert!(
                caught.is_ok(),
                "{target}: mutation {round} panicked; input: {bytes:?}"
            );
        }
    }
}
