//! The request head written in one pass, and the response head parsed (with `httparse`) into
//! `http` types and a body framing, by the rules hyper's client applies, which the
//! differential tests (`tests/wire_vs_hyper.rs`) hold it to.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use httpkit::h1::{HeaderSpans, digits, ends_chunked, has_token};

use super::WireError;

/// The most header lines a response head may have (hyper's limit).
pub(crate) const MAX_HEADERS: usize = 100;

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: `HEAD`, `1xx`, `204`, `304`.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    Eof,
}

/// A response head, parsed.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) parts: http::response::Parts,
    pub(crate) framing: Framing,
    /// The connection may carry another request once the body has ended.
    pub(crate) keep_alive: bool,
}

/// Writes `method uri HTTP/1.1`, the headers as they are, and the blank line: the request head
/// of a request without a body (`Transfer-Encoding` is left out, as hyper does).
pub(crate) fn encode_request(dst: &mut Vec<u8>, method: &Method, uri: &Uri, headers: &HeaderMap) {
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    dst.reserve(32 + target.len() + httpkit::h1::lines_len(headers));
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
}

/// Parses a response head from the front of `buf`, reading past interim (`1xx` other than
/// `101`) responses: `Ok(None)` until a whole head is there. The head's bytes are taken off
/// `buf`; header values share them.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    max_head_bytes: usize,
) -> Result<Option<Head>, WireError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Left uninitialized, as hyper does: a response's parse then writes only the slots its
        // headers use, instead of first clearing all of them.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
        let len = match parsed {
            // hyper reads no more than its buffer's cap: a longer head never completes there.
            Ok(httparse::Status::Complete(len)) if len > max_head_bytes => {
                return Err(WireError::HeadTooLarge);
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= max_head_bytes {
                    return Err(WireError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(e) => return Err(WireError::Parse(e)),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| WireError::Status)?;
        let reason = res.reason.unwrap_or("");
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each name and value lies in the head, to slice the frozen bytes after.
        let count = res.headers.len();
        let mut spans = HeaderSpans::default();
        let spans = spans.record(
            buf,
            res.headers.iter().map(|h| (h.name.as_bytes(), h.value)),
        );
        let custom_reason = (Some(reason) != status.canonical_reason())
            .then(|| hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).ok())
            .flatten();
        let head = buf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // An interim response (100 Continue, 103 Early Hints): read past.
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        // What the body's framing needs, gathered on the way instead of looked up after.
        let mut lengths = Lengths::default();
        for span in spans {
            let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
                .map_err(|_| WireError::HeaderName)?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
                .map_err(|_| WireError::HeaderValue)?;
            if name == TRANSFER_ENCODING {
                lengths.chunked = Some(ends_chunked(&value));
            } else if name == CONTENT_LENGTH {
                lengths.add_content_length(&value);
            } else if name == CONNECTION {
                // Once any `Connection` line asks to close, a later `keep-alive` does not undo it.
                if saw_close || has_token(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(&value, "keep-alive");
                }
            }
            headers.append(name, value);
        }
        let framing = framing(status, method, version, &lengths)?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            keep_alive = false;
        }
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = custom_reason {
            response.extensions_mut().insert(reason);
        }
        let (parts, ()) = response.into_parts();
        return Ok(Some(Head {
            parts,
            framing,
            keep_alive,
        }));
    }
}

/// The framing facts of a response head's lines.
#[derive(Default)]
struct Lengths {
    /// Whether the last `Transfer-Encoding` line ends in `chunked`; `None` without one.
    chunked: Option<bool>,
    content_length: ContentLength,
}

/// What the `Content-Length` lines say.
#[derive(Default)]
enum ContentLength {
    #[default]
    Absent,
    /// Every value (and comma-separated item) is this number.
    Agreed(u64),
    /// They disagree, or one is not a number.
    Invalid,
}

impl Lengths {
    fn add_content_length(&mut self, value: &HeaderValue) {
        let mut agreed = match self.content_length {
            ContentLength::Absent => None,
            ContentLength::Agreed(n) => Some(n),
            ContentLength::Invalid => return,
        };
        for item in value.to_str().unwrap_or("-").split(',') {
            match digits(item.trim().as_bytes()) {
                Some(n) if agreed.is_none_or(|m| m == n) => agreed = Some(n),
                _ => {
                    self.content_length = ContentLength::Invalid;
                    return;
                }
            }
        }
        // (`split` yields at least one item: a number is agreed here.)
        self.content_length = agreed.map_or(ContentLength::Invalid, ContentLength::Agreed);
    }
}

/// The body's framing, by RFC 9112 6.3 as hyper's client reads it.
fn framing(
    status: StatusCode,
    method: &Method,
    version: Version,
    lengths: &Lengths,
) -> Result<Framing, WireError> {
    if matches!(status.as_u16(), 101 | 204 | 304) || method == Method::HEAD {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = lengths.chunked {
        if version == Version::HTTP_10 {
            return Err(WireError::TransferEncodingInHttp10);
        }
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Eof
        });
    }
    match lengths.content_length {
        ContentLength::Absent => Ok(Framing::Eof),
        ContentLength::Agreed(n) if n < u64::MAX - 1 => Ok(Framing::Length(n)),
        ContentLength::Agreed(_) | ContentLength::Invalid => Err(WireError::ContentLength),
    }
}
