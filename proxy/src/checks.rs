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
        let Probe::Http { path, host, expect } = &check.probe else {
            return Ok("connected".to_owned());
        };
        let _ = stream.set_nodelay(true);
        // An https target is probed over TLS, verified as requests are.
        let driver = if target.is_tls() {
            let tls = tls
                .or_else(crate::tls::default_upstream_tls)
                .ok_or("no TLS client configuration")?;
            let stream = tls
                .connect(target, stream)
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

#[cfg(test)]
mod tests {
    use super::*;

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
