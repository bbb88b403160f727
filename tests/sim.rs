//! `repram sim` as a user runs it: deterministic across separate processes.

use std::process::Command;

fn run_sim(seed: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_repram"))
        .args(["sim", "--nodes", "150", "--roots", "2", "--writes", "300"])
        .args(["--write-minutes", "0.5", "--churn", "2", "--seed", seed])
        .output()
        .expect("run repram sim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 report")
}

fn run_hash(report: &str) -> &str {
    report
        .lines()
        .find_map(|l| l.strip_prefix("run hash "))
        .unwrap_or_else(|| panic!("no run hash in {report}"))
}

#[test]
fn the_same_seed_gives_the_same_run_in_two_processes() {
    let first = run_sim("5");
    let second = run_sim("5");
    assert_eq!(run_hash(&first), run_hash(&second));
    // The whole report repeats, except the wall time.
    let strip = |r: &str| {
        r.lines()
            .filter(|l| !l.starts_with("wall time"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&first), strip(&second));
    assert_ne!(run_hash(&first), run_hash(&run_sim("6")));
    assert!(first.contains("write reaches every live node"), "{first}");
}
