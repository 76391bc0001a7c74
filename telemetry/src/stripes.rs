//! [`Stripes`]: one copy of a value per stripe, each on cache lines of its own, so that threads
//! recording at once do not pass the same cache line back and forth (Envoy and HAProxy keep
//! per-thread counters for the same reason). A thread writes to its own stripe; a reader adds
//! the stripes up.

use std::ops::Deref;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A value aligned to a cache line (128 bytes: adjacent-line prefetching pairs 64-byte lines
/// on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// How many stripes every striped value has: the machine's parallelism, 1 to 16.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 16)
    })
}

/// The calling thread's stripe: threads take stripes in turn as they first record.
#[inline]
fn mine() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    MINE.with(|m| *m)
}

/// One `T` per stripe.
#[derive(Debug)]
pub struct Stripes<T> {
    stripes: Box<[Padded<T>]>,
}

impl<T> Stripes<T> {
    /// A stripe for each of [`count`], each made by `make`.
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        Stripes {
            stripes: (0..count()).map(|_| Padded(make())).collect(),
        }
    }

    /// The calling thread's stripe.
    #[inline]
    pub fn local(&self) -> &T {
        let n = self.stripes.len();
        // `n` is at least 1; the modulo keeps the index in bounds.
        &self.stripes[mine() % n].0
    }

    /// Every stripe, to add up.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|p| &p.0)
    }
}

impl<T: Default> Default for Stripes<T> {
    fn default() -> Self {
        Stripes::new(T::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_write_their_own_stripes_and_readers_see_all() {
        let s: Stripes<AtomicUsize> = Stripes::default();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        s.local().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let total: usize = s.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        assert_eq!(total, 8000);
        assert_eq!(s.iter().count(), count());
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
    }
}
