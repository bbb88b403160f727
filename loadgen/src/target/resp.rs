//! RESP (the Redis/Valkey protocol): encoding the commands the loadgen sends (SET with PX, GET,
//! or any command as an array of bulk strings) and parsing replies of RESP2 and the RESP3
//! scalar types.
//!
//! Owns bytes only: no socket, no clock. Aggregate replies (arrays, maps) are refused: the
//! loadgen never sends a command that answers one, and parsing them would need recursion on
//! what a server sent.

use std::time::Duration;

use super::text::{error_reply, line_end, line_text, Reply, REPLY_VALUE_BYTES_MAX};
use super::OpError;

/// Appends a command as a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// `SET key value PX ttl_ms`.
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: Duration) {
    let ttl_ms = ttl.as_millis().max(1).to_string();
    encode_command(out, &[b"SET", key, value, b"PX", ttl_ms.as_bytes()]);
}

/// `GET key`.
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    encode_command(out, &[b"GET", key]);
}

/// Parses the first reply in `buf`: `Ok(None)` until it is whole.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, OpError> {
    let Some(end) = line_end(buf)? else {
        return Ok(None);
    };
    if end == 0 {
        return Err(OpError::Protocol("an empty RESP line".into()));
    }
    let line = line_text(&buf[1..end])?;
    let after_line = end + 2;
    let reply = match buf[0] {
        b'+' => Reply::Status(line.to_string()),
        b'-' => error_reply(line),
        b':' => Reply::Integer(
            line.parse()
                .map_err(|_| OpError::Protocol(format!("RESP integer {line:?}")))?,
        ),
        b'_' => Reply::Nil,
        b'$' => {
            let len: i64 = line
                .parse()
                .map_err(|_| OpError::Protocol(format!("RESP bulk length {line:?}")))?;
            if len == -1 {
                return Ok(Some((Reply::Nil, after_line)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= REPLY_VALUE_BYTES_MAX)
                .ok_or_else(|| OpError::Protocol(format!("RESP bulk length {len}")))?;
            let total = after_line + len + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[after_line + len..total] != b"\r\n" {
                return Err(OpError::Protocol(
                    "RESP bulk string not ended by CRLF".into(),
                ));
            }
            return Ok(Some((
                Reply::Value(buf[after_line..after_line + len].to_vec()),
                total,
            )));
        }
        other => {
            return Err(OpError::Protocol(format!(
                "RESP reply type {:?} is not one the loadgen reads",
                other as char
            )))
        }
    };
    Ok(Some((reply, after_line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode_set(&mut out, b"k", b"v1", Duration::from_secs(2));
        assert_eq!(
            out,
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n$2\r\nPX\r\n$4\r\n2000\r\n"
        );
    }

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let full = b"$5\r\nhello\r\n+OK\r\n";
        for cut in 0..11 {
            assert_eq!(parse_reply(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(
            parse_reply(full).unwrap(),
            Some((Reply::Value(b"hello".to_vec()), 11))
        );
        assert_eq!(
            parse_reply(&full[11..]).unwrap(),
            Some((Reply::Status("OK".into()), 5))
        );
        assert_eq!(parse_reply(b"$-1\r\n").unwrap(), Some((Reply::Nil, 5)));
        assert_eq!(parse_reply(b"_\r\n").unwrap(), Some((Reply::Nil, 3)));
        assert_eq!(
            parse_reply(b"-ERR unknown command\r\n").unwrap(),
            Some((
                Reply::Error {
                    code: "ERR".into(),
                    message: "unknown command".into()
                },
                22
            ))
        );
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for bad in [
            &b"$abc\r\n"[..],
            b"$-7\r\n",
            b"$99999999999\r\n",
            b"*2\r\n",
            b"\r\n",
            b"$2\r\nabcd\r\n",
            b":x\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
        assert!(parse_reply(&vec![b'+'; 70_000]).is_err());
    }
}
