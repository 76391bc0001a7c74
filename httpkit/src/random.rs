//! Random bits for ids: a per-thread keyed hash of a counter, seeded from the operating
//! system's randomness through `RandomState`. Unpredictable enough for ids that must not
//! collide or be guessed from one another; not a cryptographic generator.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// 128 random bits.
pub(crate) fn u128() -> u128 {
    thread_local! {
        static KEYS: (RandomState, Cell<u64>) = (RandomState::new(), Cell::new(0));
    }
    KEYS.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(1));
        (u128::from(keys.hash_one((n, 0u8))) << 64) | u128::from(keys.hash_one((n, 1u8)))
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
