//! Configuration reload: the file changed, the gateway serves the new one without dropping a
//! connection or a request, keeps what did not change, and refuses a bad file whole.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{AbortOnDrop, tempdir};
use gateway_bin::admin::Admin;
use gateway_bin::config::Source;
use gateway_bin::reload::Reloader;
use gateway_bin::serve::{self, Limits, ServedBody};
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A gateway serving the configuration file at `path`, reloadable as the binary is.
struct Reloadable {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: Arc<Admin<ServedBody>>,
    reloader: Arc<Reloader<ServedBody>>,
    _stop: oneshot::Sender<()>,
    _tasks: Vec<AbortOnDrop>,
}

async fn start(path: &Path) -> Reloadable {
    let source = Source::load(Some(path)).unwrap();
    let config = source.parse().unwrap_or_else(|e| panic!("{e}"));
    let app =
        gateway_bin::app::build::<ServedBody>(&config, &source).unwrap_or_else(|e| panic!("{e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = Arc::new(Admin::new(&app));
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let admin_task = tokio::spawn(gateway_bin::admin::serve(
        admin_listener,
        Arc::clone(&admin),
    ));
    let connections = Arc::clone(&app.stats.connections);
    let limits = Limits::from(&config.server);
    let (reloader, service) = Reloader::start(
        Some(path.to_path_buf()),
        &source,
        &config,
        app,
        Arc::clone(&admin),
        Arc::new(proxy::dns::SystemResolver),
    );
    let hook = Arc::downgrade(&reloader);
    admin.on_reload(Box::new(move || {
        hook.upgrade().map_or(Err("gone".into()), |r| r.reload())
    }));
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        serve::serve(
            service,
            vec![serve::Listener::from(listener)],
            limits,
            connections,
            async {
                let _ = stopped.await;
            },
        )
        .await;
    });
    Reloadable {
        addr,
        admin_addr,
        admin,
        reloader,
        _stop: stop,
        _tasks: vec![AbortOnDrop(admin_task), AbortOnDrop(serving)],
    }
}

async fn backend(name: &str) -> fake_backend::Backend {
    fake_backend::spawn("127.0.0.1:0".parse().unwrap(), Some(name))
        .await
        .unwrap()
}

/// A configuration: `upstreams` as `(name, targets)`, `routes` as `(path, upstream)`.
fn config(upstreams: &[(&str, &[SocketAddr])], routes: &[(&str, &str)]) -> String {
    let mut text =
        String::from("[server]\nlisten = [\"127.0.0.1:0\"]\n\n[index]\nenabled = true\n");
    for (name, targets) in upstreams {
        let list: Vec<String> = targets.iter().map(|a| format!("\"http://{a}\"")).collect();
        text.push_str(&format!(
            "\n[upstreams.{name}]\ntargets = [{}]\n",
            list.join(", ")
        ));
    }
    for (path, upstream) in routes {
        text.push_str(&format!(
            "\n[[routes]]\npath = \"{path}\"\nmethods = [\"GET\"]\nupstream = \"{upstream}\"\n"
        ));
    }
    text
}

fn write(path: &Path, text: &str) {
    // As editors do: a new file renamed over the old one.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, String) {
    let req = testkit::client::get(path).body(Empty::new()).unwrap();
    let r = testkit::client::send_h1(sender, req).await.unwrap();
    (r.status.as_u16(), r.header("x-backend").to_owned())
}

#[tokio::test]
async fn routes_come_and_go_over_a_kept_alive_connection() {
    let (one, two) = (backend("one").await, backend("two").await);
    let dir = tempdir("reload-routes");
    let path = dir.join("gateway.toml");
    let (a, b) = (one.addr(), two.addr());
    write(&path, &config(&[("one", &[a])], &[("/a/*rest", "one")]));
    let gw = start(&path).await;
    let mut conn = testkit::client::h1(gw.addr).await;
    assert_eq!(get(&mut conn, "/a/x").await, (200, "one".into()));
    assert_eq!(get(&mut conn, "/b/x").await.0, 404);

    // A route added, one removed, an upstream added, a middleware (auth) on the new route.
    let mut v2 = config(&[("one", &[a]), ("two", &[b])], &[("/b/*rest", "two")]);
    v2.push_str("auth = { header = \"x-token\", secrets = [\"s3cret\"] }\n");
    write(&path, &v2);
    assert_eq!(gw.reloader.reload(), Ok(2));
    // The same connection: its next request is on the new configuration.
    assert_eq!(get(&mut conn, "/a/x").await.0, 404);
    assert_eq!(get(&mut conn, "/b/x").await.0, 403);
    let req = testkit::client::get("/b/x")
        .header("x-token", "s3cret")
        .body(Empty::new())
        .unwrap();
    let r = testkit::client::send_h1(&mut conn, req).await.unwrap();
    assert_eq!((r.status.as_u16(), r.header("x-backend")), (200, "two"));

    // The index page and the dashboard's data say which generation serves.
    let index = testkit::client::fetch(gw.addr, "/").await;
    assert!(
        index.text().contains("configuration generation 2"),
        "{}",
        index.text()
    );
    let stats = gw.admin.stats_json();
    assert_eq!(stats["config"]["generation"], 2);
    assert!(stats["config"]["last_error"].is_null());
}

#[tokio::test]
async fn a_bad_file_changes_nothing_and_says_where() {
    let one = backend("one").await;
    let dir = tempdir("reload-bad");
    let path = dir.join("gateway.toml");
    let good = config(&[("one", &[one.addr()])], &[("/a/*rest", "one")]);
    write(&path, &good);
    let gw = start(&path).await;
    let bad = good.replace("upstream = \"one\"", "upstream = \"nowhere\"");
    write(&path, &bad);
    let err = gw.reloader.reload().unwrap_err();
    assert!(
        err.contains("gateway.toml:") && err.contains("nowhere"),
        "{err}"
    );
    // Still the old one.
    let r = testkit::client::fetch(gw.addr, "/a/x").await;
    assert_eq!((r.status.as_u16(), r.header("x-backend")), (200, "one"));

    // The admin endpoint says the same, and so do the page, the data and the metrics.
    let req = http::Request::post("/reload")
        .header("host", "admin")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = testkit::client::call(gw.admin_addr, req).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("nowhere"), "{}", r.text());
    let index = testkit::client::fetch(gw.addr, "/").await;
    assert!(
        index.text().contains("the last reload failed"),
        "{}",
        index.text()
    );
    assert!(index.text().contains("configuration generation 1"));
    let stats = gw.admin.stats_json();
    assert!(
        stats["config"]["last_error"]
            .as_str()
            .unwrap()
            .contains("nowhere")
    );
    let metrics = testkit::client::fetch(gw.admin_addr, "/metrics")
        .await
        .text();
    assert!(
        metrics.contains("gateway_config_reloads_total{result=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_config_generation 1"), "{metrics}");

    // Fixed: it loads, and the error is gone.
    write(&path, &good);
    let r = testkit::client::call(
        gw.admin_addr,
        http::Request::post("/reload")
            .header("host", "admin")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("generation 2"));
    assert!(gw.admin.stats_json()["config"]["last_error"].is_null());
}

#[tokio::test]
async fn unchanged_upstreams_keep_their_connections_and_health() {
    let (one, two, three) = (
        backend("one").await,
        backend("two").await,
        backend("three").await,
    );
    // A target nobody listens on: it fails, and passive health takes it out.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempdir("reload-keep");
    let path = dir.join("gateway.toml");
    let v1 = config(
        &[("kept", &[one.addr(), dead]), ("changed", &[two.addr()])],
        &[("/kept/*rest", "kept"), ("/changed/*rest", "changed")],
    );
    write(&path, &v1);
    let gw = start(&path).await;
    for _ in 0..4 {
        let r = testkit::client::fetch(gw.addr, "/kept/x").await;
        assert_eq!(r.status, 200);
    }
    let before = gw.reloader.upstreams();
    let kept = &before.iter().find(|(n, _)| n == "kept").unwrap().1;
    let targets = kept.upstream().balancer().targets();
    let policy = kept.upstream().balancer().policy();
    let dead_target = targets
        .iter()
        .find(|t| t.value().to_string().ends_with(&dead.to_string()))
        .unwrap();
    assert!(
        !dead_target.state().is_available(policy),
        "the dead target is out"
    );
    let connections = one.connections();

    // `changed` gets another target; `kept` is written the same (moved in the file).
    let v2 = config(
        &[("changed", &[three.addr()]), ("kept", &[one.addr(), dead])],
        &[("/changed/*rest", "changed"), ("/kept/*rest", "kept")],
    );
    write(&path, &v2);
    assert_eq!(gw.reloader.reload(), Ok(2));
    let after = gw.reloader.upstreams();
    let kept_after = &after.iter().find(|(n, _)| n == "kept").unwrap().1;
    assert!(kept_after.ptr_eq(kept), "the same upstream, not a copy");
    let changed_before = &before.iter().find(|(n, _)| n == "changed").unwrap().1;
    let changed_after = &after.iter().find(|(n, _)| n == "changed").unwrap().1;
    assert!(!changed_after.ptr_eq(changed_before));
    // Its health: the dead target is still out, so nothing goes to it.
    let targets = kept_after.upstream().balancer().targets();
    let dead_target = targets
        .iter()
        .find(|t| t.value().to_string().ends_with(&dead.to_string()))
        .unwrap();
    assert!(!dead_target.state().is_available(policy));
    // Its pool: requests after the reload go on the connections made before it.
    for _ in 0..4 {
        let r = testkit::client::fetch(gw.addr, "/kept/x").await;
        assert_eq!((r.status.as_u16(), r.header("x-backend")), (200, "one"));
    }
    assert_eq!(one.connections(), connections, "no new upstream connection");
    let r = testkit::client::fetch(gw.addr, "/changed/x").await;
    assert_eq!(r.header("x-backend"), "three");
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_configuration_they_started_with() {
    let one = backend("one").await;
    let dir = tempdir("reload-inflight");
    let path = dir.join("gateway.toml");
    write(
        &path,
        &config(&[("one", &[one.addr()])], &[("/a/*rest", "one")]),
    );
    let gw = start(&path).await;
    let addr = gw.addr;
    // A slow answer and an event stream, both started before the reload.
    let slow =
        tokio::spawn(async move { testkit::client::fetch(addr, "/a/slow?delay_ms=400").await });
    let mut events_conn = testkit::client::h1(addr).await;
    let req = testkit::client::get("/a/events?sse=5&interval_ms=100")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = events_conn.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // And a WebSocket, open through the route.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/a/ws"), stream)
        .await
        .unwrap();
    // All three are under way at the upstream when the route goes away.
    let deadline = Instant::now() + Duration::from_secs(5);
    while one.connections() < 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    write(
        &path,
        &config(&[("one", &[one.addr()])], &[("/other/*rest", "one")]),
    );
    assert_eq!(gw.reloader.reload(), Ok(2));
    assert_eq!(testkit::client::fetch(addr, "/a/x").await.status, 404);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body).matches("data:").count(),
        5,
        "the event stream ran to its end"
    );
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status.as_u16(), slow.header("x-backend")),
        (200, "one")
    );
    use futures_util::{SinkExt, StreamExt};
    let text = tokio_tungstenite::tungstenite::Message::text("after the reload");
    ws.send(text.clone()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), text);
    ws.close(None).await.unwrap();
}

/// Waits until the gateway serves configuration generation `n`.
async fn generation(gw: &Reloadable, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = gw.admin.stats().reload.generation();
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {n} within 10 s (at {now})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn watch_follows_a_rename_and_a_symlink_swap() {
    let (one, two, three) = (
        backend("one").await,
        backend("two").await,
        backend("three").await,
    );
    let dir = tempdir("reload-watch");
    // As a Kubernetes ConfigMap volume: the file is a symlink into a directory the kubelet
    // replaces by swapping another symlink.
    let data1 = dir.join("..data-1");
    let data2 = dir.join("..data-2");
    std::fs::create_dir_all(&data1).unwrap();
    std::fs::create_dir_all(&data2).unwrap();
    let route = [("/a/*rest", "up")];
    std::fs::write(
        data1.join("gateway.toml"),
        config(&[("up", &[one.addr()])], &route),
    )
    .unwrap();
    let data_link = dir.join("..data");
    let _ = std::fs::remove_file(&data_link);
    std::os::unix::fs::symlink(&data1, &data_link).unwrap();
    let path: PathBuf = dir.join("gateway.toml");
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(data_link.join("gateway.toml"), &path).unwrap();
    let gw = start(&path).await;
    let _watch = AbortOnDrop(tokio::spawn(gateway_bin::reload::watch(
        Arc::clone(&gw.reloader),
        Duration::from_millis(50),
    )));
    assert_eq!(
        testkit::client::fetch(gw.addr, "/a/x")
            .await
            .header("x-backend"),
        "one"
    );

    // The kubelet's swap: a new data directory, then the `..data` link renamed over.
    std::fs::write(
        data2.join("gateway.toml"),
        config(&[("up", &[two.addr()])], &route),
    )
    .unwrap();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&data2, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, &data_link).unwrap();
    generation(&gw, 2).await;
    assert_eq!(
        testkit::client::fetch(gw.addr, "/a/x")
            .await
            .header("x-backend"),
        "two"
    );

    // An editor's save: a new file renamed over the path (the symlink goes).
    write(&path, &config(&[("up", &[three.addr()])], &route));
    generation(&gw, 3).await;
    assert_eq!(
        testkit::client::fetch(gw.addr, "/a/x")
            .await
            .header("x-backend"),
        "three"
    );
}

#[tokio::test]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let (one, two) = (backend("one").await, backend("two").await);
    let dir = tempdir("reload-load");
    let path = dir.join("gateway.toml");
    let v1 = config(&[("up", &[one.addr()])], &[("/a/*rest", "up")]);
    let v2 = config(&[("up", &[two.addr()])], &[("/a/*rest", "up")]);
    write(&path, &v1);
    let gw = start(&path).await;
    let fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let load = common::Load::start(gw.addr, "/a/x", 4);
    load.until("the load is flowing", |l| l.ok() > 50).await;
    let fds_before = fds();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let tasks_before = tasks();
    for i in 0..100 {
        write(&path, if i % 2 == 0 { &v2 } else { &v1 });
        assert_eq!(gw.reloader.reload(), Ok(i + 2));
        // Some requests between reloads.
        let at = load.ok();
        load.until("requests flow between reloads", |l| l.ok() > at + 5)
            .await;
    }
    let failures = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    // Nothing grows with the reloads: the replaced upstreams' connections and tasks end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fds() > fds_before + 16 || tasks() > tasks_before + 8 {
        assert!(
            Instant::now() < deadline,
            "descriptors: {fds_before} before, {} after; tasks: {tasks_before} before, {} after",
            fds(),
            tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_changed_upstream_keeps_what_applies_to_the_targets_that_stay() {
    let (two, three) = (backend("two").await, backend("three").await);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempdir("reload-changed");
    let path = dir.join("gateway.toml");
    let (a, b, c) = (two.addr(), dead, three.addr());
    let v1 = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstreams.up]\nstrategy = \"round-robin\"\ntargets = [\"http://{a}\", \"http://{b}\"]\n\n[[routes]]\npath = \"/u/*rest\"\nmethods = [\"GET\"]\nupstream = \"up\"\n"
    );
    write(&path, &v1);
    let gw = start(&path).await;
    for _ in 0..4 {
        let r = testkit::client::fetch(gw.addr, "/u/x").await;
        assert_eq!((r.status.as_u16(), r.header("x-backend")), (200, "two"));
    }
    let connections = two.connections();
    // Another strategy, another timeout, one more target: a changed upstream.
    let v2 = v1.replace("round-robin", "least-request").replace(
        &format!("\"http://{b}\"]"),
        &format!("\"http://{b}\", \"http://{c}\"]\nresponse_timeout_ms = 7000"),
    );
    write(&path, &v2);
    let before = gw.reloader.upstreams()[0].1.clone();
    assert_eq!(gw.reloader.reload(), Ok(2));
    let after = gw.reloader.upstreams()[0].1.clone();
    assert!(!after.ptr_eq(&before), "a new upstream");
    assert_eq!(
        after.upstream().settings().response_timeout,
        Duration::from_secs(7)
    );
    // The dead target is still out: its health came along.
    let targets = after.upstream().balancer().targets();
    let policy = after.upstream().balancer().policy();
    let state = |addr: SocketAddr| {
        targets
            .iter()
            .find(|t| t.value().to_string().ends_with(&addr.to_string()))
            .map(|t| t.state().is_available(policy))
            .unwrap()
    };
    assert!(!state(dead), "the ejected target stays out");
    assert!(state(a) && state(c));
    // `two`'s connections came along too: no new one to it, whatever goes to `three`.
    let mut to_two = 0;
    for _ in 0..8 {
        let r = testkit::client::fetch(gw.addr, "/u/x").await;
        assert_eq!(r.status, 200);
        to_two += usize::from(r.header("x-backend") == "two");
    }
    assert!(to_two > 0);
    assert_eq!(
        two.connections(),
        connections,
        "the pooled connection was reused"
    );
}

/// The real binary: `--watch` loads a changed file, SIGHUP a rewritten one.
#[tokio::test]
async fn the_binary_reloads_on_watch_and_on_sighup() {
    // config: --watch
    let one = backend("one").await;
    let dir = tempdir("reload-binary");
    for (watch, file) in [
        (true, dir.join("watched.toml")),
        (false, dir.join("hup.toml")),
    ] {
        write(
            &file,
            &config(&[("one", &[one.addr()])], &[("/a/*rest", "one")]),
        );
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.arg("--config").arg(&file);
        if watch {
            cmd.arg("--watch");
        }
        let mut child = testkit::process::Guarded::spawn(&mut cmd).unwrap();
        let line = child
            .wait_line("gateway listening", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{}", child.output()));
        let addr = testkit::process::address_in(&line).unwrap();
        assert_eq!(testkit::client::fetch(addr, "/b/x").await.status, 404);
        write(
            &file,
            &config(&[("one", &[one.addr()])], &[("/b/*rest", "one")]),
        );
        if !watch {
            assert!(child.signal("HUP"));
        }
        child
            .wait_line("configuration reloaded", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("watch {watch}: {}", child.output()));
        assert_eq!(testkit::client::fetch(addr, "/b/x").await.status, 200);
    }
}

#[tokio::test]
async fn settings_only_a_restart_changes_are_named_and_kept() {
    testkit::logs::capture();
    let one = backend("one").await;
    let dir = tempdir("reload-restart-only");
    let path = dir.join("gateway.toml");
    let v1 = config(&[("one", &[one.addr()])], &[("/a/*rest", "one")]);
    write(&path, &v1);
    let gw = start(&path).await;
    write(
        &path,
        &v1.replace("[index]", "[server.placeholder]").replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 7",
        ),
    );
    // Not a valid file (an unknown table): refused whole.
    assert!(gw.reloader.reload().is_err());
    write(
        &path,
        &v1.replace(
            "[server]\nlisten = [\"127.0.0.1:0\"]",
            "[server]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 7",
        ),
    );
    assert_eq!(gw.reloader.reload(), Ok(2));
    let named = testkit::logs::lines_with("needs a restart");
    assert!(named.iter().any(|l| l.contains("`server`")), "{named:?}");
    // The rest of the file took effect; the limit did not (many connections still pass).
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(testkit::client::h1::<Empty<Bytes>>(gw.addr).await);
    }
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        testkit::client::fetch(gw.addr, "/a/x"),
    )
    .await
    .expect("an eleventh connection is served: the running limit stays");
    assert_eq!(r.status, 200);
    drop(open);
}
