//! Expiry index: a two-level timing wheel of intrusive lists over slab indices.
//! Owns: which entry expires when, and the order in which expired entries are reclaimed.
//! Never touches: records, keys or the clock (expiries and `now` are handed in).
//!
//! Level 1 holds one list per expiry epoch; level 0 is a ring of fine slots
//! (`EXPIRY_SLOT_MS` each) covering the epoch being reaped and the next. While the reaper is in
//! epoch `e`, epoch `e + 1` is cascaded from its coarse list into fine slots, a bounded slice at
//! a time, so a million entries expiring in the same second cost the same per slice as one.
//! Every entry is in exactly one list; links live in `links[index]`, so insertion, removal and
//! cascading are O(1) and nothing ever scans the whole index.

use std::collections::VecDeque;

use super::prefetch::prefetch_line;
use crate::limits::EXPIRY_SLOT_MS;

/// Largest slab index the wheel can link (the top bit of a link marks the fine level).
pub(crate) const INDEX_MAX: u32 = NIL - 1;
const NIL: u32 = 0x7FFF_FFFF;
const FINE_BIT: u32 = 0x8000_0000;

/// Links of one entry: previous (with the fine-level bit) and next.
#[derive(Clone, Copy, Debug)]
struct Link {
    prev_and_level: u32,
    next: u32,
}

impl Link {
    const UNLINKED: Link = Link {
        prev_and_level: NIL,
        next: NIL,
    };

    fn prev(self) -> u32 {
        self.prev_and_level & !FINE_BIT
    }

    fn is_fine(self) -> bool {
        self.prev_and_level & FINE_BIT != 0
    }

    fn set_prev(&mut self, prev: u32) {
        self.prev_and_level = (self.prev_and_level & FINE_BIT) | prev;
    }
}

/// The entries a wheel files: it asks their expiry when cascading and hands back expired ones.
pub(crate) trait FiledEntries {
    fn expires_ms(&self, index: u32) -> u64;
    /// Called for each expired entry once it has been unfiled.
    fn reclaim(&mut self, index: u32);
}

/// What one call to `ExpiryWheel::advance` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WheelProgress {
    /// Work units spent (entries reclaimed or moved, empty slots stepped over).
    pub(crate) work: usize,
    /// Entries handed to the reclaim callback.
    pub(crate) reclaimed: usize,
    /// Expired entries remain because the work budget ran out.
    pub(crate) pending: bool,
}

#[derive(Debug)]
pub(crate) struct ExpiryWheel {
    epoch_ms: u64,
    links: Vec<Link>,
    /// Heads of the fine slots; absolute slot `s` lives at `fine[s % fine.len()]`.
    fine: Box<[u32]>,
    fine_count: usize,
    /// `coarse[i]` heads the list of epoch `fine_open + i`; `coarse[0]` is being cascaded.
    coarse: VecDeque<u32>,
    coarse_count: usize,
    /// Entries of epochs up to this one are inserted into the fine ring.
    fine_open: u64,
    /// Next fine slot to reap; every slot before it is empty.
    reap_slot: u64,
}

impl ExpiryWheel {
    /// Link slots allocated (one per slab slot ever used).
    pub(crate) fn link_slots(&self) -> usize {
        self.links.len()
    }

    pub(crate) fn new(epoch_ms: u64, now_ms: u64) -> Self {
        assert!(epoch_ms >= EXPIRY_SLOT_MS && epoch_ms % EXPIRY_SLOT_MS == 0);
        // The fine ring spans the reaped epoch and the cascaded one: 2 epochs plus one slot.
        let fine_len = usize::try_from(2 * epoch_ms / EXPIRY_SLOT_MS + 1)
            .expect("epoch_ms is validated to a sane range");
        let mut coarse = VecDeque::new();
        coarse.push_back(NIL);
        Self {
            epoch_ms,
            links: Vec::new(),
            fine: vec![NIL; fine_len].into_boxed_slice(),
            fine_count: 0,
            coarse,
            coarse_count: 0,
            fine_open: now_ms / epoch_ms,
            reap_slot: now_ms / EXPIRY_SLOT_MS,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.fine_count + self.coarse_count
    }

    /// Heap bytes held by the wheel itself.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
            + self.fine.len() * 4
            + self.coarse.capacity() * 4
    }

    /// The earliest time at which `advance` can have work to do, or `None` when nothing is
    /// filed. While only later epochs hold entries, that is when the reaper reaches the epoch
    /// before the first of them (its cascade can start then), not every slot.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        if self.len() == 0 {
            return None;
        }
        let next_slot_ms = (self.reap_slot + 1) * EXPIRY_SLOT_MS;
        if self.fine_count > 0 || self.coarse[0] != NIL {
            return Some(next_slot_ms);
        }
        let first = self
            .coarse
            .iter()
            .position(|&head| head != NIL)
            .unwrap_or(1) as u64;
        Some(((self.fine_open + first - 1) * self.epoch_ms).max(next_slot_ms))
    }

    /// Moves an empty wheel's cursors to `now_ms`, so that entries filed after a long idle gap
    /// start from now instead of from the last tick.
    pub(crate) fn catch_up_if_empty(&mut self, now_ms: u64) {
        if self.len() == 0 {
            self.reset_to(now_ms);
        }
    }

    fn reset_to(&mut self, now_ms: u64) {
        self.reap_slot = self.reap_slot.max(now_ms / EXPIRY_SLOT_MS);
        self.fine_open = self
            .fine_open
            .max(self.reap_slot * EXPIRY_SLOT_MS / self.epoch_ms);
        self.coarse.clear();
        self.coarse.push_back(NIL);
    }

    /// Files entry `index`, which expires at `expires_ms` (later than every `now` passed so far).
    pub(crate) fn insert(&mut self, index: u32, expires_ms: u64) {
        debug_assert!(index <= INDEX_MAX);
        let at = index as usize;
        if self.links.len() <= at {
            self.links.resize(at + 1, Link::UNLINKED);
        }
        let epoch = expires_ms / self.epoch_ms;
        if epoch <= self.fine_open {
            let slot = expires_ms / EXPIRY_SLOT_MS;
            debug_assert!(slot >= self.reap_slot, "insert into a reaped slot");
            debug_assert!(
                slot < self.reap_slot + self.fine.len() as u64,
                "fine ring overrun"
            );
            let ring = self.fine_index(slot);
            self.push_front(index, ListRef::Fine(ring));
            self.fine_count += 1;
        } else {
            let i = (epoch - self.fine_open) as usize;
            if self.coarse.len() <= i {
                self.coarse.resize(i + 1, NIL);
            }
            self.push_front(index, ListRef::Coarse(i));
            self.coarse_count += 1;
        }
    }

    /// Unfiles entry `index`, filed with `expires_ms`.
    pub(crate) fn remove(&mut self, index: u32, expires_ms: u64) {
        let link = self.links[index as usize];
        let list = if link.is_fine() {
            self.fine_count -= 1;
            ListRef::Fine(self.fine_index(expires_ms / EXPIRY_SLOT_MS))
        } else {
            self.coarse_count -= 1;
            let epoch = expires_ms / self.epoch_ms;
            debug_assert!(epoch >= self.fine_open);
            ListRef::Coarse((epoch - self.fine_open) as usize)
        };
        self.unlink(index, list);
    }

    /// Refiles entry `index`, filed with `old_expires_ms`, under `new_expires_ms`. When both
    /// fall in the same list it stays where it is: a coarse list holds its epoch in no order
    /// (cascading reads each entry's expiry then), a fine list one 10 ms slot. So an overwrite
    /// with about the same TTL touches no other entry's links.
    pub(crate) fn refile(&mut self, index: u32, old_expires_ms: u64, new_expires_ms: u64) {
        let link = self.links[index as usize];
        let stays = if link.is_fine() {
            // A slot lies within one epoch, which is open while the entry is in the ring.
            new_expires_ms / EXPIRY_SLOT_MS == old_expires_ms / EXPIRY_SLOT_MS
        } else {
            // Not the epoch being cascaded: a new entry there goes straight to a fine slot.
            let epoch = new_expires_ms / self.epoch_ms;
            epoch > self.fine_open && epoch == old_expires_ms / self.epoch_ms
        };
        if !stays {
            self.remove(index, old_expires_ms);
            self.insert(index, new_expires_ms);
        }
    }

    /// Starts loading entry `index`'s links into the CPU's caches (see `Store::prefetch`).
    pub(crate) fn prefetch_links(&self, index: u32) {
        prefetch_line(self.links.as_ptr().wrapping_add(index as usize));
    }

    /// Reclaims expired entries and cascades the next epoch into fine slots, spending at most
    /// `work_max` units.
    pub(crate) fn advance(
        &mut self,
        now_ms: u64,
        work_max: usize,
        entries: &mut impl FiledEntries,
    ) -> WheelProgress {
        let mut progress = WheelProgress::default();
        while progress.work < work_max {
            if self.reap_step(now_ms, &mut progress, entries) {
                continue;
            }
            // Reaping is done or waits for the cascade; cascading uses what is left.
            if progress.work >= work_max || !self.cascade_step(entries) {
                break;
            }
            progress.work += 1;
        }
        progress.pending = self.reap_due(now_ms);
        progress
    }

    fn reap_due(&self, now_ms: u64) -> bool {
        (self.reap_slot + 1) * EXPIRY_SLOT_MS <= now_ms
    }

    /// One unit of reaping; `false` when nothing is due or the cascade must run first.
    fn reap_step(
        &mut self,
        now_ms: u64,
        progress: &mut WheelProgress,
        entries: &mut impl FiledEntries,
    ) -> bool {
        if !self.reap_due(now_ms) {
            return false;
        }
        if self.len() == 0 {
            // Nothing is filed at all: catch up with `now` in one step.
            self.reset_to(now_ms);
            progress.work += 1;
            return self.reap_due(now_ms);
        }
        let slot_epoch = self.reap_slot * EXPIRY_SLOT_MS / self.epoch_ms;
        if slot_epoch > self.fine_open || (slot_epoch == self.fine_open && self.coarse[0] != NIL) {
            return false;
        }
        let ring = self.fine_index(self.reap_slot);
        let head = self.fine[ring];
        if head != NIL {
            debug_assert!(
                entries.expires_ms(head) <= now_ms,
                "reclaiming a live entry"
            );
            self.unlink(head, ListRef::Fine(ring));
            self.fine_count -= 1;
            entries.reclaim(head);
            progress.reclaimed += 1;
        } else if self.fine_count == 0 && self.coarse[0] == NIL {
            // Nothing is filed before the next epoch: jump there (or to now) in one step.
            let next_epoch_slot = (self.fine_open + 1) * self.epoch_ms / EXPIRY_SLOT_MS;
            self.reap_slot = (now_ms / EXPIRY_SLOT_MS)
                .min(next_epoch_slot)
                .max(self.reap_slot + 1);
        } else {
            self.reap_slot += 1;
        }
        progress.work += 1;
        true
    }

    /// Moves one entry of the cascading epoch into its fine slot, or opens the next epoch for
    /// cascading when the reaper has reached the one before it. `false` when there is nothing
    /// to do yet.
    fn cascade_step(&mut self, entries: &impl FiledEntries) -> bool {
        let head = self.coarse[0];
        if head != NIL {
            self.unlink(head, ListRef::Coarse(0));
            self.coarse_count -= 1;
            let slot = entries.expires_ms(head) / EXPIRY_SLOT_MS;
            debug_assert!(slot >= self.reap_slot);
            let ring = self.fine_index(slot);
            self.push_front(head, ListRef::Fine(ring));
            self.fine_count += 1;
            return true;
        }
        let reap_epoch = self.reap_slot * EXPIRY_SLOT_MS / self.epoch_ms;
        if self.fine_open <= reap_epoch {
            self.coarse.pop_front();
            if self.coarse.is_empty() {
                self.coarse.push_back(NIL);
            }
            self.fine_open += 1;
            return true;
        }
        false
    }

    fn fine_index(&self, slot: u64) -> usize {
        (slot % self.fine.len() as u64) as usize
    }

    fn head_mut(&mut self, list: ListRef) -> &mut u32 {
        match list {
            ListRef::Fine(i) => &mut self.fine[i],
            ListRef::Coarse(i) => &mut self.coarse[i],
        }
    }

    fn push_front(&mut self, index: u32, list: ListRef) {
        let head = *self.head_mut(list);
        let level = if matches!(list, ListRef::Fine(_)) {
            FINE_BIT
        } else {
            0
        };
        self.links[index as usize] = Link {
            prev_and_level: level | NIL,
            next: head,
        };
        if head != NIL {
            self.links[head as usize].set_prev(index);
        }
        *self.head_mut(list) = index;
    }

    fn unlink(&mut self, index: u32, list: ListRef) {
        let link = self.links[index as usize];
        let (prev, next) = (link.prev(), link.next);
        if prev == NIL {
            debug_assert_eq!(*self.head_mut(list), index, "entry filed in another list");
            *self.head_mut(list) = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].set_prev(prev);
        }
        self.links[index as usize] = Link::UNLINKED;
    }
}

#[derive(Clone, Copy, Debug)]
enum ListRef {
    Fine(usize),
    Coarse(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const EPOCH: u64 = 1_000;

    /// Expiries by index, and what the wheel reclaimed.
    struct Model<F: Fn(u32) -> u64> {
        expires: F,
        reclaimed: Vec<u32>,
    }

    impl<F: Fn(u32) -> u64> FiledEntries for Model<F> {
        fn expires_ms(&self, index: u32) -> u64 {
            (self.expires)(index)
        }
        fn reclaim(&mut self, index: u32) {
            self.reclaimed.push(index);
        }
    }

    fn model<F: Fn(u32) -> u64>(expires: F) -> Model<F> {
        Model {
            expires,
            reclaimed: Vec::new(),
        }
    }

    /// Runs the wheel to `now` with a large budget and returns the reclaimed indices.
    fn reap(wheel: &mut ExpiryWheel, exp: &HashMap<u32, u64>, now: u64) -> Vec<u32> {
        let mut m = model(|i| exp[&i]);
        let progress = wheel.advance(now, usize::MAX, &mut m);
        assert!(!progress.pending);
        m.reclaimed.sort_unstable();
        m.reclaimed
    }

    #[test]
    fn entries_are_reclaimed_within_one_slot_of_expiry() {
        let mut wheel = ExpiryWheel::new(EPOCH, 0);
        let exp: HashMap<u32, u64> = [(0, 15), (1, 1_500), (2, 2_750), (3, 7_200)].into();
        for (&i, &e) in &exp {
            wheel.insert(i, e);
        }
        assert!(reap(&mut wheel, &exp, 14).is_empty());
        assert_eq!(reap(&mut wheel, &exp, 20), vec![0]);
        assert!(reap(&mut wheel, &exp, 1_499).is_empty());
        assert_eq!(reap(&mut wheel, &exp, 1_510), vec![1]);
        assert_eq!(reap(&mut wheel, &exp, 2_760), vec![2]);
        assert!(reap(&mut wheel, &exp, 7_200).is_empty());
        assert_eq!(reap(&mut wheel, &exp, 7_210), vec![3]);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn removed_entries_are_never_reclaimed() {
        let mut wheel = ExpiryWheel::new(EPOCH, 0);
        let exp: HashMap<u32, u64> = [(0, 500), (1, 500), (2, 5_500), (3, 5_500)].into();
        for (&i, &e) in &exp {
            wheel.insert(i, e);
        }
        wheel.remove(0, 500);
        wheel.remove(3, 5_500);
        assert_eq!(wheel.len(), 2);
        assert_eq!(reap(&mut wheel, &exp, 10_000), vec![1, 2]);
    }

    #[test]
    fn an_overwrite_within_its_list_touches_no_other_entry() {
        let mut wheel = ExpiryWheel::new(EPOCH, 0);
        // Three entries of one coarse epoch, and three of one fine slot.
        let mut exp: HashMap<u32, u64> = [
            (0, 5_100),
            (1, 5_200),
            (2, 5_300),
            (3, 15),
            (4, 16),
            (5, 17),
        ]
        .into();
        for i in 0..6 {
            wheel.insert(i, exp[&i]);
        }
        let links =
            |w: &ExpiryWheel| [0, 2, 3, 5].map(|i| (w.links[i].prev_and_level, w.links[i].next));
        let before = links(&wheel);
        wheel.refile(1, 5_200, 5_900);
        wheel.refile(4, 16, 19);
        assert_eq!(links(&wheel), before, "a neighbour's links changed");
        exp.insert(1, 5_900);
        exp.insert(4, 19);
        // Out of its list: moved, and reclaimed at its new expiry only.
        wheel.refile(2, 5_300, 8_250);
        exp.insert(2, 8_250);
        assert_eq!(wheel.len(), 6);
        assert_eq!(reap(&mut wheel, &exp, 20), vec![3, 4, 5]);
        assert_eq!(reap(&mut wheel, &exp, 5_910), vec![0, 1]);
        assert!(reap(&mut wheel, &exp, 8_250).is_empty());
        assert_eq!(reap(&mut wheel, &exp, 8_260), vec![2]);
    }

    #[test]
    fn a_storm_is_reclaimed_in_bounded_slices() {
        let mut wheel = ExpiryWheel::new(EPOCH, 0);
        let n = 10_000u32;
        for i in 0..n {
            wheel.insert(i, 5_000 + u64::from(i % 1_000));
        }
        let mut m = model(|i| 5_000 + u64::from(i % 1_000));
        let mut slices = 0;
        loop {
            let p = wheel.advance(6_000, 100, &mut m);
            assert!(p.work <= 100, "a slice did {} units", p.work);
            slices += 1;
            if !p.pending {
                break;
            }
        }
        assert_eq!(m.reclaimed.len(), n as usize);
        assert!(slices >= 100, "work was not sliced: {slices} slices");
    }

    #[test]
    fn no_call_spends_more_than_its_budget() {
        for work_max in 0..4 {
            let mut wheel = ExpiryWheel::new(EPOCH, 0);
            let p = wheel.advance(250, work_max, &mut model(|_| 0));
            assert!(p.work <= work_max, "budget {work_max}, spent {}", p.work);
            wheel.insert(0, 2_500);
            for now in [1_000, 2_000, 2_600, 90_000] {
                let p = wheel.advance(now, work_max, &mut model(|_| 2_500));
                assert!(p.work <= work_max, "budget {work_max}, spent {}", p.work);
            }
        }
    }

    #[test]
    fn an_empty_wheel_catches_up_at_once() {
        let mut wheel = ExpiryWheel::new(EPOCH, 0);
        let p = wheel.advance(86_400_000, usize::MAX, &mut model(|_| 0));
        assert!(p.work <= 4, "stepped {} units", p.work);
        wheel.insert(0, 86_400_500);
        let exp: HashMap<u32, u64> = [(0, 86_400_500)].into();
        assert_eq!(reap(&mut wheel, &exp, 86_400_510), vec![0]);
    }

    #[test]
    fn long_idle_gaps_cost_few_steps() {
        let mut wheel = ExpiryWheel::new(EPOCH, 0);
        wheel.insert(0, 3_600_000);
        let exp: HashMap<u32, u64> = [(0, 3_600_000)].into();
        let mut m = model(|i| exp[&i]);
        let p = wheel.advance(3_600_010, usize::MAX, &mut m);
        assert_eq!(m.reclaimed, vec![0]);
        assert!(
            p.work < 20_000,
            "stepped {} units through an empty hour",
            p.work
        );
    }

    mod against_a_model {
        use super::*;
        use proptest::prelude::*;

        /// A tiny epoch (10 slots) so cascades and epoch boundaries come often.
        const EPOCH: u64 = 100;

        #[derive(Debug, Clone)]
        enum Op {
            Insert { expires_in: u64 },
            Remove { pick: usize },
            Refile { pick: usize, expires_in: u64 },
            Advance { ms: u64 },
            AdvanceWithBudget { ms: u64, work: usize },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (1u64..1_200).prop_map(|expires_in| Op::Insert { expires_in }),
                1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
                2 => (any::<usize>(), prop_oneof![1u64..30, 1u64..1_200])
                    .prop_map(|(pick, expires_in)| Op::Refile { pick, expires_in }),
                2 => prop_oneof![0u64..30, 0u64..3_000].prop_map(|ms| Op::Advance { ms }),
                2 => (0u64..300, 0usize..6).prop_map(|(ms, work)| Op::AdvanceWithBudget { ms, work }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

            #[test]
            fn wheel_reclaims_exactly_the_expired_entries(
                start in 0u64..10_000,
                ops in prop::collection::vec(op(), 1..300),
            ) {
                let mut wheel = ExpiryWheel::new(EPOCH, start);
                let mut now = start;
                let mut filed: std::collections::BTreeMap<u32, u64> = Default::default();
                let mut next_index = 0u32;
                for op in ops {
                    let (ms, work) = match op {
                        Op::Insert { expires_in } => {
                            wheel.insert(next_index, now + expires_in);
                            filed.insert(next_index, now + expires_in);
                            next_index += 1;
                            continue;
                        }
                        Op::Remove { pick } => {
                            if let Some((&i, &e)) = filed.iter().nth(pick % filed.len().max(1)) {
                                wheel.remove(i, e);
                                filed.remove(&i);
                            }
                            continue;
                        }
                        Op::Refile { pick, expires_in } => {
                            // Only a live entry is ever overwritten: one reclaimable now
                            // would have been reclaimed by the store first.
                            let live = filed.iter().filter(|&(_, &e)| e > now);
                            if let Some((&i, &e)) = live.clone().nth(pick % live.count().max(1)) {
                                wheel.refile(i, e, now + expires_in);
                                filed.insert(i, now + expires_in);
                            }
                            continue;
                        }
                        Op::Advance { ms } => (ms, usize::MAX),
                        Op::AdvanceWithBudget { ms, work } => (ms, work),
                    };
                    now += ms;
                    let snapshot = filed.clone();
                    let mut m = model(|i| snapshot[&i]);
                    let p = wheel.advance(now, work, &mut m);
                    prop_assert!(p.work <= work);
                    for i in m.reclaimed {
                        let e = filed.remove(&i);
                        prop_assert!(e.is_some_and(|e| e <= now), "reclaimed live or unknown {}", i);
                    }
                    if work == usize::MAX {
                        prop_assert!(!p.pending);
                        for (&i, &e) in &filed {
                            let slot_end = (e / EXPIRY_SLOT_MS + 1) * EXPIRY_SLOT_MS;
                            prop_assert!(slot_end > now, "entry {} (expires {}) left at {}", i, e, now);
                        }
                    }
                    prop_assert_eq!(wheel.len(), filed.len());
                }
            }
        }
    }
}
