//! Test helpers: a tracing subscriber that records events, and a real HTTP/1.1 server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing::span;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// One recorded event: its level, target, fields, and the fields of the spans around it.
#[derive(Debug, Clone)]
pub struct Event {
    pub thread: std::thread::ThreadId,
    pub level: tracing::Level,
    pub target: String,
    pub fields: BTreeMap<String, String>,
    pub span_fields: BTreeMap<String, String>,
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Every event of the test binary, from one global subscriber. A global subscriber (rather than
/// one per test with `set_default`) keeps tracing's per-callsite interest cache from being
/// computed while no capturing subscriber exists, which made events vanish at random when tests
/// ran in parallel. Each test reads the events of its own thread.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

/// The events recorded on the current thread since [`capture`] was called.
#[derive(Clone)]
pub struct Capture {
    recorder: Recorder,
    thread: std::thread::ThreadId,
}

impl Capture {
    pub fn events(&self) -> Vec<Event> {
        self.recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.thread == self.thread)
            .cloned()
            .collect()
    }
    pub fn with_target(&self, target: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.target == target)
            .collect()
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut span_fields = BTreeMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(f) = span.extensions().get::<Fields>() {
                    span_fields.extend(f.0.clone());
                }
            }
        }
        self.0.lock().unwrap().push(Event {
            thread: std::thread::current().id(),
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
            span_fields,
        });
    }
}

/// Starts reading this thread's events (earlier ones are dropped).
pub fn capture() -> Capture {
    static RECORDER: std::sync::OnceLock<Recorder> = std::sync::OnceLock::new();
    let recorder = RECORDER
        .get_or_init(|| {
            let recorder = Recorder::default();
            let subscriber = tracing_subscriber::registry().with(recorder.clone());
            tracing::subscriber::set_global_default(subscriber).unwrap();
            recorder
        })
        .clone();
    let thread = std::thread::current().id();
    recorder.0.lock().unwrap().retain(|e| e.thread != thread);
    Capture { recorder, thread }
}

pub use testkit::serve::serve;

/// One client connection, kept alive across requests.
pub struct Client(hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client(sender)
    }

    /// Sends a GET; returns the status and the body, or the body's error as text.
    pub async fn get(&mut self, path: &str) -> (u16, Result<String, String>) {
        self.0.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", "test")
            .body(http_body_util::Empty::new())
            .unwrap();
        let res = self.0.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .map_err(|e| e.to_string());
        (status, body)
    }
}
