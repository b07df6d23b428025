//! The type index: a mailbox's queued messages, organised so that every `msgrcv(2)`
//! selector finds its message without scanning the queue.
//!
//! Messages are kept per type, ordered by sequence id (`by_type`), and each non-empty
//! type's oldest message is listed in `heads`, ordered by id. With `n` messages of `k`
//! distinct types, every operation is `O(log n)` (amortized, see [`TypeQueue`]):
//!
//! | selector | how | cost |
//! |---|---|---|
//! | any (`0`) | first of `heads` | `O(log k)` |
//! | type `t` | first of `by_type[t]` | `O(log k)` |
//! | except `t` | first of the first two `heads` whose type is not `t` | `O(log k)` |
//! | lowest type ≤ `t` (`-t`) | first type of `by_type`, if ≤ `t` | `O(log k)` |
//!
//! and taking the found message out, or putting one back at its original position (a
//! `nack`), updates both structures in `O(log n)`. This module does no I/O and knows
//! nothing of waiters; `mailbox` builds blocking on top.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ipc_proto::Selector;

/// What the index keeps: a message that knows its sequence id, and that can stand for
/// the hole a message taken from inside its type's run leaves there.
pub trait Queued {
    fn id(&self) -> u64;
    /// The place of the message `id`, taken.
    fn hole(id: u64) -> Self;
    fn is_hole(&self) -> bool;
    /// Asks the CPU to fetch what taking this message will read, without waiting for it.
    fn prefetch(&self) {}
}

/// Queued messages of type `M`, indexed by SysV type and by sequence id.
#[derive(Debug)]
pub struct TypeIndex<M> {
    /// Messages of each type, oldest first.
    by_type: BTreeMap<i64, TypeQueue<M>>,
    /// `(id of the oldest message, type)` for every non-empty type: the queue's heads,
    /// oldest first. One entry per type.
    heads: BTreeSet<(u64, i64)>,
    /// The storage of the last type queue that emptied, kept (small) for the next type
    /// that fills: a queue that empties and fills again, as a busy one does, does not
    /// allocate its storage anew each time.
    spare: Option<TypeQueue<M>>,
    len: usize,
}

impl<M> Default for TypeIndex<M> {
    fn default() -> Self {
        Self {
            by_type: BTreeMap::new(),
            heads: BTreeSet::new(),
            spare: None,
            len: 0,
        }
    }
}

/// Where a message sits: its type and its sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub mtype: i64,
    pub id: u64,
}

impl<M: Queued> TypeIndex<M> {
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts a message at the position its id gives it; ids need not be the newest, so
    /// a message can be put back where it was.
    pub fn insert(&mut self, mtype: i64, message: M) {
        let id = message.id();
        let spare = &mut self.spare;
        let queue = self
            .by_type
            .entry(mtype)
            .or_insert_with(|| spare.take().unwrap_or_default());
        // Newer than its type's newest (the usual case): it goes last, and the head
        // stays — without a look at the oldest message, which a deep queue has not
        // touched for a while.
        if queue.run.back().is_some_and(|back| back.id() < id) {
            queue.run.push_back(message);
            self.len += 1;
            return;
        }
        let old_head = queue.first_id();
        if queue.insert(message) {
            self.len += 1;
        }
        match old_head {
            Some(head) if head < id => {}
            Some(head) => {
                self.heads.remove(&(head, mtype));
                self.heads.insert((id, mtype));
            }
            None => {
                self.heads.insert((id, mtype));
            }
        }
    }

    /// The message `selector` would take, without taking it. `O(log k)`; see the module
    /// documentation.
    pub fn find(&self, selector: Selector) -> Option<Slot> {
        let slot = |&(id, mtype): &(u64, i64)| Slot { mtype, id };
        match selector {
            Selector::Any => self.heads.first().map(slot),
            Selector::Type(t) => self.head_of(t),
            // At most one head has type `t`, so one of the two oldest heads is the answer.
            Selector::Except(t) => self.heads.iter().take(2).find(|h| h.1 != t).map(slot),
            Selector::AtMost(t) => {
                let (&lowest, _) = self.by_type.first_key_value()?;
                if lowest <= t {
                    self.head_of(lowest)
                } else {
                    None
                }
            }
        }
    }

    fn head_of(&self, mtype: i64) -> Option<Slot> {
        let id = self.by_type.get(&mtype)?.first_id()?;
        Some(Slot { mtype, id })
    }

    pub fn get(&self, slot: Slot) -> Option<&M> {
        self.by_type.get(&slot.mtype)?.get(slot.id)
    }

    /// Takes the message at `slot` out. `O(log n)`.
    pub fn remove(&mut self, slot: Slot) -> Option<M> {
        let queue = self.by_type.get_mut(&slot.mtype)?;
        let was_head = queue.first_id() == Some(slot.id);
        let message = queue.remove(slot.id)?;
        self.len -= 1;
        if was_head {
            self.heads.remove(&(slot.id, slot.mtype));
            match queue.first_id() {
                Some(next) => {
                    self.heads.insert((next, slot.mtype));
                }
                None => {
                    let mut emptied = self.by_type.remove(&slot.mtype).expect("found");
                    emptied.run.shrink_to(SPARE_CAPACITY);
                    self.spare = Some(emptied);
                }
            }
        }
        Some(message)
    }

    /// Takes the message `selector` selects.
    #[cfg(test)]
    pub fn pop(&mut self, selector: Selector) -> Option<M> {
        let slot = self.find(selector)?;
        self.remove(slot)
    }

    /// The message at position `n` of the whole queue, oldest first, if there is one: a
    /// walk of `n` steps through the types' queues merged by id, `O((n + k) log k)`. Only
    /// a copy by position (SysV's `MSG_COPY`) asks for this; selection never does.
    pub fn nth(&self, n: usize) -> Option<&M> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n >= self.len {
            return None;
        }
        let mut queues: Vec<_> = self.by_type.values().map(|q| q.iter().peekable()).collect();
        // (id of each queue's next message, which queue), oldest first.
        let mut next: BinaryHeap<_> = queues
            .iter_mut()
            .enumerate()
            .filter_map(|(i, q)| q.peek().map(|m| Reverse((m.id(), i))))
            .collect();
        for _ in 0..n {
            let Reverse((_, i)) = next.pop()?;
            queues[i].next();
            if let Some(m) = queues[i].peek() {
                next.push(Reverse((m.id(), i)));
            }
        }
        let Reverse((_, i)) = next.pop()?;
        queues[i].next()
    }

    /// Empties the index, returning the messages in no particular order.
    pub fn drain(&mut self) -> impl Iterator<Item = M> {
        self.heads.clear();
        self.len = 0;
        std::mem::take(&mut self.by_type)
            .into_values()
            .flat_map(TypeQueue::into_messages)
    }
}

/// Entries a kept spare queue may hold room for.
const SPARE_CAPACITY: usize = 64;

/// One type's messages in id order. Messages almost always come in newest and leave
/// oldest, so they are kept in a `VecDeque` (`run`): 8 bytes a message (an envelope is a
/// pointer) and
/// `O(1)` at both ends, where a B-tree keyed by id costs about twice that and a walk from
/// the root. What does not fit that pattern stays `O(log n)`:
/// - a message put in behind newer ones (one given back after a receiver left, or a
///   delayed message becoming visible) joins the run at the front if it is older than
///   the whole run, fills its own hole if it left one, and else goes into `late`, a
///   B-tree by id;
/// - a message taken from inside the run (an expiry) leaves a hole behind, found by
///   binary search and skipped once it reaches an end; when the holes are as many as the
///   messages, the run is compacted, `O(n)` once per `n/2` removals.
///
/// The run's ends are never holes, and its storage shrinks by half when a quarter or less
/// of it is used, so that a drained burst does not keep its memory.
#[derive(Debug)]
struct TypeQueue<M> {
    run: VecDeque<M>,
    holes: usize,
    late: BTreeMap<u64, M>,
}

impl<M> Default for TypeQueue<M> {
    fn default() -> Self {
        Self {
            run: VecDeque::new(),
            holes: 0,
            late: BTreeMap::new(),
        }
    }
}

impl<M: Queued> TypeQueue<M> {
    fn first_id(&self) -> Option<u64> {
        let run = self.run.front().map(M::id);
        let late = self.late.first_key_value().map(|(&id, _)| id);
        match (run, late) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Puts `message` in. Its id must not be queued already: the mailbox puts in only new
    /// ids, or those of messages that are out of the queue. True if it took no place a
    /// message held (always, then; kept as the count's check).
    fn insert(&mut self, message: M) -> bool {
        let id = message.id();
        debug_assert!(!self.late.contains_key(&id), "id {id} is queued already");
        match (self.run.front(), self.run.back()) {
            (_, None) => self.run.push_back(message),
            (_, Some(back)) if back.id() < id => self.run.push_back(message),
            (Some(front), _) if id < front.id() => self.run.push_front(message),
            _ => {
                if let Ok(i) = self.position(id) {
                    let old = std::mem::replace(&mut self.run[i], message);
                    if old.is_hole() {
                        self.holes -= 1;
                    }
                    return old.is_hole();
                }
                return self.late.insert(id, message).is_none();
            }
        }
        true
    }

    /// Where the entry with `id` is in the run (a hole or not), by binary search.
    fn position(&self, id: u64) -> Result<usize, usize> {
        self.run.binary_search_by_key(&id, M::id)
    }

    fn get(&self, id: u64) -> Option<&M> {
        // Almost always the head, which a receive looks at before taking it.
        if let Some(front) = self.run.front().filter(|e| e.id() == id) {
            return Some(front);
        }
        match self.position(id) {
            Ok(i) => Some(&self.run[i]).filter(|m| !m.is_hole()),
            Err(_) => self.late.get(&id),
        }
    }

    fn remove(&mut self, id: u64) -> Option<M> {
        if self.run.front().is_some_and(|e| e.id() == id) {
            let message = self.run.pop_front();
            // The next message but one is the head after the next take: fetched now, it
            // is in the cache by then. In a deep queue the oldest messages are long out
            // of it, and the take of each would otherwise wait for memory.
            if let Some(after_next) = self.run.get(1) {
                after_next.prefetch();
            }
            self.trim();
            return message;
        }
        let Ok(i) = self.position(id) else {
            return self.late.remove(&id);
        };
        if self.run[i].is_hole() {
            return None;
        }
        let message = std::mem::replace(&mut self.run[i], M::hole(id));
        self.holes += 1;
        self.trim();
        if self.holes > 0 && self.holes * 2 >= self.run.len() {
            self.run.retain(|e| !e.is_hole());
            self.holes = 0;
        }
        Some(message)
    }

    /// Drops holes from both ends of the run, and gives back storage it no longer needs.
    fn trim(&mut self) {
        // Without holes there is nothing to look at: looking reads the messages at the
        // ends, which a deep queue has not touched for a while.
        while self.holes > 0 && self.run.front().is_some_and(M::is_hole) {
            self.run.pop_front();
            self.holes -= 1;
        }
        while self.holes > 0 && self.run.back().is_some_and(M::is_hole) {
            self.run.pop_back();
            self.holes -= 1;
        }
        let capacity = self.run.capacity();
        if capacity > SPARE_CAPACITY && self.run.len() <= capacity / 4 {
            self.run.shrink_to(capacity / 2);
        }
    }

    /// The messages in id order.
    fn iter(&self) -> impl Iterator<Item = &M> {
        let mut run = self.run.iter().filter(|e| !e.is_hole()).peekable();
        let mut late = self.late.values().peekable();
        std::iter::from_fn(move || match (run.peek(), late.peek()) {
            (Some(a), Some(b)) if b.id() < a.id() => late.next(),
            (Some(_), _) => run.next(),
            (None, _) => late.next(),
        })
    }

    fn into_messages(self) -> impl Iterator<Item = M> {
        let run = self.run.into_iter().filter(|e| !e.is_hole());
        run.chain(self.late.into_values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test message is its id; a hole is its id with the top bit set.
    impl Queued for u64 {
        fn id(&self) -> u64 {
            self & !HOLE
        }
        fn hole(id: u64) -> Self {
            id | HOLE
        }
        fn is_hole(&self) -> bool {
            self & HOLE != 0
        }
    }

    const HOLE: u64 = 1 << 63;

    /// The queue as `msgrcv(2)` describes it, by scanning; the reference for the index.
    fn reference(queue: &[(u64, i64)], selector: Selector) -> Option<(u64, i64)> {
        match selector {
            Selector::AtMost(t) => {
                let lowest = queue.iter().map(|m| m.1).filter(|&ty| ty <= t).min()?;
                queue.iter().copied().find(|m| m.1 == lowest)
            }
            s => queue.iter().copied().find(|m| s.matches(m.1)),
        }
    }

    /// Random sends, takes from anywhere (expiries), and messages put back where they
    /// were, against a model kept as a sorted map: every type's head, every position and
    /// every lookup agree, whichever part of a type's queue (run, hole or `late`) holds
    /// the message.
    #[test]
    fn takes_from_anywhere_and_puts_back_agree_with_a_model() {
        use std::collections::BTreeMap;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut index = TypeIndex::default();
        let mut model: BTreeMap<u64, i64> = BTreeMap::new();
        let mut taken: Vec<(u64, i64)> = Vec::new();
        let mut next_id = 0;
        for step in 0..10_000 {
            match random(10) {
                0..=3 => {
                    let mtype = 1 + random(3) as i64;
                    index.insert(mtype, next_id);
                    model.insert(next_id, mtype);
                    next_id += 1;
                }
                4..=5 if !model.is_empty() => {
                    // Taken from anywhere, and sometimes given back later.
                    let at = random(model.len() as u64) as usize;
                    let (&id, &mtype) = model.iter().nth(at).expect("in range");
                    assert_eq!(index.remove(Slot { mtype, id }), Some(id));
                    model.remove(&id);
                    if random(2) == 0 {
                        taken.push((id, mtype));
                    }
                }
                6 if !taken.is_empty() => {
                    let (id, mtype) = taken.swap_remove(random(taken.len() as u64) as usize);
                    index.insert(mtype, id);
                    model.insert(id, mtype);
                }
                7 => {
                    let mtype = 1 + random(3) as i64;
                    let want = model.iter().find(|m| *m.1 == mtype).map(|m| *m.0);
                    assert_eq!(index.pop(Selector::Type(mtype)), want, "step {step}");
                    if let Some(id) = want {
                        model.remove(&id);
                    }
                }
                _ => {}
            }
            assert_eq!(index.len(), model.len());
            let first = model.iter().next().map(|(&id, &mtype)| Slot { mtype, id });
            assert_eq!(index.find(Selector::Any), first, "step {step}");
            if step % 97 == 0 {
                for n in [0, model.len() / 2, model.len().saturating_sub(1)] {
                    assert_eq!(index.nth(n), model.keys().nth(n), "step {step}");
                }
                for (&id, &mtype) in &model {
                    assert_eq!(index.get(Slot { mtype, id }), Some(&id));
                }
            }
        }
        let mut drained: Vec<u64> = index.drain().collect();
        drained.sort_unstable();
        assert_eq!(drained, model.keys().copied().collect::<Vec<_>>());
    }

    #[test]
    fn nth_walks_the_queue_in_id_order_across_types() {
        let mut index = TypeIndex::default();
        for (id, mtype) in [(1, 3), (2, 1), (3, 3), (4, 2), (5, 1)] {
            index.insert(mtype, id);
        }
        let walked: Vec<u64> = (0..6).filter_map(|n| index.nth(n).copied()).collect();
        assert_eq!(walked, [1, 2, 3, 4, 5]);
        assert_eq!(index.nth(5), None);
    }

    #[test]
    fn every_selector_matches_msgrcv() {
        let types = [3, 1, 2, 3, 5, 1, 4, 2, 2, 5, 1];
        let mut index = TypeIndex::default();
        let mut model: Vec<(u64, i64)> = Vec::new();
        for (id, &t) in types.iter().enumerate() {
            index.insert(t, id as u64);
            model.push((id as u64, t));
        }
        let selectors = [
            Selector::AtMost(3),
            Selector::Except(1),
            Selector::Type(2),
            Selector::Any,
            Selector::AtMost(9),
            Selector::Except(5),
            Selector::Type(5),
        ];
        let mut turn = 0;
        while !model.is_empty() {
            let selector = selectors[turn % selectors.len()];
            turn += 1;
            let want = reference(&model, selector);
            let got = index.pop(selector);
            assert_eq!(got, want.map(|m| m.0), "{selector:?} on {model:?}");
            if let Some(w) = want {
                model.retain(|m| *m != w);
            }
            assert_eq!(index.len(), model.len());
        }
        assert!(index.is_empty());
        assert_eq!(index.find(Selector::Any), None);
    }

    #[test]
    fn reinsert_restores_original_position() {
        let mut index = TypeIndex::default();
        for id in 0..5 {
            index.insert(1, id);
        }
        let first = index.pop(Selector::Any).unwrap();
        assert_eq!(index.find(Selector::Any), Some(Slot { mtype: 1, id: 1 }));
        index.insert(1, first);
        assert_eq!(index.find(Selector::Any), Some(Slot { mtype: 1, id: 0 }));
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn lowest_type_at_most_and_none() {
        let mut index = TypeIndex::default();
        index.insert(7, 1);
        index.insert(4, 2);
        assert_eq!(index.find(Selector::AtMost(3)), None);
        assert_eq!(index.pop(Selector::AtMost(10)), Some(2));
        assert_eq!(index.find(Selector::Except(7)), None);
        assert_eq!(index.pop(Selector::Except(6)), Some(1));
    }

    /// A million messages of mixed types: every selector still answers from the index.
    /// Draining the whole queue through the selectors that a scan would make slowest
    /// (`except` the dominant type, a priority selector whose type sits behind a long
    /// run of others) stays `O(n log n)` overall; a scanning implementation would do
    /// about 10^12 steps here and never finish.
    #[test]
    fn million_messages_mixed_types() {
        const N: u64 = 1_000_000;
        let mut index = TypeIndex::default();
        // Type 1 dominates; every 1000th message is of type 2..=11.
        let mtype = |id: u64| {
            if id % 1000 == 999 {
                2 + ((id / 1000) % 10) as i64
            } else {
                1
            }
        };
        for id in 0..N {
            index.insert(mtype(id), id);
        }
        assert_eq!(index.len(), N as usize);

        // The rare types, oldest first, without touching the type-1 run before them.
        let mut rare_seen = 0;
        while let Some(id) = index.pop(Selector::Except(1)) {
            assert_ne!(mtype(id), 1);
            assert_eq!(id % 1000, 999, "rare messages come out in id order");
            rare_seen += 1;
        }
        assert_eq!(rare_seen, N / 1000);

        // Put them back, then ask for the lowest type ≤ 5 behind 999 type-1 messages
        // each... after removing all type 1 first through the type selector.
        for id in (0..N).filter(|id| id % 1000 == 999) {
            index.insert(mtype(id), id);
        }
        let mut last = None;
        for _ in 0..(N - N / 1000) {
            let id = index.pop(Selector::Type(1)).unwrap();
            assert!(last < Some(id));
            last = Some(id);
        }
        // Only rare types remain; the lowest type ≤ 5 is 2, oldest first.
        let mut previous_type = 0;
        while let Some(id) = index.pop(Selector::AtMost(5)) {
            assert!(mtype(id) >= previous_type && mtype(id) <= 5);
            previous_type = mtype(id);
        }
        assert_eq!(index.len() as u64, (N / 1000) * 6 / 10);
        assert!(index.pop(Selector::Any).is_some_and(|id| mtype(id) > 5));
    }
}
