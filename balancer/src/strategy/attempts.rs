//! [`Attempts`]: the targets one request already tried.

/// How many targets one request may try (a first pick and its retries).
pub const MAX_ATTEMPTS: usize = 16;

/// The targets already tried by one request, held inline: no allocation.
///
/// ```
/// use balancer::{Attempts, HealthPolicy, RoundRobin, Strategy, Target};
///
/// let rr = RoundRobin::new(
///     (0..3).map(|i| Target::new(i, 1)).collect(),
///     HealthPolicy::default(),
/// );
/// let mut attempts = Attempts::new();
/// let mut seen = Vec::new();
/// while let Some(i) = rr.next_attempt(&mut attempts) {
///     seen.push(i);
/// }
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2]); // every target once, then no more
/// ```
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    tried: [u32; MAX_ATTEMPTS],
    len: usize,
}

impl Attempts {
    /// No target tried yet.
    pub const fn new() -> Self {
        Attempts {
            tried: [0; MAX_ATTEMPTS],
            len: 0,
        }
    }

    /// The indices tried so far, in order.
    pub fn tried(&self) -> &[u32] {
        &self.tried[..self.len]
    }

    /// How many targets were tried.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether target `index` was tried.
    pub fn contains(&self, index: usize) -> bool {
        self.tried().iter().any(|&t| t as usize == index)
    }

    pub(crate) fn push(&mut self, index: usize) -> bool {
        if self.len == MAX_ATTEMPTS {
            return false;
        }
        self.tried[self.len] = u32::try_from(index).unwrap_or(u32::MAX);
        self.len += 1;
        true
    }
}
