//! Property tests: the tree against a brute-force reference matcher.
#![allow(missing_docs, clippy::unwrap_used)]

use proptest::prelude::*;
use router::{InsertError, Router};

type Pairs = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Static(&'static str),
    Param(String),
    CatchAll,
}

const STATICS: [&str; 7] = ["a", "ab", "abc", "b", "users", "u", "list"];
const VALUES: [&str; 4] = ["1", "42", "a", "listx"];

fn pattern(route: &[Seg]) -> String {
    if route.is_empty() {
        return "/".to_owned();
    }
    route
        .iter()
        .map(|s| match s {
            Seg::Static(t) => format!("/{t}"),
            Seg::Param(n) => format!("/:{n}"),
            Seg::CatchAll => "/*rest".to_owned(),
        })
        .collect()
}

fn segment() -> impl Strategy<Value = Seg> {
    prop_oneof![
        6 => proptest::sample::select(&STATICS[..]).prop_map(Seg::Static),
        3 => Just(Seg::Param(String::new())),
        1 => Just(Seg::CatchAll),
    ]
}

/// A route of up to four segments; parameters are named by position, a catch-all only last.
fn route() -> impl Strategy<Value = Vec<Seg>> {
    proptest::collection::vec(segment(), 0..=4).prop_map(|mut segs| {
        let last = segs.len().saturating_sub(1);
        segs.iter_mut().enumerate().for_each(|(i, s)| match s {
            Seg::Param(name) => *name = format!("p{i}"),
            Seg::CatchAll if i != last => *s = Seg::Param(format!("p{i}")),
            _ => {}
        });
        segs
    })
}

/// The reference: a route matches segment by segment; among matching routes the one whose
/// segment kinds (static < param < catch-all) are lexicographically smallest wins.
fn reference<'p>(routes: &[Vec<Seg>], path: &'p str) -> Option<(String, Vec<(String, String)>)> {
    let segs: Vec<&'p str> = path.strip_prefix('/')?.split('/').collect();
    let mut best: Option<(Vec<u8>, usize, Pairs)> = None;
    for (index, route) in routes.iter().enumerate() {
        let route_segs: Vec<Seg> = if route.is_empty() {
            vec![Seg::Static("")]
        } else {
            route.clone()
        };
        let mut kinds = Vec::new();
        let mut params = Vec::new();
        let mut ok = true;
        let mut catch_all = false;
        for (i, seg) in route_segs.iter().enumerate() {
            match seg {
                Seg::Static(t) => {
                    ok &= segs.get(i) == Some(t);
                    kinds.push(0);
                }
                Seg::Param(n) => {
                    ok &= segs.get(i).is_some_and(|s| !s.is_empty());
                    if ok {
                        params.push((n.clone(), segs[i].to_owned()));
                    }
                    kinds.push(1);
                }
                Seg::CatchAll => {
                    ok &= i < segs.len();
                    if ok {
                        params.push(("rest".to_owned(), format!("/{}", segs[i..].join("/"))));
                    }
                    kinds.push(2);
                    catch_all = true;
                }
            }
            if !ok {
                break;
            }
        }
        ok &= catch_all || route_segs.len() == segs.len();
        if ok && best.as_ref().is_none_or(|(k, _, _)| kinds < *k) {
            best = Some((kinds, index, params));
        }
    }
    best.map(|(_, index, params)| (pattern(&routes[index]), params))
}

fn sample_path(route: &[Seg], value: &str, tail: &str) -> String {
    if route.is_empty() {
        return "/".to_owned();
    }
    route
        .iter()
        .map(|s| match s {
            Seg::Static(t) => format!("/{t}"),
            Seg::Param(_) => format!("/{value}"),
            Seg::CatchAll => format!("/{tail}"),
        })
        .collect()
}

fn random_path() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(
            proptest::sample::select(
                &[
                    "a", "ab", "abc", "b", "users", "u", "list", "1", "listx", "",
                ][..],
            ),
            0..=5,
        ),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p: String = segs.iter().map(|s| format!("/{s}")).collect();
            if slash || p.is_empty() {
                p.push('/');
            }
            p
        })
}

/// Builds a router from `routes`, keeping those it accepts; a rejection must be a conflict
/// with an accepted route of the same shape.
fn build(routes: &[Vec<Seg>]) -> (Router<String>, Vec<Vec<Seg>>) {
    let mut router = Router::new();
    let mut accepted: Vec<Vec<Seg>> = Vec::new();
    for r in routes {
        let p = pattern(r);
        match router.insert(&p, p.clone()) {
            Ok(()) => accepted.push(r.clone()),
            Err(InsertError::Conflict { existing, .. }) => {
                let shape = |segs: &[Seg]| -> Vec<Seg> {
                    segs.iter()
                        .map(|s| match s {
                            Seg::Param(_) => Seg::Param(String::new()),
                            other => other.clone(),
                        })
                        .collect()
                };
                let clash = accepted.iter().find(|a| pattern(a) == existing).unwrap();
                assert_eq!(shape(clash), shape(r), "{p} rejected against {existing}");
            }
            Err(e) => panic!("generated route {p} rejected: {e}"),
        }
    }
    (router, accepted)
}

fn probe(router: &Router<String>, path: &str) -> Option<(String, Vec<(String, String)>)> {
    let m = router.at(path).ok()?;
    assert_eq!(m.value, m.route());
    let params = m
        .params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((m.value.clone(), params))
}

/// Path normalization as RFC 3986 describes it, written independently of the router's: first
/// the escapes (unreserved decoded, others upper-cased; a broken one or `%00` refused), then
/// the refusal of a `..` hidden behind an encoded slash or backslash or before a `;`, then
/// §5.2.4's remove_dot_segments on an input buffer, refusing a `..` that climbs above the
/// root.
fn normalize_model(path: &str) -> Result<String, router::BadPath> {
    use router::BadPath;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let b = path.as_bytes();
    let mut decoded = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            let len = path[i..].chars().next().map_or(1, char::len_utf8);
            decoded.push_str(&path[i..i + len]);
            i += len;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).and_then(|&x| hex(x)),
            b.get(i + 2).and_then(|&x| hex(x)),
        ) else {
            return Err(BadPath::BadEscape);
        };
        let byte = h * 16 + l;
        if byte == 0 {
            return Err(BadPath::Nul);
        }
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            decoded.push(byte as char);
        } else {
            decoded.push_str(&format!("%{byte:02X}"));
        }
        i += 3;
    }
    for seg in decoded.split('/') {
        let full = seg.replace("%2F", "/").replace("%5C", "\\");
        let hidden = seg != ".."
            && full
                .split(['/', '\\'])
                .any(|piece| piece.split(';').next() == Some(".."));
        if hidden {
            return Err(BadPath::HiddenDotSegment);
        }
    }
    // RFC 3986 §5.2.4, on buffers.
    let mut input = decoded.as_str().to_owned();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input
            .strip_prefix("../")
            .or_else(|| input.strip_prefix("./"))
        {
            input = rest.to_owned();
        } else if input.starts_with("/./") || input == "/." {
            input = format!("/{}", &input[if input == "/." { 2 } else { 3 }..]);
        } else if input.starts_with("/../") || input == "/.." {
            input = format!("/{}", &input[if input == "/.." { 3 } else { 4 }..]);
            let cut = output.rfind('/').ok_or(BadPath::AboveRoot)?;
            output.truncate(cut);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |e| e + start);
            output.push_str(&input[..end]);
            input = input[end..].to_owned();
        }
    }
    if output.is_empty() {
        output.push('/');
    }
    Ok(output)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tree_agrees_with_the_reference(
        routes in proptest::collection::vec(route(), 1..24),
        extra in proptest::collection::vec(random_path(), 0..24),
    ) {
        let (router, accepted) = build(&routes);
        let mut paths = extra;
        for r in &accepted {
            for value in VALUES {
                paths.push(sample_path(r, value, ""));
                paths.push(sample_path(r, value, "x/1"));
            }
        }
        for r in &accepted {
            // A route's own sample always matches something: it or a more specific route.
            let path = sample_path(r, "1", "");
            prop_assert!(router.at(&path).is_ok(), "{} does not match {path}", pattern(r));
        }
        for path in &paths {
            prop_assert_eq!(probe(&router, path), reference(&accepted, path), "path {}", path);
        }
    }

    #[test]
    fn insertion_order_does_not_matter(
        (routes, shuffled) in proptest::collection::vec(route(), 1..20)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        extra in proptest::collection::vec(random_path(), 0..32),
    ) {
        let (a, accepted) = build(&routes);
        let (b, _) = build(&shuffled);
        let mut paths = extra;
        paths.extend(accepted.iter().map(|r| sample_path(r, "42", "y")));
        for path in &paths {
            let (ra, rb) = (probe(&a, path), probe(&b, path));
            // Conflicting routes may win in either order; compare the shapes that matched.
            prop_assert_eq!(ra.is_some(), rb.is_some(), "path {}", path);
            if let (Some((_, pa)), Some((_, pb))) = (ra, rb) {
                let values = |p: Vec<(String, String)>| p.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
                prop_assert_eq!(values(pa), values(pb), "path {}", path);
            }
        }
    }

    #[test]
    fn arbitrary_paths_never_panic(
        routes in proptest::collection::vec(route(), 0..16),
        text in any::<String>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (router, accepted) = build(&routes);
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        for path in [text.clone(), format!("/{text}"), lossy.clone(), format!("/{lossy}")] {
            // Matched or not, the tree agrees with the reference on every string.
            prop_assert_eq!(probe(&router, &path), reference(&accepted, &path), "path {:?}", path);
        }
        // Arbitrary patterns either insert or fail with an error, never a panic.
        let mut r = Router::new();
        let _ = r.insert(&text, ());
        let _ = r.insert(&format!("/{lossy}"), ());
    }

    #[test]
    fn failed_inserts_change_nothing(
        routes in proptest::collection::vec(route(), 1..16),
        paths in proptest::collection::vec(random_path(), 1..32),
    ) {
        let (mut router, accepted) = build(&routes);
        let before: Vec<_> = paths.iter().map(|p| probe(&router, p)).collect();
        let count = router.len();
        for r in &accepted {
            // Same shape, other parameter names: a conflict.
            let renamed: Vec<Seg> = r.iter().map(|s| match s {
                Seg::Param(n) => Seg::Param(format!("{n}x")),
                other => other.clone(),
            }).collect();
            let p = pattern(&renamed);
            prop_assert!(router.insert(&p, p.clone()).is_err());
        }
        for bad in ["", "x", "/a/:", "/*r/x", "/:a/:a", "/a?b"] {
            prop_assert!(router.insert(bad, bad.to_owned()).is_err());
        }
        prop_assert_eq!(router.len(), count);
        let after: Vec<_> = paths.iter().map(|p| probe(&router, p)).collect();
        prop_assert_eq!(before, after);
    }

    #[test]
    fn normalized_paths_are_stable_and_free_of_dot_segments(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just(".".to_owned()), Just("..".to_owned()), Just("%2e%2E".to_owned()),
                Just(".%2e".to_owned()), Just("%2F".to_owned()), Just("%61".to_owned()),
                Just("".to_owned()), Just("%5c".to_owned()), Just("\\".to_owned()),
                Just("..;x".to_owned()), Just("%00".to_owned()), Just("%7E".to_owned()),
                "[a-z%.;~]{1,6}".prop_map(|s| s),
            ],
            0..10,
        ),
    ) {
        let path = format!("/{}", pieces.join("/"));
        let got = router::normalize_path(&path).map(|p| p.into_owned());
        // Accepted (and to what) or refused, as the RFC 3986 model says. When a path has
        // several faults, which one is named depends on the order they are found in.
        let model = normalize_model(&path);
        prop_assert_eq!(got.as_ref().ok(), model.as_ref().ok(), "path {} (model {:?})", path, model);
        if let Ok(once) = got {
            prop_assert!(once.starts_with('/'));
            let segs: Vec<&str> = once.split('/').collect();
            prop_assert!(!segs.iter().any(|s| *s == "." || *s == ".."), "{} -> {}", path, once);
            prop_assert!(!once.to_ascii_lowercase().contains("%2e"), "{} -> {}", path, once);
            let twice = router::normalize_path(&once).unwrap();
            prop_assert_eq!(&*twice, &*once, "not idempotent on {}", path);
        }
    }

    #[test]
    fn normalizing_arbitrary_strings_never_panics(text in "\\PC{0,64}") {
        let _ = router::normalize_path(&text);
        let _ = router::normalize_path(&format!("/{text}"));
    }
}
