//! `cargo bench -p router`: this crate next to matchit (and path-tree) on the GitHub API routes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;

const ROUTES: &str = include_str!("../data/github_api_routes.tsv");
const GET130: &str = include_str!("../data/github_api_get130.tsv");

struct Route {
    method: Method,
    colon: &'static str,
    braces: &'static str,
    path: &'static str,
}

fn github_api() -> Vec<Route> {
    ROUTES
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            Route {
                method: cols[0].parse().unwrap(),
                colon: cols[1],
                braces: cols[2],
                path: cols[3],
            }
        })
        .collect()
}

fn get130() -> Vec<Route> {
    GET130
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            Route {
                method: Method::GET,
                colon: cols[0],
                braces: cols[1],
                path: cols[2],
            }
        })
        .collect()
}

fn bench_github_api(c: &mut Criterion) {
    let routes = github_api();
    let mut group = c.benchmark_group("github_api");

    let mut ours = router::MethodRouter::new();
    for r in &routes {
        ours.insert(Some(&r.method), r.colon, true).unwrap();
    }
    group.bench_function("router", |b| {
        b.iter(|| {
            for r in &routes {
                let m = ours.at(black_box(&r.method), black_box(r.path)).unwrap();
                black_box(m.value);
            }
        })
    });

    // The same shape in this crate: one tree of the distinct paths, a method table per path
    // (the design BENCHMARKS.md weighs against the per-method trees).
    let mut one_tree: router::Router<Vec<(Method, bool)>> = router::Router::new();
    for r in &routes {
        match one_tree.at_mut(r.path) {
            Ok(m) if m.value.iter().all(|(method, _)| *method != r.method) => {
                m.value.push((r.method.clone(), true))
            }
            _ => one_tree
                .insert(r.colon, vec![(r.method.clone(), true)])
                .unwrap(),
        }
    }
    one_tree.prepare();
    group.bench_function("router_one_tree", |b| {
        b.iter(|| {
            for r in &routes {
                let m = one_tree.at(black_box(r.path)).unwrap();
                let method = black_box(&r.method);
                let found = m.value.iter().find(|(x, _)| x == method).unwrap();
                black_box(found);
            }
        })
    });

    // matchit has no method dispatch: one tree of paths, each with a small method table.
    let mut theirs: matchit::Router<Vec<(Method, bool)>> = matchit::Router::new();
    for r in &routes {
        match theirs.at_mut(r.path) {
            Ok(m) if m.value.iter().all(|(method, _)| *method != r.method) => {
                m.value.push((r.method.clone(), true))
            }
            _ => theirs
                .insert(r.braces, vec![(r.method.clone(), true)])
                .unwrap(),
        }
    }
    group.bench_function("matchit", |b| {
        b.iter(|| {
            for r in &routes {
                let m = theirs.at(black_box(r.path)).unwrap();
                let method = black_box(&r.method);
                let found = m.value.iter().find(|(x, _)| x == method).unwrap();
                black_box(found);
            }
        })
    });
    group.finish();
}

fn bench_get130(c: &mut Criterion) {
    let routes = get130();
    let mut ours = router::Router::new();
    let mut theirs = matchit::Router::new();
    let mut tree = path_tree::PathTree::new();
    for (i, r) in routes.iter().enumerate() {
        ours.insert(r.colon, i).unwrap();
        theirs.insert(r.braces, i).unwrap();
        let _ = tree.insert(r.colon, i);
    }

    let mut group = c.benchmark_group("github_get130");
    group.bench_function("router", |b| {
        b.iter(|| {
            for r in &routes {
                black_box(ours.at(black_box(r.path)).unwrap().value);
            }
        })
    });
    group.bench_function("matchit", |b| {
        b.iter(|| {
            for r in &routes {
                black_box(theirs.at(black_box(r.path)).unwrap().value);
            }
        })
    });
    group.bench_function("path-tree", |b| {
        b.iter(|| {
            for r in &routes {
                black_box(tree.find(black_box(r.path)).unwrap().0);
            }
        })
    });
    group.finish();

    // The same lookups, reading every parameter value.
    let mut group = c.benchmark_group("github_get130_params");
    group.bench_function("router", |b| {
        b.iter(|| {
            for r in &routes {
                let m = ours.at(black_box(r.path)).unwrap();
                for (k, v) in m.params.iter() {
                    black_box((k, v));
                }
            }
        })
    });
    group.bench_function("matchit", |b| {
        b.iter(|| {
            for r in &routes {
                let m = theirs.at(black_box(r.path)).unwrap();
                for (k, v) in m.params.iter() {
                    black_box((k, v));
                }
            }
        })
    });
    group.bench_function("path-tree", |b| {
        b.iter(|| {
            for r in &routes {
                let (_, p) = tree.find(black_box(r.path)).unwrap();
                for (k, v) in p.params_iter() {
                    black_box((k, v));
                }
            }
        })
    });
    group.finish();
}

/// Host lookup with one virtual host next to 1,000 (half exact, half wildcard): the cost must
/// not grow with the number of hosts.
fn bench_hosts(c: &mut Criterion) {
    let mut group = c.benchmark_group("hosts");
    let mut one = router::Hosts::new();
    one.insert("api.example.com", 0usize).unwrap();
    one.insert("*.example.net", 1).unwrap();
    let mut many = router::Hosts::new();
    for i in 0..500 {
        many.insert(&format!("api{i}.example.com"), i).unwrap();
        many.insert(&format!("*.tenant{i}.example.net"), i).unwrap();
    }
    many.insert("api.example.com", 1000).unwrap();
    for (name, hosts) in [("1 host", &one), ("1000 hosts", &many)] {
        group.bench_function(format!("{name}/exact"), |b| {
            b.iter(|| black_box(hosts.get(black_box("api.example.com:8080"))))
        });
        group.bench_function(format!("{name}/miss"), |b| {
            b.iter(|| black_box(hosts.get(black_box("www.other.example.org"))))
        });
    }
    group.bench_function("1000 hosts/wildcard", |b| {
        b.iter(|| black_box(many.get(black_box("shop.tenant250.example.net"))))
    });
    group.bench_function("1000 hosts/mixed case", |b| {
        b.iter(|| black_box(many.get(black_box("API250.Example.COM"))))
    });
    group.finish();
}

criterion_group!(benches, bench_github_api, bench_get130, bench_hosts);
criterion_main!(benches);
