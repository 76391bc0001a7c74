//! Test helpers shared by the workspace's integration tests; a dev-dependency only, never
//! part of the product.
//!
//! - [`upstream::Upstream`]: a scripted upstream on a loopback port that counts connections
//!   and records requests, for the shapes production upstreams take (chunked, close-delimited,
//!   keep-alive closed when idle, 1xx, oversized heads, resets...).
//! - [`recorder::Recorder`]: a hyper upstream that records every byte it received.
//! - [`wire::Wire`]: raw HTTP/1.x reading and writing, for clients and upstreams that behave
//!   in ways a library never would.
//! - [`client`]: one-shot HTTP/1.1 calls and HTTP/2 connections with hyper; [`serve::serve`]:
//!   any tower service on a loopback port.
//! - [`logs`]: captured `tracing` output; [`process::Guarded`]: child processes killed on drop.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use testkit::{upstream::Upstream, wire};
//!
//! // An upstream that answers every request with a chunked body.
//! let up = Upstream::serving(|_req| wire::chunked("hello", 2, &[])).await;
//! let mut c = wire::Wire::connect(up.addr()).await.unwrap();
//! c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
//! let res = c.read_response("GET").await.unwrap();
//! assert_eq!((res.head.status(), res.text().as_str(), res.chunked), (200, "hello", true));
//! assert_eq!(up.connections(), 1);
//! # }
//! ```
// Helpers for tests: a failed setup step panics with what went wrong, as a test should.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod logs;
pub mod process;
pub mod recorder;
pub mod serve;
pub mod upstream;
pub mod wire;
