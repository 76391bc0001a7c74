//! The tasks' HTTP/1.1 client: just enough of the protocol to also behave like a slow client
//! (a head in pieces, a body read in sips), which no general-purpose client will do; and
//! WebSocket echoes through tungstenite.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether something on 127.0.0.1:`port` answers an HTTP request.
pub fn answers(port: u16) -> bool {
    let Ok(mut conn) = Conn::open(port) else {
        return false;
    };
    conn.request("GET", "/", 0, false).is_ok()
}

/// A response as the client read it (a large body is counted, not kept whole).
#[derive(Debug, Default)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The first 64 KiB of the body.
    pub body: Vec<u8>,
    /// The body's whole length.
    pub body_len: usize,
}

impl Reply {
    /// A header's value, by name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection speaking just enough HTTP/1.1 (keep-alive, lengths, chunks).
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`, with 10 s read and write timeouts.
    pub fn open(port: u16) -> Result<Conn, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// The socket alone (one descriptor instead of two), for holding a connection open.
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    /// Sends a request with a body of `body_len` bytes and reads the response. `slow` sends
    /// the head in pieces and reads the body in sips.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body_len: usize,
        slow: bool,
    ) -> Result<Reply, String> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: xtask\r\n");
        if body_len > 0 {
            head.push_str(&format!("Content-Length: {body_len}\r\n"));
        }
        head.push_str("\r\n");
        let w = |e: std::io::Error| format!("write: {e}");
        if slow {
            for piece in head.as_bytes().chunks(head.len() / 5 + 1) {
                self.writer.write_all(piece).map_err(w)?;
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            self.writer.write_all(head.as_bytes()).map_err(w)?;
        }
        let block = vec![b'u'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(block.len());
            self.writer.write_all(&block[..n]).map_err(w)?;
            left -= n;
        }
        self.response(slow, method == "HEAD")
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("closed before a response".to_owned()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// The status line: a reset before any byte of it is a connection the server closed
    /// without answering (as a close is), not a response cut short.
    fn status_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("closed before a response".to_owned()),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) if line.is_empty() && self.reader.buffer().is_empty() => {
                Err(format!("closed before a response: read: {e}"))
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    fn response(&mut self, slow: bool, head_only: bool) -> Result<Reply, String> {
        let status_line = self.status_line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line `{status_line}`"))?;
        let mut reply = Reply {
            status,
            ..Reply::default()
        };
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                reply
                    .headers
                    .push((n.trim().to_owned(), v.trim().to_owned()));
            }
        }
        if head_only || status == 204 || status == 304 || status < 200 {
            return Ok(reply);
        }
        let chunked = reply
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = reply
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if chunked {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size `{size_line}`"))?;
                self.read_body(size, slow, &mut reply)?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                let mut crlf = [0u8; 2];
                self.reader
                    .read_exact(&mut crlf)
                    .map_err(|e| format!("chunk end: {e}"))?;
            }
        } else if let Some(n) = length {
            self.read_body(n, slow, &mut reply)?;
        }
        Ok(reply)
    }

    fn read_body(&mut self, mut n: usize, slow: bool, reply: &mut Reply) -> Result<(), String> {
        let mut buf = vec![0u8; if slow { 4096 } else { 64 * 1024 }];
        while n > 0 {
            let want = n.min(buf.len());
            self.reader
                .read_exact(&mut buf[..want])
                .map_err(|e| format!("body cut with {n} bytes to go: {e}"))?;
            if reply.body.len() < 64 * 1024 {
                reply.body.extend_from_slice(&buf[..want]);
            }
            reply.body_len += want;
            n -= want;
            if slow {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }
}

/// Opens a WebSocket on `path` and echoes `messages` through it (text frames), then closes.
pub fn websocket_echo(port: u16, path: &str, messages: &[String]) -> Result<(), String> {
    use tungstenite::Message;
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tungstenite::client::client(format!("ws://127.0.0.1:{port}{path}"), stream)
        .map_err(|e| format!("closed before a response: websocket handshake: {e}"))?;
    for m in messages {
        ws.send(Message::text(m.as_str()))
            .map_err(|e| format!("websocket send: {e}"))?;
        match ws.read().map_err(|e| format!("websocket read: {e}"))? {
            Message::Text(back) if back.as_str() == m => {}
            other => return Err(format!("websocket: echo differs: {other:?}")),
        }
    }
    ws.close(None)
        .map_err(|e| format!("websocket close: {e}"))?;
    // Reads until the close handshake completes.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(format!("websocket close: {e}")),
        }
    }
}

/// Whether `got` (bytes read so far) holds a whole HTTP/1.1 answer whose body length its head
/// declares: `Ok(None)` while the head or the body is still incomplete, `Ok(Some(status
/// line))` once whole; an error for a head without `Content-Length`.
pub fn whole_answer(got: &[u8]) -> Result<Option<String>, String> {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&got[..end]);
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| format!("an answer without a length: {head:?}"))?;
    Ok((got.len() >= end + 4 + length).then(|| head.lines().next().unwrap_or("").to_owned()))
}
