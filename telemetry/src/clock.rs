//! The time as a server's request path reads it: the clock read at most once per poll of a
//! task that runs in [`OneReadPerPoll`], as nginx reads it once per turn of its event loop.
//!
//! A proxied request reads the time about eight times (its metrics' start and end, the
//! header-read deadline, the pool's idle checks, the upstream's response deadline, the time to
//! the upstream's answer): a `clock_gettime` each, about 20 ns apiece on a virtual machine,
//! where most of it is the ordered read of the time-stamp counter. Inside one poll those reads
//! are microseconds apart at most, and every one of them measures or bounds something in
//! milliseconds; the poll that follows the next wake-up reads the clock afresh. Outside a
//! [`OneReadPerPoll`] (a background task, a test), [`now`] is [`Instant::now`].
//!
//! ```
//! use std::future::Future;
//! use std::pin::pin;
//! use std::task::{Context, Poll, Waker};
//! use telemetry::clock::{self, OneReadPerPoll};
//!
//! let mut read = pin!(OneReadPerPoll::new(async {
//!     let first = clock::now();
//!     let second = clock::now();
//!     (first, second)
//! }));
//! let mut cx = Context::from_waker(Waker::noop());
//! let Poll::Ready((first, second)) = read.as_mut().poll(&mut cx) else { panic!() };
//! assert_eq!(first, second, "one poll, one read of the clock");
//!
//! // Outside, every call reads the clock.
//! let before = clock::now();
//! assert!(clock::now() >= before);
//! ```

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

/// What [`now`] answers on this thread.
#[derive(Clone, Copy)]
enum Cached {
    /// Not inside a poll of a [`OneReadPerPoll`]: every call reads the clock.
    Off,
    /// Inside one, the clock not read yet.
    Unread,
    /// Inside one, the clock read at this instant.
    Read(Instant),
}

thread_local! {
    static CACHED: Cell<Cached> = const { Cell::new(Cached::Off) };
}

/// The time now: read once per poll of the [`OneReadPerPoll`] task running on this thread,
/// or read afresh outside one (see the [module docs](self)).
pub fn now() -> Instant {
    CACHED.with(|cached| match cached.get() {
        Cached::Read(at) => at,
        Cached::Off => Instant::now(),
        Cached::Unread => {
            let at = Instant::now();
            cached.set(Cached::Read(at));
            at
        }
    })
}

pin_project! {
    /// A future during whose every poll [`now`] reads the clock at most once: wrap a task's
    /// whole future (a connection's, a stream's) in it where it is spawned.
    #[derive(Debug)]
    pub struct OneReadPerPoll<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> OneReadPerPoll<F> {
    /// `inner`, with its polls reading the clock once.
    pub fn new(inner: F) -> Self {
        OneReadPerPoll { inner }
    }
}

impl<F: Future> Future for OneReadPerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _poll = PollScope::enter();
        self.project().inner.poll(cx)
    }
}

/// One poll's cache: entered unread, and put back as it was when the poll ends (unwinding
/// included), so that a nested poll does not leave its reading to the outer one's caller.
struct PollScope {
    outer: Cached,
}

impl PollScope {
    fn enter() -> PollScope {
        PollScope {
            outer: CACHED.with(|cached| cached.replace(Cached::Unread)),
        }
    }
}

impl Drop for PollScope {
    fn drop(&mut self) {
        CACHED.with(|cached| cached.set(self.outer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Wake, Waker};

    /// Pending on its first poll, ready on its second, reading the clock twice in each.
    struct TwoPolls {
        polled: bool,
        reads: Vec<Instant>,
    }

    impl Future for TwoPolls {
        type Output = Vec<Instant>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<Instant>> {
            let first = now();
            // Long enough for the clock to have moved on any machine.
            let spin = Instant::now();
            while Instant::now() <= spin {}
            let second = now();
            self.reads.extend([first, second]);
            if self.polled {
                Poll::Ready(std::mem::take(&mut self.reads))
            } else {
                self.polled = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    struct Woken(AtomicBool);
    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// One reading per poll, a fresh one at the next poll, and none kept once the poll ends.
    #[test]
    fn each_poll_reads_the_clock_once_and_the_next_afresh() {
        let woken = Arc::new(Woken(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        let mut task = OneReadPerPoll::new(TwoPolls {
            polled: false,
            reads: Vec::new(),
        });
        assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
        assert!(woken.0.load(Ordering::Relaxed));
        // Between polls, the clock is read again at each call.
        let outside = now();
        while Instant::now() <= outside {}
        assert!(now() > outside);
        let Poll::Ready(reads) = Pin::new(&mut task).poll(&mut cx) else {
            panic!("the second poll ends the task");
        };
        assert_eq!(reads[0], reads[1], "one reading within the first poll");
        assert_eq!(reads[2], reads[3], "one reading within the second poll");
        assert!(
            reads[2] > reads[1],
            "the second poll reads the clock afresh"
        );
        assert!(reads[2] > outside);
    }

    /// A poll nested in another (a task polling a wrapped future inline) leaves the outer
    /// poll's reading as it found it.
    #[test]
    fn a_nested_poll_gives_the_outer_one_its_reading_back() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut outer = std::pin::pin!(OneReadPerPoll::new(async {
            let before = now();
            let mut inner = std::pin::pin!(OneReadPerPoll::new(async { now() }));
            let spin = Instant::now();
            while Instant::now() <= spin {}
            let inner_read = std::future::poll_fn(|cx| inner.as_mut().poll(cx)).await;
            (before, inner_read, now())
        }));
        let Poll::Ready((before, inner_read, after)) = outer.as_mut().poll(&mut cx) else {
            panic!("ready at once");
        };
        assert!(inner_read > before, "the nested poll read the clock itself");
        assert_eq!(after, before, "and gave the outer reading back");
    }
}
