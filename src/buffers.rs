//! Receive and send buffers of a connection (node or client): sized by what arrives, wiped before they are freed.
//!
//! Owns buffer growth, compaction and wiping. It never reads a socket or interprets a frame:
//! the connection fills and drains these; `wire` reads what is in them.
//!
//! Plaintext values pass through both buffers, so no allocation that held bytes is returned to
//! the allocator unwiped: growth copies into a fresh allocation and wipes the old one itself
//! (a plain `Vec` reallocation would free the old bytes as they were).

use zeroize::Zeroize;

/// The receive buffer: starts small, grows only when a frame header announces a larger frame.
pub(crate) struct RecvBuffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    initial_bytes: usize,
    /// Larger than this, an empty buffer goes back to `initial_bytes`.
    keep_bytes: usize,
    /// Bytes consumed over the buffer's life: a change means a request was read whole.
    consumed_total: u64,
}

impl RecvBuffer {
    pub(crate) fn new(initial_bytes: usize, keep_bytes: usize) -> Self {
        RecvBuffer {
            bytes: vec![0; initial_bytes],
            start: 0,
            end: 0,
            initial_bytes,
            keep_bytes: keep_bytes.max(initial_bytes),
            consumed_total: 0,
        }
    }

    /// Bytes received and not yet consumed.
    pub(crate) fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    pub(crate) fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.end]
    }

    /// Bytes consumed since the buffer was made.
    pub(crate) fn consumed_total(&self) -> u64 {
        self.consumed_total
    }

    /// Room to read into; call [`RecvBuffer::make_room`] first.
    pub(crate) fn spare_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.end..]
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// Records `n` bytes read into [`RecvBuffer::spare_mut`].
    pub(crate) fn advance(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.bytes.len());
        self.end += n;
    }

    /// Drops `n` consumed bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
        self.consumed_total += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes sure the next read has room and that a frame of `frame_bytes` (header included)
    /// fits from the front; grows only for that.
    pub(crate) fn make_room(&mut self, frame_bytes: usize) {
        let filled = self.end - self.start;
        let needed = frame_bytes.max(filled + 1);
        if needed > self.bytes.len() {
            let mut grown = vec![0u8; needed.max(self.bytes.len().saturating_mul(2))];
            grown[..filled].copy_from_slice(&self.bytes[self.start..self.end]);
            wipe(&mut self.bytes);
            self.bytes = grown;
            self.start = 0;
            self.end = filled;
            return;
        }
        if self.start > 0
            && (self.end == self.bytes.len() || self.start + needed > self.bytes.len())
        {
            self.bytes.copy_within(self.start..self.end, 0);
            self.bytes[filled..self.end].zeroize();
            self.start = 0;
            self.end = filled;
        }
    }

    /// Doubles the buffer, up to `max_bytes`, for a peer that keeps it full.
    pub(crate) fn grow_toward(&mut self, max_bytes: usize) {
        let len = self.bytes.len();
        if len < max_bytes {
            let filled = self.end - self.start;
            self.make_room(filled.max(1).max((len * 2).min(max_bytes)));
        }
    }

    /// Returns a buffer grown for a large frame to its starting size once it is empty, so a
    /// single big value does not pin memory for the life of the connection.
    pub(crate) fn shrink_when_empty(&mut self) {
        if self.start == self.end && self.bytes.len() > self.keep_bytes {
            wipe(&mut self.bytes);
            self.bytes = vec![0; self.initial_bytes];
            self.start = 0;
            self.end = 0;
        }
    }
}

impl Drop for RecvBuffer {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// Wipes every byte `buf` holds or has room for, and empties it. `Vec::zeroize` wipes the same
/// bytes but those in use one volatile store at a time (its per-element path: about two
/// instructions a byte); this empties first and wipes the whole allocation through zeroize's
/// bulk path for spare capacity, a memset the compiler may not elide.
pub(crate) fn wipe(buf: &mut Vec<u8>) {
    buf.clear();
    buf.spare_capacity_mut().zeroize();
}

/// Grows `buf` so `additional` more bytes fit without a reallocation that would free plaintext
/// unwiped.
pub(crate) fn reserve_wiping(buf: &mut Vec<u8>, additional: usize) {
    let needed = buf.len().saturating_add(additional);
    if needed <= buf.capacity() {
        return;
    }
    let mut grown = Vec::with_capacity(needed.max(buf.capacity().saturating_mul(2)));
    grown.extend_from_slice(buf);
    wipe(buf);
    *buf = grown;
}

/// Wipes what `buf` held (its whole capacity) and empties it; a buffer grown past
/// `keep_bytes` is released.
pub(crate) fn wipe_and_clear(buf: &mut Vec<u8>, keep_bytes: usize) {
    wipe(buf);
    if buf.capacity() > keep_bytes {
        *buf = Vec::with_capacity(keep_bytes);
    }
}

/// Wipes the bytes a send buffer holds and empties it, for a buffer only ever appended to
/// since it was last emptied (nothing truncated, no `set_len` down): every byte written since
/// then lies below its length, and those past it were wiped then or never held anything, so
/// only the bytes in use are wiped, not the whole allocation as [`wipe_and_clear`] does (a
/// send buffer grows to the largest batch of answers and stays there, so wiping all of it
/// after every write cost as much as the rest of a pipelined GET). A buffer grown past
/// `keep_bytes` is wiped whole and released.
pub(crate) fn wipe_appended_and_clear(buf: &mut Vec<u8>, keep_bytes: usize) {
    if buf.capacity() > keep_bytes {
        return wipe_and_clear(buf, keep_bytes);
    }
    let written = buf.len();
    buf.clear();
    buf.spare_capacity_mut()[..written].zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_grows_only_for_an_announced_frame_and_keeps_unread_bytes() {
        let mut rx = RecvBuffer::new(16, 16);
        rx.make_room(4);
        rx.spare_mut()[..10].copy_from_slice(b"0123456789");
        rx.advance(10);
        rx.consume(6);
        assert_eq!(rx.filled(), b"6789");
        rx.make_room(14);
        assert_eq!(rx.capacity(), 16, "a 14-byte frame fits after compaction");
        assert_eq!(rx.filled(), b"6789");
        rx.make_room(100);
        assert!(rx.capacity() >= 100);
        assert_eq!(rx.filled(), b"6789");
        rx.consume(4);
        rx.shrink_when_empty();
        assert_eq!(rx.capacity(), 16);
    }

    #[test]
    fn a_full_buffer_always_leaves_room_to_read() {
        let mut rx = RecvBuffer::new(8, 8);
        rx.make_room(4);
        let n = rx.spare_mut().len();
        rx.advance(n);
        rx.make_room(4);
        assert!(!rx.spare_mut().is_empty());
    }

    #[test]
    fn a_streaming_buffer_grows_to_its_cap_and_stays_until_a_big_frame_passes() {
        let mut rx = RecvBuffer::new(8, 32);
        for _ in 0..4 {
            rx.grow_toward(32);
        }
        assert_eq!(rx.capacity(), 32);
        rx.shrink_when_empty();
        assert_eq!(rx.capacity(), 32, "kept while within keep_bytes");
        rx.make_room(100);
        rx.shrink_when_empty();
        assert_eq!(
            rx.capacity(),
            8,
            "a buffer grown for one big frame is released"
        );
    }

    #[test]
    fn wipe_zeroes_the_whole_allocation_and_empties_the_buffer() {
        let mut buf = Vec::with_capacity(300);
        buf.resize(200, 0xa5u8);
        buf.truncate(150);
        let capacity = buf.capacity();
        wipe(&mut buf);
        assert!(buf.is_empty());
        assert_eq!(buf.capacity(), capacity, "the allocation is kept");
        // SAFETY: `wipe` wrote zeroes to every byte of the allocation, so all `capacity` bytes
        // are initialised; the buffer is only read here.
        unsafe { buf.set_len(capacity) };
        assert!(
            buf.iter().all(|&b| b == 0),
            "every byte, in use or not, is zero"
        );
    }

    #[test]
    fn wiping_an_appended_buffer_zeroes_every_byte_written_and_keeps_or_releases_it() {
        let mut buf = Vec::with_capacity(4096);
        wipe(&mut buf);
        for round in 1..=3u8 {
            // Answers of different sizes, appended as a connection does.
            buf.extend(std::iter::repeat_n(0xa0 | round, 1000 / usize::from(round)));
            buf.extend_from_slice(b"value");
            let capacity = buf.capacity();
            wipe_appended_and_clear(&mut buf, 8192);
            assert!(buf.is_empty());
            assert_eq!(buf.capacity(), capacity, "the allocation is kept");
            // SAFETY: the allocation was wiped whole before the first round and every byte
            // written since is below the length each wipe covered, so all `capacity` bytes are
            // initialised; the buffer is only read here, then emptied.
            unsafe { buf.set_len(capacity) };
            assert!(
                buf.iter().all(|&b| b == 0),
                "round {round}: a written byte survived"
            );
            buf.clear();
        }
        buf.resize(9000, 0x5a);
        wipe_appended_and_clear(&mut buf, 8192);
        assert!(
            buf.is_empty() && buf.capacity() <= 8192,
            "grown past keep_bytes: released"
        );
    }

    #[test]
    fn reserve_wiping_keeps_the_contents() {
        let mut buf = Vec::with_capacity(2);
        buf.extend_from_slice(b"ab");
        reserve_wiping(&mut buf, 100);
        assert_eq!(buf, b"ab");
        assert!(buf.capacity() >= 102);
        wipe_and_clear(&mut buf, 8);
        assert!(buf.is_empty() && buf.capacity() <= 8);
    }
}
