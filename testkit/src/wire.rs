//! Raw HTTP/1.x on a socket: just enough parsing to play an upstream or a client byte by byte,
//! including the shapes a well-behaved library would never produce (pipelining, half-close,
//! 1xx before the final response, close-delimited bodies, trailers).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request or response head: the start line and the header fields in order, names in lower
/// case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// `GET /x HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start: String,
    /// `(name, value)` pairs, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The method of a request head.
    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    /// The target of a request head.
    pub fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }

    /// The status of a response head (0 if it has none).
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The protocol version of the message (`HTTP/1.1`).
    pub fn version(&self) -> &str {
        if self.start.starts_with("HTTP/") {
            self.start.split(' ').next().unwrap_or_default()
        } else {
            self.start.rsplit(' ').next().unwrap_or_default()
        }
    }

    fn chunked(&self) -> bool {
        self.all("transfer-encoding").any(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// A whole message: head, body (de-chunked) and trailers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The head.
    pub head: Head,
    /// The body, with chunked framing removed.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The body was chunked.
    pub chunked: bool,
}

impl Message {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TCP stream with a read buffer.
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Wire {
    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Wire> {
        Ok(Wire::new(TcpStream::connect(addr).await?))
    }

    /// The stream itself (for shutdowns and socket options).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads one line (without its CRLF or LF).
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads a head; `None` when the peer closed cleanly before sending a byte of it.
    pub async fn read_head(&mut self) -> io::Result<Option<Head>> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        let start = self.line().await?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| invalid("header line"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Ok(Some(Head { start, headers }))
    }

    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn chunked_body(&mut self) -> io::Result<(Vec<u8>, Vec<(String, String)>)> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line().await?;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
            if size == 0 {
                break;
            }
            body.extend(self.exact(size).await?);
            if !self.line().await?.is_empty() {
                return Err(invalid("chunk end"));
            }
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok((body, trailers));
            }
            if let Some((n, v)) = line.split_once(':') {
                trailers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
    }

    /// Reads what is left until the peer closes.
    async fn read_until_close(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads one request: head and body (by `Content-Length`, chunked, or none). `None` when
    /// the peer closed before a new request.
    pub async fn read_request(&mut self) -> io::Result<Option<Message>> {
        let Some(head) = self.read_head().await? else {
            return Ok(None);
        };
        let chunked = head.chunked();
        let (body, trailers) = if chunked {
            self.chunked_body().await?
        } else {
            let n = head.content_length().unwrap_or(0);
            (self.exact(n).await?, Vec::new())
        };
        Ok(Some(Message {
            head,
            body,
            trailers,
            chunked,
        }))
    }

    /// Reads one response to a `method` request: a `1xx` comes back alone (call again for the
    /// final one); `HEAD`, `204` and `304` have no body; otherwise by `Content-Length`,
    /// chunked, or until the peer closes.
    pub async fn read_response(&mut self, method: &str) -> io::Result<Message> {
        let head = self
            .read_head()
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let status = head.status();
        let bodiless = method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304;
        let chunked = !bodiless && head.chunked();
        let (body, trailers) = if bodiless {
            (Vec::new(), Vec::new())
        } else if chunked {
            self.chunked_body().await?
        } else if let Some(n) = head.content_length() {
            (self.exact(n).await?, Vec::new())
        } else {
            (self.read_until_close().await?, Vec::new())
        };
        Ok(Message {
            head,
            body,
            trailers,
            chunked,
        })
    }

    /// The final response to a `method` request, skipping `1xx`; also returns the statuses
    /// of the interim ones.
    pub async fn read_final(&mut self, method: &str) -> io::Result<(Vec<u16>, Message)> {
        let mut interim = Vec::new();
        loop {
            let m = self.read_response(method).await?;
            if (100..200).contains(&m.head.status()) && m.head.status() != 101 {
                interim.push(m.head.status());
                continue;
            }
            return Ok((interim, m));
        }
    }

    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Waits up to `bound` for the peer to close; bytes that arrive meanwhile are kept for the
    /// next read. Returns whether it closed (end of stream or reset).
    pub async fn closed_within(&mut self, bound: Duration) -> bool {
        tokio::time::timeout(bound, async {
            loop {
                match self.fill().await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return,
                }
            }
        })
        .await
        .is_ok()
    }

    /// Reads until the peer closes, at most `bound`: what arrived, and whether it closed.
    pub async fn read_to_close(&mut self, bound: Duration) -> (Vec<u8>, bool) {
        let closed = self.closed_within(bound).await;
        (std::mem::take(&mut self.buf), closed)
    }
}

/// `HTTP/1.1 <status>` with a fixed-length body.
pub fn fixed(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `HTTP/1.1 200` with `body` sent as chunks of at most `chunk` bytes, and `trailers`.
pub fn chunked(body: &str, chunk: usize, trailers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n".to_vec();
    if !trailers.is_empty() {
        let names: Vec<&str> = trailers.iter().map(|(n, _)| *n).collect();
        out.extend_from_slice(format!("trailer: {}\r\n", names.join(", ")).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    for piece in body.as_bytes().chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    for (n, v) in trailers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}
