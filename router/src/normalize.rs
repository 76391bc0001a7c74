//! Path normalization before routing, so that a path cannot reach a route in a form the route
//! table did not foresee (`/static/../admin/x`, `/static/%2e%2e/admin/x`) and what is routed is
//! what is forwarded.
//!
//! [`normalize_path`] applies RFC 3986 §6.2.2 to a request path:
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`%61dmin` is
//!   `admin`), every other escape is kept with upper-case hex digits (`%2f` becomes `%2F`, and
//!   stays one segment);
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4), also when written `%2e`;
//! - a `..` that would climb above the root, an encoded NUL (`%00`), a malformed escape, or a
//!   path that does not start with `/` is refused;
//! - so is a `..` hidden from this normalization but not from every upstream: behind an
//!   encoded slash or backslash (`..%2F`, `..%5C`, `..\`) or before a `;` path parameter
//!   (`..;`, which Java servers strip).
//!
//! Paths with nothing to change (no `%`, no dot segment) are returned borrowed after a single
//! scan, so the common case costs no allocation.
//!
//! ```
//! use router::normalize_path;
//!
//! assert_eq!(normalize_path("/api/users").unwrap(), "/api/users");
//! assert_eq!(normalize_path("/static/../admin/x").unwrap(), "/admin/x");
//! assert_eq!(normalize_path("/static/%2E%2e/%61dmin/x").unwrap(), "/admin/x");
//! assert_eq!(normalize_path("/files/a%2fb").unwrap(), "/files/a%2Fb");
//! assert!(normalize_path("/../etc/passwd").is_err());
//! assert!(normalize_path("/a%00b").is_err());
//! ```

use httpkit::h1::hex_value;

use std::borrow::Cow;

/// Why a path was refused by [`normalize_path`]; the request gets `400 Bad Request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    /// The path does not start with `/` (and is not `*`).
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A `..` segment climbs above the root.
    #[error("a `..` segment climbs above the root")]
    AboveRoot,
    /// `%` not followed by two hex digits.
    #[error("a `%` is not followed by two hex digits")]
    BadEscape,
    /// `%00`.
    #[error("the path holds an encoded NUL (`%00`)")]
    Nul,
    /// A `..` behind `%2F`, `%5C`, `\` or before `;`.
    #[error("the path hides a `..` segment")]
    HiddenDotSegment,
}

/// Normalizes a request path (see the [crate docs](crate)).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    slow(path).map(Cow::Owned)
}

/// Whether the path holds a `%`, `\\`, `;` or a `.`/`..` segment.
fn needs_work(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| matches!(b, b'%' | b'\\' | b';'))
        || bytes
            .split(|&b| b == b'/')
            .any(|seg| seg == b"." || seg == b"..")
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes and upper-cases the rest of one segment.
fn segment(raw: &str, out: &mut String) -> Result<(), BadPath> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Pushing whole runs keeps multi-byte UTF-8 intact.
            let run = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .unwrap_or(bytes.len() - i);
            out.push_str(&raw[i..i + run]);
            i += run;
            continue;
        }
        let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
            return Err(BadPath::BadEscape);
        };
        let (Some(h), Some(l)) = (hex_value(h), hex_value(l)) else {
            return Err(BadPath::BadEscape);
        };
        let byte = h << 4 | l;
        if byte == 0 {
            return Err(BadPath::Nul);
        }
        if unreserved(byte) {
            out.push(char::from(byte));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(h)]));
            out.push(char::from(HEX[usize::from(l)]));
        }
        i += 3;
    }
    Ok(())
}

/// Whether a segment, fully decoded and split at slashes and backslashes, with `;`
/// parameters cut off, holds a `..` piece that is not the whole segment.
fn hides_dot_dot(segment: &str) -> bool {
    if segment == ".." {
        return false;
    }
    let bytes = segment.as_bytes();
    let mut full = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(h), Some(l)) => {
                full.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                full.push(b);
                i += 1;
            }
        }
    }
    full.split(|&b| b == b'/' || b == b'\\').any(|piece| {
        let piece = piece.split(|&b| b == b';').next().unwrap_or(piece);
        piece == b".."
    })
}

fn slow(path: &str) -> Result<String, BadPath> {
    let mut out = String::with_capacity(path.len());
    let mut decoded = String::new();
    // `path` starts with '/', so the first piece is empty.
    let mut pieces = path[1..].split('/').peekable();
    while let Some(raw) = pieces.next() {
        let last = pieces.peek().is_none();
        decoded.clear();
        segment(raw, &mut decoded)?;
        if hides_dot_dot(&decoded) {
            return Err(BadPath::HiddenDotSegment);
        }
        match decoded.as_str() {
            "." => {
                // `/a/.` is `/a/`: the directory itself.
                if last {
                    out.push('/');
                }
            }
            ".." => {
                let cut = out.rfind('/').ok_or(BadPath::AboveRoot)?;
                out.truncate(cut);
                if last {
                    out.push('/');
                }
            }
            seg => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/..a/b.", "/..a/b."),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%3Bb", "/a%3Bb"),
            ("/a//b", "/a//b"),
            ("/é/%C3%A9", "/é/%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize_path("/.."), Err(BadPath::AboveRoot));
        assert_eq!(normalize_path("/a/../../b"), Err(BadPath::AboveRoot));
        assert_eq!(normalize_path("/%2e%2e/b"), Err(BadPath::AboveRoot));
        assert_eq!(normalize_path("/a%0"), Err(BadPath::BadEscape));
        assert_eq!(normalize_path("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(normalize_path("/a%00"), Err(BadPath::Nul));
        assert_eq!(normalize_path("a/b"), Err(BadPath::NotAbsolute));
        for hidden in [
            "/static/..%2Fadmin/x",
            "/static/..%2fadmin",
            "/static/..%5Cadmin",
            "/static/..\\admin",
            "/static/..;/admin/x",
            "/static/..;jsessionid=1/admin",
            "/static/a%2F..%2Fb",
        ] {
            assert_eq!(
                normalize_path(hidden),
                Err(BadPath::HiddenDotSegment),
                "{hidden}"
            );
        }
        // A `;` or an encoded slash by itself is fine.
        assert_eq!(normalize_path("/a;b=1/c").unwrap(), "/a;b=1/c");
        assert_eq!(normalize_path("/a%2F.b").unwrap(), "/a%2F.b");
    }

    #[test]
    fn the_common_case_borrows() {
        assert!(matches!(
            normalize_path("/api/v1/users/42"),
            Ok(Cow::Borrowed(_))
        ));
    }
}
