//! The gateway: a configuration file (or the embedded demo default) wired into one router with
//! its middleware, upstreams and proxies, served over HTTP/1.1 and HTTP/2 with limits and a
//! graceful shutdown. The `gateway` binary is a thin CLI over this library, which tests use to
//! start a gateway in-process.
//!
//! ```
//! use gateway_bin::config::{DEFAULT, Source};
//!
//! let source = Source { name: "<embedded default>".into(), text: DEFAULT.into() };
//! let config = source.parse().unwrap();
//! let app = gateway_bin::app::build::<gateway_bin::serve::ServedBody>(&config, &source).unwrap();
//! assert!(app.routes.iter().any(|r| r.path == "/admin/*path" && r.notes == "auth"));
//! ```

pub mod admin;
#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod app;
pub mod config;
pub mod reload;
pub mod serve;
pub mod stats;
pub mod tls;
#[cfg(target_os = "linux")]
pub mod upgrade;
