//! TLS for clients on a real node (`--tls-cert`/`--tls-key`, a test CA made with `rcgen`): the
//! bundled client, the CLI, `redis-cli --tls` and `curl --cacert` work; plain clients on a TLS
//! port get a clear error in their own protocol.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::NodeProcess;
use repram::client::{BlockingClient, ClientOptions};

/// A CA and a certificate it signed for 127.0.0.1, as PEM files in a directory removed on
/// drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("repram-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "REPRAM test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let server =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
        let cert = server.signed_by(&key, &issuer).expect("server cert");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
        std::fs::write(dir.join("server.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().to_string()
    }

    fn node(&self, extra: &[&str]) -> NodeProcess {
        let (cert, key) = (self.path("server.pem"), self.path("server.key"));
        let mut args = vec!["--shards", "2", "--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        NodeProcess::start(&args)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_bundled_client_and_the_cli_speak_tls_and_a_plain_client_is_told_why_not() {
    let pki = Pki::new("native");
    let node = pki.node(&[]);
    let options = ClientOptions {
        shard_aware: true,
        tls: Some(repram::tls::client_config(&PathBuf::from(pki.path("ca.pem"))).expect("ca")),
        ..ClientOptions::default()
    };
    let client = BlockingClient::connect(&node.client.to_string(), &options).expect("TLS");
    for i in 0..20 {
        let key = format!("tls-{i}");
        client
            .put(
                key.as_bytes(),
                b"sealed in transit",
                Duration::from_secs(60),
            )
            .expect("put");
        let got = client.get(key.as_bytes()).expect("get").expect("held");
        assert_eq!(got.bytes, b"sealed in transit");
    }
    let plain = BlockingClient::connect(&node.client.to_string(), &ClientOptions::default());
    let error = plain.err().expect("a plain client is refused").to_string();
    assert!(error.contains("speaks TLS"), "{error}");

    let cli = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_repram"))
            .args(["get", "tls-3", "--addr", &node.client.to_string()])
            .args(extra)
            .output()
            .expect("cli")
    };
    let ca = pki.path("ca.pem");
    let got = cli(&["--tls-ca", &ca]);
    assert!(got.status.success(), "{got:?}");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "sealed in transit"
    );
    assert!(
        !cli(&[]).status.success(),
        "the CLI without the CA is refused"
    );
}

#[test]
fn redis_cli_and_curl_speak_tls_and_plain_ones_get_their_protocols_error() {
    let pki = Pki::new("text");
    let node = pki.node(&[]);
    let resp = node.resp.expect("resp");
    let ca = pki.path("ca.pem");
    let redis = |extra: &[&str], args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &resp.port().to_string()])
            .args(extra)
            .args(args)
            .output()
            .expect("redis-cli");
        let mut shown = String::from_utf8_lossy(&output.stdout).to_string();
        shown.push_str(&String::from_utf8_lossy(&output.stderr));
        shown.trim().to_string()
    };
    let tls = ["--tls", "--cacert", ca.as_str()];
    assert_eq!(redis(&tls, &["SET", "drop", "over tls"]), "OK");
    assert_eq!(redis(&tls, &["GET", "drop"]), "over tls");
    let plain = redis(&[], &["GET", "drop"]);
    assert!(plain.contains("this port speaks TLS"), "{plain}");

    let http = node.http.expect("http");
    let curl = |args: &[&str]| {
        let output = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let url = format!("https://127.0.0.1:{}/v1/data/web", http.port());
    let put = curl(&[
        "--cacert",
        &ca,
        "-X",
        "PUT",
        "--data-binary",
        "over https",
        &url,
    ]);
    assert!(put.ends_with("201"), "{put}");
    let get = curl(&["--cacert", &ca, &url]);
    assert_eq!(get, "over https\n200");
    // Without the CA, curl refuses the certificate (nothing reaches the node's routes).
    assert!(curl(&[&url]).ends_with("000"));
    let plain = curl(&[&format!("http://127.0.0.1:{}/v1/health", http.port())]);
    assert!(
        plain.contains("This port speaks HTTPS") && plain.ends_with("400"),
        "{plain}"
    );
}

#[test]
fn tls_can_be_kept_to_the_listeners_named() {
    let pki = Pki::new("some");
    let node = pki.node(&["--tls-on", "http"]);
    // Redis stays plain; HTTP speaks TLS.
    let output = Command::new("redis-cli")
        .args(["-p", &node.resp.expect("resp").port().to_string(), "PING"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "PONG");
    let plain = BlockingClient::connect(&node.client.to_string(), &ClientOptions::default())
        .expect("the native port stays plain");
    plain.ping().expect("ping");
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.path("ca.pem"))
        .arg(format!(
            "https://127.0.0.1:{}/v1/health",
            node.http.expect("http").port()
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200");
}

#[test]
fn a_client_that_never_finishes_its_tls_handshake_is_closed_in_bounded_time() {
    use std::io::{Read, Write};
    let pki = Pki::new("silent");
    let node = pki.node(&["--tls-on", "resp"]);
    let resp = node.resp.expect("resp");
    let started = std::time::Instant::now();
    // One that sends nothing, and one that trickles a byte of a handshake record at a time.
    let mut silent = std::net::TcpStream::connect(resp).expect("connect");
    let mut trickle = std::net::TcpStream::connect(resp).expect("connect");
    trickle.write_all(&[0x16]).expect("first byte");
    for stream in [&silent, &trickle] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    let trickler = std::thread::spawn(move || {
        for _ in 0..15 {
            std::thread::sleep(Duration::from_secs(1));
            if trickle.write_all(&[0x03]).is_err() {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = trickle.read_to_end(&mut rest);
    });
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    trickler.join().expect("trickler");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "both closed by the 10 s handshake bound, took {took:?}"
    );
}
