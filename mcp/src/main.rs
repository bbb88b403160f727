//! `repram-mcp`: an MCP server on stdio that gives AI agents REPRAM's four tools against a
//! node's HTTP API (`REPRAM_URL`, default `http://localhost:8080`, as REPRAM's own server).
//!
//! Owns the process: the runtime (tokio, kept out of the node's crate), stdio, the node URL.
//! Logs go to stderr: stdout carries the protocol.

mod node_api;
mod tools;

use rmcp::transport::stdio;
use rmcp::ServiceExt;

const URL_DEFAULT: &str = "http://localhost:8080";

fn usage() -> ! {
    eprintln!(
        "usage: repram-mcp [--url URL] [--token-file FILE]\n\n\
         An MCP server (stdio) with the tools repram_store, repram_retrieve, repram_exists and\n\
         repram_list_keys, against a REPRAM node's HTTP API: --url, else $REPRAM_URL, else\n\
         {URL_DEFAULT}. A node with a client token wants it: --token-file, else $REPRAM_TOKEN."
    );
    std::process::exit(2)
}

/// The node's URL and client token, from the arguments, else the environment.
fn settings() -> (String, Option<String>) {
    let mut args = std::env::args().skip(1);
    let (mut url, mut token_file) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = Some(args.next().unwrap_or_else(|| usage())),
            "--token-file" => token_file = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let url = url
        .or_else(|| std::env::var("REPRAM_URL").ok())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| URL_DEFAULT.to_string());
    let token = match token_file {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_string()),
            Err(error) => {
                eprintln!("repram-mcp: cannot read {path}: {error}");
                std::process::exit(2)
            }
        },
        None => std::env::var("REPRAM_TOKEN").ok(),
    };
    (url, token.filter(|t| !t.is_empty()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (url, token) = settings();
    let server = tools::Repram::new(node_api::NodeApi::new(&url, token.as_deref()));
    let service = match server.serve(stdio()).await {
        Ok(service) => service,
        Err(error) => {
            eprintln!("repram-mcp: the MCP session did not start: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = service.waiting().await {
        eprintln!("repram-mcp: the MCP session ended with an error: {error}");
        std::process::exit(1);
    }
}
