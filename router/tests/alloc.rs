//! Heap allocations on the hot path, counted by a global allocator.
//!
//! Counts are per thread, so tests running in parallel do not disturb each other.
#![allow(unsafe_code, missing_docs, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use http::{Method, Request, Response};
use router::{Body, MethodRouter, Mux, PathParams, Router};
use tower::{Service, service_fn};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local without destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

const ROUTES: &str = include_str!("../data/github_api_routes.tsv");
const GET130: &str = include_str!("../data/github_api_get130.tsv");

#[test]
fn lookups_over_the_benchmark_route_sets_allocate_nothing() {
    let mut by_method = MethodRouter::new();
    let mut requests = Vec::new();
    for line in ROUTES.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let method: Method = cols[0].parse().unwrap();
        by_method.insert(Some(&method), cols[1], cols[1]).unwrap();
        requests.push((method, cols[3], cols[1]));
    }
    let mut get130 = Router::new();
    let mut paths = Vec::new();
    for line in GET130.lines().filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        get130.insert(cols[0], cols[0]).unwrap();
        paths.push((cols[2], cols[0]));
    }
    // Routes with many parameters, which other routers spill to the heap.
    get130
        .insert("/wide/:a/:b/:c/:d/:e/:f/:g/:h/*rest", "wide")
        .unwrap();
    paths.push(("/wide/1/2/3/4/5/6/7/8/and/more", "wide"));
    by_method.prepare();
    get130.prepare();

    let (matched, count) = allocations(|| {
        let mut matched = 0;
        for (method, path, route) in &requests {
            let m = by_method.at(method, path).unwrap();
            assert_eq!(m.value, route);
            // Reading every parameter is free too.
            for (name, value) in m.params.iter() {
                assert!(!name.is_empty() && !value.is_empty());
            }
            matched += 1;
        }
        for (path, route) in &paths {
            let m = get130.at(path).unwrap();
            assert_eq!(m.value, route);
            let params: usize = m.params.iter().map(|(_, v)| v.len()).sum();
            assert!(params <= path.len());
            matched += 1;
        }
        let m = get130.at("/wide/1/2/3/4/5/6/7/8/x").unwrap();
        assert_eq!(m.params.get("h"), Some("8"));
        assert_eq!(m.params.get("rest"), Some("/x"));
        matched
    });
    assert_eq!(matched, requests.len() + paths.len());
    assert_eq!(count, 0, "lookups allocated {count} times");

    // And the counter does count: a lookup right after an insert compiles the tree.
    get130.insert("/new/route", "new").unwrap();
    let (_, count) = allocations(|| get130.at("/new/route").is_ok());
    assert!(count > 0);
}

fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("handler did not complete at once"),
    }
}

static SEEN_ID_LEN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn dispatch_allocations_per_request() {
    let ok = service_fn(|req: Request<()>| async move {
        let id = req
            .extensions()
            .get::<PathParams>()
            .and_then(|p| p.get("id"))
            .map(str::len);
        SEEN_ID_LEN.store(id.unwrap_or(0), Ordering::SeqCst);
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let mut mux = Mux::new();
    mux.get("/plain", ok).unwrap();
    mux.get("/users/:id", ok).unwrap();
    let mut svc = mux.into_service();

    let mut run = |uri: &'static str| {
        let req = Request::get(uri).body(()).unwrap();
        // Warm the path's Bytes into shared form so the count is what a server would see.
        let _ = req.uri().clone();
        let (res, count) = allocations(|| poll_once(svc.call(req)).unwrap());
        (res, count)
    };
    // One allocation: the boxed response future of the type-erased route.
    let (_, plain) = run("/plain");
    assert_eq!(plain, 1, "a route without params");
    // Plus what `http::Extensions::insert` costs on a request without extensions: the boxed
    // map, its table, and the boxed `PathParams`. The path itself is shared, not copied.
    let (_, with_params) = run("/users/42");
    assert_eq!(SEEN_ID_LEN.load(Ordering::SeqCst), 2);
    assert_eq!(with_params, 4, "a route with params");
    // Misses box nothing: what they allocate is the answer's header map.
    let (res, missing) = run("/nope");
    assert_eq!(res.status(), 404);
    assert!(missing <= 3, "a 404: {missing}");
}
