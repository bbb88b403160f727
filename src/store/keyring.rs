//! Crypto-shredding: one AES-256-GCM data key per expiry epoch, destroyed once the epoch passes.
//! Owns: the epoch key chain, the per-epoch key objects, and the wiping of both.
//! Never touches: records, the index or the clock (epochs are handed in by the store).
//!
//! # Why a one-way chain *and* wiping
//! Epoch keys come from a hash chain: `link[e + 1] = SHA-256(CHAIN_LABEL || link[e])`, with
//! `link[first]` drawn at random per store, and `data_key[e] = SHA-256(DATA_LABEL || link[e] || e)`.
//! The ring keeps only the link of the oldest live epoch; when an epoch passes the link is hashed
//! forward in place, so no earlier epoch's key can be recomputed from anything the process holds.
//! `ring` cannot wipe its key objects, and an AES key object holds the raw key in its first round
//! keys, so each one lives in its own heap allocation (`SecretBox`) that is overwritten with
//! zeroes before it is freed. Temporaries that `ring` and our derivation leave on the stack are
//! overwritten by `scrub_stack` right after every derivation.

use std::alloc::{dealloc, Layout};
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::NonNull;

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use ring::digest::{Context, SHA256};
use zeroize::Zeroize;

const CHAIN_LABEL: &[u8] = b"repram/epoch-chain/v1";
const DATA_LABEL: &[u8] = b"repram/epoch-data-key/v1";
const SKIP_LABEL: &[u8] = b"repram/epoch-chain-skip/v1";
/// Bytes of stack overwritten after a derivation: deeper than anything `ring`'s SHA-256 and
/// AES-GCM key set-up use (a few KiB).
const STACK_SCRUB_BYTES: usize = 32 * 1024;

/// Random secret that starts a store's key chain. It lives on the heap from the moment it is
/// drawn, so moving the seed around never leaves copies of it on the stack, and it becomes the
/// chain's first link in place. Wiped when dropped.
pub struct KeySeed(SecretBox<[u8; 32]>);

impl KeySeed {
    /// A fresh seed from the operating system's generator, written straight into its box.
    pub fn random() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut seed = SecretBox::new([0u8; 32]);
        ring::rand::SystemRandom::new().fill(&mut seed.as_mut()[..])?;
        Ok(Self(seed))
    }

    /// A fixed seed, for tests and the simulator, where runs must repeat. Not in release
    /// builds: two stores with the same seed and shard id would reuse nonces under one key.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let seed = Self(SecretBox::new(bytes));
        bytes.zeroize();
        seed
    }
}

/// Key material that may be boxed by `SecretBox`: it owns no heap memory and needs no `Drop`,
/// so wiping its bytes and freeing the allocation without running a destructor loses nothing.
/// (`ring`'s AEAD key objects are plain arrays of round keys and GCM tables; checked against
/// ring 0.17's sources.)
///
/// # Safety
/// Implement only for types that own no heap memory and whose destructor does nothing.
pub(crate) unsafe trait FlatSecret {}
// SAFETY: ring 0.17's `LessSafeKey` is plain round-key and GCM-table arrays plus a `&'static`
// algorithm reference; it has no `Drop` impl and owns no heap memory.
unsafe impl FlatSecret for LessSafeKey {}
// SAFETY: a byte array owns nothing.
unsafe impl FlatSecret for [u8; 32] {}

/// A heap allocation holding one secret, overwritten with zeroes before it is freed.
pub(crate) struct SecretBox<T: FlatSecret> {
    ptr: NonNull<T>,
}

impl<T: FlatSecret> SecretBox<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            ptr: NonNull::from(Box::leak(Box::new(value))),
        }
    }

    fn as_mut(&mut self) -> &mut T {
        // SAFETY: `ptr` came from `Box::leak`, is valid and aligned for `T`, and is uniquely
        // owned by this box; `&mut self` guarantees no other reference is live.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: FlatSecret> Deref for SecretBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: as in `as_mut`; shared access through `&self`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: FlatSecret> Drop for SecretBox<T> {
    fn drop(&mut self) {
        let size = std::mem::size_of::<T>();
        // SAFETY: the allocation holds `size` bytes that this box owns exclusively. Viewing them
        // as `MaybeUninit<u8>` is valid whatever they hold, padding included, and the value is
        // never read as `T` again after being zeroed.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<MaybeUninit<u8>>(), size)
        };
        bytes.zeroize();
        if size != 0 {
            // SAFETY: the pointer was allocated by `Box::new` with `Layout::new::<T>()`. `T`'s
            // destructor is skipped on purpose: `T: FlatSecret` owns no heap memory, and its
            // bytes are now zero, which need not be a valid `T`.
            unsafe { dealloc(self.ptr.as_ptr().cast::<u8>(), Layout::new::<T>()) }
        }
    }
}

// SAFETY: a `SecretBox<T>` owns its `T` like a `Box<T>` does.
unsafe impl<T: FlatSecret + Send> Send for SecretBox<T> {}

/// The data keys of one store, one per expiry epoch, derived on first use.
pub(crate) struct EpochKeyring {
    /// Epoch of `link`: the oldest epoch whose key can still be derived.
    link_epoch: u64,
    link: SecretBox<[u8; 32]>,
    /// The link of the furthest epoch derived so far (`tip_epoch >= link_epoch`), so a new epoch
    /// at the far end costs one hash step instead of a walk from the oldest link. It is a
    /// *later* link, from which no passed epoch can be recomputed.
    tip_epoch: u64,
    tip: SecretBox<[u8; 32]>,
    /// `keys[i]` is the key of epoch `link_epoch + i`, if one was derived.
    keys: VecDeque<Option<SecretBox<LessSafeKey>>>,
    keys_held: usize,
    keys_destroyed: u64,
    /// How many epochs past `link_epoch` a key may be asked for.
    window_epochs: u64,
}

/// A key for an epoch that has passed (its key is gone) or lies beyond the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyUnavailable {
    Shredded,
    BeyondWindow,
}

impl EpochKeyring {
    pub(crate) fn new(seed: KeySeed, first_epoch: u64, window_epochs: u64) -> Self {
        let mut tip = SecretBox::new([0u8; 32]);
        copy_link(&seed.0, tip.as_mut());
        Self {
            link_epoch: first_epoch,
            link: seed.0,
            tip_epoch: first_epoch,
            tip,
            keys: VecDeque::new(),
            keys_held: 0,
            keys_destroyed: 0,
            window_epochs,
        }
    }

    /// The oldest epoch whose key still exists or can be derived.
    pub(crate) fn oldest_epoch(&self) -> u64 {
        self.link_epoch
    }

    /// Number of epoch keys currently derived and held.
    pub(crate) fn keys_held(&self) -> usize {
        self.keys_held
    }

    /// Number of epoch keys destroyed since the ring was made.
    pub(crate) fn keys_destroyed(&self) -> u64 {
        self.keys_destroyed
    }

    /// The key that seals values expiring in `epoch`, derived on first use.
    pub(crate) fn sealing_key(&mut self, epoch: u64) -> Result<&LessSafeKey, KeyUnavailable> {
        let offset = self.offset_of(epoch)?;
        if self.keys.len() <= offset {
            self.keys.resize_with(offset + 1, || None);
        }
        if self.keys[offset].is_none() {
            let key = if epoch >= self.tip_epoch {
                let steps = epoch - self.tip_epoch;
                self.tip_epoch = epoch;
                derive_scrubbed(self.tip.as_mut(), steps, epoch, Start::Advance)
            } else {
                derive_scrubbed(self.link.as_mut(), offset as u64, epoch, Start::Keep)
            };
            self.keys[offset] = Some(key);
            self.keys_held += 1;
        }
        match &self.keys[offset] {
            Some(key) => Ok(key),
            None => Err(KeyUnavailable::Shredded),
        }
    }

    /// The key that opens values expiring in `epoch`, if it exists (it was used to seal them).
    pub(crate) fn opening_key(&self, epoch: u64) -> Option<&LessSafeKey> {
        let offset = self.offset_of(epoch).ok()?;
        self.keys.get(offset)?.as_deref()
    }

    /// Destroys the keys of every epoch before `epoch` and moves the chain forward so they can
    /// never be derived again. Returns how many derived keys were destroyed.
    pub(crate) fn shred_before(&mut self, epoch: u64) -> usize {
        if epoch <= self.link_epoch {
            return 0;
        }
        let steps = epoch - self.link_epoch;
        let passed = usize::try_from(steps).map_or(self.keys.len(), |s| s.min(self.keys.len()));
        // Dropping a SecretBox wipes the key object before freeing it.
        let destroyed = self.keys.drain(..passed).flatten().count();
        self.keys_held -= destroyed;
        self.keys_destroyed += destroyed as u64;
        advance_scrubbed(&mut self.link, steps, epoch, self.window_epochs);
        self.link_epoch = epoch;
        if self.tip_epoch < epoch {
            copy_link(&self.link, self.tip.as_mut());
            self.tip_epoch = epoch;
        }
        destroyed
    }

    fn offset_of(&self, epoch: u64) -> Result<usize, KeyUnavailable> {
        let offset = epoch
            .checked_sub(self.link_epoch)
            .ok_or(KeyUnavailable::Shredded)?;
        if offset > self.window_epochs {
            return Err(KeyUnavailable::BeyondWindow);
        }
        usize::try_from(offset).map_err(|_| KeyUnavailable::BeyondWindow)
    }

    /// Test hook: the raw data key and chain link of `epoch`, each byte XORed with `mask`, so a
    /// test can look for them in memory without holding a copy itself. `None` once shredded.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn key_material_masked(&self, epoch: u64, mask: u8) -> Option<([u8; 32], [u8; 32])> {
        let offset = self.offset_of(epoch).ok()? as u64;
        let mut out = ([0u8; 32], [0u8; 32]);
        derive_masked(&self.link, offset, epoch, mask, &mut out);
        scrub_stack();
        Some(out)
    }
}

/// Whether a derivation moves its starting link forward to the derived epoch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Keep,
    Advance,
}

/// Derives the key `steps` epochs past the link `start`, then overwrites the stack that the
/// derivation used. The derivation runs in a frame below this one, so the scrub reaches it.
#[inline(never)]
fn derive_scrubbed(
    start: &mut [u8; 32],
    steps: u64,
    epoch: u64,
    mode: Start,
) -> SecretBox<LessSafeKey> {
    let key = derive_key(start, steps, epoch, mode);
    scrub_stack();
    key
}

#[inline(never)]
fn derive_key(start: &mut [u8; 32], steps: u64, epoch: u64, mode: Start) -> SecretBox<LessSafeKey> {
    let mut current = link_after(start, steps);
    if mode == Start::Advance {
        start.copy_from_slice(&current);
    }
    let mut data_key = data_key_of(&current, epoch);
    current.zeroize();
    // An AES-256 key is 32 bytes; `UnboundKey::new` only fails on a wrong length.
    let key = match UnboundKey::new(&AES_256_GCM, &data_key) {
        Ok(unbound) => SecretBox::new(LessSafeKey::new(unbound)),
        Err(_) => unreachable!("AES-256-GCM takes a 32-byte key"),
    };
    data_key.zeroize();
    key
}

/// Copies one boxed link into another without a stack temporary.
#[inline(never)]
fn copy_link(from: &[u8; 32], to: &mut [u8; 32]) {
    to.copy_from_slice(from);
}

#[inline(never)]
fn advance_scrubbed(link: &mut SecretBox<[u8; 32]>, steps: u64, epoch: u64, window: u64) {
    advance_link(link.as_mut(), steps, epoch, window);
    scrub_stack();
}

#[inline(never)]
fn advance_link(link: &mut [u8; 32], steps: u64, epoch: u64, window: u64) {
    if steps > window {
        // Every epoch in between has passed and none of their keys will be needed: one step
        // of a separate one-way function reaches `epoch` without hashing through them all.
        let mut ctx = Context::new(&SHA256);
        ctx.update(SKIP_LABEL);
        ctx.update(&link[..]);
        ctx.update(&epoch.to_le_bytes());
        link.copy_from_slice(ctx.finish().as_ref());
    } else {
        for _ in 0..steps {
            chain_step(link);
        }
    }
}

/// The chain link `steps` epochs after `link`. The caller wipes the result.
fn link_after(link: &[u8; 32], steps: u64) -> [u8; 32] {
    let mut current = *link;
    for _ in 0..steps {
        chain_step(&mut current);
    }
    current
}

fn chain_step(link: &mut [u8; 32]) {
    let mut ctx = Context::new(&SHA256);
    ctx.update(CHAIN_LABEL);
    ctx.update(&link[..]);
    link.copy_from_slice(ctx.finish().as_ref());
}

fn data_key_of(link: &[u8; 32], epoch: u64) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(DATA_LABEL);
    ctx.update(&link[..]);
    ctx.update(&epoch.to_le_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(any(test, feature = "test-hooks"))]
#[inline(never)]
fn derive_masked(
    link: &[u8; 32],
    offset: u64,
    epoch: u64,
    mask: u8,
    out: &mut ([u8; 32], [u8; 32]),
) {
    let mut current = link_after(link, offset);
    let mut data_key = data_key_of(&current, epoch);
    for i in 0..32 {
        out.0[i] = data_key[i] ^ mask;
        out.1[i] = current[i] ^ mask;
    }
    data_key.zeroize();
    current.zeroize();
}

/// Overwrites the `STACK_SCRUB_BYTES` below the caller's frame, where the functions it just
/// called kept their temporaries (key bytes among them).
#[inline(never)]
fn scrub_stack() {
    let mut area = [MaybeUninit::<u64>::uninit(); STACK_SCRUB_BYTES / 8];
    area.zeroize();
    std::hint::black_box(&area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{Aad, Nonce};

    fn ring_with_seed(byte: u8) -> EpochKeyring {
        EpochKeyring::new(KeySeed::from_bytes([byte; 32]), 100, 10)
    }

    fn seal_probe(key: &LessSafeKey) -> Vec<u8> {
        let mut data = b"probe".to_vec();
        let nonce = Nonce::assume_unique_for_key([0; 12]);
        key.seal_in_place_append_tag(nonce, Aad::empty(), &mut data)
            .expect("seal");
        data
    }

    #[test]
    fn the_same_seed_derives_the_same_keys() {
        let mut a = ring_with_seed(1);
        let mut b = ring_with_seed(1);
        let pa = seal_probe(a.sealing_key(103).expect("key"));
        let pb = seal_probe(b.sealing_key(103).expect("key"));
        assert_eq!(pa, pb);
    }

    #[test]
    fn each_epoch_has_its_own_key() {
        let mut ring = ring_with_seed(1);
        let p1 = seal_probe(ring.sealing_key(101).expect("key"));
        let p2 = seal_probe(ring.sealing_key(102).expect("key"));
        assert_ne!(p1, p2);
    }

    #[test]
    fn keys_after_a_shred_match_keys_before_it() {
        let mut a = ring_with_seed(3);
        let mut b = ring_with_seed(3);
        let before = seal_probe(a.sealing_key(105).expect("key"));
        b.shred_before(104);
        let after = seal_probe(b.sealing_key(105).expect("key"));
        assert_eq!(
            before, after,
            "moving the chain forward must not change later keys"
        );
    }

    #[test]
    fn shredded_epochs_cannot_be_keyed_again() {
        let mut ring = ring_with_seed(2);
        ring.sealing_key(100).expect("key");
        ring.sealing_key(101).expect("key");
        assert_eq!(ring.shred_before(101), 1);
        assert!(ring.opening_key(100).is_none());
        assert_eq!(ring.sealing_key(100).err(), Some(KeyUnavailable::Shredded));
        assert!(ring.opening_key(101).is_some());
    }

    #[test]
    fn shredding_keeps_the_keys_of_later_epochs() {
        let mut ring = ring_with_seed(2);
        let probe = seal_probe(ring.sealing_key(102).expect("key"));
        ring.sealing_key(100).expect("key");
        assert_eq!(ring.shred_before(102), 1);
        let held = ring.opening_key(102).expect("epoch 102 is still live");
        assert_eq!(seal_probe(held), probe);
    }

    #[test]
    fn keys_below_the_tip_match_keys_derived_in_order() {
        let mut a = ring_with_seed(6);
        let mut b = ring_with_seed(6);
        // a derives far first (moving its tip), then a nearer epoch from the oldest link.
        let far_a = seal_probe(a.sealing_key(108).expect("key"));
        let near_a = seal_probe(a.sealing_key(103).expect("key"));
        let near_b = seal_probe(b.sealing_key(103).expect("key"));
        let far_b = seal_probe(b.sealing_key(108).expect("key"));
        assert_eq!((near_a, far_a), (near_b, far_b));
        assert_eq!(a.keys_held(), 2);
        a.shred_before(109);
        assert_eq!((a.keys_held(), a.keys_destroyed()), (0, 2));
        // After the tip itself has passed, it restarts from the oldest link.
        let mut c = ring_with_seed(6);
        c.shred_before(109);
        assert_eq!(
            seal_probe(a.sealing_key(110).expect("key")),
            seal_probe(c.sealing_key(110).expect("key"))
        );
    }

    #[test]
    fn epochs_beyond_the_window_are_refused() {
        let mut ring = ring_with_seed(2);
        assert_eq!(
            ring.sealing_key(111).err(),
            Some(KeyUnavailable::BeyondWindow)
        );
        assert!(ring.sealing_key(110).is_ok());
    }

    #[test]
    fn a_long_jump_skips_the_chain_without_reusing_keys() {
        let mut ring = ring_with_seed(4);
        let old = seal_probe(ring.sealing_key(100).expect("key"));
        ring.shred_before(1_000_000);
        let new = seal_probe(ring.sealing_key(1_000_000).expect("key"));
        assert_ne!(old, new);
        assert_eq!(ring.oldest_epoch(), 1_000_000);
    }
}
