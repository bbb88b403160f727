//! Client access control on real nodes: a node with a token (`--auth-token-file`) refuses a
//! client without it on all three front ends (native, Redis, HTTP) and serves one with it;
//! wrong tokens cost the connection; protected mode refuses a non-loopback client address
//! without a token; `--no-key-listing` turns the listing off.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::http_client::request;
use common::{NodeProcess, RawConn, Reply};
use repram::auth::AuthToken;
use repram::client::{BlockingClient, ClientError, ClientOptions};
use repram::wire::{ErrorCode, Op, Request, PROTOCOL_VERSION};

const TOKEN: &str = "a-test-token-of-enough-length";

/// A token file in the temp dir, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(content: &str) -> TokenFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("repram-auth-test-{}-{n}", std::process::id()));
        std::fs::write(&path, format!("{content}\n")).expect("token file");
        TokenFile(path)
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn protected_node(extra: &[&str]) -> (NodeProcess, TokenFile) {
    let file = TokenFile::new(TOKEN);
    let path = file.0.to_string_lossy().to_string();
    let mut args = vec!["--shards", "2", "--auth-token-file", &path];
    args.extend_from_slice(extra);
    (NodeProcess::start(&args), file)
}

fn options(token: Option<&str>) -> ClientOptions {
    ClientOptions {
        shard_aware: true,
        token: token.map(|t| AuthToken::new(t.as_bytes().to_vec())),
        ..ClientOptions::default()
    }
}

fn hello(token: &[u8]) -> Request<'_> {
    Request {
        id: 1,
        op: Op::Hello {
            protocol_version: PROTOCOL_VERSION,
            token,
        },
    }
}

#[test]
fn the_native_protocol_serves_only_a_client_that_said_the_token() {
    let (node, _file) = protected_node(&[]);
    let addr = node.client.to_string();

    // Without the token: Hello and Ping answer, everything else is refused, nothing stored.
    let anonymous = BlockingClient::connect(&addr, &options(None)).expect("hello is open");
    anonymous.ping().expect("ping is open");
    match anonymous.put(b"k", b"v", Duration::from_secs(60)) {
        Err(ClientError::Node { code, .. }) => assert_eq!(code, ErrorCode::AuthRequired),
        other => panic!("a put without the token: {other:?}"),
    }
    match anonymous.get(b"k") {
        Err(ClientError::Node { code, .. }) => assert_eq!(code, ErrorCode::AuthRequired),
        other => panic!("a get without the token: {other:?}"),
    }

    // With it, on every shard's port: the client works as ever.
    let member = BlockingClient::connect(&addr, &options(Some(TOKEN))).expect("connect");
    for i in 0..20 {
        let key = format!("k{i}");
        member
            .put(key.as_bytes(), b"v", Duration::from_secs(60))
            .expect("put with the token");
        assert_eq!(
            member
                .get(key.as_bytes())
                .expect("get")
                .expect("held")
                .bytes,
            b"v"
        );
    }
    assert!(member.stats().expect("stats").total.keys >= 20);

    // A wrong token is refused; the third closes the connection.
    let mut raw = RawConn::connect(node.client);
    for attempt in 1..=3 {
        match raw.call(&hello(b"not-the-token-at-all")) {
            Reply::Error(code, _) => assert_eq!(code, ErrorCode::AuthFailed, "try {attempt}"),
            other => panic!("a wrong token: {other:?}"),
        }
    }
    raw.send(&Request {
        id: 2,
        op: Op::Ping,
    });
    assert_eq!(
        raw.recv(),
        None,
        "after three wrong tokens the connection is closed"
    );

    // Guesses pipelined in one write change nothing: after the third, nothing more is read,
    // not even the right token behind them.
    let mut raw = RawConn::connect(node.client);
    let mut burst = Vec::new();
    for _ in 0..5 {
        repram::wire::encode_request(&mut burst, &hello(b"not-the-token-at-all"));
    }
    repram::wire::encode_request(&mut burst, &hello(TOKEN.as_bytes()));
    raw.send_bytes(&burst);
    for _ in 0..3 {
        assert!(matches!(
            raw.recv(),
            Some((_, Reply::Error(ErrorCode::AuthFailed, _)))
        ));
    }
    assert_eq!(raw.recv(), None, "closed after the third guess");

    // The right token on a raw connection lets it in.
    let mut raw = RawConn::connect(node.client);
    assert!(matches!(
        raw.call(&hello(TOKEN.as_bytes())),
        Reply::Hello(_)
    ));
    let put = Request {
        id: 3,
        op: Op::Put {
            key: b"raw",
            value: b"v",
            ttl_ms: 60_000,
            copies: 0,
            only_if: repram::wire::PUT_ALWAYS,
        },
    };
    assert_eq!(raw.call(&put), Reply::Stored);
}

fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .env_remove("REDISCLI_AUTH")
        .output()
        .expect("redis-cli (Debian's redis-tools) is installed");
    // What a person sees: redis-cli says an AUTH failure on stderr.
    let mut shown = String::from_utf8_lossy(&output.stderr).to_string();
    shown.push_str(&String::from_utf8_lossy(&output.stdout));
    shown.trim_end().to_string()
}

#[test]
fn redis_clients_need_auth_and_get_redis_answers() {
    let (node, _file) = protected_node(&[]);
    let resp = node.resp.expect("resp on");
    assert_eq!(redis_cli(resp, &["PING"]), "PONG", "PING is open");
    assert_eq!(
        redis_cli(resp, &["SET", "k", "v"]),
        "NOAUTH Authentication required."
    );
    let wrong = redis_cli(
        resp,
        &["--no-auth-warning", "-a", "wrong-password-here", "GET", "k"],
    );
    assert!(
        wrong.contains("WRONGPASS invalid username-password pair or user is disabled."),
        "{wrong}"
    );
    assert!(
        wrong.ends_with("NOAUTH Authentication required."),
        "{wrong}"
    );
    assert_eq!(
        redis_cli(resp, &["--no-auth-warning", "-a", TOKEN, "SET", "k", "v"]),
        "OK"
    );
    assert_eq!(
        redis_cli(resp, &["--no-auth-warning", "-a", TOKEN, "GET", "k"]),
        "v"
    );
    // A Redis library with the password in its URL.
    let url = format!("redis://:{TOKEN}@{resp}/");
    let client = redis::Client::open(url).expect("url");
    let mut connection = client.get_connection().expect("connect with AUTH");
    let value: String = redis::cmd("GET")
        .arg("k")
        .query(&mut connection)
        .expect("get");
    assert_eq!(value, "v");
    let anonymous = redis::Client::open(format!("redis://{resp}/")).expect("url");
    let mut connection = anonymous.get_connection().expect("connect");
    let refused: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("k").query(&mut connection);
    let error = refused.expect_err("no password: refused");
    assert_eq!(error.code(), Some("NOAUTH"), "{error}");
}

#[test]
fn http_wants_the_bearer_token_except_for_health_and_the_page() {
    let (node, _file) = protected_node(&["--no-key-listing"]);
    let http = node.http.expect("http on");
    let bearer = format!("Authorization: Bearer {TOKEN}");

    let refused = request(http, "PUT", "/v1/data/k", &[], b"v");
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("WWW-Authenticate"),
        Some("Bearer realm=\"repram\"")
    );
    let wrong = request(
        http,
        "GET",
        "/v1/data/k",
        &["Authorization: Bearer nope-nope-nope-nope"],
        b"",
    );
    assert_eq!(wrong.status, 401);
    assert!(String::from_utf8_lossy(&wrong.body).contains("invalid token"));
    for route in [
        "/v1/status",
        "/v1/stats",
        "/v1/topology",
        "/metrics",
        "/v1/keys",
    ] {
        assert_eq!(request(http, "GET", route, &[], b"").status, 401, "{route}");
    }
    assert_eq!(request(http, "GET", "/v1/health", &[], b"").status, 200);
    assert_eq!(
        request(http, "GET", "/", &[], b"").status,
        200,
        "the page; its figures need the token"
    );
    assert_eq!(
        request(http, "OPTIONS", "/v1/data/k", &[], b"").status,
        204,
        "CORS preflight"
    );

    assert_eq!(
        request(http, "PUT", "/v1/data/k", &[&bearer], b"v").status,
        201
    );
    let got = request(http, "GET", "/v1/data/k", &[&bearer], b"");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"v"[..]));
    assert_eq!(
        request(http, "GET", "/v1/stats", &[&bearer], b"").status,
        200
    );
    // Wrong tokens on one keep-alive connection: the third closes it.
    let mut stream = std::net::TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let guess = "GET /v1/data/k HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong-wrong-wrong-wrong\r\n\r\n";
    std::io::Write::write_all(&mut stream, guess.repeat(5).as_bytes()).expect("send");
    let mut buf = Vec::new();
    for _ in 0..3 {
        assert_eq!(
            common::http_client::read_response(&mut stream, &mut buf, false).status,
            401
        );
    }
    let mut rest = Vec::new();
    let n = std::io::Read::read_to_end(&mut stream, &mut rest).expect("read to the close");
    assert_eq!(
        n + buf.len(),
        0,
        "nothing answered after the third wrong token"
    );
    // Listing is off on this node, token or not.
    assert_eq!(
        request(http, "GET", "/v1/keys", &[&bearer], b"").status,
        403
    );
}

#[test]
fn protected_mode_refuses_a_client_address_off_loopback_without_a_token() {
    // Refused before anything is bound: no socket is opened off loopback.
    let mut command = Command::new(env!("CARGO_BIN_EXE_repram"));
    command
        .args(["serve", "--listen", "0.0.0.0:0", "--shards", "1"])
        .args(["--resp-listen", "off", "--http-listen", "off"]);
    let stderr = NodeProcess::spawn(command).err().expect("refused");
    assert!(stderr.contains("protected mode"), "{stderr}");
    assert!(
        stderr.contains("--auth-token-file") && stderr.contains("--unprotected"),
        "{stderr}"
    );

    // The HTTP port alone off loopback is refused the same way.
    let mut command = Command::new(env!("CARGO_BIN_EXE_repram"));
    command.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "0.0.0.0:0",
    ]);
    let stderr = NodeProcess::spawn(command).err().expect("refused");
    assert!(stderr.contains("protected mode"), "{stderr}");

    // A token that is too short is refused, with the reason.
    let short = TokenFile::new("short");
    let mut command = Command::new(env!("CARGO_BIN_EXE_repram"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--auth-token-file"])
        .arg(&short.0);
    let stderr = NodeProcess::spawn(command).err().expect("refused");
    assert!(stderr.contains("at least 16"), "{stderr}");
}

#[test]
fn the_cli_reads_the_token_from_a_file_or_the_environment() {
    let (node, file) = protected_node(&[]);
    let addr = node.client.to_string();
    let cli = |args: &[&str], env_token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_repram"));
        command
            .args(args)
            .args(["--addr", &addr])
            .env_remove("REPRAM_TOKEN");
        if let Some(token) = env_token {
            command.env("REPRAM_TOKEN", token);
        }
        command.output().expect("run the cli")
    };
    let refused = cli(&["put", "cli-key", "v"], None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("authentication required"));
    let path = file.0.to_string_lossy().to_string();
    assert!(cli(&["put", "cli-key", "v", "--token-file", &path], None)
        .status
        .success());
    let got = cli(&["get", "cli-key"], Some(TOKEN));
    assert!(got.status.success(), "{got:?}");
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");
}
