//! The response body's decoder: a length, chunked (RFC 9112 7.1, extensions skipped, trailers
//! kept), or until the connection closes. It works on the connection's read buffer as it
//! fills, taking data off it without copying; the chunked rules (what is rejected, the limits
//! on extensions and trailers) are hyper's, held to by the differential tests.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use httpkit::h1::hex_value;

use super::WireError;
use super::head::{Framing, MAX_HEADERS};

/// The most bytes of chunk extensions a body may carry in all (hyper's limit).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// The most bytes of trailers (hyper's limit).
const TRAILERS_LIMIT: usize = 16 * 1024;

/// What the decoder got from the buffer.
#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// The buffer holds no more of the body: read more.
    More,
}

/// A response body's decoding state.
#[derive(Debug)]
pub(crate) enum Decoder {
    Length(u64),
    Chunked(Box<Chunked>),
    Eof,
    Done,
}

/// Where a chunked body's decoding is.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Box::default()),
            Framing::Eof => Decoder::Eof,
        }
    }

    /// The body has ended.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// The bytes left, when the body has a length.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// The next step from what `buf` holds; `closed`: the upstream has closed its side, so
    /// nothing more will come.
    pub(crate) fn step(&mut self, buf: &mut BytesMut, closed: bool) -> Result<Step, WireError> {
        match self {
            Decoder::Done => Ok(Step::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return if closed {
                        Err(WireError::IncompleteBody)
                    } else {
                        Ok(Step::More)
                    };
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                let data = buf.split_to(take).freeze();
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(Step::Data(data))
            }
            Decoder::Eof => {
                if !buf.is_empty() {
                    return Ok(Step::Data(buf.split().freeze()));
                }
                if closed {
                    *self = Decoder::Done;
                    return Ok(Step::End);
                }
                Ok(Step::More)
            }
            Decoder::Chunked(c) => {
                let step = c.step(buf, closed)?;
                if let Step::End | Step::Trailers(_) = step {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
        }
    }
}

impl Chunked {
    fn step(&mut self, buf: &mut BytesMut, closed: bool) -> Result<Step, WireError> {
        use State::*;
        loop {
            if self.state == Body {
                if buf.is_empty() {
                    return if closed {
                        Err(WireError::IncompleteBody)
                    } else {
                        Ok(Step::More)
                    };
                }
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = BodyCr;
                }
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            let Some(&byte) = buf.first() else {
                return if closed {
                    Err(WireError::Chunk("unexpected EOF during chunk size line"))
                } else {
                    Ok(Step::More)
                };
            };
            buf.advance(1);
            self.state = match (self.state, byte) {
                (Start, b) => {
                    self.size = u64::from(hex_value(b).ok_or(WireError::Chunk(
                        "invalid chunk size line: missing size digit",
                    ))?);
                    Size
                }
                (Size, b) if hex_value(b).is_some() => {
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(hex_value(b).unwrap_or(0))))
                        .ok_or(WireError::Chunk("invalid chunk size: overflow"))?;
                    Size
                }
                (Size | SizeLws, b'\t' | b' ') => SizeLws,
                (Size | SizeLws, b';') => Extension,
                (Size | SizeLws | Extension, b'\r') => SizeLf,
                (Size, _) => return Err(WireError::Chunk("invalid chunk size line")),
                (SizeLws, _) => {
                    return Err(WireError::Chunk("invalid chunk size linear white space"));
                }
                (Extension, b'\n') => {
                    return Err(WireError::Chunk("invalid chunk extension contains newline"));
                }
                (Extension, _) => {
                    self.extensions += 1;
                    if self.extensions >= EXTENSIONS_LIMIT {
                        return Err(WireError::Chunk("chunk extensions over limit"));
                    }
                    Extension
                }
                (SizeLf, b'\n') if self.size == 0 => EndCr,
                (SizeLf, b'\n') => Body,
                (SizeLf, _) => return Err(WireError::Chunk("invalid chunk size LF")),
                (BodyCr, b'\r') => BodyLf,
                (BodyCr, _) => return Err(WireError::Chunk("invalid chunk body CR")),
                (BodyLf, b'\n') => Start,
                (BodyLf, _) => return Err(WireError::Chunk("invalid chunk body LF")),
                (EndCr, b'\r') => {
                    self.push_trailer_if_any(b'\r')?;
                    EndLf
                }
                (EndCr, b) => {
                    match &mut self.trailers {
                        None => {
                            let mut t = BytesMut::with_capacity(64);
                            t.put_u8(b);
                            self.trailers = Some(t);
                        }
                        Some(_) => self.push_trailer_if_any(b)?,
                    }
                    Trailer
                }
                (Trailer, b) => {
                    self.push_trailer_if_any(b)?;
                    if b == b'\r' { TrailerLf } else { Trailer }
                }
                (TrailerLf, b'\n') => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return Err(WireError::Chunk("chunk trailers count overflow"));
                    }
                    self.trailer_lines += 1;
                    self.push_trailer_if_any(b'\n')?;
                    EndCr
                }
                (TrailerLf, _) => return Err(WireError::Chunk("invalid trailer end LF")),
                (EndLf, b'\n') => {
                    self.push_trailer_if_any(b'\n')?;
                    return match self.trailers.take() {
                        Some(t) => Ok(Step::Trailers(trailers(&t, self.trailer_lines)?)),
                        None => Ok(Step::End),
                    };
                }
                (EndLf, _) => return Err(WireError::Chunk("invalid chunk end LF")),
                (Body, _) => Body,
            };
        }
    }

    fn push_trailer_if_any(&mut self, byte: u8) -> Result<(), WireError> {
        if let Some(t) = &mut self.trailers {
            t.put_u8(byte);
            if t.len() >= TRAILERS_LIMIT {
                return Err(WireError::Chunk("chunk trailers bytes over limit"));
            }
        }
        Ok(())
    }
}

/// The trailer fields, parsed as header lines.
fn trailers(buf: &[u8], lines: usize) -> Result<HeaderMap, WireError> {
    let mut slots = vec![httparse::EMPTY_HEADER; lines];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name =
                    HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| WireError::HeaderName)?;
                let value = HeaderValue::from_bytes(f.value).map_err(|_| WireError::HeaderValue)?;
                map.append(name, value);
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err(WireError::Chunk("partial trailers")),
        Err(e) => Err(WireError::Parse(e)),
    }
}
