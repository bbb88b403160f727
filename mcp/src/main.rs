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
        "usage: repram-mcp [--url URL]\n\n\
         An MCP server (stdio) with the tools repram_store, repram_retrieve, repram_exists and\n\
         repram_list_keys, against a REPRAM node's HTTP API: --url, else $REPRAM_URL, else\n\
         {URL_DEFAULT}."
    );
    std::process::exit(2)
}

fn node_url() -> String {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ if arg.starts_with("--url=") => url = Some(arg["--url=".len()..].to_string()),
            _ => usage(),
        }
    }
    url.or_else(|| std::env::var("REPRAM_URL").ok())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| URL_DEFAULT.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = node_url();
    let server = tools::Repram::new(node_api::NodeApi::new(&url));
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
