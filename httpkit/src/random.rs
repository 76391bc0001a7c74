//! Random bits for ids: a per-thread keyed hash of a counter, seeded from the operating
//! system's randomness through `RandomState`. Unpredictable enough for ids that must not
//! collide or be guessed from one another; not a cryptographic generator.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    /// The thread's key, and a counter that is never hashed twice under it.
    static KEYS: (RandomState, Cell<u64>) = (RandomState::new(), Cell::new(0));
}

/// 128 random bits (two hashes).
pub(crate) fn u128() -> u128 {
    KEYS.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(1));
        (u128::from(keys.hash_one((n, 0u8))) << 64) | u128::from(keys.hash_one((n, 1u8)))
    })
}

/// 64 random bits (one hash): for a span id, which needs no more.
pub(crate) fn u64() -> u64 {
    KEYS.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(1));
        keys.hash_one((n, 2u8))
    })
}

/// Lower-case hex of `bytes` into `out` (twice as long).
pub(crate) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        if let Some(pair) = out.get_mut(2 * i..2 * i + 2) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xF)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_do_not_repeat_and_use_every_bit() {
        let mut seen = std::collections::HashSet::new();
        let (mut ones64, mut zeros64, mut ones128, mut zeros128) = (0u64, 0u64, 0u128, 0u128);
        for _ in 0..10_000 {
            let (a, b) = (u64(), u128());
            assert!(seen.insert(u128::from(a)), "a 64-bit draw repeated");
            assert!(seen.insert(b), "a 128-bit draw repeated");
            (ones64, zeros64) = (ones64 | a, zeros64 | !a);
            (ones128, zeros128) = (ones128 | b, zeros128 | !b);
        }
        // Every bit was seen set and clear.
        assert_eq!((ones64, zeros64), (u64::MAX, u64::MAX));
        assert_eq!((ones128, zeros128), (u128::MAX, u128::MAX));
    }
}
