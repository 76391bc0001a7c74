//! Parked connections. A plain HTTP/1.1 keep-alive connection that has waited
//! `idle_park_after_ms` for its next request gives up its task, its futures and its
//! registration with the runtime's reactor, and waits as a bare socket in one table, watched
//! by one task through an epoll instance of its own (nginx keeps an idle connection the same
//! way: an event structure and a socket, no buffer). When the client sends or closes, or the
//! connection's next deadline (the keep-alive wait within the header-read timeout, or the idle
//! timeout) comes, it is resumed: a new task picks it up where it stopped, and its own logic
//! answers, closes or times it out, as it would have unparked.
//!
//! What a parked connection keeps: its socket, its `Front` (the connection's address, its
//! state, its slot under `max_connections`) and a row here. Parking and resuming take the
//! table's lock, which no request ever waits for: only a connection idle for a second or more
//! (parking) and this module's task (resuming) take it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::TcpStream as StdTcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::front::Front;

/// A connection parked: what its task let go of, and what it needs back.
pub(super) struct Parked {
    /// The client's socket, out of the runtime's reactor.
    pub(super) stream: StdTcpStream,
    /// The connection's front door (and through it, its state and its slot).
    pub(super) front: Arc<Front>,
    /// When the connection's driver runs its idle check next.
    pub(super) due: Instant,
}

/// Where parked connections wait (see the [module docs](self)); one per `serve`.
pub(crate) struct Parking {
    /// Registers parked sockets with the epoll instance the task watches.
    registry: Registry,
    table: Mutex<Table>,
    /// Tells the task that a connection with an earlier deadline than any before was parked.
    sooner: Notify,
    /// The server's stop signal, for the connections resumed.
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking").finish_non_exhaustive()
    }
}

/// The parked connections, by token, and their deadlines.
#[derive(Default)]
struct Table {
    next_token: usize,
    parked: HashMap<usize, Parked>,
    /// Each parked connection's next deadline, earliest first. A resumed connection's row
    /// stays until its time comes or the heap is rebuilt (when it holds more than twice as
    /// many rows as there are parked connections), so the heap stays bounded.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The server is stopping: nothing is parked any more.
    stopped: bool,
    /// Connections parked since the allocator was last asked to give freed memory back, and
    /// when the last of them was.
    released: usize,
    last_park: Option<Instant>,
}

/// After this many connections parked, and `SETTLE` without another, the allocator is asked
/// to give back what their tasks held (a few parked now and then leave it to its own pace).
const RELEASED: usize = 64;
const SETTLE: Duration = Duration::from_millis(500);

/// How many readiness events one look at the epoll instance takes.
const EVENTS: usize = 256;

impl Parking {
    /// Starts the task that watches parked connections, which owns the table: the server's
    /// connections reach it through the `Weak` returned (a parked connection's `Front` holds
    /// the listener's limits, which hold this: a strong reference would keep the table, and
    /// the sockets in it, alive in a cycle once the task is gone). `None` when the epoll
    /// instance cannot be made (then nothing is parked, and the error is logged).
    pub(super) fn start(stop: watch::Receiver<bool>) -> Option<Weak<Parking>> {
        let made = Poll::new().and_then(|poll| {
            let registry = poll.registry().try_clone()?;
            // SAFETY: a `mio::Poll` owns its epoll descriptor from its making to its drop,
            // and `as_raw_fd` always returns that one; the `AsyncFd` owns the `Poll`.
            #[allow(unsafe_code)]
            let poll = unsafe {
                AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE)
                    .map_err(std::io::Error::from)?
            };
            Ok((poll, registry))
        });
        let (poll, registry) = match made {
            Ok(made) => made,
            Err(error) => {
                tracing::warn!(%error, "idle connections will not be parked");
                return None;
            }
        };
        let parking = Arc::new(Parking {
            registry,
            table: Mutex::new(Table::default()),
            sooner: Notify::new(),
            stop: stop.clone(),
        });
        let weak = Arc::downgrade(&parking);
        tokio::spawn(watch_parked(parking, poll, stop));
        Some(weak)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while the lock was held left the table as it was between two statements;
        // its rows are still each whole.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parks a connection whose task is ending (`stream` taken out of the reactor), until
    /// its client sends or closes, or `deadline`. Resumed at once if the server is stopping
    /// or the socket cannot be watched.
    pub(super) fn park(&self, parked: Parked, deadline: Instant) {
        let fd = parked.stream.as_raw_fd();
        let mut table = self.table();
        if table.stopped {
            drop(table);
            return super::conn::resume(parked, self.stop.clone());
        }
        let token = table.next_token;
        table.next_token = table.next_token.wrapping_add(1);
        let sooner = table
            .deadlines
            .peek()
            .is_none_or(|Reverse((first, _))| deadline < *first);
        // In the table before it is watched: an event for it may come at once.
        table.parked.insert(token, parked);
        if let Err(error) =
            self.registry
                .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        {
            tracing::debug!(%error, "a connection could not be parked");
            if let Some(parked) = table.parked.remove(&token) {
                drop(table);
                super::conn::resume(parked, self.stop.clone());
            }
            return;
        }
        table.deadlines.push(Reverse((deadline, token)));
        table.released += 1;
        table.last_park = Some(Instant::now());
        // The task looks at the time to give memory back when there is enough of it.
        let sooner = sooner || table.released == RELEASED;
        let stats = Arc::clone(table.parked[&token].front.state().stats());
        drop(table);
        stats.parked.inc();
        if sooner {
            self.sooner.notify_one();
        }
    }

    /// Takes the connection under `token` out of the table and its socket out of the epoll
    /// instance; `None` if it has been resumed already.
    fn unpark(&self, table: &mut Table, token: usize) -> Option<Parked> {
        let parked = table.parked.remove(&token)?;
        let _ = self
            .registry
            .deregister(&mut SourceFd(&parked.stream.as_raw_fd()));
        parked.front.state().stats().parked.dec();
        Some(parked)
    }
}

/// The task that watches parked connections: resumes each whose socket turns readable or
/// whose deadline comes, and all of them when the server stops.
async fn watch_parked(
    parking: Arc<Parking>,
    mut poll: AsyncFd<Poll>,
    mut stop: watch::Receiver<bool>,
) {
    if !*stop.borrow_and_update() {
        watch(&parking, &mut poll, &mut stop).await;
    }
    // Stopping (or no longer able to watch): every parked connection is resumed, to finish
    // as its own task decides, and none is parked from now on.
    let mut table = parking.table();
    table.stopped = true;
    let tokens: Vec<usize> = table.parked.keys().copied().collect();
    let resumed: Vec<Parked> = tokens
        .into_iter()
        .filter_map(|token| parking.unpark(&mut table, token))
        .collect();
    table.deadlines.clear();
    drop(table);
    for parked in resumed {
        super::conn::resume(parked, parking.stop.clone());
    }
}

/// Watches parked connections until the server stops or they can no longer be watched.
async fn watch(parking: &Parking, poll: &mut AsyncFd<Poll>, stop: &mut watch::Receiver<bool>) {
    let mut events = Events::with_capacity(EVENTS);
    let mut resumed = Vec::new();
    loop {
        let (next, give_back) = {
            let table = parking.table();
            let next = table.deadlines.peek().map(|Reverse((at, _))| *at);
            let give_back = table
                .last_park
                .filter(|_| table.released >= RELEASED)
                .map(|at| at + SETTLE);
            (next, give_back)
        };
        tokio::select! {
            ready = poll.readable_mut() => {
                let Ok(mut ready) = ready else {
                    tracing::warn!("parked connections can no longer be watched");
                    return;
                };
                events.clear();
                match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) if events.is_empty() => ready.clear_ready(),
                    Ok(()) => {
                        let mut table = parking.table();
                        resumed.extend(events.iter().filter_map(|e| parking.unpark(&mut table, e.token().0)));
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::warn!(%error, "parked connections can no longer be watched");
                        return;
                    }
                }
            }
            () = sleep_until(next) => {
                let now = Instant::now();
                let mut table = parking.table();
                while let Some(Reverse((at, token))) = table.deadlines.peek().copied() {
                    if at > now {
                        break;
                    }
                    table.deadlines.pop();
                    resumed.extend(parking.unpark(&mut table, token));
                }
            }
            () = sleep_until(give_back) => {
                let mut table = parking.table();
                // (Another connection parked since: its settling time counts from then.)
                if table.last_park.is_some_and(|at| at + SETTLE <= Instant::now()) {
                    table.released = 0;
                    table.last_park = None;
                    drop(table);
                    #[cfg(feature = "mimalloc")]
                    crate::alloc::give_back_free_memory();
                }
            }
            () = parking.sooner.notified() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        {
            let mut table = parking.table();
            if table.deadlines.len() > 64 && table.deadlines.len() > 2 * table.parked.len() {
                let Table {
                    parked, deadlines, ..
                } = &mut *table;
                deadlines.retain(|Reverse((_, token))| parked.contains_key(token));
            }
        }
        for parked in resumed.drain(..) {
            super::conn::resume(parked, parking.stop.clone());
        }
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
