//! An HTTP/1.1 request head read with `httparse`, bounded: the request line and headers, and
//! what the API needs of them (method, path, query, `X-TTL`, body length, keep-alive).
//!
//! Owns the request grammar's limits; it never routes or answers a request.

/// What a request may hold at most.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Bytes of the request line and headers.
    pub head_bytes_max: usize,
    /// Bytes of a body (a value).
    pub body_bytes_max: usize,
}

/// Headers a request may carry at most (more is a 431).
const HEADERS_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Options,
    Other,
}

/// A request head, owned (the receive buffer moves on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    /// The path, still percent-encoded.
    pub path: String,
    /// Where the path is in the buffer.
    pub path_at: std::ops::Range<usize>,
    /// The query string after `?`, still encoded ("" when none).
    pub query: String,
    pub x_ttl: Option<String>,
    /// Where the credentials of `Authorization: Bearer` are in the buffer (not copied out:
    /// the buffer is wiped once the request is consumed).
    pub bearer: Option<std::ops::Range<usize>>,
    pub content_length: usize,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// Bytes of the head in the buffer; the body follows.
    pub len: usize,
}

/// Why a head cannot be served; each answer closes the connection (the rest of the stream
/// cannot be trusted to start at a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not HTTP/1.x.
    Malformed,
    /// 431: the head is over its limit or has too many headers.
    HeadTooLarge,
    /// 413: a body over the value limit (`Content-Length` says so up front).
    BodyTooLarge,
    /// 501: a chunked body.
    ChunkedBody,
    /// 400: an unreadable `Content-Length`.
    BadLength,
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed | HeadError::BadLength => 400,
            HeadError::HeadTooLarge => 431,
            HeadError::BodyTooLarge => 413,
            HeadError::ChunkedBody => 501,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::Malformed => "malformed request",
            HeadError::HeadTooLarge => "request head too large",
            HeadError::BodyTooLarge => "body over the value size limit",
            HeadError::ChunkedBody => "chunked bodies are not supported: send Content-Length",
            HeadError::BadLength => "unreadable Content-Length",
        }
    }
}

/// Reads a request head from the front of `buf`: `Ok(None)` until it is complete.
pub fn parse_head(buf: &[u8], limits: &HttpLimits) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.head_bytes_max => {
            return Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > limits.head_bytes_max {
        return Err(HeadError::HeadTooLarge);
    }
    let method = match request.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let target = request.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // httparse reads the path in place; a default one (never, for a complete head) lies
    // nowhere in the buffer.
    let path_start = (path.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let path_at = if path_start <= buf.len() && path.len() <= buf.len() - path_start {
        path_start..path_start + path.len()
    } else {
        0..0
    };
    let http_10 = request.version == Some(0);
    let mut head = Head {
        method,
        path: path.to_string(),
        path_at,
        query: query.to_string(),
        x_ttl: None,
        bearer: None,
        content_length: 0,
        keep_alive: !http_10,
        len,
    };
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().map_err(|_| HeadError::BadLength)?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                return Err(HeadError::ChunkedBody);
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        } else if header.name.eq_ignore_ascii_case("x-ttl") {
            head.x_ttl = Some(value.to_string());
        } else if header.name.eq_ignore_ascii_case("authorization") {
            let raw = header.value;
            let scheme = b"bearer ";
            if raw.len() > scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme) {
                let credentials = raw[scheme.len()..].trim_ascii();
                let start = credentials.as_ptr() as usize - buf.as_ptr() as usize;
                head.bearer = Some(start..start + credentials.len());
            }
        }
    }
    if head.content_length > limits.body_bytes_max {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(Some(head))
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

/// Percent-decodes `text` (`+` stays a plus: paths and REPRAM's clients do not use it for
/// spaces).
pub fn decode(text: &str) -> String {
    if !text.contains('%') {
        // Nearly every path: nothing to decode, and nothing to check (it is already UTF-8).
        return text.to_owned();
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        head_bytes_max: 8 * 1024,
        body_bytes_max: 1024,
    };

    #[test]
    fn a_put_head_gives_method_path_query_ttl_and_body_length() {
        let buf = b"PUT /v1/data/a%20b?ttl=60 HTTP/1.1\r\nHost: x\r\nX-TTL: 30\r\nContent-Length: 5\r\n\r\nhello";
        let head = parse_head(buf, &LIMITS).unwrap().unwrap();
        assert_eq!(head.method, Method::Put);
        assert_eq!(decode(&head.path), "/v1/data/a b");
        assert_eq!(&buf[head.path_at.clone()], b"/v1/data/a%20b");
        assert_eq!(query_value(&head.query, "ttl").as_deref(), Some("60"));
        assert_eq!(head.x_ttl.as_deref(), Some("30"));
        assert_eq!(head.content_length, 5);
        assert!(head.keep_alive);
        assert_eq!(&buf[head.len..], b"hello");
    }

    #[test]
    fn heads_wait_for_their_end_and_refuse_what_is_over_a_limit() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", &LIMITS), Ok(None));
        assert_eq!(
            parse_head(b"GARBAGE\x00\r\n\r\n", &LIMITS),
            Err(HeadError::Malformed)
        );
        let flood = format!("GET / HTTP/1.1\r\n{}", "X-A: b\r\n".repeat(100));
        assert_eq!(
            parse_head(flood.as_bytes(), &LIMITS),
            Err(HeadError::HeadTooLarge)
        );
        let big = b"PUT /v1/data/k HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
        assert_eq!(parse_head(big, &LIMITS), Err(HeadError::BodyTooLarge));
        let chunked = b"PUT /v1/data/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked, &LIMITS), Err(HeadError::ChunkedBody));
        let closing = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!parse_head(closing, &LIMITS).unwrap().unwrap().keep_alive);
    }
}
