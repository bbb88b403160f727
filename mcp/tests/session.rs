//! A real MCP client session (rmcp's client, over the stdio of the `repram-mcp` process)
//! against a REPRAM node started in this process: the four tools, their answers as REPRAM's
//! MCP server gives them, expiry, and a node that is gone.

use std::time::Duration;

use repram::config::ServeArgs;
use rmcp::model::{CallToolRequestParam, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

type Session = RunningService<RoleClient, ()>;

async fn session(url: &str) -> Session {
    session_with(url, None).await
}

async fn session_with(url: &str, token: Option<&str>) -> Session {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_repram-mcp"));
    command.env("REPRAM_URL", url).env_remove("REPRAM_TOKEN");
    if let Some(token) = token {
        command.env("REPRAM_TOKEN", token);
    }
    let transport = TokioChildProcess::new(command).expect("spawn repram-mcp");
    ().serve(transport).await.expect("MCP session")
}

async fn call(session: &Session, tool: &str, arguments: Value) -> CallToolResult {
    let arguments = arguments.as_object().cloned();
    tokio::time::timeout(
        Duration::from_secs(20),
        session.call_tool(CallToolRequestParam {
            name: tool.to_string().into(),
            arguments,
        }),
    )
    .await
    .expect("the tool answers in time")
    .expect("tool call")
}

fn text_of(result: &CallToolResult) -> String {
    assert_eq!(result.content.len(), 1, "{result:?}");
    result.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .expect("a text answer")
}

fn json_of(result: &CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "{result:?}");
    serde_json::from_str(&text_of(result)).expect("a JSON answer")
}

fn start_node() -> repram::node::RunningNode {
    start_node_with(None)
}

fn start_node_with(token_file: Option<std::path::PathBuf>) -> repram::node::RunningNode {
    let config = ServeArgs {
        auth_token_file: token_file,
        listen: Some("127.0.0.1:0".into()),
        shards: Some(2),
        memory_budget: Some("64MiB".into()),
        resp_listen: Some("off".into()),
        http_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    }
    .resolve()
    .expect("node config");
    repram::node::start(config).expect("start node")
}

#[tokio::test(flavor = "current_thread")]
async fn an_agent_stores_retrieves_checks_and_lists_through_the_four_tools() {
    let node = start_node();
    let url = format!("http://{}", node.http_addr.expect("http on"));
    let session = session(&url).await;

    let tools = session.list_tools(Default::default()).await.expect("tools");
    let mut names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "repram_exists",
            "repram_list_keys",
            "repram_retrieve",
            "repram_store"
        ]
    );
    let store = tools
        .tools
        .iter()
        .find(|t| t.name == "repram_store")
        .expect("store tool");
    let schema = Value::Object((*store.input_schema).clone());
    assert_eq!(schema["required"], json!(["data"]), "{schema}");
    for argument in ["data", "ttl_seconds", "key"] {
        assert!(schema["properties"].get(argument).is_some(), "{argument}");
    }

    // No key given: a UUID v4 comes back, and the TTL asked for.
    let stored = json_of(
        &call(
            &session,
            "repram_store",
            json!({"data": "hello agent", "ttl_seconds": 300}),
        )
        .await,
    );
    let key = stored["key"].as_str().expect("key").to_string();
    let uuid = uuid_v4(&key);
    assert!(uuid, "{key} is a UUID v4");
    assert_eq!(stored["ttl_seconds"], 300);
    assert!(stored["expires_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let found = json_of(&call(&session, "repram_retrieve", json!({"key": key})).await);
    assert_eq!(found["data"], "hello agent");
    let remaining = found["remaining_ttl_seconds"].as_u64().expect("remaining");
    assert!((298..=300).contains(&remaining), "{remaining}");
    assert!(found["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let exists = json_of(&call(&session, "repram_exists", json!({"key": key})).await);
    assert_eq!(exists["exists"], true);
    assert!(exists["remaining_ttl_seconds"]
        .as_u64()
        .is_some_and(|r| r <= 300));

    // A custom key with a slash is one key (a namespace), listed by its prefix.
    for (key, data) in [
        ("project-x/claim", "agent-7"),
        ("project-x/beat", "alive"),
        ("other", "x"),
    ] {
        let stored =
            json_of(&call(&session, "repram_store", json!({"data": data, "key": key})).await);
        assert_eq!(stored["key"], key);
        assert_eq!(stored["ttl_seconds"], 3_600, "no TTL: the node's default");
    }
    let listed = json_of(
        &call(
            &session,
            "repram_list_keys",
            json!({"prefix": "project-x/"}),
        )
        .await,
    );
    assert_eq!(listed["keys"], json!(["project-x/beat", "project-x/claim"]));
    let everything = json_of(&call(&session, "repram_list_keys", json!({})).await);
    assert_eq!(everything["keys"].as_array().map(Vec::len), Some(4));
    let claim = json_of(
        &call(
            &session,
            "repram_retrieve",
            json!({"key": "project-x/claim"}),
        )
        .await,
    );
    assert_eq!(claim["data"], "agent-7");

    // Missing: REPRAM's answer, not an error.
    let missing = call(&session, "repram_retrieve", json!({"key": "never-stored"})).await;
    assert_ne!(missing.is_error, Some(true));
    assert_eq!(text_of(&missing), "null — key not found or expired");
    let absent = json_of(&call(&session, "repram_exists", json!({"key": "never-stored"})).await);
    assert_eq!(absent, json!({"exists": false}));

    // A TTL passes: the data is gone for every tool.
    let short = json_of(
        &call(
            &session,
            "repram_store",
            json!({"data": "brief", "key": "brief", "ttl_seconds": 1}),
        )
        .await,
    );
    assert_eq!(short["ttl_seconds"], 1);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let expired = call(&session, "repram_retrieve", json!({"key": "brief"})).await;
    assert_eq!(text_of(&expired), "null — key not found or expired");
    let gone = json_of(&call(&session, "repram_exists", json!({"key": "brief"})).await);
    assert_eq!(gone["exists"], false);

    // Arguments that do not fit the schema are refused by the session, not guessed at.
    let refused = session
        .call_tool(CallToolRequestParam {
            name: "repram_retrieve".into(),
            arguments: json!({"nokey": 1}).as_object().cloned(),
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");

    session.cancel().await.expect("close session");
    node.stop();
    node.wait().expect("node stops cleanly");
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_that_is_gone_is_a_tool_error_with_a_reason() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let session = session(&format!("http://127.0.0.1:{port}")).await;
    let result = call(&session, "repram_store", json!({"data": "x"})).await;
    assert_eq!(result.is_error, Some(true));
    let error: Value = serde_json::from_str(&text_of(&result)).expect("json error");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{error}"
    );
    session.cancel().await.expect("close session");
}

/// `8-4-4-4-12` hex with version 4 and the RFC 4122 variant.
fn uuid_v4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_with_a_client_token_serves_the_agent_that_has_it() {
    let token = "an-agents-token-long-enough";
    let file = std::env::temp_dir().join(format!("repram-mcp-token-{}", std::process::id()));
    std::fs::write(&file, token).expect("token file");
    let node = start_node_with(Some(file.clone()));
    let url = format!("http://{}", node.http_addr.expect("http on"));

    let without = session(&url).await;
    let refused = call(&without, "repram_store", json!({"data": "x", "key": "k"})).await;
    assert_eq!(refused.is_error, Some(true));
    assert!(text_of(&refused).contains("REPRAM_TOKEN"), "{refused:?}");
    without.cancel().await.expect("close session");

    let with = session_with(&url, Some(token)).await;
    let stored = json_of(&call(&with, "repram_store", json!({"data": "x", "key": "k"})).await);
    assert_eq!(stored["key"], "k");
    let found = json_of(&call(&with, "repram_retrieve", json!({"key": "k"})).await);
    assert_eq!(found["data"], "x");
    let listed = json_of(&call(&with, "repram_list_keys", json!({})).await);
    assert_eq!(listed["keys"], json!(["k"]));
    with.cancel().await.expect("close session");
    node.stop();
    node.wait().expect("node stops cleanly");
    let _ = std::fs::remove_file(&file);
}
