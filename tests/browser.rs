//! The decisions inspector in a real headless browser: starts the real binary as the Quick
//! start does (`bon-proxy serve --demo` in the repository root) on a free loopback port, and
//! runs `tests/browser/inspector.mjs` with Node, which drives Debian's Chromium through
//! playwright-core: best-of-3 requests sent with curl appear live, a decision opens with its
//! winner highlighted and its scores as the response headers gave them, and a screenshot goes
//! to `target/ui-inspector.png` (the README's picture, `tests/browser/inspector.png`, is a copy).
//!
//! Like the Python tests, this one never skips: without Chromium, Node, curl or the npm
//! packages it fails and says to run `scripts/test`, which installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::served::Serve;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What to do when something is missing; part of every such failure.
const SETUP: &str = "run scripts/test, which installs Chromium (Debian's `chromium`) and the \
                     npm packages of tests/browser";

/// Upper bound on the whole browser script.
const SCRIPT: Duration = Duration::from_secs(90);

/// The browser: `BON_CHROMIUM`, or Debian's.
fn chromium() -> PathBuf {
    let path = std::env::var_os("BON_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(path.exists(), "no Chromium at {}: {SETUP}", path.display());
    path
}

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "`{tool}` is not installed: {SETUP}");
}

#[test]
fn the_inspector_shows_decisions_live_in_a_real_browser() {
    let browser = chromium();
    require("node");
    require("curl");
    let scripts = Path::new(ROOT).join("tests/browser");
    let playwright = scripts.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "tests/browser/node_modules has no playwright-core: {SETUP}"
    );
    let target = Path::new(ROOT).join("target");
    std::fs::create_dir_all(&target).expect("target/");
    let screenshot = target.join("ui-inspector.png");
    let _ = std::fs::remove_file(&screenshot);

    let served = Serve::demo().in_repo_root().start();
    let started = Instant::now();
    let mut node = Command::new("node");
    node.arg("inspector.mjs")
        .current_dir(&scripts)
        .env("BON_UI_BASE", format!("http://{}", served.addr))
        .env("BON_CHROMIUM", &browser)
        .env("BON_SCREENSHOT", &screenshot)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = node
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}: {SETUP}"));
    // Read on threads, so a chatty script cannot block on a full pipe while we wait.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let report = format!(
        "stdout:\n{out}\nstderr:\n{err}\nproxy log:\n{}",
        served.log()
    );
    match status {
        None => panic!("the browser script ran longer than {SCRIPT:?}\n{report}"),
        Some(status) => assert!(
            status.success(),
            "the browser script failed ({status})\n{report}"
        ),
    }
    assert!(out.contains("inspector ok"), "{report}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "not a PNG: {}",
        screenshot.display()
    );
    eprintln!(
        "browser test took {:?}; screenshot at {}",
        started.elapsed(),
        screenshot.display()
    );
}
