//! [`TraceContext`]: W3C Trace Context (`traceparent`, `tracestate`), continued from the
//! client's or started here, with a span id of the gateway's own for the hop upstream.

use std::fmt;

use http::{Extensions, HeaderValue};

use crate::random;

/// The `traceparent` header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The trace a request belongs to and the gateway's span in it; in the request's extensions.
///
/// ```
/// use httpkit::TraceContext;
///
/// let inbound = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let parent = TraceContext::parse(inbound).unwrap();
/// let ours = TraceContext::child_of(&parent);
/// assert_eq!(ours.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(ours.sampled());
/// let upstream = ours.traceparent();
/// let text = upstream.to_str().unwrap();
/// assert!(text.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
/// assert!(!text.contains("00f067aa0ba902b7"), "a new span id for the hop upstream");
///
/// // Malformed, upper case, all-zero ids, version ff: refused.
/// assert!(TraceContext::parse(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
/// assert!(TraceContext::parse(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// assert!(TraceContext::parse(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    flags: u8,
}

/// A trace id, displayed as 32 lower-case hex digits (`-` for none, as logs show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(Option<[u8; 16]>);

impl TraceId {
    /// No trace.
    pub const NONE: TraceId = TraceId(None);
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("-"),
            Some(id) => {
                let mut text = [0u8; 32];
                random::hex_into(id, &mut text);
                f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
            }
        }
    }
}

impl TraceContext {
    /// A valid `traceparent` value: version `00` exactly as specified; a later version's first
    /// four fields (anything after them must start with `-`); never version `ff`, upper-case
    /// hex, or an all-zero trace or parent id. The result is the client's span: continue it
    /// with [`child_of`](Self::child_of).
    pub fn parse(value: &[u8]) -> Option<TraceContext> {
        let value = value.trim_ascii();
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(value.get(0..2)?)?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value.len() > 55 && value.get(55) != Some(&b'-') {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id: [u8; 16] = hex_array(&value[3..35])?;
        let parent_id: [u8; 8] = hex_array(&value[36..52])?;
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id: parent_id,
            parent_id: None,
            flags,
        })
    }

    /// The gateway's span in `parent`'s trace: same trace id and flags, a new span id.
    pub fn child_of(parent: &TraceContext) -> TraceContext {
        TraceContext {
            trace_id: parent.trace_id,
            span_id: new_span_id(),
            parent_id: Some(parent.span_id),
            flags: parent.flags,
        }
    }

    /// A new trace, started here, `sampled` or not.
    pub fn start(sampled: bool) -> TraceContext {
        let mut trace_id = random::u128().to_be_bytes();
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            parent_id: None,
            flags: u8::from(sampled),
        }
    }

    /// A new trace, started here, sampled with probability `ratio` (0 to 1).
    pub fn start_sampled(ratio: f64) -> TraceContext {
        let mut ctx = TraceContext::start(false);
        // The draw is the trace id's last 8 bytes (random), as OpenTelemetry's ratio sampler
        // takes it: no draw of its own, and a service behind that samples by the same rule
        // at the same ratio keeps the same traces.
        let mut low = [0u8; 8];
        low.copy_from_slice(&ctx.trace_id[8..]);
        let draw = u64::from_be_bytes(low) as f64 / u64::MAX as f64;
        ctx.flags = u8::from(draw < ratio);
        ctx
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        TraceId(Some(self.trace_id))
    }

    /// The client's span id, when the trace was continued.
    pub fn parent_id(&self) -> Option<[u8; 8]> {
        self.parent_id
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` for the request upstream: version `00`, this span's id. Marked
    /// sensitive: a value no other request repeats goes over HTTP/2 as a literal that is never
    /// indexed, where indexing it would only push out entries that repeat (RFC 7541 §6.2.3).
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        random::hex_into(&self.trace_id, &mut text[3..35]);
        random::hex_into(&self.span_id, &mut text[36..52]);
        random::hex_into(&[self.flags], &mut text[53..55]);
        let mut value =
            HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"));
        value.set_sensitive(true);
        value
    }

    /// The trace id of the request these extensions belong to, as logged (`-` without one).
    pub fn logged(extensions: &Extensions) -> TraceId {
        TraceId(extensions.get::<TraceContext>().map(|t| t.trace_id))
    }
}

fn new_span_id() -> [u8; 8] {
    let mut id = random::u64().to_be_bytes();
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    match pair {
        [hi, lo] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex_byte(&text[2 * i..2 * i + 2])?;
    }
    Some(out)
}

/// The most `tracestate` list members forwarded (the specification's limit).
const MAX_MEMBERS: usize = 32;
/// The longest `tracestate` forwarded; members past it are dropped from the end.
const MAX_TRACESTATE: usize = 512;

/// `tracestate` lines (one or several) as one value to forward: every member well formed
/// (`key=value`, a key of `[a-z0-9_*/@-]` starting with a letter or digit, a value of printable
/// ASCII without `,` or `=`), at most 32, at most 512 bytes (members dropped from the end to
/// fit). `None` when any member is malformed (the whole header is then dropped, as the
/// specification asks) or none is left.
///
/// ```
/// use httpkit::trace::tracestate;
/// assert_eq!(tracestate(&[b"congo=t61rcWkgMzE", b" rojo=00f067aa0ba902b7 "]).unwrap(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
/// assert!(tracestate(&[b"no equals sign"]).is_none());
/// ```
pub fn tracestate(lines: &[&[u8]]) -> Option<HeaderValue> {
    let mut out: Vec<u8> = Vec::new();
    let mut members = 0;
    for line in lines {
        for member in line.split(|b| *b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            if !valid_member(member) {
                return None;
            }
            members += 1;
            if members > MAX_MEMBERS {
                return None;
            }
            if out.len() + member.len() + 1 > MAX_TRACESTATE {
                continue;
            }
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(member);
        }
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&out).ok()
}

fn valid_member(member: &[u8]) -> bool {
    let Some(eq) = member.iter().position(|b| *b == b'=') else {
        return false;
    };
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    let key_ok = (1..=256).contains(&key.len())
        && key[0].is_ascii_lowercase() | key[0].is_ascii_digit()
        && key.iter().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        });
    let value_ok = (1..=256).contains(&value.len())
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=');
    key_ok && value_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_s_examples() {
        let t = TraceContext::parse(GOOD).unwrap();
        assert!(t.sampled());
        let unsampled =
            TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap();
        assert!(!unsampled.sampled());
        // A later version may carry more after the four fields, behind a dash.
        assert!(
            TraceContext::parse(
                b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"
            )
            .is_some()
        );
        assert!(
            TraceContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x")
                .is_none()
        );
        // Version 00 has exactly four fields.
        assert!(
            TraceContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_none()
        );
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
        ] {
            assert!(
                TraceContext::parse(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent = TraceContext::parse(GOOD).unwrap();
        let a = TraceContext::child_of(&parent);
        let b = TraceContext::child_of(&parent);
        assert_eq!(a.trace_id(), parent.trace_id());
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(a.parent_id(), Some(parent.span_id));
        let header = a.traceparent();
        assert!(header.is_sensitive(), "never indexed by HTTP/2");
        let round = TraceContext::parse(header.as_bytes()).unwrap();
        assert_eq!(round.trace_id(), a.trace_id());
        assert_eq!(round.span_id, a.span_id);
        assert!(round.sampled());
    }

    #[test]
    fn started_traces_are_new_and_valid() {
        let a = TraceContext::start(true);
        let b = TraceContext::start(false);
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(
            TraceContext::parse(a.traceparent().as_bytes())
                .unwrap()
                .sampled()
        );
        assert!(
            !TraceContext::parse(b.traceparent().as_bytes())
                .unwrap()
                .sampled()
        );
        assert_eq!(TraceContext::logged(&Extensions::new()).to_string(), "-");
    }

    /// The sampling decision follows the trace id's last 8 bytes, at the ratio asked for.
    #[test]
    fn sampling_follows_the_trace_id_at_the_ratio() {
        assert!((0..200).all(|_| !TraceContext::start_sampled(0.0).sampled()));
        assert!((0..200).all(|_| TraceContext::start_sampled(1.0).sampled()));
        let draws: Vec<TraceContext> = (0..4_000)
            .map(|_| TraceContext::start_sampled(0.25))
            .collect();
        let sampled = draws.iter().filter(|t| t.sampled()).count();
        // 1,000 expected; 4.5 standard deviations (27) either way.
        assert!(
            (880..=1_120).contains(&sampled),
            "{sampled} of 4,000 at 0.25"
        );
        for t in &draws {
            let low = u64::from_be_bytes(t.trace_id[8..].try_into().unwrap_or([0; 8]));
            assert_eq!(t.sampled(), (low as f64 / u64::MAX as f64) < 0.25);
        }
    }

    #[test]
    fn tracestate_limits() {
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let joined = many.join(",");
        assert!(tracestate(&[joined.as_bytes()]).is_none(), "33 members");
        let long: Vec<String> = (0..20)
            .map(|i| format!("k{i}={}", "x".repeat(40)))
            .collect();
        let joined = long.join(",");
        let kept = tracestate(&[joined.as_bytes()]).unwrap();
        assert!(kept.len() <= 512 && kept.len() > 400, "{}", kept.len());
        assert!(tracestate(&[b"Upper=x"]).is_none());
        assert!(tracestate(&[b"k=a,b"]).is_none(), "a member without =");
        assert!(tracestate(&[b" , "]).is_none());
    }
}
