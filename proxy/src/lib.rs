//! Reverse-proxy forwarding. So far: [`headers`], the header rewriting a forwarded request and
//! its response go through (hop-by-hop stripping, `Connection`-listed headers, trusted
//! proxies, `X-Forwarded-*`).

pub mod headers;
