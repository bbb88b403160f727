//! `repram`: the node binary. The store lands first; `repram serve` (the node) comes next.

use std::process::ExitCode;

use repram::StoreLimits;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
repram — ephemeral, encrypted-at-rest key-value node

usage:
  repram limits     print the store's default limits on this machine
  repram --version  print the version
  repram --help     print this help

The node itself (`repram serve`) arrives with the thread-per-core node.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("limits") => {
            let limits = StoreLimits::default();
            if let Err(e) = limits.validate() {
                eprintln!("repram: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "repram {} store defaults: {limits}",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::SUCCESS
        }
        Some("--version" | "-V") => {
            println!("repram {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("repram: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
