//! RESP2 replies: simple strings, errors, integers, bulk strings (nil too) and array headers,
//! appended to an output buffer. A buffer that may hold values is grown with
//! `reserve_wiping`, so no plaintext is left behind in a freed allocation.

use crate::buffers::reserve_wiping;

pub fn simple(out: &mut Vec<u8>, text: &str) {
    reserve_wiping(out, text.len() + 3);
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An error reply; `text` starts with its code (`ERR`, `WRONGTYPE`, `OOM`, ...).
pub fn error(out: &mut Vec<u8>, text: &str) {
    reserve_wiping(out, text.len() + 3);
    out.push(b'-');
    // A reply line may not hold a line break.
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut Vec<u8>, n: i64) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n);
    reserve_wiping(out, text.len() + 3);
    out.push(b':');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut digits = itoa::Buffer::new();
    let header = digits.format(bytes.len());
    reserve_wiping(out, header.len() + bytes.len() + 5);
    out.push(b'$');
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

pub fn nil(out: &mut Vec<u8>) {
    reserve_wiping(out, 5);
    out.extend_from_slice(b"$-1\r\n");
}

pub fn array(out: &mut Vec<u8>, len: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(len);
    reserve_wiping(out, text.len() + 3);
    out.push(b'*');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_the_resp2_shapes() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR bad\r\nthing");
        integer(&mut out, -2);
        bulk(&mut out, b"a\r\nb");
        nil(&mut out);
        array(&mut out, 2);
        assert_eq!(
            out,
            b"+OK\r\n-ERR bad  thing\r\n:-2\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n".to_vec()
        );
    }
}
