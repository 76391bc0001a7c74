//! Active health checks: a task per upstream probes every target each interval and records
//! the results in the targets' state, where picks read them (never a lock on the request
//! path).

use std::sync::{Arc, Weak};
use std::time::Duration;

use balancer::{CheckResult, CheckTransition, Clock, SystemClock};
use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::Empty;
use httpkit::grpc;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::target::TargetAddr;
use crate::upstream::{ActiveCheck, Probe, Upstream};

/// Probes of one upstream in flight at once, at most.
const MAX_CONCURRENT_PROBES: usize = 16;

/// Probes `upstream`'s targets every interval until the upstream is gone.
pub(crate) async fn run(upstream: Weak<Upstream>, check: ActiveCheck) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
    loop {
        let Some(up) = upstream.upgrade() else {
            return;
        };
        let mut round = JoinSet::new();
        for target in up.balancer().targets() {
            let check = check.clone();
            let permits = Arc::clone(&permits);
            let up = Arc::clone(&up);
            round.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let tls = up.settings().tls.clone();
                let (ok, detail) = probe(target.value(), &check, tls).await;
                record(&up, target.value(), target.state(), &check, ok, detail);
            });
        }
        drop(up);
        while round.join_next().await.is_some() {}
        tokio::time::sleep(jittered(check.interval)).await;
    }
}

/// `interval` plus or minus up to 10 %.
fn jittered(interval: Duration) -> Duration {
    let tenth = interval / 10;
    let spread = u64::try_from(tenth.as_millis()).unwrap_or(u64::MAX);
    let offset = Duration::from_millis(fastrand::u64(0..=spread.saturating_mul(2)));
    (interval - tenth) + offset
}

fn record(
    upstream: &Upstream,
    target: &TargetAddr,
    state: &balancer::TargetState,
    check: &ActiveCheck,
    ok: bool,
    detail: String,
) {
    let policy = upstream.balancer().policy();
    let at_ms = u64::try_from(SystemClock.now().as_millis()).unwrap_or(u64::MAX);
    let result = CheckResult {
        ok,
        detail: detail.clone(),
        at_ms,
    };
    match state.report_check(policy, result, check.rise, check.fall) {
        CheckTransition::WentDown => tracing::warn!(
            upstream = %upstream.name(),
            target = %target,
            result = %detail,
            fall = check.fall,
            "target failed its health checks: out of rotation"
        ),
        CheckTransition::CameUp => tracing::info!(
            upstream = %upstream.name(),
            target = %target,
            rise = check.rise,
            "target passed its health checks: back in rotation"
        ),
        CheckTransition::None => {}
    }
}

/// An HTTP/1.1 client connection for one probe, its driver running.
async fn handshake<I>(
    io: I,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    String,
>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

/// One probe: whether it passed, and what it found.
async fn probe(
    target: &TargetAddr,
    check: &ActiveCheck,
    tls: Option<Arc<crate::UpstreamTls>>,
) -> (bool, String) {
    let attempt = async {
        let stream = TcpStream::connect(target.authority().as_str())
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        let (path, host, expect) = match &check.probe {
            Probe::Tcp => return Ok("connected".to_owned()),
            Probe::Grpc { service } => return grpc_probe(target, stream, tls, service).await,
            Probe::Http { path, host, expect } => (path, host, expect),
        };
        let _ = stream.set_nodelay(true);
        // An https target is probed over TLS, verified as requests are.
        let driver = if target.is_tls() {
            let tls = tls
                .or_else(crate::tls::default_upstream_tls)
                .ok_or("no TLS client configuration")?;
            let stream = tls
                .connect(target, stream, crate::tls::Alpn::Http1)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            handshake(TokioIo::new(stream)).await?
        } else {
            handshake(TokioIo::new(stream)).await?
        };
        let (mut sender, driver) = driver;
        let mut req = Request::get(path.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let host = host.clone().unwrap_or_else(|| target.host_header().clone());
        req.headers_mut().insert(HOST, host);
        req.headers_mut()
            .insert(USER_AGENT, HeaderValue::from_static("gateway-health-check"));
        req.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let res = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"));
        driver.abort();
        let status = res?.status().as_u16();
        if expect.contains(&status) {
            Ok(status.to_string())
        } else {
            Err(format!(
                "status {status}, expected {}-{}",
                expect.start(),
                expect.end()
            ))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (
            false,
            format!("timed out after {} ms", check.timeout.as_millis()),
        ),
    }
}

/// `grpc.health.v1.Health/Check` for `service` on a new HTTP/2 connection: passes on
/// `SERVING`.
async fn grpc_probe(
    target: &TargetAddr,
    stream: TcpStream,
    tls: Option<Arc<crate::UpstreamTls>>,
    service: &str,
) -> Result<String, String> {
    let _ = stream.set_nodelay(true);
    let (send, driver) = if target.is_tls() {
        let tls = tls
            .or_else(crate::tls::default_upstream_tls)
            .ok_or("no TLS client configuration")?;
        let stream = tls
            .connect(target, stream, crate::tls::Alpn::H2)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        if !crate::tls::agreed_h2(&stream) {
            return Err("the server did not agree on h2 (ALPN)".into());
        }
        h2_handshake(stream).await?
    } else {
        h2_handshake(stream).await?
    };
    let result = grpc_check(send, target, service).await;
    driver.abort();
    result
}

async fn h2_handshake<I>(
    io: I,
) -> Result<(h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>), String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    Ok((
        send,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    ))
}

async fn grpc_check(
    send: h2::client::SendRequest<Bytes>,
    target: &TargetAddr,
    service: &str,
) -> Result<String, String> {
    let scheme = if target.is_tls() { "https" } else { "http" };
    let req = Request::post(format!(
        "{scheme}://{}/grpc.health.v1.Health/Check",
        target.authority()
    ))
    .header(http::header::CONTENT_TYPE, "application/grpc")
    .header(http::header::TE, "trailers")
    .header(USER_AGENT, "gateway-health-check")
    .body(())
    .map_err(|e| e.to_string())?;
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let (response, mut body) = send
        .send_request(req, false)
        .map_err(|e| format!("request failed: {e}"))?;
    body.send_data(health_request(service), true)
        .map_err(|e| format!("request failed: {e}"))?;
    let res = response.await.map_err(|e| format!("request failed: {e}"))?;
    let (head, mut recv) = res.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(format!("HTTP status {}", head.status.as_u16()));
    }
    let mut message = Vec::new();
    while let Some(data) = recv.data().await {
        let data = data.map_err(|e| format!("response failed: {e}"))?;
        let _ = recv.flow_control().release_capacity(data.len());
        message.extend_from_slice(&data);
        if message.len() > 1024 {
            return Err("health answer too large".into());
        }
    }
    let trailers = recv
        .trailers()
        .await
        .map_err(|e| format!("response failed: {e}"))?;
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if status != "0" {
        return Err(format!("grpc-status {status}"));
    }
    match serving_status(&message) {
        Some(1) => Ok("SERVING".to_owned()),
        Some(2) => Err("NOT_SERVING".to_owned()),
        Some(3) => Err("SERVICE_UNKNOWN".to_owned()),
        Some(n) => Err(format!("health status {n}")),
        None => Err("malformed health answer".to_owned()),
    }
}

/// A `HealthCheckRequest { service }` in its gRPC frame.
fn health_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        grpc::put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    grpc::frame(&message)
}

/// The `status` of a framed `HealthCheckResponse` (field 1, a varint; absent is 0).
fn serving_status(framed: &[u8]) -> Option<u64> {
    let mut message = grpc::unframe(framed)?;
    let mut status = 0;
    while let Some((&tag, rest)) = message.split_first() {
        message = rest;
        let value = grpc::varint(&mut message)?;
        match tag {
            0x08 => status = value,
            // Another varint field: skipped.
            t if t & 7 == 0 => {}
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("ab")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08]), None);
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
