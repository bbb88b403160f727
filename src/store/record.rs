//! One entry at rest: header, key and AES-256-GCM ciphertext in a single allocation.
//! Owns: the record layout, sealing, opening and re-sealing of values, nonce construction.
//! Never touches: the index, the expiry wheel or the key ring (keys are handed in).
//!
//! Layout of a `SealedRecord` (all integers little-endian):
//!
//! ```text
//! [0..6)    seal counter   nonce = shard id (4 B) || seal counter (8 B, below 2^48)
//! [6..8)    key length     ┐ bits 0-14; bit 15: tombstone (no ciphertext follows)
//! [8..12)   expiry         │ ms after the version's ms (i32)  associated data: binds the
//! [12..20)  version clock  │                                  ciphertext to its flag,
//! [20..28)  version node   │                                  expiry, version and key
//! [28..)    key            ┘
//! [..]      ciphertext || 16-byte tag
//! ```
//!
//! The header is kept to 28 bytes because records live in size-class blocks: a 16-byte key
//! with a 100-byte value makes a 160-byte record, one class below the 192 the 35-byte header
//! of before needed.

use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use zeroize::Zeroize;

use super::prefetch::{prefetch_line, CACHE_LINE_BYTES};
use crate::version::Version;

pub(crate) const TAG_BYTES: usize = 16;
/// A record's bytes [`SealedRecord::prefetch`] asks for: a 100-byte value's whole record.
const PREFETCH_BYTES_MAX: usize = 4 * CACHE_LINE_BYTES;
const COUNTER_AT: usize = 0;
const COUNTER_BYTES: usize = 6;
/// Seals one shard may make in a process's life: the counter is stored in 48 bits.
pub(crate) const SEAL_COUNTER_LIMIT: u64 = 1 << (8 * COUNTER_BYTES);
const KEY_LEN_AT: usize = 6;
pub(crate) const EXPIRES_AT: usize = 8;
const CLOCK_AT: usize = 12;
const NODE_AT: usize = 20;
pub(crate) const HEADER_BYTES: usize = 28;
/// The key length field's top bit marks a tombstone.
const TOMBSTONE_BIT: u16 = 1 << 15;
/// Longest key a record can hold: the rest of the key length field.
pub(crate) const KEY_BYTES_LIMIT: usize = (TOMBSTONE_BIT - 1) as usize;
const _: () = assert!(KEY_BYTES_LIMIT == crate::limits::KEY_BYTES_CEILING);

/// The sealed value failed to authenticate: the record was altered, moved to another key or
/// expiry, or its epoch key is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreadable;

/// A record's version and expiry, checked to fit the header: the expiry is stored as an
/// offset of at most ±24 days from the version's milliseconds. Every write this node makes
/// fits (TTLs are at most a week, versions at most an hour ahead); a replica that does not
/// fit is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordStamp {
    version: Version,
    expiry_offset_ms: i32,
}

impl RecordStamp {
    pub(crate) fn new(expires_ms: u64, version: Version) -> Option<Self> {
        let offset = i128::from(expires_ms) - i128::from(version.physical_ms());
        Some(Self {
            version,
            expiry_offset_ms: i32::try_from(offset).ok()?,
        })
    }

    pub(crate) fn expires_ms(self) -> u64 {
        expires_ms(self.version, self.expiry_offset_ms)
    }
}

fn expires_ms(version: Version, offset_ms: i32) -> u64 {
    version
        .physical_ms()
        .saturating_add_signed(i64::from(offset_ms))
}

/// A key, its metadata and its sealed value, in one heap allocation.
#[derive(Clone)]
pub(crate) struct SealedRecord(Box<[u8]>);

impl SealedRecord {
    /// Seals `plaintext` under `aead_key`. The plaintext exists only in the new record's buffer,
    /// and only until it is encrypted there in place.
    pub(crate) fn seal(
        aead_key: &LessSafeKey,
        nonce: RecordNonce,
        key: &[u8],
        plaintext: &[u8],
        stamp: RecordStamp,
    ) -> Self {
        let total = HEADER_BYTES + key.len() + plaintext.len() + TAG_BYTES;
        let mut bytes = vec![0u8; total].into_boxed_slice();
        write_header(&mut bytes, nonce.counter, key, false, stamp);
        let body_at = HEADER_BYTES + key.len();
        bytes[body_at..body_at + plaintext.len()].copy_from_slice(plaintext);
        seal_body(aead_key, nonce, &mut bytes, key.len());
        Self(bytes)
    }

    /// A tombstone: a version with no value, kept until the deleted value would have expired.
    pub(crate) fn tombstone(key: &[u8], stamp: RecordStamp) -> Self {
        let mut bytes = vec![0u8; HEADER_BYTES + key.len()].into_boxed_slice();
        write_header(&mut bytes, 0, key, true, stamp);
        Self(bytes)
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0[HEADER_BYTES..HEADER_BYTES + self.key_len()]
    }

    pub(crate) fn expires_ms(&self) -> u64 {
        let mut offset = [0u8; 4];
        offset.copy_from_slice(&self.0[EXPIRES_AT..EXPIRES_AT + 4]);
        expires_ms(self.version(), i32::from_le_bytes(offset))
    }

    pub(crate) fn version(&self) -> Version {
        Version {
            clock: read_u64(&self.0, CLOCK_AT),
            node: read_u64(&self.0, NODE_AT),
        }
    }

    pub(crate) fn seal_counter(&self) -> u64 {
        let mut counter = [0u8; 8];
        counter[..COUNTER_BYTES].copy_from_slice(&self.0[COUNTER_AT..COUNTER_AT + COUNTER_BYTES]);
        u64::from_le_bytes(counter)
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.key_len_field() & TOMBSTONE_BIT != 0
    }

    /// Length of the plaintext value (0 for a tombstone).
    pub(crate) fn value_len(&self) -> usize {
        self.sealed().len().saturating_sub(TAG_BYTES)
    }

    /// Bytes of the allocation.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Asks the CPU for the cache lines that reading this record touches, its first
    /// [`PREFETCH_BYTES_MAX`] bytes at most: the hardware's own prefetcher follows a longer
    /// value once it is being read in order.
    pub(crate) fn prefetch(&self) {
        let len = self.0.len().min(PREFETCH_BYTES_MAX);
        let start = self.0.as_ptr();
        for at in (0..len).step_by(CACHE_LINE_BYTES) {
            prefetch_line(start.wrapping_add(at));
        }
        // The allocation need not start on a line, so its last wanted byte may be a line on.
        prefetch_line(start.wrapping_add(len.saturating_sub(1)));
    }

    /// Ciphertext and tag.
    pub(crate) fn sealed(&self) -> &[u8] {
        &self.0[HEADER_BYTES + self.key_len()..]
    }

    fn key_len_field(&self) -> u16 {
        u16::from_le_bytes([self.0[KEY_LEN_AT], self.0[KEY_LEN_AT + 1]])
    }

    fn key_len(&self) -> usize {
        usize::from(self.key_len_field() & !TOMBSTONE_BIT)
    }

    fn associated_data(&self) -> &[u8] {
        &self.0[KEY_LEN_AT..HEADER_BYTES + self.key_len()]
    }

    /// Opens the value into `out` (cleared first). The caller owns the plaintext and wipes it
    /// once it has been sent.
    pub(crate) fn open_into(
        &self,
        aead_key: &LessSafeKey,
        shard: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Unreadable> {
        if self.sealed().len() > out.capacity() {
            // Growing would free the old buffer unwiped, perhaps with an earlier value in it.
            out.zeroize();
        }
        out.clear();
        if self.is_tombstone() {
            return Err(Unreadable);
        }
        out.extend_from_slice(self.sealed());
        let nonce = RecordNonce {
            shard,
            counter: self.seal_counter(),
        };
        match aead_key.open_in_place(nonce.to_ring(), Aad::from(self.associated_data()), out) {
            Ok(plain) => {
                let len = plain.len();
                out.truncate(len);
                Ok(())
            }
            Err(_) => {
                out.zeroize();
                out.clear();
                Err(Unreadable)
            }
        }
    }

    /// The same value under a new expiry and version (`EXPIRE`), sealed again with a new nonce
    /// under the key of the new expiry's epoch. The plaintext exists only inside the new
    /// record's buffer, between opening and sealing there in place.
    pub(crate) fn reseal(
        &self,
        old_key: &LessSafeKey,
        new_key: &LessSafeKey,
        shard: u32,
        nonce: RecordNonce,
        stamp: RecordStamp,
    ) -> Result<Self, Unreadable> {
        if self.is_tombstone() {
            return Err(Unreadable);
        }
        let key_len = self.key_len();
        let body_at = HEADER_BYTES + key_len;
        let old_nonce = RecordNonce {
            shard,
            counter: self.seal_counter(),
        };
        let mut bytes = self.0.clone();
        {
            let (head, body) = bytes.split_at_mut(body_at);
            let aad = Aad::from(&head[KEY_LEN_AT..]);
            if old_key
                .open_in_place(old_nonce.to_ring(), aad, body)
                .is_err()
            {
                bytes.zeroize();
                return Err(Unreadable);
            }
        }
        // Rewrite the header around the unchanged key, then seal the body in place.
        write_seal_fields(&mut bytes, nonce.counter, stamp);
        seal_body(new_key, nonce, &mut bytes, key_len);
        Ok(Self(bytes))
    }

    /// Test hook: the raw bytes, for tampering tests.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// The nonce of one seal: the shard id and that shard's seal counter (below 2^48). Unique under any
/// key of the process as long as the counter never repeats within a shard (see `NonceCounter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RecordNonce {
    pub(crate) shard: u32,
    pub(crate) counter: u64,
}

impl RecordNonce {
    pub(crate) fn to_bytes(self) -> [u8; NONCE_LEN] {
        let mut bytes = [0u8; NONCE_LEN];
        bytes[..4].copy_from_slice(&self.shard.to_le_bytes());
        bytes[4..].copy_from_slice(&self.counter.to_le_bytes());
        bytes
    }

    fn to_ring(self) -> Nonce {
        Nonce::assume_unique_for_key(self.to_bytes())
    }
}

/// A shard's seal counter: every seal takes the next value, so nonces never repeat.
#[derive(Debug)]
pub(crate) struct NonceCounter {
    shard: u32,
    next: u64,
}

impl NonceCounter {
    pub(crate) fn new(shard: u32) -> Self {
        Self { shard, next: 0 }
    }

    /// The next nonce, or `None` once all 2^48 are used: a nonce must not wrap. At a million
    /// seals a second that is nine years of one shard's life; a restart starts new keys.
    pub(crate) fn take(&mut self) -> Option<RecordNonce> {
        let counter = self.next;
        if counter >= SEAL_COUNTER_LIMIT {
            return None;
        }
        self.next = counter + 1;
        Some(RecordNonce {
            shard: self.shard,
            counter,
        })
    }
}

fn write_header(bytes: &mut [u8], counter: u64, key: &[u8], tombstone: bool, stamp: RecordStamp) {
    debug_assert!(
        key.len() <= KEY_BYTES_LIMIT,
        "keys are checked against the limits"
    );
    let mut key_len = (key.len() & KEY_BYTES_LIMIT) as u16;
    if tombstone {
        key_len |= TOMBSTONE_BIT;
    }
    bytes[KEY_LEN_AT..KEY_LEN_AT + 2].copy_from_slice(&key_len.to_le_bytes());
    bytes[HEADER_BYTES..HEADER_BYTES + key.len()].copy_from_slice(key);
    write_seal_fields(bytes, counter, stamp);
}

/// The fields that change when a value is sealed again: nonce counter, expiry and version.
fn write_seal_fields(bytes: &mut [u8], counter: u64, stamp: RecordStamp) {
    debug_assert!(
        counter < SEAL_COUNTER_LIMIT,
        "NonceCounter stops below the limit"
    );
    bytes[COUNTER_AT..COUNTER_AT + COUNTER_BYTES]
        .copy_from_slice(&counter.to_le_bytes()[..COUNTER_BYTES]);
    bytes[EXPIRES_AT..EXPIRES_AT + 4].copy_from_slice(&stamp.expiry_offset_ms.to_le_bytes());
    bytes[CLOCK_AT..CLOCK_AT + 8].copy_from_slice(&stamp.version.clock.to_le_bytes());
    bytes[NODE_AT..NODE_AT + 8].copy_from_slice(&stamp.version.node.to_le_bytes());
}

/// Encrypts the body (everything between the key and the tag) in place and writes the tag.
fn seal_body(aead_key: &LessSafeKey, nonce: RecordNonce, bytes: &mut [u8], key_len: usize) {
    let body_at = HEADER_BYTES + key_len;
    let tag_at = bytes.len() - TAG_BYTES;
    let (head, rest) = bytes.split_at_mut(body_at);
    let (body, tag_out) = rest.split_at_mut(tag_at - body_at);
    let aad = Aad::from(&head[KEY_LEN_AT..]);
    // Sealing fails only for inputs over AES-GCM's 64 GiB limit; values are capped far below.
    match aead_key.seal_in_place_separate_tag(nonce.to_ring(), aad, body) {
        Ok(tag) => tag_out.copy_from_slice(tag.as_ref()),
        Err(_) => unreachable!("value exceeds AES-GCM's length limit despite the value cap"),
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{UnboundKey, AES_256_GCM};

    fn key(byte: u8) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[byte; 32]).expect("key"))
    }

    fn nonce(counter: u64) -> RecordNonce {
        RecordNonce { shard: 3, counter }
    }

    fn stamp(expires_ms: u64, version: Version) -> RecordStamp {
        RecordStamp::new(expires_ms, version).expect("fits")
    }

    #[test]
    fn sealed_value_opens_to_the_plaintext() {
        let k = key(1);
        let v = Version::new(10, 0, 1);
        let rec = SealedRecord::seal(&k, nonce(5), b"key", b"hello", stamp(1_000, v));
        assert_eq!(rec.key(), b"key");
        assert_eq!(rec.expires_ms(), 1_000);
        assert_eq!(rec.version(), v);
        assert_eq!(rec.seal_counter(), 5);
        assert_eq!(rec.value_len(), 5);
        assert!(!rec.is_tombstone());
        let mut out = Vec::new();
        rec.open_into(&k, 3, &mut out).expect("opens");
        assert_eq!(out, b"hello");
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext() {
        let k = key(1);
        let plain = b"a secret value that must not appear at rest";
        let rec = SealedRecord::seal(&k, nonce(0), b"k", plain, stamp(1, Version::default()));
        assert!(!rec.0.windows(plain.len()).any(|w| w == plain));
    }

    #[test]
    fn opening_with_another_shard_or_key_fails() {
        let k = key(1);
        let rec = SealedRecord::seal(&k, nonce(0), b"k", b"v", stamp(1, Version::default()));
        let mut out = Vec::new();
        assert_eq!(rec.open_into(&k, 4, &mut out), Err(Unreadable));
        assert_eq!(rec.open_into(&key(2), 3, &mut out), Err(Unreadable));
        assert!(out.is_empty());
    }

    #[test]
    fn reseal_keeps_the_value_under_a_new_expiry_and_nonce() {
        let (k1, k2) = (key(1), key(2));
        let rec = SealedRecord::seal(
            &k1,
            nonce(0),
            b"key",
            b"value",
            stamp(1_000, Version::new(1, 0, 1)),
        );
        let v2 = Version::new(2, 0, 1);
        let re = rec
            .reseal(&k1, &k2, 3, nonce(1), stamp(5_000, v2))
            .expect("reseal");
        assert_eq!(
            (re.expires_ms(), re.version(), re.seal_counter()),
            (5_000, v2, 1)
        );
        let mut out = Vec::new();
        re.open_into(&k2, 3, &mut out).expect("opens");
        assert_eq!(out, b"value");
        assert!(re.open_into(&k1, 3, &mut out).is_err());
    }

    #[test]
    fn tombstone_has_no_value() {
        let t = SealedRecord::tombstone(b"gone", stamp(9, Version::new(3, 0, 0)));
        assert!(t.is_tombstone());
        assert_eq!(
            (t.key(), t.expires_ms(), t.value_len()),
            (&b"gone"[..], 9, 0)
        );
        assert!(t.open_into(&key(1), 3, &mut Vec::new()).is_err());
    }

    #[test]
    fn nonce_counter_never_repeats_and_never_wraps() {
        let mut c = NonceCounter::new(7);
        let a = c.take().expect("nonce");
        let b = c.take().expect("nonce");
        assert_ne!(a.to_bytes(), b.to_bytes());
        c.next = SEAL_COUNTER_LIMIT - 1;
        let last = c.take().expect("the last nonce");
        assert_eq!(last.counter, SEAL_COUNTER_LIMIT - 1);
        assert!(c.take().is_none());
        assert!(c.take().is_none(), "stays used up");
    }

    #[test]
    fn the_header_round_trips_its_fields_at_their_limits() {
        let k = key(1);
        let long_key = vec![b'k'; KEY_BYTES_LIMIT];
        let v = Version {
            clock: u64::MAX,
            node: u64::MAX - 1,
        };
        let late = Version::new(1 << 40, 7, 9);
        for (expires_ms, version) in [
            (v.physical_ms() + i32::MAX as u64, v),
            (late.physical_ms() - (1 << 31), late),
        ] {
            let rec = SealedRecord::seal(
                &k,
                nonce(SEAL_COUNTER_LIMIT - 1),
                &long_key,
                b"value",
                stamp(expires_ms, version),
            );
            assert_eq!(rec.key(), &long_key[..]);
            assert_eq!(rec.expires_ms(), expires_ms);
            assert_eq!(rec.version(), version);
            assert_eq!(rec.seal_counter(), SEAL_COUNTER_LIMIT - 1);
            assert!(!rec.is_tombstone());
            let mut out = Vec::new();
            rec.open_into(&k, 3, &mut out).expect("opens");
            assert_eq!(out, b"value");
            let t = SealedRecord::tombstone(&long_key, stamp(expires_ms, version));
            assert!(t.is_tombstone());
            assert_eq!((t.key(), t.expires_ms()), (&long_key[..], expires_ms));
        }
    }

    #[test]
    fn an_expiry_more_than_24_days_from_its_version_does_not_fit() {
        let v = Version::new(10_000_000_000, 0, 1);
        let ms = v.physical_ms();
        assert!(RecordStamp::new(ms + (1 << 31) - 1, v).is_some());
        assert!(RecordStamp::new(ms + (1 << 31), v).is_none());
        assert!(RecordStamp::new(ms - (1 << 31), v).is_some());
        assert!(RecordStamp::new(ms - (1 << 31) - 1, v).is_none());
        assert!(RecordStamp::new(u64::MAX, v).is_none());
    }

    #[test]
    fn a_record_with_its_tombstone_bit_or_expiry_altered_does_not_open() {
        let k = key(1);
        let mut rec = SealedRecord::seal(&k, nonce(0), b"k", b"v", stamp(1, Version::default()));
        rec.0[KEY_LEN_AT + 1] ^= 0x80;
        assert!(rec.is_tombstone());
        rec.0[KEY_LEN_AT + 1] ^= 0x80;
        rec.0[EXPIRES_AT] ^= 1;
        assert_eq!(rec.open_into(&k, 3, &mut Vec::new()), Err(Unreadable));
    }
}
