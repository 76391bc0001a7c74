//! Parsing of route patterns into the pieces the tree stores.
//!
//! Syntax: a pattern is an absolute path. A segment that starts with `:` is a parameter that
//! matches one non-empty path segment; a segment that starts with `*` is a catch-all that must be
//! last and matches the rest of the path, keeping its leading slash. `:` and `*` anywhere else
//! are literal text.

use crate::error::{InsertError, MalformedReason};

/// One piece of a parsed pattern, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Literal text, matched byte for byte.
    Static(&'a [u8]),
    /// A `:name` segment.
    Param,
    /// A `*name` segment (always the last piece).
    CatchAll,
}

/// A pattern split into pieces, with what lookup needs to recover parameter values.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) pieces: Vec<Piece<'a>>,
    /// Parameter names in order of appearance.
    pub(crate) names: Vec<&'a str>,
    /// For each parameter, the index of the path segment it captures (segment 1 is the text
    /// after the first `/`).
    pub(crate) segments: Vec<u32>,
    /// Whether the last parameter is a catch-all.
    pub(crate) catch_all: bool,
    /// The pattern with parameter names erased: two routes with the same shape match exactly
    /// the same paths, which is what a conflict is.
    pub(crate) shape: String,
}

pub(crate) fn parse(route: &str) -> Result<Parsed<'_>, InsertError> {
    let malformed = |reason| InsertError::Malformed {
        route: route.to_owned(),
        reason,
    };
    if !route.starts_with('/') {
        return Err(malformed(MalformedReason::MissingLeadingSlash));
    }
    if route.contains(['?', '#']) {
        return Err(malformed(MalformedReason::QueryOrFragment));
    }

    let mut parsed = Parsed {
        pieces: Vec::new(),
        names: Vec::new(),
        segments: Vec::new(),
        catch_all: false,
        shape: String::with_capacity(route.len()),
    };
    // Start of the static text not yet emitted as a piece.
    let mut static_start = 0;
    // Byte offset of the current segment (just past its `/`).
    let mut offset = 1;
    let mut segment_index: u32 = 1;
    let mut rest = &route[1..];
    loop {
        let seg_len = rest.find('/').unwrap_or(rest.len());
        let segment = &rest[..seg_len];
        let sigil = segment.as_bytes().first().copied();
        if matches!(sigil, Some(b':') | Some(b'*')) {
            let name = &segment[1..];
            if name.is_empty() {
                return Err(malformed(MalformedReason::EmptyParamName));
            }
            if name.contains([':', '*']) {
                return Err(malformed(MalformedReason::InvalidParamName));
            }
            if parsed.names.contains(&name) {
                return Err(malformed(MalformedReason::DuplicateParamName));
            }
            let is_catch_all = sigil == Some(b'*');
            if is_catch_all && seg_len != rest.len() {
                return Err(malformed(MalformedReason::CatchAllNotLast));
            }
            if static_start < offset {
                parsed
                    .pieces
                    .push(Piece::Static(&route.as_bytes()[static_start..offset]));
            }
            parsed.pieces.push(if is_catch_all {
                Piece::CatchAll
            } else {
                Piece::Param
            });
            parsed.names.push(name);
            parsed.segments.push(segment_index);
            parsed.catch_all = is_catch_all;
            parsed.shape.push(if is_catch_all { '*' } else { ':' });
            static_start = offset + seg_len;
        } else {
            parsed.shape.push_str(segment);
        }
        if seg_len == rest.len() {
            break;
        }
        parsed.shape.push('/');
        offset += seg_len + 1;
        rest = &rest[seg_len + 1..];
        segment_index += 1;
    }
    parsed.shape.insert(0, '/');
    if static_start < route.len() {
        parsed
            .pieces
            .push(Piece::Static(&route.as_bytes()[static_start..]));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_segments() {
        let p = parse("/repos/:owner/:repo/events").unwrap();
        assert_eq!(
            p.pieces,
            vec![
                Piece::Static(b"/repos/"),
                Piece::Param,
                Piece::Static(b"/"),
                Piece::Param,
                Piece::Static(b"/events"),
            ]
        );
        assert_eq!(p.names, vec!["owner", "repo"]);
        assert_eq!(p.segments, vec![2, 3]);
        assert_eq!(p.shape, "/repos/:/:/events");
        assert!(!p.catch_all);
    }

    #[test]
    fn catch_all_at_root_and_literal_sigils() {
        let p = parse("/*path").unwrap();
        assert_eq!(p.pieces, vec![Piece::Static(b"/"), Piece::CatchAll]);
        assert!(p.catch_all);
        assert_eq!(p.shape, "/*");
        let p = parse("/v1/models/a:generate*").unwrap();
        assert_eq!(p.pieces, vec![Piece::Static(b"/v1/models/a:generate*")]);
        assert!(p.names.is_empty());
    }

    #[test]
    fn malformed() {
        let reason = |r| match parse(r) {
            Err(InsertError::Malformed { reason, route }) => {
                assert_eq!(route, r);
                reason
            }
            other => panic!("{r}: {other:?}"),
        };
        assert_eq!(reason("users"), MalformedReason::MissingLeadingSlash);
        assert_eq!(reason(""), MalformedReason::MissingLeadingSlash);
        assert_eq!(reason("/a/:"), MalformedReason::EmptyParamName);
        assert_eq!(reason("/a/*"), MalformedReason::EmptyParamName);
        assert_eq!(reason("/a/:b:c"), MalformedReason::InvalidParamName);
        assert_eq!(reason("/:a/:a"), MalformedReason::DuplicateParamName);
        assert_eq!(reason("/a/*rest/b"), MalformedReason::CatchAllNotLast);
        assert_eq!(reason("/a/*rest/"), MalformedReason::CatchAllNotLast);
        assert_eq!(reason("/a?b=1"), MalformedReason::QueryOrFragment);
    }
}
