//! Upgraded connections (WebSocket): bytes copied both ways until either side closes.

use std::fmt;
use std::sync::Arc;

use balancer::InFlight;
use httpkit::LogIds;
use hyper_util::rt::TokioIo;

/// Held for as long as an upgraded connection (a WebSocket) is tunnelled. A server puts one in
/// the request's extensions to have the tunnel keep what the connection held: a slot under its
/// connection limit, a place in the count that graceful shutdown waits for. Tunnels outlive
/// the HTTP connection they came from.
#[derive(Clone)]
pub struct TunnelGuard(pub Arc<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for TunnelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelGuard")
    }
}

/// Starts tunnelling between the client's and the upstream's upgraded connections, in its own
/// task, its lines naming the request's ids. The target's in-flight count lasts as long as the
/// tunnel.
pub(crate) fn spawn(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
    guard: Option<TunnelGuard>,
    ids: LogIds,
) {
    tokio::spawn(copy_both_ways(client, upstream, in_flight, guard, ids));
}

async fn copy_both_ways(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _in_flight: InFlight,
    _guard: Option<TunnelGuard>,
    ids: LogIds,
) {
    let (request_id, trace_id) = (ids.request(), ids.trace());
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::warn!(request_id, %trace_id, error = %error, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(request_id, %trace_id, error = %error, "tunnel closed with an error");
    }
}
