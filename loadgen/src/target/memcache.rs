//! The memcached text protocol: encoding `set` and `get` and parsing their replies.
//!
//! Owns bytes only: no socket, no clock.

use std::time::Duration;

use super::text::{error_reply, line_end, line_text, Reply, REPLY_VALUE_BYTES_MAX};
use super::OpError;

/// memcached reads an expiry above 30 days as a Unix time; longer TTLs are sent as that.
const RELATIVE_EXPIRY_SECONDS_MAX: u64 = 30 * 24 * 3600;

/// `set key 0 exptime bytes` and the value. The expiry is in whole seconds, rounded up.
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: Duration) {
    use std::io::Write;
    let seconds = ttl.as_millis().div_ceil(1000).max(1) as u64;
    let exptime = if seconds > RELATIVE_EXPIRY_SECONDS_MAX {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now + seconds
    } else {
        seconds
    };
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    // Writing into a Vec cannot fail.
    let _ = write!(out, " 0 {exptime} {}\r\n", value.len());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `get key`.
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// Parses the first reply in `buf`: `Ok(None)` until it is whole. A `get` of one key answers
/// `VALUE key flags bytes` + data + `END`, or `END` alone.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, OpError> {
    let Some(end) = line_end(buf)? else {
        return Ok(None);
    };
    let line = line_text(&buf[..end])?;
    let after_line = end + 2;
    if let Some(header) = line.strip_prefix("VALUE ") {
        let mut fields = header.split(' ');
        let len = fields
            .nth(2)
            .and_then(|bytes| bytes.parse::<usize>().ok())
            .filter(|&len| len <= REPLY_VALUE_BYTES_MAX)
            .ok_or_else(|| OpError::Protocol(format!("memcached VALUE line {line:?}")))?;
        const TRAILER: &[u8] = b"\r\nEND\r\n";
        let total = after_line + len + TRAILER.len();
        if buf.len() < total {
            return Ok(None);
        }
        if &buf[after_line + len..total] != TRAILER {
            return Err(OpError::Protocol(
                "memcached value not followed by END (more than one value?)".into(),
            ));
        }
        return Ok(Some((
            Reply::Value(buf[after_line..after_line + len].to_vec()),
            total,
        )));
    }
    let reply = match line {
        "END" => Reply::Nil,
        "ERROR" => error_reply("ERROR"),
        _ if line.starts_with("CLIENT_ERROR") || line.starts_with("SERVER_ERROR") => {
            error_reply(line)
        }
        _ if !line.is_empty() && line.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => {
            Reply::Status(line.to_string())
        }
        _ => {
            return Err(OpError::Protocol(format!(
                "memcached reply line {line:?} is not one the loadgen reads"
            )))
        }
    };
    Ok(Some((reply, after_line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_carries_the_expiry_in_seconds_rounded_up() {
        let mut out = Vec::new();
        encode_set(&mut out, b"k", b"abc", Duration::from_millis(1500));
        assert_eq!(out, b"set k 0 2 3\r\nabc\r\n");
        out.clear();
        encode_get(&mut out, b"k");
        assert_eq!(out, b"get k\r\n");
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let full = b"VALUE k 0 3\r\nabc\r\nEND\r\nSTORED\r\n";
        for cut in 0..23 {
            assert_eq!(parse_reply(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parse_reply(full).unwrap(),
            Some((Reply::Value(b"abc".to_vec()), 23))
        );
        assert_eq!(
            parse_reply(&full[23..]).unwrap(),
            Some((Reply::Status("STORED".into()), 8))
        );
        assert_eq!(parse_reply(b"END\r\n").unwrap(), Some((Reply::Nil, 5)));
        assert!(matches!(
            parse_reply(b"SERVER_ERROR out of memory\r\n").unwrap(),
            Some((Reply::Error { code, .. }, 28)) if code == "SERVER_ERROR"
        ));
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for bad in [
            &b"VALUE k 0\r\n"[..],
            b"VALUE k 0 x\r\n",
            b"VALUE k 0 1\r\nab\r\nEND\r\n",
            b"hello there\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
    }
}
