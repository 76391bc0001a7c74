//! The live dashboard in a real headless Chromium: the page loads with no console message at
//! all (no error, no failed fetch), shows every route and target of the demo, and its figures
//! change after traffic is sent. Saves a screenshot as `target/dashboard.png` (the README's
//! `docs/dashboard.png` is a copy). Skipped, saying so, when no Chromium is on `PATH`; CI
//! installs Debian's `chromium`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fetch;

/// A Chromium on `PATH`, if any (`CHROMIUM` may name one elsewhere).
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let dirs = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&dirs).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args`; returns its stdout and the console lines it
/// logged. Bounded at 60 s.
async fn run(chrome: &Path, profile: &Path, url: &str, args: &[&str]) -> (String, Vec<String>) {
    let mut cmd = tokio::process::Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        // Long enough for the first fetch of /stats.json to land and render.
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("Chromium finished within 60 s")
        .expect("Chromium started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

/// The number in the "total" cell of the row with `attr`.
fn total(dom: &str, attr: &str) -> u64 {
    let row = dom
        .split("<tr")
        .find(|r| r.contains(attr))
        .unwrap_or_else(|| panic!("no row {attr} in the page"));
    let cell = row
        .split("class=\"num total\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no total in {row}"));
    cell.replace(',', "").parse().unwrap()
}

#[tokio::test]
async fn the_dashboard_renders_every_route_and_target_and_moves_with_traffic() {
    let Some(chrome) = chromium() else {
        println!("skipped: no Chromium on PATH (apt-get install chromium; .ci/run installs it)");
        return;
    };
    let d = common::demo().await;
    let gw = &d.gateway;
    let profile = common::tempdir("chromium-profile");
    let url = format!("http://{}/", gw.admin_addr);
    gw.admin.tick();
    for _ in 0..5 {
        assert_eq!(fetch(gw.addr, "/api/users").await.status, 200);
    }
    assert_eq!(fetch(gw.addr, "/static/app.css").await.status, 200);
    assert_eq!(fetch(gw.addr, "/nowhere").await.status, 404);

    let (before, console) = run(&chrome, &profile, &url, &["--dump-dom"]).await;
    assert!(console.is_empty(), "console messages: {console:#?}");
    for route in ["/api/*path", "/static/*path", "/admin/*path", "(unmatched)"] {
        assert!(
            before.contains(&format!("data-route=\"{route}\"")),
            "route {route} missing from the page"
        );
    }
    for b in [d.b1.addr(), d.b2.addr()] {
        assert!(
            before.contains(&format!("data-target=\"http://{b}\"")),
            "target {b} missing from the page"
        );
    }
    assert!(before.contains(">ready<"), "readiness shown");
    assert!(
        before.contains("config generation 1, loaded "),
        "the configuration generation shown"
    );
    let api_before = total(&before, "data-route=\"/api/*path\"");
    assert_eq!(api_before, 5);

    for _ in 0..7 {
        assert_eq!(fetch(gw.addr, "/api/users").await.status, 200);
    }
    gw.admin.tick();
    let (after, console) = run(&chrome, &profile, &url, &["--dump-dom"]).await;
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert_eq!(total(&after, "data-route=\"/api/*path\""), api_before + 7);

    let shot = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("dashboard.png");
    // The workspace's `target` is not there when the build goes elsewhere
    // (`CARGO_TARGET_DIR`), and Chromium does not make the directory it writes into.
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir).expect("the screenshot's directory");
    }
    let arg = format!("--screenshot={}", shot.display());
    let (_, console) = run(&chrome, &profile, &url, &[&arg, "--window-size=1400,900"]).await;
    assert!(console.is_empty(), "console messages: {console:#?}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("screenshot: {}", shot.display());
}
