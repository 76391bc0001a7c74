//! `cargo bench -p proxy`: one request through the proxy next to the same request sent straight
//! to the upstream, in the same run. Everything is on loopback in this process: a hyper
//! upstream answering 13 bytes, the proxy served by hyper, and a keep-alive hyper client.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use balancer::{Algorithm, HealthPolicy};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use proxy::{Proxy, Settings, Upstream};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use testkit::serve::serve;

async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut SendRequest<Empty<Bytes>>) {
    sender.ready().await.unwrap();
    let req = Request::get("/bench")
        .header("host", "bench")
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 13);
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (mut direct, mut proxied) = rt.block_on(async {
        let upstream = serve(tower::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                b"hello, world\n",
            ))))
        }))
        .await;
        let up = Upstream::new(
            "bench",
            Algorithm::RoundRobin,
            [(format!("http://{upstream}"), 1)],
            HealthPolicy::default(),
            Settings::default(),
        )
        .unwrap();
        let gateway = serve(Proxy::<Incoming>::new(up)).await;
        (client(upstream).await, client(gateway).await)
    });

    let mut group = c.benchmark_group("request");
    group.bench_function("direct", |b| b.iter(|| rt.block_on(one(&mut direct))));
    group.bench_function("proxied", |b| b.iter(|| rt.block_on(one(&mut proxied))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
