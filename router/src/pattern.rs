//! Parsing of route patterns into the pieces the tree stores.
//!
//! Syntax: a pattern is an absolute path. A segment that starts with `:` is a parameter that
//! matches one non-empty path segment; a segment that starts with `*` is a catch-all that must be
//! last and matches the rest of the path, keeping its leading slash. A parameter is always a
//! whole segment: `:` or `*` anywhere else in a segment (`/user_:id`, `/files*path`) is refused,
//! because httprouter and matchit read it as a parameter and this router would silently take it
//! as text. Literal `:` and `*` are written escaped, `\:` and `\*`
//! (`/v1/projects\:batchGet` matches `/v1/projects:batchGet`).

use std::borrow::Cow;

use crate::error::{InsertError, MalformedReason};

/// One piece of a parsed pattern, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Literal text, matched byte for byte (escapes removed).
    Static(Cow<'a, [u8]>),
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
    /// The pattern with parameter names erased and escapes removed: two routes with the same
    /// shape match exactly the same paths, which is what a conflict is.
    pub(crate) shape: String,
}

/// The literal text of a static segment: `\:` and `\*` unescaped; an unescaped `:` or `*`,
/// or a `\` before anything else, refused.
fn literal(segment: &str) -> Result<Cow<'_, str>, MalformedReason> {
    if !segment.contains(['\\', ':', '*']) {
        return Ok(Cow::Borrowed(segment));
    }
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ (':' | '*')) => out.push(e),
                _ => return Err(MalformedReason::BadEscape),
            },
            ':' | '*' => return Err(MalformedReason::ParamInsideSegment),
            c => out.push(c),
        }
    }
    Ok(Cow::Owned(out))
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
    // The static text not yet emitted as a piece, escapes removed.
    let mut text = String::from("/");
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
            if name.contains([':', '*', '\\']) {
                return Err(malformed(MalformedReason::InvalidParamName));
            }
            if parsed.names.contains(&name) {
                return Err(malformed(MalformedReason::DuplicateParamName));
            }
            let is_catch_all = sigil == Some(b'*');
            if is_catch_all && seg_len != rest.len() {
                return Err(malformed(MalformedReason::CatchAllNotLast));
            }
            if !text.is_empty() {
                let done = std::mem::take(&mut text);
                parsed
                    .pieces
                    .push(Piece::Static(Cow::Owned(done.into_bytes())));
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
        } else {
            let lit = literal(segment).map_err(malformed)?;
            text.push_str(&lit);
            parsed.shape.push_str(&lit);
        }
        if seg_len == rest.len() {
            break;
        }
        parsed.shape.push('/');
        text.push('/');
        rest = &rest[seg_len + 1..];
        segment_index += 1;
    }
    parsed.shape.insert(0, '/');
    if !text.is_empty() {
        parsed
            .pieces
            .push(Piece::Static(Cow::Owned(text.into_bytes())));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(text: &str) -> Piece<'static> {
        Piece::Static(Cow::Owned(text.as_bytes().to_vec()))
    }

    #[test]
    fn pieces_and_segments() {
        let p = parse("/repos/:owner/:repo/events").unwrap();
        assert_eq!(
            p.pieces,
            vec![
                st("/repos/"),
                Piece::Param,
                st("/"),
                Piece::Param,
                st("/events"),
            ]
        );
        assert_eq!(p.names, vec!["owner", "repo"]);
        assert_eq!(p.segments, vec![2, 3]);
        assert_eq!(p.shape, "/repos/:/:/events");
        assert!(!p.catch_all);
    }

    #[test]
    fn catch_all_at_root_and_escaped_sigils() {
        let p = parse("/*path").unwrap();
        assert_eq!(p.pieces, vec![st("/"), Piece::CatchAll]);
        assert!(p.catch_all);
        assert_eq!(p.shape, "/*");
        let p = parse(r"/v1/models/a\:generate\*").unwrap();
        assert_eq!(p.pieces, vec![st("/v1/models/a:generate*")]);
        assert_eq!(p.shape, "/v1/models/a:generate*");
        assert!(p.names.is_empty());
        let p = parse(r"/v1/:project/x\:run").unwrap();
        assert_eq!(p.pieces, vec![st("/v1/"), Piece::Param, st("/x:run")]);
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
        // httprouter and matchit read these as parameters: refused rather than taken as text.
        assert_eq!(reason("/user_:id"), MalformedReason::ParamInsideSegment);
        assert_eq!(reason("/files*path"), MalformedReason::ParamInsideSegment);
        assert_eq!(reason("/src2*rest"), MalformedReason::ParamInsideSegment);
        assert_eq!(
            reason("/v1/projects:batchGet"),
            MalformedReason::ParamInsideSegment
        );
        assert_eq!(reason(r"/a\b"), MalformedReason::BadEscape);
        assert_eq!(reason(r"/a\"), MalformedReason::BadEscape);
        assert_eq!(reason(r"/:a\:b"), MalformedReason::InvalidParamName);
    }
}
