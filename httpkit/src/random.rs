//! Random bits for ids: a ChaCha12 keystream per thread, keyed once from the operating
//! system's randomness (through `RandomState`, whose keys std draws from it) and read from a
//! buffer of four blocks at a time. Unpredictable ids that must not collide or be guessed from
//! one another, as Envoy's (a buffer of `RAND_bytes`) and nginx's `$request_id`
//! (`RAND_bytes`); not for keys or nonces.
//!
//! Twelve rounds, as `rand`'s `StdRng`: the best published attacks reach seven, at a cost far
//! beyond any use. About 12 instructions per byte, where the keyed SipHash this replaced took
//! about 24 (the 40 bytes of one proxied request's request id, trace id and span id: 950
//! instructions then, about 500 now).

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Blocks made at once.
const BLOCKS: usize = 4;
/// Bytes in one refill.
const BUFFER: usize = 64 * BLOCKS;

/// One thread's keystream: its key, the next block's counter, and the unread rest of the
/// last refill.
struct Stream {
    key: [u32; 8],
    counter: u64,
    buffer: [u8; BUFFER],
    read: usize,
}

impl Stream {
    fn new() -> Stream {
        let keys = RandomState::new();
        let mut key = [0u32; 8];
        for (i, pair) in key.chunks_exact_mut(2).enumerate() {
            let word = keys.hash_one(i);
            pair[0] = word as u32;
            pair[1] = (word >> 32) as u32;
        }
        Stream {
            key,
            counter: 0,
            buffer: [0; BUFFER],
            read: BUFFER,
        }
    }

    /// The next `N` bytes of the stream, never handed out twice.
    fn take<const N: usize>(&mut self) -> [u8; N] {
        if BUFFER - self.read < N {
            self.buffer = blocks::<12>(&self.key, self.counter, [0, 0]);
            self.counter = self.counter.wrapping_add(BLOCKS as u64);
            self.read = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buffer[self.read..self.read + N]);
        self.read += N;
        out
    }
}

thread_local! {
    static STREAM: RefCell<Stream> = RefCell::new(Stream::new());
}

/// 128 random bits.
pub(crate) fn u128() -> u128 {
    u128::from_le_bytes(STREAM.with(|s| s.borrow_mut().take::<16>()))
}

/// 64 random bits: for a span id, which needs no more.
pub(crate) fn u64() -> u64 {
    u64::from_le_bytes(STREAM.with(|s| s.borrow_mut().take::<8>()))
}

/// `BLOCKS` consecutive ChaCha blocks of `ROUNDS` rounds (RFC 8439's function with a 64-bit
/// block counter in words 12 and 13 and a 64-bit nonce in 14 and 15, as in Bernstein's
/// original), serialised one after another.
fn blocks<const ROUNDS: usize>(key: &[u32; 8], counter: u64, nonce: [u32; 2]) -> [u8; BUFFER] {
    const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
    let mut out = [0u8; BUFFER];
    for (i, block) in out.chunks_exact_mut(64).enumerate() {
        let n = counter.wrapping_add(i as u64);
        let mut start = [0u32; 16];
        start[..4].copy_from_slice(&SIGMA);
        start[4..12].copy_from_slice(key);
        start[12..].copy_from_slice(&[n as u32, (n >> 32) as u32, nonce[0], nonce[1]]);
        let mut x = start;
        for _ in 0..ROUNDS / 2 {
            quarter_round(&mut x, 0, 4, 8, 12);
            quarter_round(&mut x, 1, 5, 9, 13);
            quarter_round(&mut x, 2, 6, 10, 14);
            quarter_round(&mut x, 3, 7, 11, 15);
            quarter_round(&mut x, 0, 5, 10, 15);
            quarter_round(&mut x, 1, 6, 11, 12);
            quarter_round(&mut x, 2, 7, 8, 13);
            quarter_round(&mut x, 3, 4, 9, 14);
        }
        for ((bytes, mixed), started) in block.chunks_exact_mut(4).zip(x).zip(start) {
            bytes.copy_from_slice(&mixed.wrapping_add(started).to_le_bytes());
        }
    }
    out
}

#[inline(always)]
fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
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

    /// RFC 8439 §2.3.2: the ChaCha20 block of key 00..1f, counter 1 and nonce
    /// 000000090000004a00000000 (its first word the high half of this 64-bit counter).
    #[test]
    fn the_block_function_is_chacha() {
        let mut key = [0u32; 8];
        for (i, k) in key.iter_mut().enumerate() {
            let b = 4 * i as u32;
            *k = u32::from_le_bytes([b as u8, (b + 1) as u8, (b + 2) as u8, (b + 3) as u8]);
        }
        let out = blocks::<20>(&key, 1 | (0x0900_0000 << 32), [0x4a00_0000, 0]);
        let mut hex = [0u8; 128];
        hex_into(&out[..64], &mut hex);
        assert_eq!(
            std::str::from_utf8(&hex).unwrap(),
            "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e\
             d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
        );
        // The blocks after it are the next ones: the counter's low word goes up by one each.
        let next = blocks::<20>(&key, 2 | (0x0900_0000 << 32), [0x4a00_0000, 0]);
        assert_eq!(out[64..128], next[..64]);
        assert_eq!(out[192..], next[128..192]);
    }

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
