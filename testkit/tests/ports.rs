//! The special ports behave as their names say.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use testkit::upstream::{Blackhole, Refusing};

#[tokio::test]
async fn a_refusing_port_refuses_and_a_blackhole_never_completes() {
    let r = Refusing::new();
    let e = tokio::net::TcpStream::connect(r.addr()).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let b = Blackhole::new().await;
    let t = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(b.addr()),
    )
    .await;
    assert!(t.is_err(), "the blackhole completed a connect: {t:?}");
}
