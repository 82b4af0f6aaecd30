//! Mutual TLS and per-endpoint connection keys, through the real binary. An upstream that
//! requires a client certificate is reached with `upstream.client_cert_file` and
//! `client_key_file`, and refuses the proxy without them (a 502 naming the keys) or with a
//! certificate of another CA; a key that is not the certificate's stops `check-config`. A judge
//! with its own `base_url` on a private CA is reached with its own `ca_file`, or with the one it
//! inherits from `[upstream]`.

mod common;

use std::path::Path;

use common::mock::MockUpstream;
use common::served::{check_config_in, Serve};
use common::tls_upstream::{Alpn, ClientAuth, ClientIdentity, TestCa, TlsUpstream};
use common::{chat_body, post_chat};
use tempfile::TempDir;

/// The files an operator keeps beside the config: the CA, and a client certificate and key.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("temp dir for the certificates"),
        }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a certificate file");
        path.display().to_string()
    }

    /// `client_cert_file = ...` and `client_key_file = ...` lines for `identity`.
    fn identity(&self, identity: &ClientIdentity) -> String {
        format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            self.write("client.pem", &identity.cert_pem),
            self.write("client.key", &identity.key_pem)
        )
    }
}

/// `[upstream]` for `upstream`, its CA trusted, no retries, plus `extra` lines.
fn upstream_table(upstream: &TlsUpstream, ca_path: &str, extra: &str) -> String {
    format!(
        "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\nca_file = \"{ca_path}\"\n{extra}",
        upstream.base_url()
    )
}

#[tokio::test]
async fn a_client_certificate_opens_an_upstream_that_requires_one() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start_with(&ca, Alpn::H2, ClientAuth::Required).await;
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.ca_pem);
    let identity = files.identity(&ca.client_identity("bon-proxy"));
    let served = Serve::plain()
        .config(&upstream_table(&upstream, &ca_path, &identity))
        .start_async()
        .await;
    let proxy = served.proxy();

    let plain = post_chat(&proxy, &[], chat_body("Hi with a client certificate")).await;
    plain.expect_ok();
    let best = post_chat(&proxy, &[("x-best-of-n", "3")], chat_body("Best of three")).await;
    best.expect_ok();
    assert_eq!(best.header("x-best-of-n"), Some("3"));
    assert_eq!(upstream.calls().len(), 1 + 3 + 1, "{}", served.log());
}

/// Without a certificate the handshake is refused: no request arrives, and the client gets a
/// 502 that names the keys to set.
#[tokio::test]
async fn without_a_client_certificate_the_502_names_the_keys() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start_with(&ca, Alpn::Http1, ClientAuth::Required).await;
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.ca_pem);
    let served = Serve::plain()
        .config(&upstream_table(&upstream, &ca_path, ""))
        .start_async()
        .await;
    let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
    let error = answer.expect_error(502);
    assert_eq!(error["code"], "upstream_unreachable", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("client certificate"), "{message}");
    assert!(message.contains("`upstream.client_cert_file`"), "{message}");
    assert!(upstream.calls().is_empty(), "{:?}", upstream.calls());
}

/// A certificate from a CA the upstream does not trust for clients: refused, and the 502 says
/// the handshake was refused and which certificate to check, rather than that none was sent.
#[tokio::test]
async fn a_client_certificate_of_another_ca_is_refused_with_a_502_saying_so() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start_with(&ca, Alpn::Http1, ClientAuth::Required).await;
    let files = Files::new();
    let ca_path = files.write("ca.pem", &ca.ca_pem);
    let stranger = files.identity(&TestCa::new().client_identity("someone else"));
    let served = Serve::plain()
        .config(&upstream_table(&upstream, &ca_path, &stranger))
        .start_async()
        .await;
    let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
    let error = answer.expect_error(502);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("refused the TLS handshake"), "{message}");
    assert!(message.contains("`upstream.client_cert_file`"), "{message}");
    assert!(upstream.calls().is_empty(), "{:?}", upstream.calls());
}

/// `check-config` on `toml` in `dir`: success, stdout and stderr.
fn check_config(dir: &Path, toml: &str) -> (bool, String, String) {
    let checked = check_config_in(dir, toml, &[]);
    (checked.ok, checked.stdout, checked.stderr)
}

#[test]
fn check_config_refuses_a_key_that_is_not_the_certificates() {
    let ca = TestCa::new();
    let files = Files::new();
    let mine = ca.client_identity("mine");
    let other = ca.client_identity("other");
    files.write("client.pem", &mine.cert_pem);
    files.write("other.key", &other.key_pem);
    files.write("client.key", &mine.key_pem);
    let dir = files.dir.path();

    let (ok, _, stderr) = check_config(
        dir,
        "[upstream]\nclient_cert_file = \"client.pem\"\nclient_key_file = \"other.key\"\n",
    );
    assert!(!ok, "check-config accepted a key of another certificate");
    assert!(stderr.contains("`upstream.client_key_file`"), "{stderr}");
    assert!(stderr.contains("not the private key"), "{stderr}");

    let (ok, _, stderr) = check_config(
        dir,
        "[upstream]\nclient_cert_file = \"client.pem\"\nclient_key_file = \"client.pem\"\n",
    );
    assert!(!ok, "check-config accepted a certificate as a key");
    assert!(stderr.contains("no usable private key"), "{stderr}");

    let (ok, _, stderr) = check_config(dir, "[upstream]\nclient_cert_file = \"client.pem\"\n");
    assert!(
        !ok && stderr.contains("without `upstream.client_key_file`"),
        "{stderr}"
    );

    let (ok, stdout, stderr) = check_config(
        dir,
        "[upstream]\nclient_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"\n",
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("presents the client certificate in "),
        "{stdout}"
    );
}

/// How one case of the judge-endpoint test sets its keys.
#[derive(Clone, Copy, Debug, PartialEq)]
enum JudgeKeys {
    /// `[judge]` names the CA.
    OwnCa,
    /// `[upstream]` names it; the judge inherits it.
    InheritedCa,
    /// Own CA, and a client certificate for a judge server that requires one.
    OwnCaAndCertificate,
    /// The client certificate is in `[upstream]` only: not presented to the judge's host.
    InheritedCertificate,
    /// Nobody names the CA.
    None,
}

/// Best-of-2 whose judge has its own endpoint, a TLS server on a private CA (requiring a client
/// certificate in the certificate cases). The candidates go to the plain mock upstream; the
/// judge call is the only request the TLS server can see, and it sees it only when the keys
/// reach it. With `fallback = "first_ok"` the client gets its 200 either way.
#[tokio::test]
async fn a_judge_endpoint_has_its_own_connection_keys_and_inherits_all_but_the_certificate() {
    use JudgeKeys::*;
    for case in [
        OwnCa,
        InheritedCa,
        OwnCaAndCertificate,
        InheritedCertificate,
        None,
    ] {
        let ca = TestCa::new();
        let wants_cert = matches!(case, OwnCaAndCertificate | InheritedCertificate);
        let auth = if wants_cert {
            ClientAuth::Required
        } else {
            ClientAuth::None
        };
        let judge = TlsUpstream::start_with(&ca, Alpn::Http1, auth).await;
        let files = Files::new();
        let ca_line = format!("ca_file = \"{}\"\n", files.write("ca.pem", &ca.ca_pem));
        let identity = files.identity(&ca.client_identity("bon-proxy"));
        let (upstream_extra, judge_extra) = match case {
            OwnCa => (String::new(), ca_line),
            InheritedCa => (ca_line, String::new()),
            OwnCaAndCertificate => (String::new(), format!("{ca_line}{identity}")),
            InheritedCertificate => (identity, ca_line),
            None => (String::new(), String::new()),
        };
        let mock = MockUpstream::start().await;
        let toml = format!(
            "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\n{upstream_extra}\n\
             [judge]\nbase_url = \"{}\"\nfallback = \"first_ok\"\n{judge_extra}",
            mock.base_url(),
            judge.base_url()
        );
        let served = Serve::plain().config(&toml).start_async().await;
        let best = post_chat(&served.proxy(), &[("x-best-of-n", "2")], chat_body("Hi")).await;
        best.expect_ok();
        let judged = judge.calls().iter().filter(|c| c.is_judge()).count();
        let expected = usize::from(matches!(case, OwnCa | InheritedCa | OwnCaAndCertificate));
        assert_eq!(judged, expected, "{case:?}: {}", served.log());
        assert_eq!(mock.calls().len(), 2, "{case:?}: two candidates");
    }
}
