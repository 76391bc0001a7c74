//! The shutdown signal as a connection's driver awaits it.
//!
//! A connection's driver is polled at every read and write of its connection, and each poll
//! of a waiting `watch::Receiver::changed()` takes the lock of the channel's waiter list: one
//! lock, shared by every connection on every thread, twice per proxied request (about 320
//! instructions per request of 35k, counted). [`StopSignal`] gives the channel a waker of its
//! own, which notes that the channel woke the task before waking it; the driver's other polls
//! cost an atomic swap and a waker comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Resolves once `changed` does (the shutdown channel's `changed()`, in an `async` block that
/// owns its receiver), polling it only when it woke the task (and at the first poll); then
/// stays pending.
pub(super) struct StopSignal<'a, F> {
    changed: Pin<&'a mut F>,
    flag: Arc<Flag>,
    done: bool,
}

/// What the channel's waker does: note it, wake the task.
struct Flag {
    /// The channel woke us since `changed` was last polled (true at first: never polled).
    woken: AtomicBool,
    /// The task that polls the [`StopSignal`].
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future> StopSignal<'a, F> {
    /// Awaits `changed`, pinned where the driver keeps it.
    pub(super) fn new(changed: Pin<&'a mut F>) -> Self {
        StopSignal {
            changed,
            flag: Arc::new(Flag {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
            done: false,
        }
    }
}

impl<F: Future> Future for StopSignal<'_, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Pending;
        }
        // Registered before the flag is read: a wake after the read wakes this waker.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(&this.flag));
        match this.changed.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(_) => {
                this.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    /// Polls `f` once, with this task's waker.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn resolves_when_the_channel_changes_and_not_before() {
        let (tx, mut rx) = watch::channel(false);
        let changed = async move {
            let _ = rx.changed().await;
        };
        let changed = std::pin::pin!(changed);
        let mut stop = StopSignal::new(changed);
        // Polled many times without a change: pending each time.
        for _ in 0..3 {
            assert!(poll_once(&mut stop).await.is_pending());
        }
        tx.send_replace(true);
        // The channel's wake reaches this task, and the signal resolves.
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut stop)
            .await
            .expect("the signal resolves after the change");
        // And stays pending afterwards (the driver stops polling it, but it is safe to).
        assert!(poll_once(&mut stop).await.is_pending());
    }

    #[tokio::test]
    async fn resolves_when_the_sender_is_gone() {
        let (tx, mut rx) = watch::channel(false);
        let changed = async move {
            let _ = rx.changed().await;
        };
        let changed = std::pin::pin!(changed);
        let mut stop = StopSignal::new(changed);
        assert!(poll_once(&mut stop).await.is_pending());
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut stop)
            .await
            .expect("the signal resolves when the sender drops");
    }
}
