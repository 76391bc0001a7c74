//! The index page at `GET /`: the route table and each target's health, as text (or HTML when
//! the client asks for it).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, Response};
use proxy::Proxy;
use router::Body;

use super::GatewayBody;
use super::routes::RouteRow;

/// One target as the index page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRow {
    /// The upstream's name.
    pub upstream: String,
    /// The target (`http://host:port`).
    pub target: String,
    /// `up`, `ramping 40%`, `out (failures)`, `out (checks)`, `marked down`.
    pub state: String,
    /// The last active check, if any: `ok 200 3 s ago`.
    pub check: String,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Exchanges that got a response head.
    pub ok: u64,
    /// Failed exchanges, of which `body_failed` after the head.
    pub failed: u64,
    /// Failures after the response head.
    pub body_failed: u64,
}

/// Every target of `upstreams`, now.
pub fn target_rows<B>(upstreams: &[(String, Proxy<B>)]) -> Vec<TargetRow> {
    let mut rows = Vec::new();
    for (name, proxy) in upstreams {
        let balancer = proxy.upstream().balancer();
        let policy = balancer.policy();
        for t in balancer.targets() {
            let s = t.state();
            let state = if s.is_marked_down() {
                "marked down".to_owned()
            } else if s.is_check_down() {
                "out (checks)".to_owned()
            } else if s.is_passive_down(policy) {
                "out (failures)".to_owned()
            } else if let Some(r) = s.ramp(policy) {
                format!("ramping {:.0}%", r * 100.0)
            } else {
                "up".to_owned()
            };
            let check = match s.last_check() {
                None => "-".to_owned(),
                Some(c) => format!("{} {}", if c.ok { "ok" } else { "failed" }, c.detail),
            };
            rows.push(TargetRow {
                upstream: name.clone(),
                target: t.value().to_string(),
                state,
                check,
                in_flight: s.in_flight(),
                ok: s.successes(),
                failed: s.failures(),
                body_failed: s.body_failures(),
            });
        }
    }
    rows
}

/// The page, rendered per request from the routes and the live target state.
pub(super) struct IndexPage<B> {
    pub(super) routes: Vec<RouteRow>,
    pub(super) upstreams: Vec<(String, Proxy<B>)>,
    /// The configuration's generation and the last reload's error.
    pub(super) reload: Arc<crate::reload::ReloadStatus>,
}

impl<B: GatewayBody> IndexPage<B> {
    pub(super) fn render(self: &Arc<Self>, req: &Request<B>) -> Response<Body> {
        let html = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
        let (text, ct) = if html {
            (self.html(), "text/html; charset=utf-8")
        } else {
            (self.text(), "text/plain; charset=utf-8")
        };
        let mut res = Response::new(Body::from(Bytes::from(text)));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        res
    }

    /// `configuration generation N, loaded at T` and the last reload's error, if any.
    fn generation_line(&self) -> String {
        let mut line = format!(
            "configuration generation {}, loaded {}",
            self.reload.generation(),
            crate::reload::utc(self.reload.loaded_at_ms())
        );
        if let Some(e) = self.reload.last_error() {
            line.push_str(&format!("; the last reload failed: {e}"));
        }
        line
    }

    fn text(&self) -> String {
        let mut out = format!("gateway\n\n{}\n\nroutes\n", self.generation_line());
        for r in &self.routes {
            let notes = if r.notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.notes)
            };
            let host = if r.hosts == "*" {
                String::new()
            } else {
                format!("[{}] ", r.hosts)
            };
            let _ = writeln!(
                out,
                "  {:<24} {host}{:<28} -> {}{notes}",
                r.methods, r.path, r.upstream
            );
        }
        out.push_str("\nupstreams\n");
        for t in target_rows(&self.upstreams) {
            let _ = writeln!(
                out,
                "  {:<10} {:<26} {:<15} check {:<14} in flight {}, ok {}, failed {} (after head {})",
                t.upstream, t.target, t.state, t.check, t.in_flight, t.ok, t.failed, t.body_failed
            );
        }
        // Tasks that never end are leaks: worth an operator's eye (and the soak's).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "\nruntime\n  tasks alive {}",
                rt.metrics().num_alive_tasks()
            );
        }
        out.push_str(EXAMPLES);
        out
    }

    fn html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut out = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>gateway</title><style>body{font-family:system-ui,sans-serif;margin:2em}td,th{padding:.2em 1em;text-align:left}code,pre{background:#f4f4f4}</style></head><body><h1>gateway</h1>",
        );
        let _ = write!(out, "<p>{}</p>", esc(&self.generation_line()));
        out.push_str("<h2>Routes</h2><table><tr><th>hosts</th><th>methods</th><th>path</th><th>target</th><th>notes</th></tr>");
        for r in &self.routes {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&r.hosts),
                esc(&r.methods),
                esc(&r.path),
                esc(&r.upstream),
                esc(&r.notes)
            );
        }
        out.push_str("</table><h2>Upstreams</h2><table><tr><th>upstream</th><th>target</th><th>state</th><th>last check</th><th>in flight</th><th>ok</th><th>failed</th><th>after head</th></tr>");
        for t in target_rows(&self.upstreams) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.upstream),
                esc(&t.target),
                esc(&t.state),
                esc(&t.check),
                t.in_flight,
                t.ok,
                t.failed,
                t.body_failed
            );
        }
        let _ = write!(
            out,
            "</table><h2>Try it</h2><pre>{}</pre></body></html>",
            esc(EXAMPLES.trim())
        );
        out
    }
}

/// The demo's example commands.
pub const EXAMPLES: &str = "
try
  curl http://localhost:8080/api/users                                    # alternates :9001 / :9002
  curl http://localhost:8080/static/x.png                                 # :9001, path /x.png
  curl -H 'X-Admin-Token: letmein' http://localhost:8080/admin/dashboard  # :9002
";
