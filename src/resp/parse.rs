//! RESP2 requests as Redis clients send them: an array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), or an inline command (`PING\r\n`, what a person types
//! into telnet). Parsed in place: a command is the byte ranges of its arguments in the buffer.
//!
//! Owns the request grammar and its limits; it never executes a command or touches a socket.

use std::ops::Range;

/// What a request may hold at most; past a limit the request is refused as Redis refuses it
/// (and the connection is closed).
#[derive(Clone, Copy, Debug)]
pub struct RespLimits {
    /// Arguments in one command.
    pub args_max: usize,
    /// Bytes in one bulk string (a key or a value).
    pub bulk_bytes_max: usize,
    /// Bytes in one inline command line.
    pub inline_bytes_max: usize,
    /// Bytes of one whole command (all its arguments): the receive buffer never grows past it.
    pub command_bytes_max: usize,
}

/// A command read from the buffer: its arguments, and the bytes it took.
#[derive(Debug, PartialEq, Eq)]
pub struct Command {
    pub args: Vec<Range<usize>>,
    pub len: usize,
}

/// Why bytes are not a request. The message is Redis's own wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

/// Reads one command from the front of `buf`: `Ok(None)` until it is complete. An empty
/// inline line is a command of no arguments (skipped by the caller, as Redis does).
pub fn parse_command(buf: &[u8], limits: &RespLimits) -> Result<Option<Command>, ProtocolError> {
    let mut args = Vec::new();
    let parsed = parse_command_into(buf, limits, &mut args)?;
    Ok(parsed.map(|len| Command { args, len }))
}

/// [`parse_command`] into a caller's argument list (cleared first, its room kept for the next
/// command): `Ok(Some(len))`, the bytes the command took, once it is complete.
pub fn parse_command_into(
    buf: &[u8],
    limits: &RespLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    args.clear();
    let parsed = match buf.first() {
        None => return Ok(None),
        Some(b'*') => parse_array(buf, limits, args)?,
        Some(_) => parse_inline(buf, limits, args)?,
    };
    // Still incomplete past the limit: the command alone is bigger than a node takes (many
    // arguments, each within its own limit, can add up to far more).
    if parsed.is_none() && buf.len() > limits.command_bytes_max {
        return Err(ProtocolError("too big request"));
    }
    Ok(parsed)
}

/// The line starting at `at`, without its `\r\n`, and where the next one starts.
fn line(buf: &[u8], at: usize, max: usize) -> Result<Option<(Range<usize>, usize)>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let window = &rest[..rest.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let end = if nl > 0 && window[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            Ok(Some((at..at + end, at + nl + 1)))
        }
        None if rest.len() > max + 2 => Err(ProtocolError("too big request line")),
        None => Ok(None),
    }
}

/// A decimal integer as a length field holds it (`-1` allowed, nothing else signed).
fn number(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    // One pass: checked and added up together (three of these per GET).
    let mut value = 0i64;
    for &d in digits {
        let digit = d.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + i64::from(digit);
    }
    Some(if negative { -value } else { value })
}

fn parse_array(
    buf: &[u8],
    limits: &RespLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    let Some((header, mut at)) = line(buf, 0, 32)? else {
        return Ok(None);
    };
    let count = match number(&buf[header.start + 1..header.end]) {
        Some(n) if n <= 0 => return Ok(Some(at)),
        Some(n) if (n as u64) <= limits.args_max as u64 => n as usize,
        _ => return Err(ProtocolError("invalid multibulk length")),
    };
    // Never trust the count for an allocation: grow as arguments arrive.
    args.reserve(count.min(16));
    for _ in 0..count {
        let Some((header, body)) = line(buf, at, 32)? else {
            return Ok(None);
        };
        let Some(&first) = buf.get(header.start) else {
            return Ok(None);
        };
        if first != b'$' {
            return Err(ProtocolError("expected '$'"));
        }
        let len = match number(&buf[header.start + 1..header.end]) {
            Some(n) if n >= 0 && (n as u64) <= limits.bulk_bytes_max as u64 => n as usize,
            _ => return Err(ProtocolError("invalid bulk length")),
        };
        let end = body + len;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not terminated by CRLF"));
        }
        args.push(body..end);
        at = end + 2;
    }
    Ok(Some(at))
}

fn parse_inline(
    buf: &[u8],
    limits: &RespLimits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    let Some((text, next)) = line(buf, 0, limits.inline_bytes_max)? else {
        return Ok(None);
    };
    let mut at = text.start;
    while at < text.end {
        if buf[at].is_ascii_whitespace() {
            at += 1;
            continue;
        }
        let start = at;
        while at < text.end && !buf[at].is_ascii_whitespace() {
            at += 1;
        }
        if args.len() == limits.args_max {
            return Err(ProtocolError("too many arguments"));
        }
        args.push(start..at);
    }
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: RespLimits = RespLimits {
        args_max: 1024,
        bulk_bytes_max: 1 << 20,
        inline_bytes_max: 64 * 1024,
        command_bytes_max: 3 << 20,
    };

    fn args<'a>(buf: &'a [u8], command: &Command) -> Vec<&'a [u8]> {
        command.args.iter().map(|r| &buf[r.clone()]).collect()
    }

    fn encode(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", parts.len()).into_bytes();
        for part in parts {
            out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn an_array_of_bulk_strings_is_read_in_place() {
        let buf = encode(&[b"SET", b"k", b"v\r\nwith crlf"]);
        let command = parse_command(&buf, &LIMITS).unwrap().unwrap();
        assert_eq!(command.len, buf.len());
        assert_eq!(
            args(&buf, &command),
            vec![&b"SET"[..], b"k", b"v\r\nwith crlf"]
        );
    }

    #[test]
    fn an_inline_command_splits_on_spaces() {
        let buf = b"  GET   some-key \r\nPING\r\n";
        let command = parse_command(buf, &LIMITS).unwrap().unwrap();
        assert_eq!(args(buf, &command), vec![&b"GET"[..], b"some-key"]);
        let rest = &buf[command.len..];
        let next = parse_command(rest, &LIMITS).unwrap().unwrap();
        assert_eq!(args(rest, &next), vec![&b"PING"[..]]);
    }

    #[test]
    fn bad_lengths_are_refused_with_redis_wording() {
        let cases: [(&[u8], &str); 5] = [
            (b"*x\r\n", "invalid multibulk length"),
            (b"*2000\r\n", "invalid multibulk length"),
            (b"*1\r\n$1099511627776\r\n", "invalid bulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n:12\r\n", "expected '$'"),
        ];
        for (buf, message) in cases {
            assert_eq!(
                parse_command(buf, &LIMITS),
                Err(ProtocolError(message)),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        let unterminated = b"*1\r\n$3\r\nGETxx";
        assert_eq!(
            parse_command(unterminated, &LIMITS),
            Err(ProtocolError("bulk string not terminated by CRLF"))
        );
        let long_line = vec![b'a'; LIMITS.inline_bytes_max + 10];
        assert_eq!(
            parse_command(&long_line, &LIMITS),
            Err(ProtocolError("too big request line"))
        );
    }

    #[test]
    fn a_command_whose_arguments_add_up_past_the_limit_is_refused() {
        // 1,000 arguments of 1 MiB each are each within their limit; together they are not.
        let mut buf = b"*1000\r\n".to_vec();
        for _ in 0..4 {
            buf.extend_from_slice(format!("${}\r\n", 1 << 20).as_bytes());
            buf.extend(std::iter::repeat_n(b'x', 1 << 20));
            buf.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            parse_command(&buf, &LIMITS),
            Err(ProtocolError("too big request"))
        );
        assert_eq!(parse_command(&buf[..2 << 20], &LIMITS), Ok(None));
    }

    #[test]
    fn an_unterminated_array_waits_for_more_and_allocates_nothing_for_its_claim() {
        let buf = b"*1000\r\n$3\r\nGET\r\n";
        assert_eq!(parse_command(buf, &LIMITS), Ok(None));
    }

    proptest! {
        #[test]
        fn every_prefix_of_a_pipeline_is_incomplete_and_the_whole_parses_back(
            commands in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5), 1..5),
        ) {
            let mut stream = Vec::new();
            for command in &commands {
                let parts: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                stream.extend(encode(&parts));
            }
            let first_len = encode(&commands[0].iter().map(Vec::as_slice).collect::<Vec<_>>()).len();
            for cut in 0..first_len {
                prop_assert_eq!(parse_command(&stream[..cut], &LIMITS), Ok(None));
            }
            let mut at = 0;
            for command in &commands {
                let parsed = parse_command(&stream[at..], &LIMITS).unwrap().unwrap();
                let got: Vec<Vec<u8>> = parsed.args.iter().map(|r| stream[at..][r.clone()].to_vec()).collect();
                prop_assert_eq!(&got, command);
                at += parsed.len;
            }
            prop_assert_eq!(at, stream.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_command(&bytes, &LIMITS);
        }
    }
}
