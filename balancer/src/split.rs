//! [`Split`]: weighted choice among a route's backends (a canary split), per request or sticky
//! by a key.

use std::fmt;

/// Why a split cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitError {
    /// No entries, or every weight zero: nothing could ever be chosen.
    NothingToChoose,
    /// Two entries with one name (sticky choices are keyed by name).
    Duplicate(String),
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SplitError::NothingToChoose => {
                f.write_str("the weights sum to 0: at least one entry needs a weight above 0")
            }
            SplitError::Duplicate(name) => write!(f, "`{name}` is listed twice"),
        }
    }
}

impl std::error::Error for SplitError {}

/// A weighted choice among named entries (say `stable` 95, `canary` 5).
///
/// - [`pick`](Self::pick): per request, entry `i` with probability `weight_i / total`.
/// - [`pick_sticky`](Self::pick_sticky): the same key always gets the same entry, and the
///   keys spread in proportion to the weights. Weighted rendezvous hashing: each entry scores
///   the key with `-weight / ln(hash(name, key))`, the highest score wins. Adding an entry
///   moves only the keys it now wins (about its share); changing one weight moves keys only
///   to or from that entry; the other keys stay where they were.
///
/// ```
/// use balancer::Split;
///
/// let split = Split::new([("stable", 95), ("canary", 5)]).unwrap();
/// let canary = (0..10_000u64).filter(|&r| split.pick(r) == 1).count();
/// assert_eq!(canary, 500); // `pick` maps a uniform draw to an entry exactly by weight
/// let first = split.pick_sticky(b"user-42");
/// assert!((0..100).all(|_| split.pick_sticky(b"user-42") == first));
/// ```
#[derive(Debug, Clone)]
pub struct Split {
    names: Vec<String>,
    weights: Vec<u32>,
    /// Running sums of the weights: entry `i` owns draws in `cumulative[i-1]..cumulative[i]`.
    cumulative: Vec<u64>,
    /// Per-entry hash seeds, from the names: sticky choices survive restarts and reordering.
    seeds: Vec<u64>,
}

impl Split {
    /// A split over `(name, weight)` entries. Entries with weight 0 are kept but never chosen
    /// (a canary at 0 %).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, u32)>) -> Result<Self, SplitError> {
        let mut split = Split {
            names: Vec::new(),
            weights: Vec::new(),
            cumulative: Vec::new(),
            seeds: Vec::new(),
        };
        let mut total = 0u64;
        for (name, weight) in entries {
            if split.names.iter().any(|n| n == name) {
                return Err(SplitError::Duplicate(name.to_owned()));
            }
            total += u64::from(weight);
            split.names.push(name.to_owned());
            split.weights.push(weight);
            split.cumulative.push(total);
            split.seeds.push(fnv1a(name.as_bytes(), 0));
        }
        if total == 0 {
            return Err(SplitError::NothingToChoose);
        }
        Ok(split)
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The entries' names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The entries' weights, in order.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The entry for a uniform draw `r` (reduced modulo the total).
    pub fn pick(&self, r: u64) -> usize {
        let draw = r % self.total();
        // The first running sum above the draw; a zero-weight entry never owns a draw.
        self.cumulative.partition_point(|&c| c <= draw)
    }

    /// The entry for a fresh random draw.
    pub fn pick_random(&self) -> usize {
        self.pick(fastrand::u64(..))
    }

    /// The entry for `key`: always the same one for the same key and entries.
    pub fn pick_sticky(&self, key: &[u8]) -> usize {
        let mut best = (0usize, f64::NEG_INFINITY);
        for (i, (&w, &seed)) in self.weights.iter().zip(&self.seeds).enumerate() {
            if w == 0 {
                continue;
            }
            let h = mix(fnv1a(key, seed));
            // A uniform value in (0, 1): the top 53 bits, never 0.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(w) / u.ln();
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

/// FNV-1a over `bytes`, seeded: stable across runs and builds (unlike `RandomState`).
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A finaliser (splitmix64's) so that nearby FNV values spread over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_map_exactly_by_weight_and_zero_weight_never_wins() {
        let s = Split::new([("a", 3), ("off", 0), ("b", 1)]).unwrap();
        let picks: Vec<usize> = (0..4).map(|r| s.pick(r)).collect();
        assert_eq!(picks, [0, 0, 0, 2]);
        assert!((0..1000).all(|k: u32| s.pick_sticky(&k.to_le_bytes()) != 1));
    }

    #[test]
    fn refused() {
        assert_eq!(
            Split::new([("a", 0)]).unwrap_err(),
            SplitError::NothingToChoose
        );
        assert_eq!(
            Split::new(std::iter::empty()).unwrap_err(),
            SplitError::NothingToChoose
        );
        assert_eq!(
            Split::new([("a", 1), ("a", 2)]).unwrap_err(),
            SplitError::Duplicate("a".into())
        );
    }
}
