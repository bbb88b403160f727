//! One entry at rest: header, key and AES-256-GCM ciphertext in a single allocation.
//! Owns: the record layout, sealing, opening and re-sealing of values, nonce construction.
//! Never touches: the index, the expiry wheel or the key ring (keys are handed in).
//!
//! Layout of a `SealedRecord` (all integers little-endian):
//!
//! ```text
//! [0..8)    seal counter   nonce = shard id (4 B) || seal counter (8 B)
//! [8..10)   key length
//! [10]      flags          ┐ bit 0: tombstone (no ciphertext follows)
//! [11..19)  expires at, ms │
//! [19..27)  version clock  │ associated data: binds the ciphertext to its
//! [27..35)  version node   │ flags, expiry, version and key
//! [35..)    key            ┘
//! [..]      ciphertext || 16-byte tag
//! ```

use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use zeroize::Zeroize;

use crate::version::Version;

pub(crate) const TAG_BYTES: usize = 16;
const COUNTER_AT: usize = 0;
const KEY_LEN_AT: usize = 8;
const FLAGS_AT: usize = 10;
pub(crate) const EXPIRES_AT: usize = 11;
const CLOCK_AT: usize = 19;
const NODE_AT: usize = 27;
pub(crate) const HEADER_BYTES: usize = 35;
const FLAG_TOMBSTONE: u8 = 1;

/// The sealed value failed to authenticate: the record was altered, moved to another key or
/// expiry, or its epoch key is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreadable;

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
        expires_ms: u64,
        version: Version,
    ) -> Self {
        let total = HEADER_BYTES + key.len() + plaintext.len() + TAG_BYTES;
        let mut bytes = vec![0u8; total].into_boxed_slice();
        write_header(&mut bytes, nonce.counter, key, 0, expires_ms, version);
        let body_at = HEADER_BYTES + key.len();
        bytes[body_at..body_at + plaintext.len()].copy_from_slice(plaintext);
        seal_body(aead_key, nonce, &mut bytes, key.len());
        Self(bytes)
    }

    /// A tombstone: a version with no value, kept until the deleted value would have expired.
    pub(crate) fn tombstone(key: &[u8], expires_ms: u64, version: Version) -> Self {
        let mut bytes = vec![0u8; HEADER_BYTES + key.len()].into_boxed_slice();
        write_header(&mut bytes, 0, key, FLAG_TOMBSTONE, expires_ms, version);
        Self(bytes)
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.0[HEADER_BYTES..HEADER_BYTES + self.key_len()]
    }

    pub(crate) fn expires_ms(&self) -> u64 {
        read_u64(&self.0, EXPIRES_AT)
    }

    pub(crate) fn version(&self) -> Version {
        Version {
            clock: read_u64(&self.0, CLOCK_AT),
            node: read_u64(&self.0, NODE_AT),
        }
    }

    pub(crate) fn seal_counter(&self) -> u64 {
        read_u64(&self.0, COUNTER_AT)
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.0[FLAGS_AT] & FLAG_TOMBSTONE != 0
    }

    /// Length of the plaintext value (0 for a tombstone).
    pub(crate) fn value_len(&self) -> usize {
        self.sealed().len().saturating_sub(TAG_BYTES)
    }

    /// Bytes of the allocation.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Ciphertext and tag.
    pub(crate) fn sealed(&self) -> &[u8] {
        &self.0[HEADER_BYTES + self.key_len()..]
    }

    fn key_len(&self) -> usize {
        usize::from(u16::from_le_bytes([
            self.0[KEY_LEN_AT],
            self.0[KEY_LEN_AT + 1],
        ]))
    }

    fn associated_data(&self) -> &[u8] {
        &self.0[FLAGS_AT..HEADER_BYTES + self.key_len()]
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
        expires_ms: u64,
        version: Version,
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
            let aad = Aad::from(&head[FLAGS_AT..]);
            if old_key
                .open_in_place(old_nonce.to_ring(), aad, body)
                .is_err()
            {
                bytes.zeroize();
                return Err(Unreadable);
            }
        }
        // Rewrite the header around the unchanged key, then seal the body in place.
        write_seal_fields(&mut bytes, nonce.counter, expires_ms, version);
        seal_body(new_key, nonce, &mut bytes, key_len);
        Ok(Self(bytes))
    }

    /// Test hook: the raw bytes, for tampering tests.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// The nonce of one seal: the shard id and that shard's 64-bit seal counter. Unique under any
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

    /// The next nonce, or `None` once all 2^64 are used (never, at any real rate, but a nonce
    /// must not wrap).
    pub(crate) fn take(&mut self) -> Option<RecordNonce> {
        let counter = self.next;
        self.next = self.next.checked_add(1)?;
        Some(RecordNonce {
            shard: self.shard,
            counter,
        })
    }
}

fn write_header(
    bytes: &mut [u8],
    counter: u64,
    key: &[u8],
    flags: u8,
    expires_ms: u64,
    version: Version,
) {
    debug_assert!(key.len() <= usize::from(u16::MAX));
    let key_len = key.len() as u16;
    bytes[KEY_LEN_AT..KEY_LEN_AT + 2].copy_from_slice(&key_len.to_le_bytes());
    bytes[FLAGS_AT] = flags;
    bytes[HEADER_BYTES..HEADER_BYTES + key.len()].copy_from_slice(key);
    write_seal_fields(bytes, counter, expires_ms, version);
}

/// The fields that change when a value is sealed again: nonce counter, expiry and version.
fn write_seal_fields(bytes: &mut [u8], counter: u64, expires_ms: u64, version: Version) {
    bytes[COUNTER_AT..COUNTER_AT + 8].copy_from_slice(&counter.to_le_bytes());
    bytes[EXPIRES_AT..EXPIRES_AT + 8].copy_from_slice(&expires_ms.to_le_bytes());
    bytes[CLOCK_AT..CLOCK_AT + 8].copy_from_slice(&version.clock.to_le_bytes());
    bytes[NODE_AT..NODE_AT + 8].copy_from_slice(&version.node.to_le_bytes());
}

/// Encrypts the body (everything between the key and the tag) in place and writes the tag.
fn seal_body(aead_key: &LessSafeKey, nonce: RecordNonce, bytes: &mut [u8], key_len: usize) {
    let body_at = HEADER_BYTES + key_len;
    let tag_at = bytes.len() - TAG_BYTES;
    let (head, rest) = bytes.split_at_mut(body_at);
    let (body, tag_out) = rest.split_at_mut(tag_at - body_at);
    let aad = Aad::from(&head[FLAGS_AT..]);
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

    #[test]
    fn sealed_value_opens_to_the_plaintext() {
        let k = key(1);
        let v = Version::new(10, 0, 1);
        let rec = SealedRecord::seal(&k, nonce(5), b"key", b"hello", 1_000, v);
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
        let rec = SealedRecord::seal(&k, nonce(0), b"k", plain, 1, Version::default());
        assert!(!rec.0.windows(plain.len()).any(|w| w == plain));
    }

    #[test]
    fn opening_with_another_shard_or_key_fails() {
        let k = key(1);
        let rec = SealedRecord::seal(&k, nonce(0), b"k", b"v", 1, Version::default());
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
            1_000,
            Version::new(1, 0, 1),
        );
        let v2 = Version::new(2, 0, 1);
        let re = rec
            .reseal(&k1, &k2, 3, nonce(1), 5_000, v2)
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
        let t = SealedRecord::tombstone(b"gone", 9, Version::new(3, 0, 0));
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
        c.next = u64::MAX;
        assert!(c.take().is_none());
    }
}
