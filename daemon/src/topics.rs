//! The bindings of topic patterns to mailboxes, and matching a published topic against
//! them: which mailboxes get a copy of a message published to `orders.eu.created`.
//!
//! The patterns are kept in a trie over their segments. A node has a child per literal
//! segment that follows it, one `star` child for `*`, the mailboxes whose pattern ends
//! there (`here`) and those whose pattern goes on with `>` from there (`rest`). Matching a
//! topic of `L` segments walks it from the root, following at each node both the child
//! named by the next segment and the `*` child: at depth `d` it can be at no more than
//! `2^d` nodes, so it visits at most `min(2^(L+1) - 1, nodes in the trie)`, and only
//! patterns with `*` at those depths make it branch at all. It collects `rest` at every
//! node it passes with a segment still to come and `here` at the nodes where the topic
//! ends. Its cost is `O(v + b log b)` for `v` nodes visited and `b` matching bindings
//! (a mailbox bound by several is listed once), and does not depend on how many bindings
//! do not match: with 100,000 mailboxes each bound to its own `svc.<id>.events`, a
//! publish to one of them visits a handful of nodes (the tests count them). Every node
//! visited exists, so bindings full of `*` can make a publish cost no more than the trie's
//! size, which is bounded by the number of bindings times their segments; bounding the
//! bindings a uid may hold bounds that.
//!
//! A reverse index from mailbox to its patterns answers `patterns` and `count` without
//! the trie, and lets a removed mailbox's bindings be taken out one by one. Removing a
//! binding prunes the nodes it leaves empty, so the trie only ever holds the prefixes of
//! patterns that are bound.
//!
//! This module does no I/O and imports only `ipc_proto`.

use std::collections::{BTreeSet, HashMap};

use ipc_proto::{MailboxName, Topic, TopicPattern};

/// One node of the trie: the pattern prefix that leads to it is its path from the root.
#[derive(Debug, Default)]
struct Node {
    /// The next literal segment → the node for the prefix extended by it. Segments are
    /// client-chosen, so this keeps std's randomly keyed hasher.
    children: HashMap<String, Node>,
    /// The prefix extended by `*`; kept apart from `children` so that matching follows
    /// it with no lookup, and so that a topic segment can never be mistaken for it.
    star: Option<Box<Node>>,
    /// Mailboxes bound to this prefix followed by `>`: they match every topic that has
    /// at least one segment left when it reaches this node.
    rest: BTreeSet<MailboxName>,
    /// Mailboxes bound to exactly this prefix: they match a topic that ends here.
    here: BTreeSet<MailboxName>,
}

impl Node {
    /// Whether nothing is bound here or below. Empty children are always pruned, so
    /// looking one level down is enough.
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.rest.is_empty()
            && self.here.is_empty()
    }
}

/// Every binding of a topic pattern to a mailbox. A mailbox is bound to a pattern at most
/// once.
#[derive(Debug, Default)]
pub struct Bindings {
    /// The trie that matching walks.
    root: Node,
    /// Mailbox → its patterns, for the questions about one mailbox and for removing all
    /// of its bindings when it goes. Holds no empty sets.
    by_mailbox: HashMap<MailboxName, BTreeSet<TopicPattern>>,
    /// The number of bindings, the sum of the sizes of `by_mailbox`'s sets.
    len: usize,
}

/// A pattern as the trie stores it: the segments that lead to its node, and whether it
/// ends with `>` (bound in that node's `rest`) or there (bound in its `here`).
fn path(pattern: &TopicPattern) -> (Vec<&str>, bool) {
    let mut segments: Vec<&str> = pattern.segments().collect();
    let rest = segments.last() == Some(&">");
    if rest {
        segments.pop();
    }
    (segments, rest)
}

impl Bindings {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `mailbox` to `pattern`; false if that mailbox was already bound to that
    /// pattern (and nothing changed).
    pub fn bind(&mut self, pattern: &TopicPattern, mailbox: &MailboxName) -> bool {
        let patterns = self.by_mailbox.entry(mailbox.clone()).or_default();
        if !patterns.insert(pattern.clone()) {
            return false;
        }
        let (segments, rest) = path(pattern);
        let mut node = &mut self.root;
        for segment in segments {
            node = match segment {
                "*" => node.star.get_or_insert_with(Box::default),
                literal => node.children.entry(literal.to_owned()).or_default(),
            };
        }
        let set = if rest { &mut node.rest } else { &mut node.here };
        let inserted = set.insert(mailbox.clone());
        debug_assert!(inserted, "the trie and the reverse index disagree");
        self.len += 1;
        true
    }

    /// Unbinds `mailbox` from `pattern`, pruning the trie nodes this leaves empty; false
    /// if it was not bound.
    pub fn unbind(&mut self, pattern: &TopicPattern, mailbox: &MailboxName) -> bool {
        let Some(patterns) = self.by_mailbox.get_mut(mailbox) else {
            return false;
        };
        if !patterns.remove(pattern) {
            return false;
        }
        if patterns.is_empty() {
            self.by_mailbox.remove(mailbox);
            shrink(&mut self.by_mailbox);
        }
        self.remove_from_trie(pattern, mailbox);
        true
    }

    /// Removes every binding of `mailbox` (as when the mailbox is removed); returns how
    /// many there were.
    pub fn unbind_mailbox(&mut self, mailbox: &MailboxName) -> usize {
        let Some(patterns) = self.by_mailbox.remove(mailbox) else {
            return 0;
        };
        shrink(&mut self.by_mailbox);
        for pattern in &patterns {
            self.remove_from_trie(pattern, mailbox);
        }
        patterns.len()
    }

    /// The patterns `mailbox` is bound to, sorted.
    pub fn patterns(&self, mailbox: &MailboxName) -> Vec<TopicPattern> {
        self.by_mailbox
            .get(mailbox)
            .map(|patterns| patterns.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many patterns `mailbox` is bound to, in `O(1)`.
    pub fn count(&self, mailbox: &MailboxName) -> usize {
        self.by_mailbox.get(mailbox).map_or(0, BTreeSet::len)
    }

    /// Every mailbox bound by at least one pattern that matches `topic`, each once,
    /// sorted by name. The cost is in the module's documentation: it grows with the
    /// nodes the topic's segments lead to and the mailboxes found, never with bindings
    /// that do not match.
    pub fn matching(&self, topic: &Topic) -> Vec<MailboxName> {
        let mut found = BTreeSet::new();
        self.walk(topic, &mut found);
        found.into_iter().cloned().collect()
    }

    /// The total number of bindings.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Collects into `found` the mailboxes bound by patterns matching `topic`, and
    /// returns how many trie nodes it visited (which the tests hold to account).
    fn walk<'a>(&'a self, topic: &Topic, found: &mut BTreeSet<&'a MailboxName>) -> usize {
        let segments: Vec<&str> = topic.segments().collect();
        let mut visited = 0;
        // Depth first with an explicit stack: each node pushes at most two, so the stack
        // stays within `L + 1` entries however many nodes are visited.
        let mut stack = vec![(&self.root, 0)];
        while let Some((node, depth)) = stack.pop() {
            visited += 1;
            let Some(&segment) = segments.get(depth) else {
                found.extend(&node.here);
                continue;
            };
            found.extend(&node.rest);
            if let Some(child) = node.children.get(segment) {
                stack.push((child, depth + 1));
            }
            if let Some(child) = node.star.as_deref() {
                stack.push((child, depth + 1));
            }
        }
        visited
    }

    /// Takes one binding, already gone from `by_mailbox`, out of the trie.
    fn remove_from_trie(&mut self, pattern: &TopicPattern, mailbox: &MailboxName) {
        let (segments, rest) = path(pattern);
        let removed = remove(&mut self.root, &segments, rest, mailbox);
        debug_assert!(removed, "the trie and the reverse index disagree");
        self.len -= 1;
    }

    /// The number of nodes in the trie, the root included.
    #[cfg(test)]
    fn nodes(&self) -> usize {
        fn below(node: &Node) -> usize {
            1 + node.children.values().map(below).sum::<usize>()
                + node.star.as_deref().map_or(0, below)
        }
        below(&self.root)
    }
}

/// Removes `mailbox` from the node at `segments` below `node` (from its `rest` set if
/// `rest`, else from `here`), and prunes every node on the way that is left empty.
/// Returns whether it was there. The recursion is as deep as the pattern has segments,
/// at most 128 for 255 bytes.
fn remove(node: &mut Node, segments: &[&str], rest: bool, mailbox: &MailboxName) -> bool {
    let Some((&segment, below)) = segments.split_first() else {
        let set = if rest { &mut node.rest } else { &mut node.here };
        return set.remove(mailbox);
    };
    if segment == "*" {
        let Some(child) = node.star.as_deref_mut() else {
            return false;
        };
        let removed = remove(child, below, rest, mailbox);
        if child.is_empty() {
            node.star = None;
        }
        removed
    } else {
        let Some(child) = node.children.get_mut(segment) else {
            return false;
        };
        let removed = remove(child, below, rest, mailbox);
        if child.is_empty() {
            node.children.remove(segment);
            shrink(&mut node.children);
        }
        removed
    }
}

/// Gives back a map's memory once it is mostly empty, so a node that once had 100,000
/// children does not keep room for them after they are unbound. Shrinking only below a
/// quarter full keeps this amortised `O(1)` per removal.
fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn pattern(s: &str) -> TopicPattern {
        TopicPattern::new(s).unwrap()
    }

    fn mailbox(s: &str) -> MailboxName {
        MailboxName::new(s).unwrap()
    }

    /// The names of the mailboxes that `topic` reaches in `bindings`.
    fn matching(bindings: &Bindings, t: &str) -> Vec<String> {
        bindings
            .matching(&topic(t))
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Bindings with each mailbox named after the one pattern it is bound to.
    fn bound(patterns: &[&str]) -> Bindings {
        let mut bindings = Bindings::new();
        for (i, p) in patterns.iter().enumerate() {
            assert!(bindings.bind(&pattern(p), &mailbox(&format!("m{i}"))));
        }
        bindings
    }

    #[test]
    fn exact_match() {
        let bindings = bound(&["a.b", "a.c", "a", "a.b.c"]);
        assert_eq!(matching(&bindings, "a.b"), ["m0"]);
        assert_eq!(matching(&bindings, "a"), ["m2"]);
        assert_eq!(matching(&bindings, "a.b.c"), ["m3"]);
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let bindings = bound(&["a.*"]);
        assert_eq!(matching(&bindings, "a.b"), ["m0"]);
        assert_eq!(matching(&bindings, "a.zz"), ["m0"]);
        assert!(matching(&bindings, "a").is_empty());
        assert!(matching(&bindings, "a.b.c").is_empty());
        assert!(matching(&bindings, "b.b").is_empty());
    }

    #[test]
    fn rest_matches_one_or_more_segments() {
        let bindings = bound(&["a.>"]);
        assert_eq!(matching(&bindings, "a.b"), ["m0"]);
        assert_eq!(matching(&bindings, "a.b.c"), ["m0"]);
        assert!(matching(&bindings, "a").is_empty());
        assert!(matching(&bindings, "b.a").is_empty());
    }

    #[test]
    fn rest_alone_matches_everything() {
        let bindings = bound(&[">"]);
        for t in ["a", "a.b", "x.y.z.w"] {
            assert_eq!(matching(&bindings, t), ["m0"], "{t}");
        }
    }

    #[test]
    fn star_in_front() {
        let bindings = bound(&["*.b", "*.*", "*.b.>"]);
        assert_eq!(matching(&bindings, "a.b"), ["m0", "m1"]);
        assert_eq!(matching(&bindings, "x.c"), ["m1"]);
        assert_eq!(matching(&bindings, "x.b.c.d"), ["m2"]);
        assert!(matching(&bindings, "b").is_empty());
    }

    #[test]
    fn no_match() {
        let bindings = bound(&["a.b", "a.*.c", "b.>"]);
        assert!(matching(&bindings, "c").is_empty());
        assert!(matching(&bindings, "a.b.d").is_empty());
        assert!(matching(&bindings, "b").is_empty());
        assert!(Bindings::new().matching(&topic("a")).is_empty());
    }

    #[test]
    fn a_mailbox_matched_twice_is_listed_once() {
        let mut bindings = Bindings::new();
        let m = mailbox("m");
        for p in ["a.b", "a.*", "a.>", ">", "*.b"] {
            assert!(bindings.bind(&pattern(p), &m));
        }
        assert!(bindings.bind(&pattern("a.b"), &mailbox("k")));
        assert_eq!(matching(&bindings, "a.b"), ["k", "m"]);
        assert_eq!(bindings.len(), 6);
        assert_eq!(bindings.count(&m), 5);
    }

    #[test]
    fn binding_twice_is_refused_and_unbinding_what_is_not_bound_too() {
        let mut bindings = Bindings::new();
        let (p, m) = (pattern("a.*"), mailbox("m"));
        assert!(bindings.bind(&p, &m));
        assert!(!bindings.bind(&p, &m));
        assert_eq!(bindings.len(), 1);
        assert!(!bindings.unbind(&pattern("a.b"), &m));
        assert!(!bindings.unbind(&p, &mailbox("other")));
        assert!(bindings.unbind(&p, &m));
        assert!(!bindings.unbind(&p, &m));
        assert!(bindings.is_empty());
    }

    #[test]
    fn patterns_and_count_per_mailbox() {
        let mut bindings = Bindings::new();
        let m = mailbox("m");
        for p in ["b.>", "a", "*.c"] {
            bindings.bind(&pattern(p), &m);
        }
        bindings.bind(&pattern("z"), &mailbox("other"));
        assert_eq!(
            bindings.patterns(&m),
            [pattern("*.c"), pattern("a"), pattern("b.>")]
        );
        assert_eq!(bindings.count(&m), 3);
        assert_eq!(bindings.count(&mailbox("none")), 0);
        assert!(bindings.patterns(&mailbox("none")).is_empty());
    }

    #[test]
    fn unbinding_prunes_the_trie() {
        let mut bindings = Bindings::new();
        let (m, k) = (mailbox("m"), mailbox("k"));
        bindings.bind(&pattern("a.b.c"), &m);
        bindings.bind(&pattern("a.*.>"), &m);
        bindings.bind(&pattern("a.b"), &k);
        // root, a, a.b, a.b.c, a.*
        assert_eq!(bindings.nodes(), 5);
        assert!(bindings.unbind(&pattern("a.b.c"), &m));
        assert_eq!(bindings.nodes(), 4);
        assert!(bindings.unbind(&pattern("a.*.>"), &m));
        assert_eq!(bindings.nodes(), 3);
        assert_eq!(bindings.count(&m), 0);
        assert!(bindings.unbind(&pattern("a.b"), &k));
        assert_eq!(bindings.nodes(), 1);
        assert!(bindings.is_empty());
        assert!(bindings.by_mailbox.is_empty());
    }

    #[test]
    fn unbinding_a_mailbox_takes_all_of_its_bindings() {
        let mut bindings = Bindings::new();
        let (m, k) = (mailbox("m"), mailbox("k"));
        for p in ["a.b.c", "a.*", ">", "x.y.>"] {
            bindings.bind(&pattern(p), &m);
        }
        bindings.bind(&pattern("a.b"), &k);
        assert_eq!(bindings.unbind_mailbox(&m), 4);
        assert_eq!(bindings.unbind_mailbox(&m), 0);
        assert_eq!(bindings.len(), 1);
        assert_eq!(matching(&bindings, "a.b"), ["k"]);
        assert!(matching(&bindings, "x.y.z").is_empty());
        // root, a, a.b
        assert_eq!(bindings.nodes(), 3);
        assert_eq!(bindings.unbind_mailbox(&k), 1);
        assert_eq!(bindings.nodes(), 1);
        assert!(bindings.is_empty());
    }

    /// The wildcard bindings added to the large test, and which of them a publish to
    /// `svc.4242.events` reaches.
    const WILDCARDS: [(&str, &str, bool); 7] = [
        ("w-star", "svc.*.events", true),
        ("w-svc-rest", "svc.>", true),
        ("w-all", ">", true),
        ("w-star-star", "*.*.*", true),
        ("w-other", "svc.*.other", false),
        ("w-deeper", "svc.4242.events.>", false),
        ("w-short", "svc.*", false),
    ];

    fn wildcards(bindings: &mut Bindings) {
        for (name, p, _) in WILDCARDS {
            assert!(bindings.bind(&pattern(p), &mailbox(name)));
        }
    }

    #[test]
    fn matching_does_not_look_at_bindings_that_cannot_match() {
        const N: usize = 100_000;
        let mut bindings = Bindings::new();
        for i in 0..N {
            let p = pattern(&format!("svc.{i}.events"));
            assert!(bindings.bind(&p, &mailbox(&format!("m{i}"))));
        }
        wildcards(&mut bindings);
        assert_eq!(bindings.len(), N + WILDCARDS.len());

        let t = topic("svc.4242.events");
        let mut want: Vec<&str> = WILDCARDS
            .iter()
            .filter(|w| w.2)
            .map(|w| w.0)
            .chain(["m4242"])
            .collect();
        want.sort();
        assert_eq!(matching(&bindings, t.as_str()), want);

        let mut found = BTreeSet::new();
        let visited = bindings.walk(&t, &mut found);
        assert!(visited <= 16, "visited {visited} nodes");

        // The same walk over a trie holding only what matters visits as many nodes.
        let mut small = Bindings::new();
        small.bind(&pattern("svc.4242.events"), &mailbox("m4242"));
        wildcards(&mut small);
        assert_eq!(small.walk(&t, &mut BTreeSet::new()), visited);

        for i in 0..N {
            assert_eq!(bindings.unbind_mailbox(&mailbox(&format!("m{i}"))), 1);
        }
        // `svc.4242.events` lies on the path of `svc.4242.events.>`, so once the 100,000
        // are gone the two tries are the same shape.
        assert_eq!(bindings.nodes(), small.nodes());
        assert_eq!(bindings.len(), WILDCARDS.len());
    }

    /// A pattern of 1–4 segments from a tiny alphabet, so that patterns and topics meet
    /// often; a `>` drawn anywhere but last becomes `*`.
    fn small_pattern() -> impl Strategy<Value = TopicPattern> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "*", ">"]), 1..5).prop_map(
            |mut segments| {
                let last = segments.len() - 1;
                for segment in &mut segments[..last] {
                    if *segment == ">" {
                        *segment = "*";
                    }
                }
                TopicPattern::new(segments.join(".")).unwrap()
            },
        )
    }

    fn small_topic() -> impl Strategy<Value = Topic> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..5)
            .prop_map(|segments| Topic::new(segments.join(".")).unwrap())
    }

    fn small_mailbox() -> impl Strategy<Value = MailboxName> {
        (0..4).prop_map(|i| MailboxName::new(format!("m{i}")).unwrap())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Bind(TopicPattern, MailboxName),
        Unbind(TopicPattern, MailboxName),
        UnbindMailbox(MailboxName),
        Publish(Topic),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (small_pattern(), small_mailbox()).prop_map(|(p, m)| Op::Bind(p, m)),
            2 => (small_pattern(), small_mailbox()).prop_map(|(p, m)| Op::Unbind(p, m)),
            1 => small_mailbox().prop_map(Op::UnbindMailbox),
            4 => small_topic().prop_map(Op::Publish),
        ]
    }

    /// What the bindings should answer for `topic`: every binding checked one by one.
    fn by_scanning(
        model: &BTreeSet<(TopicPattern, MailboxName)>,
        topic: &Topic,
    ) -> Vec<MailboxName> {
        let found: BTreeSet<&MailboxName> = model
            .iter()
            .filter(|(p, _)| p.matches(topic))
            .map(|(_, m)| m)
            .collect();
        found.into_iter().cloned().collect()
    }

    /// The nodes a trie holding `model` should have: one per distinct prefix of a bound
    /// pattern's path, the empty one (the root) included.
    fn prefixes(model: &BTreeSet<(TopicPattern, MailboxName)>) -> usize {
        let mut prefixes = BTreeSet::new();
        for (p, _) in model {
            let (segments, _) = path(p);
            for n in 0..=segments.len() {
                prefixes.insert(segments[..n].join("."));
            }
        }
        prefixes.len().max(1)
    }

    proptest! {
        /// The trie answers what filtering every binding with `TopicPattern::matches`
        /// answers, through binds and unbinds, and never keeps a node nothing needs.
        #[test]
        fn the_trie_agrees_with_a_scan(ops in prop::collection::vec(op(), 1..80)) {
            let mut bindings = Bindings::new();
            let mut model: BTreeSet<(TopicPattern, MailboxName)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Bind(p, m) => {
                        let new = model.insert((p.clone(), m.clone()));
                        prop_assert_eq!(bindings.bind(&p, &m), new);
                    }
                    Op::Unbind(p, m) => {
                        let was = model.remove(&(p.clone(), m.clone()));
                        prop_assert_eq!(bindings.unbind(&p, &m), was);
                    }
                    Op::UnbindMailbox(m) => {
                        let before = model.len();
                        model.retain(|(_, bound)| *bound != m);
                        prop_assert_eq!(bindings.unbind_mailbox(&m), before - model.len());
                    }
                    Op::Publish(t) => {
                        prop_assert_eq!(bindings.matching(&t), by_scanning(&model, &t));
                    }
                }
                prop_assert_eq!(bindings.len(), model.len());
                prop_assert_eq!(bindings.nodes(), prefixes(&model));
                for i in 0..4 {
                    let m = MailboxName::new(format!("m{i}")).unwrap();
                    let want: Vec<TopicPattern> = model
                        .iter()
                        .filter(|(_, bound)| *bound == m)
                        .map(|(p, _)| p.clone())
                        .collect();
                    prop_assert_eq!(bindings.count(&m), want.len());
                    prop_assert_eq!(bindings.patterns(&m), want);
                }
            }
            // Every topic of up to three segments, against what is left.
            for n in 1..=3u32 {
                for code in 0..3usize.pow(n) {
                    let segments: Vec<&str> = (0..n)
                        .map(|k| ["a", "b", "c"][code / 3usize.pow(k) % 3])
                        .collect();
                    let t = Topic::new(segments.join(".")).unwrap();
                    prop_assert_eq!(bindings.matching(&t), by_scanning(&model, &t));
                }
            }
            for (p, m) in std::mem::take(&mut model) {
                prop_assert!(bindings.unbind(&p, &m));
            }
            prop_assert!(bindings.is_empty());
            prop_assert_eq!(bindings.nodes(), 1);
        }
    }
}
