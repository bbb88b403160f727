//! The MCP tools, with the names, arguments and answers of REPRAM's own MCP server, so an
//! agent set up for REPRAM works unchanged: `repram_store`, `repram_retrieve`,
//! `repram_exists`, `repram_list_keys`. Answers are pretty JSON in one text block, as REPRAM's.
//!
//! Owns the tools' schemas and answer shapes; it never builds a URL (see `node_api`).

use std::time::{Duration, SystemTime};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Content, Implementation, ServerCapabilities, ServerInfo};
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use crate::node_api::{ApiError, NodeApi};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StoreArgs {
    /// The data to store. Can be any string: plain text, JSON, base64-encoded binary, etc.
    pub data: String,
    /// Time-to-live in seconds. The data is deleted automatically after this long. The node
    /// clamps it to its range; without it the node's default applies (3600 s unless set).
    pub ttl_seconds: Option<f64>,
    /// Optional custom key. If omitted, a UUID v4 key is generated. Use a custom key when
    /// you need a predictable rendezvous point with another agent.
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KeyArgs {
    /// The key, as returned by repram_store or shared by another agent.
    pub key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Optional prefix filter: only keys starting with it are listed (e.g. 'project-x/').
    pub prefix: Option<String>,
}

/// The server: one node's API and the tool router.
#[derive(Clone)]
pub struct Repram {
    api: NodeApi,
    tool_router: ToolRouter<Self>,
}

/// Runs a blocking API call off the async runtime.
async fn call<T: Send + 'static>(
    api: &NodeApi,
    f: impl FnOnce(&NodeApi) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || f(&api))
        .await
        .map_err(|e| ApiError(format!("the call did not finish: {e}")))?
}

fn text(value: &serde_json::Value) -> CallToolResult {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    CallToolResult::success(vec![Content::text(text)])
}

fn failed(error: &ApiError) -> CallToolResult {
    CallToolResult::error(vec![Content::text(
        json!({ "error": error.to_string() }).to_string(),
    )])
}

/// RFC 3339 time `seconds` from now (the far end of time when that is past what a clock
/// can say).
fn expires_at(seconds: u64) -> String {
    match SystemTime::now().checked_add(Duration::from_secs(seconds)) {
        Some(at) if at < SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799) => {
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "9999-12-31T23:59:59Z".to_string(),
    }
}

/// A usable TTL from an agent's number: positive and finite, rounded up to whole seconds;
/// anything else leaves the choice to the node's default.
fn whole_seconds(ttl: Option<f64>) -> Option<u64> {
    ttl.filter(|t| t.is_finite() && *t > 0.0)
        .map(|t| t.ceil().min(u64::MAX as f64) as u64)
}

#[tool_router]
impl Repram {
    pub fn new(api: NodeApi) -> Repram {
        Repram {
            api,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Store ephemeral data in the REPRAM network. Data is replicated across nodes and automatically expires after the specified TTL. Use this for temporary coordination data, handoff payloads, scratchpad state, or any data that should not persist.\n\nA unique key is generated automatically (UUID v4) unless you give one. You receive the key in the response: save it or share it with other agents who need to retrieve this data.\n\nAll data on REPRAM is ephemeral. Expired data cannot be recovered. If you need the data to last longer, store it again with a new TTL before it expires."
    )]
    async fn repram_store(
        &self,
        Parameters(args): Parameters<StoreArgs>,
    ) -> Result<CallToolResult, McpError> {
        let key = args
            .key
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let ttl = whole_seconds(args.ttl_seconds);
        let (stored_key, data) = (key.clone(), args.data);
        let stored = call(&self.api, move |api| api.store(&stored_key, &data, ttl)).await;
        Ok(match stored {
            Ok(stored) => {
                let ttl_seconds = stored.ttl_seconds.or(ttl);
                let mut answer = json!({
                    "key": key,
                    "ttl_seconds": ttl_seconds,
                    "expires_at": stored
                        .expires_at
                        .or_else(|| ttl_seconds.map(expires_at)),
                });
                if !stored.confirmed {
                    // REPRAM's 202: stored here, copies on other nodes not yet confirmed.
                    answer["replication"] = json!("pending");
                }
                text(&answer)
            }
            Err(error) => failed(&error),
        })
    }

    #[tool(
        description = "Retrieve ephemeral data from the REPRAM network by key. Returns the stored data along with TTL metadata.\n\nReturns null if the key does not exist or has expired. Expired data is permanently gone; this is by design. Do not treat a null response as an error: it is the normal lifecycle of ephemeral data."
    )]
    async fn repram_retrieve(
        &self,
        Parameters(args): Parameters<KeyArgs>,
    ) -> Result<CallToolResult, McpError> {
        let key = args.key;
        Ok(match call(&self.api, move |api| api.retrieve(&key)).await {
            Ok(Some(found)) => text(&json!({
                "data": found.data,
                "created_at": found.created_at,
                "remaining_ttl_seconds": found.remaining_ttl_seconds,
                "expires_at": expires_at(found.remaining_ttl_seconds),
            })),
            Ok(None) => {
                CallToolResult::success(vec![Content::text("null — key not found or expired")])
            }
            Err(error) => failed(&error),
        })
    }

    #[tool(
        description = "Check whether a key exists in the REPRAM network without retrieving its value. Returns existence status and remaining TTL.\n\nThis is the right tool for the coordination-token pattern: check if a lock key is present, poll for a heartbeat signal, or verify a handoff key is still alive, without transferring the payload."
    )]
    async fn repram_exists(
        &self,
        Parameters(args): Parameters<KeyArgs>,
    ) -> Result<CallToolResult, McpError> {
        let key = args.key;
        Ok(match call(&self.api, move |api| api.exists(&key)).await {
            Ok(Some(remaining)) => text(&json!({
                "exists": true,
                "remaining_ttl_seconds": remaining,
                "expires_at": expires_at(remaining),
            })),
            Ok(None) => text(&json!({ "exists": false })),
            Err(error) => failed(&error),
        })
    }

    #[tool(
        description = "List keys currently stored in the REPRAM network. Optionally filter by prefix.\n\nUse this to discover what data is available, check if a coordination key exists, or enumerate keys in a namespace. Keys of expired data do not appear."
    )]
    async fn repram_list_keys(
        &self,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<CallToolResult, McpError> {
        let prefix = args.prefix;
        Ok(
            match call(&self.api, move |api| api.list_keys(prefix.as_deref())).await {
                Ok(list) => {
                    let mut answer = json!({ "keys": list.keys });
                    if let Some(cursor) = list.next_cursor {
                        // More keys than one answer carries: say where the list stopped.
                        answer["truncated_after"] = json!(cursor);
                    }
                    text(&answer)
                }
                Err(error) => failed(&error),
            },
        )
    }
}

#[tool_handler]
impl ServerHandler for Repram {
    fn get_info(&self) -> ServerInfo {
        ServerInfo {
            server_info: Implementation {
                name: "repram-mcp".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Implementation::from_build_env()
            },
            instructions: Some(
                "REPRAM: an ephemeral key-value network. Everything stored expires after its \
                 TTL and is then gone for good. Use it for dead drops, scratchpads, claim \
                 tokens and heartbeats between agents."
                    .into(),
            ),
            capabilities: ServerCapabilities::builder().enable_tools().build(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::whole_seconds;

    #[test]
    fn an_expiry_past_what_a_clock_can_say_is_the_far_end_of_time() {
        assert_eq!(super::expires_at(u64::MAX), "9999-12-31T23:59:59Z");
        assert!(super::expires_at(60).ends_with('Z'));
    }

    #[test]
    fn ttls_round_up_to_whole_seconds_and_odd_numbers_leave_the_default() {
        assert_eq!(whole_seconds(Some(300.0)), Some(300));
        assert_eq!(whole_seconds(Some(0.2)), Some(1));
        assert_eq!(whole_seconds(Some(0.0)), None);
        assert_eq!(whole_seconds(Some(-5.0)), None);
        assert_eq!(whole_seconds(Some(f64::NAN)), None);
        assert_eq!(whole_seconds(Some(f64::INFINITY)), None);
        assert_eq!(whole_seconds(None), None);
    }
}
