//! A plain HTTP/1.1 client over a socket, for tests that check statuses and headers byte for
//! byte (no client library in between).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `stream` (`buf` keeps what came after it); `head_only` for a
/// response to HEAD, which has no body whatever its length says.
pub fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Response {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .expect("a status line");
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().expect("length"));
            let body_len = if head_only { 0 } else { length };
            while buf.len() < end + 4 + body_len {
                read_more(stream, buf);
            }
            let body = buf[end + 4..end + 4 + body_len].to_vec();
            buf.drain(..end + 4 + body_len);
            return Response {
                status,
                headers,
                body,
            };
        }
        read_more(stream, buf);
    }
}

pub fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).expect("read");
    assert!(n > 0, "the node closed the connection");
    buf.extend_from_slice(&chunk[..n]);
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(body).expect("send");
    read_response(&mut stream, &mut Vec::new(), method == "HEAD")
}
