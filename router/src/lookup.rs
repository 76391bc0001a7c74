//! The read-only layout that lookups walk.
//!
//! Insertion grows a tree of [`Node`]s that is easy to split and extend. The first lookup after
//! a change compiles it into this layout: nodes in one array with the children of a node stored
//! next to each other, and each node one cache line holding its prefix and the first bytes of its
//! children, so a step of the search reads one node, and a child's first byte is never compared
//! twice.

use crate::tree::{NONE, Node};

/// Prefix bytes held inside the node; longer prefixes live in the arena.
const INLINE_TAIL: usize = 28;
/// Nodes with more children than this find them through a 256-entry table by first byte
/// instead of scanning the index.
const TABLE_ABOVE: usize = 4;
const ABSENT: u8 = u8::MAX;

/// One node, sized and aligned to one cache line: everything a step of the search reads is
/// in it, so the only dependent load per step is the next node itself.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Compact {
    /// First bytes of the static children, when there are at most `TABLE_ABOVE`.
    index: [u8; TABLE_ABOVE],
    /// The prefix without its first byte (which the parent's index already matched), when it
    /// fits; otherwise it is in the arena at `spill_tail`.
    tail: [u8; INLINE_TAIL],
    tail_len: u16,
    child_count: u16,
    first_child: u32,
    /// The route that ends right after this node's `:param` segment.
    param_value: u32,
    /// What follows this node's `:param` segment: the parameter node's only static child
    /// (its first byte is always `/`). Parameter nodes themselves are folded into their
    /// parent, which saves one step per parameter.
    param_next: u32,
    catch_all: u32,
    value: u32,
    spill_tail: u32,
    /// With more than `TABLE_ABOVE` children, their 256-entry table lives in the arena here.
    spill_index: u32,
}

const BLANK: Compact = Compact {
    index: [0; TABLE_ABOVE],
    tail: [0; INLINE_TAIL],
    tail_len: 0,
    child_count: 0,
    first_child: 0,
    param_value: NONE,
    param_next: NONE,
    catch_all: NONE,
    value: NONE,
    spill_tail: 0,
    spill_index: 0,
};

/// The compiled tree.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    nodes: Vec<Compact>,
    arena: Vec<u8>,
}

impl Lookup {
    /// Compiles the tree rooted at `nodes[0]`.
    pub(crate) fn compile(nodes: &[Node]) -> Lookup {
        let mut out = Lookup {
            nodes: Vec::with_capacity(nodes.len()),
            arena: Vec::new(),
        };
        let root = out.reserve(1);
        out.fill(nodes, 0, root);
        out
    }

    fn reserve(&mut self, n: usize) -> u32 {
        let at = self.nodes.len() as u32;
        self.nodes.extend(std::iter::repeat_n(BLANK, n));
        at
    }

    /// Writes builder node `src` into slot `dst`, then its descendants.
    fn fill(&mut self, nodes: &[Node], src: usize, dst: u32) {
        let node = &nodes[src];
        let tail = node.prefix.get(1..).unwrap_or_default();
        let mut compact = BLANK;
        compact.tail_len = tail.len() as u16;
        if tail.len() <= INLINE_TAIL {
            compact.tail[..tail.len()].copy_from_slice(tail);
        } else {
            compact.spill_tail = self.arena.len() as u32;
            self.arena.extend_from_slice(tail);
        }
        compact.child_count = node.children.len() as u16;
        if node.indices.len() <= TABLE_ABOVE {
            compact.index[..node.indices.len()].copy_from_slice(&node.indices);
        } else {
            // Entry `b` holds the index of the child starting with byte `b`, or `ABSENT`.
            // With 256 children no entry is absent, so index 255 cannot be mistaken for one.
            compact.spill_index = self.arena.len() as u32;
            let mut table = [ABSENT; 256];
            for (i, &b) in node.indices.iter().enumerate() {
                table[usize::from(b)] = i as u8;
            }
            self.arena.extend_from_slice(&table);
        }
        compact.first_child = self.reserve(node.children.len());
        // A parameter node has no prefix, no parameter or catch-all of its own (those need a
        // path ending in `/`) and at most one static child, which starts with `/`.
        let param = nodes.get(node.param as usize);
        let after_param = param.and_then(|p| p.children.first());
        if let Some(p) = param {
            compact.param_value = p.value;
        }
        if after_param.is_some() {
            compact.param_next = self.reserve(1);
        }
        compact.catch_all = node.catch_all;
        compact.value = node.value;
        self.nodes[dst as usize] = compact;
        for (i, &child) in node.children.iter().enumerate() {
            self.fill(nodes, child as usize, compact.first_child + i as u32);
        }
        if let Some(&next) = after_param {
            self.fill(nodes, next as usize, compact.param_next);
        }
    }

    #[inline(always)]
    fn child(&self, node: &Compact, byte: u8) -> Option<u32> {
        let count = usize::from(node.child_count);
        if count <= TABLE_ABOVE {
            let i = node.index.get(..count)?.iter().position(|&b| b == byte)?;
            return Some(node.first_child + i as u32);
        }
        let slot = *self
            .arena
            .get(node.spill_index as usize + usize::from(byte))?;
        if slot == ABSENT && count < 256 {
            return None;
        }
        Some(node.first_child + u32::from(slot))
    }

    #[inline(always)]
    fn tail<'a>(&'a self, node: &'a Compact) -> &'a [u8] {
        let len = usize::from(node.tail_len);
        if len <= INLINE_TAIL {
            &node.tail[..len]
        } else {
            let at = node.spill_tail as usize;
            self.arena.get(at..at + len).unwrap_or_default()
        }
    }

    /// The route matching `path`, if any.
    #[inline]
    pub(crate) fn find(&self, path: &[u8]) -> Option<u32> {
        // Every route starts with `/`, so the root has at most that one child: enter it
        // directly.
        let root = self.nodes.first()?;
        if path.first() != Some(&b'/') || root.child_count == 0 {
            return None;
        }
        let first = root.first_child;
        let tail = self.tail(self.nodes.get(first as usize)?);
        if !has_prefix(&path[1..], tail) {
            return None;
        }
        self.find_from(first, path, 1 + tail.len())
    }

    /// Search from `node`, whose own text ends at `pos`. Static child first, then the parameter,
    /// then the catch-all; a branch that fails falls back to the next. Each node is reached at
    /// one position only (fixed by the route text), so the search is linear in the tree size.
    fn find_from(&self, mut node: u32, path: &[u8], mut pos: usize) -> Option<u32> {
        loop {
            let n = self.nodes.get(node as usize)?;
            let Some(&byte) = path.get(pos) else {
                if n.value != NONE {
                    return Some(n.value);
                }
                return (n.catch_all != NONE).then_some(n.catch_all);
            };
            let mut next = None;
            if let Some(child) = self.child(n, byte) {
                let tail = self.tail(&self.nodes[child as usize]);
                if has_prefix(&path[pos + 1..], tail) {
                    next = Some((child, pos + 1 + tail.len()));
                }
            }
            let has_param = n.param_next != NONE || n.param_value != NONE;
            if !has_param && n.catch_all == NONE {
                // Nothing to fall back on: continue in place of recursing.
                (node, pos) = next?;
                continue;
            }
            if let Some((child, at)) = next
                && let Some(found) = self.find_from(child, path, at)
            {
                return Some(found);
            }
            if has_param {
                let rest = &path[pos..];
                let len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
                let end = pos + len;
                if len == 0 {
                    // A parameter never matches an empty segment.
                } else if end == path.len() {
                    if n.param_value != NONE {
                        return Some(n.param_value);
                    }
                } else if n.param_next != NONE {
                    // `path[end]` is the `/` that `param_next` starts with.
                    let tail = self.tail(&self.nodes[n.param_next as usize]);
                    if has_prefix(&path[end + 1..], tail) {
                        let at = end + 1 + tail.len();
                        if n.catch_all == NONE {
                            (node, pos) = (n.param_next, at);
                            continue;
                        }
                        if let Some(found) = self.find_from(n.param_next, path, at) {
                            return Some(found);
                        }
                    }
                }
            }
            return (n.catch_all != NONE).then_some(n.catch_all);
        }
    }
}

/// `rest.starts_with(prefix)` without a call into `memcmp`: prefixes are a few bytes long,
/// and word-sized loads (the last one overlapping) beat the library call's set-up cost.
#[inline(always)]
fn has_prefix(rest: &[u8], prefix: &[u8]) -> bool {
    let Some(head) = rest.get(..prefix.len()) else {
        return false;
    };
    let n = prefix.len();
    if n >= 8 {
        let (mut a, mut b) = (head, prefix);
        while let (Some((x, ra)), Some((y, rb))) =
            (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
        {
            if x != y {
                return false;
            }
            a = ra;
            b = rb;
        }
        // The remainder, as one overlapping compare of the last 8 bytes.
        return head.last_chunk::<8>() == prefix.last_chunk::<8>();
    }
    if n >= 4 {
        return head.first_chunk::<4>() == prefix.first_chunk::<4>()
            && head.last_chunk::<4>() == prefix.last_chunk::<4>();
    }
    head.iter().zip(prefix).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_prefix_all_lengths() {
        let text: Vec<u8> = (0..40u8).collect();
        for len in 0..=text.len() {
            assert!(has_prefix(&text, &text[..len]));
            for flip in 0..len {
                let mut other = text[..len].to_vec();
                other[flip] ^= 0x80;
                assert!(!has_prefix(&text, &other), "len {len} flip {flip}");
            }
        }
        assert!(!has_prefix(b"ab", b"abc"));
    }

    #[test]
    fn compact_node_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Compact>(), 64);
    }
}
