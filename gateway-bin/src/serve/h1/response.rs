//! The response head written in one pass, with the body's framing, by the rules hyper's
//! server applies (its `Server::encode`), which the differential test holds it to: the
//! status line (a reason phrase from upstream kept), the headers in their map's order with
//! `Connection`, `Transfer-Encoding` and `Trailer` lines joined, a length or chunked framing
//! added when the handler set none, and a cached `Date`.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode, Version};
use httpkit::h1::{digits, ends_chunked, has_token};

/// How much of the body the handler's response says it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Declared {
    /// None at all (the body is at its end already).
    Nothing,
    /// Exactly this many bytes.
    Exactly(u64),
    /// Some, of a length not known before the end.
    Unknown,
}

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Exactly this many bytes (0: the body is not sent at all).
    Length(u64),
    /// Chunks, then `0\r\n\r\n`.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A head that can be written, and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    pub(super) framing: Framing,
    /// The connection closes after this response.
    pub(super) last: bool,
}

/// A head that cannot be written: `Content-Length` lines that disagree or do not parse, or a
/// length after another framing (hyper refuses these and closes the connection).
#[derive(Debug)]
pub(super) struct BadHead;

/// Writes the head of `res` (its headers are taken) to `dst`, for a request that was a `HEAD`
/// or not, on a connection the client wants kept or not. An informational status (not
/// expected from any route) is written as hyper does: a `500` that closes the connection.
/// Room for `res`'s head as [`encode`] writes it: its lines, and the status line, `Date` and
/// framing lines it may add.
pub(super) fn head_size(res: &http::response::Parts) -> usize {
    128 + httpkit::h1::lines_len(&res.headers)
}

pub(super) fn encode(
    res: &mut http::response::Parts,
    declared: Declared,
    head_request: bool,
    keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Result<Written, BadHead> {
    let mut last = !keep_alive;
    let mut declared = declared;
    if res.status.is_informational() && res.status != StatusCode::SWITCHING_PROTOCOLS {
        res.status = StatusCode::INTERNAL_SERVER_ERROR;
        res.version = Version::HTTP_11;
        res.headers.clear();
        res.extensions.clear();
        declared = Declared::Nothing;
        last = true;
    } else if res.status == StatusCode::SWITCHING_PROTOCOLS {
        last = true;
    }
    if !keep_alive {
        // The client's `close` (or the server finishing) is said in the response.
        match res.headers.entry(CONNECTION) {
            http::header::Entry::Occupied(mut e) => {
                if !e.iter().any(|v| has_token(v, "close")) {
                    e.append(HeaderValue::from_static("close"));
                }
            }
            http::header::Entry::Vacant(e) => {
                e.insert(HeaderValue::from_static("close"));
            }
        }
    }
    let start = dst.len();
    dst.reserve(head_size(res));
    status_line(res, dst);
    let http10 = res.version == Version::HTTP_10;
    let status = res.status;
    // Whether a chunked body (so `Transfer-Encoding` and `Trailer`) may be sent, and a length.
    let can_chunk = !head_request && !matches!(status.as_u16(), 101 | 204 | 304);
    let can_length = !matches!(status.as_u16(), 101 | 204 | 304);

    let mut framing = Framing::Length(0);
    let mut framed = false;
    let mut wrote_date = false;
    let mut first_length = None;
    // The name of a joined line left open (its values go on one line), and whether the last
    // `Transfer-Encoding` value did not end in `chunked` (then `, chunked` closes the line).
    let mut open: Option<HeaderName> = None;
    let mut add_chunked = false;
    let headers = std::mem::take(&mut res.headers);
    let mut current: Option<HeaderName> = None;
    for (name, value) in headers {
        if let Some(name) = name {
            close_line(&mut open, add_chunked, dst);
            current = Some(name);
        }
        let Some(name) = current.as_ref() else {
            continue;
        };
        let joined = open.as_ref() == Some(name);
        match *name {
            CONTENT_LENGTH => {
                if framed && !joined {
                    dst.truncate(start);
                    return Err(BadHead);
                }
                match declared {
                    Declared::Exactly(n) => {
                        // The body's own length frames it; the first line is written as it is.
                        if !joined {
                            framing = Framing::Length(n);
                            open_line(&mut open, name, &value, dst);
                            framed = true;
                        }
                        continue;
                    }
                    Declared::Unknown => {
                        let Some(n) = digits(value.as_bytes()) else {
                            dst.truncate(start);
                            return Err(BadHead);
                        };
                        match first_length {
                            Some(first) if first != n => {
                                dst.truncate(start);
                                return Err(BadHead);
                            }
                            Some(_) => {}
                            None => {
                                framing = Framing::Length(n);
                                open_line(&mut open, name, &value, dst);
                                framed = true;
                                first_length = Some(n);
                            }
                        }
                        continue;
                    }
                    // No body: a length is kept only on the answer to `HEAD`.
                    Declared::Nothing if !head_request => continue,
                    Declared::Nothing => framed = true,
                }
            }
            TRANSFER_ENCODING => {
                if framed && !joined {
                    dst.truncate(start);
                    return Err(BadHead);
                }
                if http10 || !can_chunk {
                    continue;
                }
                framed = true;
                add_chunked = !ends_chunked(&value);
                if joined {
                    join_value(&value, dst);
                } else {
                    framing = Framing::Chunked;
                    open_line(&mut open, name, &value, dst);
                }
                continue;
            }
            CONNECTION => {
                last |= has_token(&value, "close");
                if joined {
                    join_value(&value, dst);
                } else {
                    open_line(&mut open, name, &value, dst);
                }
                continue;
            }
            TRAILER => {
                if http10 || !can_chunk {
                    continue;
                }
                if joined {
                    join_value(&value, dst);
                } else {
                    open_line(&mut open, name, &value, dst);
                }
                continue;
            }
            DATE => wrote_date = true,
            _ => {}
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    close_line(&mut open, add_chunked, dst);
    if !framed {
        framing = match declared {
            Declared::Unknown if http10 || !can_chunk => Framing::Close,
            Declared::Unknown => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            Declared::Nothing | Declared::Exactly(0) => {
                if can_length && !head_request {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Declared::Exactly(n) if can_length => {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(itoa_u64(n, &mut [0; 20]));
                dst.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            Declared::Exactly(_) => Framing::Length(0),
        };
    }
    if !can_chunk {
        // No body on the answer to `HEAD`, on `204`, `304` (nor on a `101`'s head).
        framing = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        with_date(|date| dst.extend_from_slice(date));
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    Ok(Written { framing, last })
}

fn status_line(res: &http::response::Parts, dst: &mut Vec<u8>) {
    let reason = res.extensions.get::<hyper::ext::ReasonPhrase>();
    if res.version != Version::HTTP_10 && res.status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    dst.extend_from_slice(if res.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    dst.extend_from_slice(res.status.as_str().as_bytes());
    dst.push(b' ');
    match reason {
        Some(reason) => dst.extend_from_slice(reason.as_bytes()),
        None => dst.extend_from_slice(res.status.canonical_reason().unwrap_or("<none>").as_bytes()),
    }
    dst.extend_from_slice(b"\r\n");
}

fn open_line(
    open: &mut Option<HeaderName>,
    name: &HeaderName,
    value: &HeaderValue,
    dst: &mut Vec<u8>,
) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    *open = Some(name.clone());
}

fn join_value(value: &HeaderValue, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b", ");
    dst.extend_from_slice(value.as_bytes());
}

fn close_line(open: &mut Option<HeaderName>, add_chunked: bool, dst: &mut Vec<u8>) {
    if let Some(name) = open.take() {
        if add_chunked && name == TRANSFER_ENCODING {
            dst.extend_from_slice(b", chunked");
        }
        dst.extend_from_slice(b"\r\n");
    }
}

/// `n` in decimal, in `buf`.
fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second per thread.
    static DATE_NOW: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Runs `f` with the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if let Ok(bytes) = <[u8; 29]>::try_from(text.as_bytes()) {
                *cached = (second, bytes);
            }
        }
        f(&cached.1);
    });
}
