//! The roots the upstream's TLS trusts, through the real binary: an upstream on loopback whose
//! certificate a throwaway CA signed is reached over TLS once the CA's PEM is named in
//! `upstream.ca_file` (or the host's store holds it and `upstream.tls_roots` asks for it), over
//! HTTP/1.1 and over HTTP/2 (the upstream offers only one of them in ALPN; it records which one
//! each request came over), for passthrough, streaming and best-of-3; without it the
//! certificate is not trusted and the client gets a 502 naming the key; a file that is not PEM
//! stops `check-config`, naming the key. Also `upstream.http2_only`, over TLS and over h2c.

mod common;

use std::path::Path;

use common::mock::MockUpstream;
use common::served::{check_config_in, Serve};
use common::tls_upstream::{Alpn, TestCa, TlsUpstream, Validity};
use common::{chat_body, post_chat, streaming_chat_body};
use tempfile::TempDir;

/// The CA's PEM in a temp dir of its own, as an operator would keep it beside the config.
fn ca_file(ca: &TestCa) -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir for the CA");
    let path = dir.path().join("private-ca.pem");
    std::fs::write(&path, &ca.ca_pem).expect("write the CA's PEM");
    (dir, path.display().to_string())
}

/// `[upstream]` pointing at `upstream`, without retries (a refused certificate must show at
/// once), with `ca_file` when given.
fn config(upstream: &TlsUpstream, ca_file: Option<&str>) -> String {
    let mut toml = format!(
        "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\n",
        upstream.base_url()
    );
    if let Some(path) = ca_file {
        toml.push_str(&format!("ca_file = \"{path}\"\n"));
    }
    toml
}

/// Passthrough, best-of-3 and a stream through `serve` with the CA trusted, against an upstream offering
/// only `alpn`: both answer 200, and every upstream request came over that protocol.
async fn ca_file_reaches_an_upstream_offering(alpn: Alpn) {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, alpn).await;
    let (_ca_dir, path) = ca_file(&ca);
    let served = Serve::plain()
        .config(&config(&upstream, Some(&path)))
        .start_async()
        .await;
    let proxy = served.proxy();

    let plain = post_chat(&proxy, &[], chat_body("Hi over TLS")).await;
    plain.expect_ok();
    assert!(plain.content().starts_with("candidate answer"), "{plain:?}");

    let best = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Best of three")).await;
    best.expect_ok();
    assert_eq!(best.header("x-best-of-n"), Some("3"));
    assert!(best.content().starts_with("candidate answer"), "{best:?}");

    let streamed = post_chat(&proxy, &[], streaming_chat_body("Stream over TLS")).await;
    streamed.expect_ok();
    assert!(
        streamed.streamed_content().starts_with("candidate answer"),
        "{streamed:?}"
    );

    let calls = upstream.calls();
    assert_eq!(calls.iter().filter(|c| c.is_judge()).count(), 1);
    assert_eq!(
        calls.len(),
        1 + 3 + 1 + 1,
        "passthrough, 3 candidates, 1 judge call, 1 stream"
    );
    let versions = upstream.versions();
    assert!(
        versions.iter().all(|v| *v == alpn.version()),
        "the upstream offered only {alpn:?} but saw {versions:?}; proxy log:\n{}",
        served.log()
    );
    // Pooled: five calls never need five handshakes (h2 multiplexes them on one connection,
    // HTTP/1.1 reuses idle ones).
    assert!(upstream.handshakes() >= 1);
    assert!(upstream.handshakes() <= upstream.connections());
    if alpn == Alpn::H2 {
        assert!(
            upstream.handshakes() < calls.len(),
            "{}",
            upstream.handshakes()
        );
    }
}

#[tokio::test]
async fn with_ca_file_passthrough_and_best_of_3_work_over_http1() {
    ca_file_reaches_an_upstream_offering(Alpn::Http1).await;
}

#[tokio::test]
async fn with_ca_file_passthrough_and_best_of_3_work_over_h2() {
    ca_file_reaches_an_upstream_offering(Alpn::H2).await;
}

/// Without `ca_file` the private CA is unknown: no request reaches the upstream, and the client
/// gets an OpenAI-shaped 502 that names the setting to change.
#[tokio::test]
async fn without_ca_file_the_certificate_is_refused_with_a_502() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, Alpn::H2).await;
    let served = Serve::plain()
        .config(&config(&upstream, None))
        .start_async()
        .await;
    let proxy = served.proxy();

    let plain = post_chat(&proxy, &[], chat_body("Hi")).await;
    let error = plain.expect_error(502);
    assert_eq!(error["code"], "upstream_unreachable", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains("`upstream.ca_file`"), "{message}");

    let best = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Hi")).await;
    best.expect_error(502);

    assert!(upstream.calls().is_empty(), "{:?}", upstream.calls());
    assert_eq!(upstream.handshakes(), 0);
    assert!(upstream.connections() >= 1);
}

/// The message of the 502 a passthrough request gets from an upstream presenting `ca`'s
/// server certificate, with `ca_file` trusting its CA: the CA is fine, the certificate is not.
async fn refused_certificate_message(ca: &TestCa) -> String {
    let upstream = TlsUpstream::start(ca, Alpn::Http1).await;
    let (_dir, ca_path) = ca_file(ca);
    let served = Serve::plain()
        .config(&config(&upstream, Some(&ca_path)))
        .start_async()
        .await;
    let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
    let error = answer.expect_error(502);
    assert_eq!(error["code"], "upstream_unreachable", "{error}");
    assert!(upstream.calls().is_empty(), "{:?}", upstream.calls());
    error["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_certificate_for_another_name_gets_a_502_naming_base_url() {
    let ca = TestCa::issuing(&["upstream.internal"], Validity::Current);
    let message = refused_certificate_message(&ca).await;
    assert!(message.contains("not issued for the host"), "{message}");
    assert!(message.contains("`upstream.base_url`"), "{message}");
}

#[tokio::test]
async fn an_expired_certificate_gets_a_502_saying_so() {
    let ca = TestCa::issuing(&["127.0.0.1", "localhost"], Validity::Expired);
    let message = refused_certificate_message(&ca).await;
    assert!(message.contains("has expired"), "{message}");
}

#[tokio::test]
async fn a_certificate_not_valid_yet_gets_a_502_about_the_clocks() {
    let ca = TestCa::issuing(&["127.0.0.1", "localhost"], Validity::NotYetValid);
    let message = refused_certificate_message(&ca).await;
    assert!(message.contains("not valid yet"), "{message}");
    assert!(message.contains("clocks"), "{message}");
}

/// `check-config` on `toml` in `dir`: success, stdout and stderr.
fn check_config(dir: &Path, toml: &str) -> (bool, String, String) {
    let checked = check_config_in(dir, toml, &[]);
    (checked.ok, checked.stdout, checked.stderr)
}

#[test]
fn check_config_refuses_a_ca_file_that_is_not_pem_and_counts_a_good_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ca.der"), b"\x30\x82\x01\x0a not PEM").expect("write");
    let (ok, _, stderr) = check_config(dir.path(), "[upstream]\nca_file = \"ca.der\"\n");
    assert!(!ok, "check-config accepted a CA file that is not PEM");
    assert!(stderr.contains("`upstream.ca_file`"), "{stderr}");
    assert!(stderr.contains("ca.der"), "{stderr}");
    assert!(stderr.contains("no PEM certificate"), "{stderr}");

    let (ok, _, stderr) = check_config(dir.path(), "[upstream]\nca_file = \"missing.pem\"\n");
    assert!(!ok && stderr.contains("`upstream.ca_file`"), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");

    // Relative to the config file, like the other file keys.
    std::fs::write(dir.path().join("ca.pem"), TestCa::new().ca_pem).expect("write");
    let (ok, stdout, stderr) = check_config(dir.path(), "[upstream]\nca_file = \"ca.pem\"\n");
    assert!(ok, "{stderr}");
    let beside = dir.path().join("ca.pem").display().to_string();
    let line = format!("#   upstream: trusts the bundled webpki roots + {beside} (1 certificate)");
    assert!(stdout.contains(&line), "{stdout}");
}

/// `tls_roots = "system"` trusts the host's store, which `SSL_CERT_FILE` points at the test CA
/// here (as an operator's company CA installed in `/etc/ssl/certs` would be): the upstream is
/// reached without `ca_file`. With `webpki` (the default) the same host store is not looked at.
#[tokio::test]
async fn system_roots_trust_the_hosts_store() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, Alpn::Http1).await;
    let (_ca_dir, path) = ca_file(&ca);
    for (roots, trusted) in [("system", true), ("both", true), ("webpki", false)] {
        let toml = format!("{}tls_roots = \"{roots}\"\n", config(&upstream, None));
        let served = Serve::plain()
            .config(&toml)
            .env("SSL_CERT_FILE", &path)
            .start_async()
            .await;
        let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
        if trusted {
            answer.expect_ok();
        } else {
            let error = answer.expect_error(502);
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("`upstream.tls_roots = \"system\"`"),
                "{message}"
            );
        }
    }
    assert_eq!(upstream.calls().len(), 2);
}

/// A host store that holds nothing usable stops the start, saying what to install.
#[test]
fn check_config_refuses_system_roots_when_the_store_is_empty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let none = dir.path().join("none");
    let env = [
        ("SSL_CERT_FILE", empty.to_str().unwrap_or_default()),
        ("SSL_CERT_DIR", none.to_str().unwrap_or_default()),
    ];
    let toml = "[upstream]\ntls_roots = \"system\"\n";
    let checked = check_config_in(dir.path(), toml, &env);
    let stderr = checked.stderr;
    assert!(!checked.ok, "check-config accepted an empty store");
    assert!(stderr.contains("`upstream.tls_roots`"), "{stderr}");
    assert!(stderr.contains("ca-certificates"), "{stderr}");
}

/// The fuser's and a named judge's own endpoints read their own files at start, and a mistake
/// names their key, not `[upstream]`'s.
#[test]
fn check_config_reads_the_files_of_judge_and_fuser_endpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    for table in ["fuser", "judges.rm"] {
        let mut toml = format!(
            "[{table}]\nbase_url = \"https://models.internal/v1\"\nca_file = \"missing.pem\"\n"
        );
        if table == "judges.rm" {
            toml.push_str("strategy = \"reward_model\"\n");
        }
        let (ok, _, stderr) = check_config(dir.path(), &toml);
        assert!(!ok, "{table}: check-config accepted a missing CA file");
        assert!(stderr.contains(&format!("`{table}.ca_file`")), "{stderr}");
        assert!(stderr.contains("missing.pem"), "{stderr}");
    }
}

/// `upstream.http2_only` against an h2 upstream: a best-of-16 on a cold pool opens one
/// connection (one handshake) and carries all 17 calls on it, where ALPN alone lets each racing
/// call open its own.
#[tokio::test]
async fn http2_only_fans_out_on_one_connection_from_a_cold_pool() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, Alpn::H2).await;
    let (_ca_dir, path) = ca_file(&ca);
    let toml = format!("{}http2_only = true\n", config(&upstream, Some(&path)));
    let served = Serve::plain().config(&toml).start_async().await;
    let best = post_chat(
        &served.proxy(),
        &[("x-best-of-n", "16")],
        chat_body("Sixteen"),
    )
    .await;
    best.expect_ok();
    assert_eq!(upstream.calls().len(), 16 + 1, "16 candidates and a judge");
    assert_eq!(upstream.connections(), 1, "{}", served.log());
    assert_eq!(upstream.handshakes(), 1);
    assert!(upstream.versions().iter().all(|v| *v == Alpn::H2.version()));
}

/// `http2_only` against an upstream that speaks only HTTP/1.1: a 502 saying to remove the key.
#[tokio::test]
async fn http2_only_against_an_http1_upstream_gets_a_502_naming_the_key() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start(&ca, Alpn::Http1).await;
    let (_ca_dir, path) = ca_file(&ca);
    let toml = format!("{}http2_only = true\n", config(&upstream, Some(&path)));
    let served = Serve::plain().config(&toml).start_async().await;
    let error = post_chat(&served.proxy(), &[], chat_body("Hi"))
        .await
        .expect_error(502);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("does not speak HTTP/2"), "{message}");
    assert!(message.contains("`upstream.http2_only`"), "{message}");
    assert!(upstream.calls().is_empty());
}

/// `http2_only` to an `http://` upstream that speaks only HTTP/1.1 (h2c's preface is not a
/// request it knows): a 502 that says the key may be why, where hyper's words alone do not.
#[tokio::test]
async fn http2_only_against_an_http1_upstream_without_tls_gets_a_502_naming_the_key() {
    let upstream = MockUpstream::start().await;
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\nhttp2_only = true\n",
        upstream.base_url()
    );
    let served = Serve::plain().config(&toml).start_async().await;
    let error = post_chat(&served.proxy(), &[], chat_body("Hi"))
        .await
        .expect_error(502);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("HTTP/2 without TLS (h2c)"), "{message}");
    assert!(message.contains("`upstream.http2_only`"), "{message}");

    // Without the key the same upstream answers: the advice is about the key, not the host.
    let toml = toml.replace("http2_only = true\n", "");
    let served = Serve::plain().config(&toml).start_async().await;
    post_chat(&served.proxy(), &[], chat_body("Hi"))
        .await
        .expect_ok();
}
