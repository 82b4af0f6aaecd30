//! Outbound proxying through the real binary: upstream calls travel through the HTTP proxy
//! `upstream.proxy_url` or the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), as
//! a user behind an egress proxy needs; a judge with its own `base_url` may have its own.
//!
//! The upstream is addressed as `upstream.test`, a name only the test proxy
//! ([`ConnectProxy`]) resolves: an answer proves the call went through it. An https upstream
//! (a throwaway CA's certificate for that name) is reached through a CONNECT tunnel, with
//! credentials when the proxy wants them, which never show in the proxy's log or answers; a
//! proxy that refuses gets the client a 502 naming the setting to change; `NO_PROXY` and
//! loopback upstreams go direct; a plain-http upstream is reached through the proxy as a
//! forward proxy; a proxy URL this proxy cannot use stops the start. `Serve` removes the
//! proxy variables of the test's own environment, so a CI machine's cannot skew a test.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::connect_proxy::{basic, ConnectProxy, Mode};
use common::mock::MockUpstream;
use common::served::{Serve, Served};
use common::tls_upstream::{Alpn, TestCa, TlsUpstream, Validity};
use common::{chat_body, post_chat, streaming_chat_body, Answer};
use tempfile::TempDir;

/// The upstream's name: only the test proxy resolves it.
const HOST: &str = "upstream.test";

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The proxy password; it must never reach a log line or a client.
const PASSWORD: &str = "proxy-secret-0451";

/// `serve --config` with `toml` and the proxy variables `vars`: `Serve` removes those of the
/// test's own environment.
fn command(toml: &str, vars: &[(&str, &str)]) -> Serve {
    let mut serve = Serve::plain().config(toml);
    for (name, value) in vars {
        serve = serve.env(name, value);
    }
    serve
}

/// [`command`], started.
async fn serve(toml: &str, vars: &[(&str, &str)]) -> Served {
    command(toml, vars).start_async().await
}

/// A TLS upstream whose certificate names [`HOST`], and its CA's PEM in a file.
struct Https {
    upstream: TlsUpstream,
    _ca_dir: TempDir,
    ca_path: String,
}

impl Https {
    async fn start() -> Https {
        let ca = TestCa::issuing(&[HOST], Validity::Current);
        let upstream = TlsUpstream::start(&ca, Alpn::Http1).await;
        let ca_dir = tempfile::tempdir().expect("temp dir for the CA");
        let path = ca_dir.path().join("ca.pem");
        std::fs::write(&path, &ca.ca_pem).expect("write the CA's PEM");
        Https {
            upstream,
            _ca_dir: ca_dir,
            ca_path: path.display().to_string(),
        }
    }

    /// `[upstream]` at `https://upstream.test:PORT/v1`, trusting the CA, without retries.
    fn config(&self) -> String {
        format!(
            "[upstream]\nbase_url = \"https://{HOST}:{}/v1\"\nmax_retries = 0\nca_file = \"{}\"\n",
            self.upstream.port(),
            self.ca_path
        )
    }

    /// The CONNECT target a proxy sees for it.
    fn target(&self) -> String {
        format!("{HOST}:{}", self.upstream.port())
    }
}

/// The message of an OpenAI-shaped 502 with the code unreachable upstreams have.
fn unreachable_message(answer: &Answer) -> String {
    let error = answer.expect_error(502);
    assert_eq!(error["code"], "upstream_unreachable", "{error}");
    error["message"].as_str().unwrap_or_default().to_string()
}

/// Passthrough, best-of-3 and a streamed best-of-3 all answer 200 through the tunnel, whose
/// connections the client pools.
#[tokio::test]
async fn https_proxy_tunnels_passthrough_best_of_3_and_a_stream() {
    let https = Https::start().await;
    let proxy = ConnectProxy::start(Mode::Accept, &[(HOST, LOOPBACK)]).await;
    let served = serve(&https.config(), &[("HTTPS_PROXY", &proxy.url())]).await;
    let client = served.proxy();

    let plain = post_chat(&client, &[], chat_body("Hi through the proxy")).await;
    plain.expect_ok();
    assert!(plain.content().starts_with("candidate answer"), "{plain:?}");
    // Pooled: a second call, after the first, goes through the same tunnel.
    post_chat(&client, &[], chat_body("Again"))
        .await
        .expect_ok();
    assert_eq!(proxy.connects().len(), 1, "{:?}", proxy.connects());
    let best = post_chat(&client, &[("x-best-of-n", "3")], chat_body("Best of three")).await;
    best.expect_ok();
    assert_eq!(best.header("x-best-of-n"), Some("3"));
    let streamed = post_chat(
        &client,
        &[("x-best-of-n", "3")],
        streaming_chat_body("Stream"),
    )
    .await;
    streamed.expect_ok();
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    assert!(
        streamed.streamed_content().starts_with("candidate answer"),
        "{streamed:?}"
    );

    let calls = https.upstream.calls().len();
    assert_eq!(
        calls,
        2 + 2 * (3 + 1),
        "two passthrough calls, twice 3 candidates and a judge"
    );
    // Credentials, if any, went to the proxy with the CONNECT, never inside the tunnel.
    assert!(https
        .upstream
        .calls()
        .iter()
        .all(|c| !c.headers.contains_key("proxy-authorization")));
    let connects = proxy.connects();
    assert!(
        connects.iter().all(|c| *c == https.target()),
        "{connects:?}"
    );
    assert!(
        !connects.is_empty() && connects.len() <= calls,
        "{} CONNECTs for {calls} calls",
        connects.len()
    );
    assert_eq!(https.upstream.connections(), connects.len());
}

/// With `user:password@` in `HTTPS_PROXY` the proxy gets its Basic credentials; without, the
/// client gets a 502 saying where they go. The password shows in neither log nor answer.
#[tokio::test]
async fn a_proxy_wanting_credentials_gets_them_from_the_url_and_they_never_show() {
    let https = Https::start().await;
    let proxy =
        ConnectProxy::start(Mode::require_auth("user", PASSWORD), &[(HOST, LOOPBACK)]).await;

    let with = serve(
        &https.config(),
        &[("HTTPS_PROXY", &proxy.url_with("user", PASSWORD))],
    )
    .await;
    let answer = post_chat(&with.proxy(), &[], chat_body("Hi")).await;
    answer.expect_ok();
    let expected = Some(basic("user", PASSWORD));
    let seen = proxy.authorizations();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| *a == expected),
        "{seen:?}"
    );
    // The log names the route (so the check below has something to find), never the password.
    let log = with.log();
    assert!(
        log.contains("through the proxy http://***@127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");

    let calls_before = https.upstream.calls().len();
    let without = serve(&https.config(), &[("https_proxy", &proxy.url())]).await;
    let answer = post_chat(&without.proxy(), &[], chat_body("Hi")).await;
    let message = unreachable_message(&answer);
    assert!(message.contains("`upstream.proxy_url`"), "{message}");
    assert!(message.contains("credentials"), "{message}");
    assert!(
        message.contains("http://user:password@host:port"),
        "{message}"
    );
    for text in [&message, &without.log(), &with.log()] {
        assert!(!text.contains(PASSWORD), "{text}");
    }
    assert_eq!(https.upstream.calls().len(), calls_before);
}

/// A proxy that refuses the CONNECT (403): a 502 as for any unreachable upstream, saying the
/// proxy refused and which settings to look at, asked once per call (a refusal is not
/// retried); nothing reached the upstream.
#[tokio::test]
async fn a_proxy_refusing_the_connect_gets_a_502_naming_the_setting() {
    let https = Https::start().await;
    let proxy = ConnectProxy::start(Mode::Refuse, &[(HOST, LOOPBACK)]).await;
    // Retries allowed: a refusal must still be asked once per call, not max_retries + 1 times.
    let toml = https.config().replace("max_retries = 0", "max_retries = 2");
    let served = serve(&toml, &[("HTTPS_PROXY", &proxy.url())]).await;

    let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
    let message = unreachable_message(&answer);
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("`upstream.proxy_url`"), "{message}");
    assert!(
        message.contains("HTTPS_PROXY") && message.contains("NO_PROXY"),
        "{message}"
    );
    let best = post_chat(&served.proxy(), &[("x-best-of-n", "3")], chat_body("Hi")).await;
    best.expect_error(502);

    let connects = proxy.connects();
    assert_eq!(connects.first(), Some(&https.target()));
    assert_eq!(
        connects.len(),
        1 + 3,
        "one CONNECT per call, none retried: {connects:?}"
    );
    assert_eq!(https.upstream.connections(), 0);
}

/// `NO_PROXY` naming the upstream: the proxy sees nothing, and the call goes direct, where
/// `upstream.test` does not resolve.
#[tokio::test]
async fn no_proxy_sends_the_upstream_direct() {
    let https = Https::start().await;
    let proxy = ConnectProxy::start(Mode::Accept, &[(HOST, LOOPBACK)]).await;
    let vars = [
        ("HTTPS_PROXY", proxy.url()),
        ("NO_PROXY", format!("localhost,{HOST}")),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let served = serve(&https.config(), &vars).await;

    let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
    let message = unreachable_message(&answer);
    assert!(message.contains("dns error"), "{message}");
    assert!(!message.contains("proxy_url"), "{message}");
    assert_eq!(proxy.requests(), 0, "{:?}", proxy.connects());
}

/// A plain-http upstream through `HTTP_PROXY`: requests go to the proxy in absolute form with
/// the proxy's credentials (never the client's own `Proxy-Authorization`), and the upstream
/// gets none.
#[tokio::test]
async fn http_proxy_forwards_a_plain_http_upstream_with_its_credentials() {
    let mock = MockUpstream::start().await;
    let port = mock.addr().port();
    let proxy =
        ConnectProxy::start(Mode::require_auth("user", PASSWORD), &[(HOST, LOOPBACK)]).await;
    let toml = format!("[upstream]\nbase_url = \"http://{HOST}:{port}/v1\"\nmax_retries = 0\n");
    let url = proxy.url_with("user", PASSWORD);
    let served = serve(&toml, &[("HTTP_PROXY", &url), ("HTTPS_PROXY", &url)]).await;
    let client = served.proxy();

    let own = [("proxy-authorization", "Basic Y2xpZW50OmNsaWVudA==")];
    post_chat(&client, &own, chat_body("Hi")).await.expect_ok();
    let best = post_chat(&client, &[("x-best-of-n", "3")], chat_body("Best")).await;
    best.expect_ok();

    assert!(proxy.connects().is_empty(), "{:?}", proxy.connects());
    let lines = proxy.forwarded();
    let expected_line = format!("POST http://{HOST}:{port}/v1/chat/completions HTTP/1.1");
    assert_eq!(lines.len(), 1 + 3 + 1, "{lines:?}");
    assert!(lines.iter().all(|l| *l == expected_line), "{lines:?}");
    let expected = Some(basic("user", PASSWORD));
    assert!(proxy.authorizations().iter().all(|a| *a == expected));
    let calls = mock.calls();
    assert_eq!(calls.len(), 1 + 3 + 1);
    // The client's own Proxy-Authorization was dropped (hop by hop): the proxy saw only ours
    // (above). Whatever the proxy passes on is its business.
    for call in &calls {
        let host = call.headers.get("host").and_then(|h| h.to_str().ok());
        assert_eq!(host, Some(format!("{HOST}:{port}").as_str()));
    }
    assert!(!served.log().contains(PASSWORD), "{}", served.log());

    // Without credentials the forward proxy answers 407 itself: that is the proxy's answer,
    // not the upstream's, so the client gets a 502 saying where the credentials go.
    let without = serve(&toml, &[("HTTP_PROXY", &proxy.url())]).await;
    let answer = post_chat(&without.proxy(), &[], chat_body("Hi")).await;
    let message = unreachable_message(&answer);
    assert!(message.contains("407"), "{message}");
    assert!(message.contains("`upstream.proxy_url`"), "{message}");
    let best = post_chat(&without.proxy(), &[("x-best-of-n", "2")], chat_body("Hi")).await;
    assert_eq!(best.status.as_u16(), 502, "{best:?}");
    assert_eq!(
        mock.calls().len(),
        1 + 3 + 1,
        "nothing more reached the upstream"
    );
}

/// An upstream on loopback never goes through the proxy, whatever the environment says: a
/// model server beside the proxy is reached directly.
#[tokio::test]
async fn a_loopback_upstream_goes_direct_despite_the_proxy_variables() {
    let mock = MockUpstream::start().await;
    let proxy = ConnectProxy::start(Mode::Accept, &[]).await;
    let url = proxy.url();
    let vars = [
        ("HTTPS_PROXY", &url),
        ("HTTP_PROXY", &url),
        ("ALL_PROXY", &url),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let localhost = mock.base_url().replace("127.0.0.1", "localhost");
    for base_url in [mock.base_url(), localhost] {
        let toml = format!("[upstream]\nbase_url = \"{base_url}\"\nmax_retries = 0\n");
        let served = serve(&toml, &vars).await;
        post_chat(&served.proxy(), &[], chat_body("Hi"))
            .await
            .expect_ok();
    }
    assert_eq!(proxy.requests(), 0);
    assert_eq!(mock.calls().len(), 2);
}

/// A proxy this one cannot use stops the start, naming the variable and masking the password,
/// rather than letting the calls go direct while the user believes them proxied.
#[test]
fn an_unusable_proxy_variable_stops_the_start_naming_it() {
    let socks = format!("socks5h://user:{PASSWORD}@127.0.0.1:1080");
    let toml = format!("[upstream]\nbase_url = \"https://{HOST}/v1\"\n");
    let serve = command(&toml, &[("HTTPS_PROXY", &socks)]);
    let log = serve
        .try_start()
        .err()
        .expect("the start fails with a SOCKS proxy");
    assert!(
        log.contains("HTTPS_PROXY") && log.contains("SOCKS"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");
}

/// `upstream.proxy_url` instead of the environment: the calls go through it with its
/// credentials, and `check-config` shows the route with the password masked, in its
/// connections list and in the config it prints.
#[tokio::test]
async fn proxy_url_in_the_config_carries_the_calls_and_is_masked_by_check_config() {
    let https = Https::start().await;
    let proxy =
        ConnectProxy::start(Mode::require_auth("user", PASSWORD), &[(HOST, LOOPBACK)]).await;
    let toml = format!(
        "{}proxy_url = \"{}\"\n",
        https.config(),
        proxy.url_with("user", PASSWORD)
    );
    let served = serve(&toml, &[]).await;
    let answer = post_chat(&served.proxy(), &[("x-best-of-n", "2")], chat_body("Hi")).await;
    answer.expect_ok();
    assert_eq!(https.upstream.calls().len(), 2 + 1);
    assert_eq!(proxy.connects().first(), Some(&https.target()));
    assert!(!served.log().contains(PASSWORD), "{}", served.log());

    let dir = tempfile::tempdir().expect("temp dir");
    let checked = common::served::check_config_in(dir.path(), &toml, &[]);
    assert!(checked.ok, "{}", checked.stderr);
    let stdout = checked.stdout;
    let port = proxy
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let route = format!("through the proxy http://***@127.0.0.1:{port} (CONNECT)");
    assert!(stdout.contains(&route), "{stdout}");
    assert!(
        stdout.contains("proxy_url = \"http://***@127.0.0.1:"),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD), "{stdout}");
}

/// A judge with its own https endpoint and its own `proxy_url`: the judge call goes through
/// the proxy while the candidates go straight to the loopback upstream; a judge that inherits
/// `[upstream]`'s `proxy_url` goes through it as well.
#[tokio::test]
async fn a_judge_endpoint_takes_its_own_or_the_inherited_proxy_url() {
    for own in [true, false] {
        let https = Https::start().await;
        let proxy = ConnectProxy::start(Mode::Accept, &[(HOST, LOOPBACK)]).await;
        let mock = MockUpstream::start().await;
        let proxy_line = format!("proxy_url = \"{}\"\n", proxy.url());
        let (upstream_extra, judge_extra) = if own {
            ("", proxy_line.as_str())
        } else {
            (proxy_line.as_str(), "")
        };
        let toml = format!(
            "[upstream]\nbase_url = \"{}\"\nmax_retries = 0\n{upstream_extra}\n\
             [judge]\nbase_url = \"https://{HOST}:{}/v1\"\nca_file = \"{}\"\n\
             fallback = \"error\"\n{judge_extra}",
            mock.base_url(),
            https.upstream.port(),
            https.ca_path
        );
        let served = serve(&toml, &[]).await;
        let answer = post_chat(&served.proxy(), &[("x-best-of-n", "2")], chat_body("Hi")).await;
        answer.expect_ok();
        let judged = https
            .upstream
            .calls()
            .iter()
            .filter(|c| c.is_judge())
            .count();
        assert_eq!(judged, 1, "own proxy_url: {own}; {}", served.log());
        assert_eq!(
            mock.calls().len(),
            2,
            "the candidates went direct (loopback)"
        );
        assert_eq!(proxy.connects(), vec![https.target()]);
    }
}

/// A proxy that accepts the connection and never answers the CONNECT: the call fails after
/// `upstream.connect_timeout`, not after the much longer `upstream.timeout`, with a 502 saying
/// the proxy kept the CONNECT waiting.
#[tokio::test]
async fn a_proxy_that_never_answers_the_connect_fails_after_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a silent proxy");
    let address = silent.local_addr().expect("its address");
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            kept.push(socket);
        }
    });
    let https = Https::start().await;
    let toml = format!(
        "{}connect_timeout = \"1s\"\ntimeout = \"60s\"\nproxy_url = \"http://{address}\"\n",
        https.config()
    );
    let served = serve(&toml, &[]).await;
    let started = std::time::Instant::now();
    let answer = post_chat(&served.proxy(), &[], chat_body("Hi")).await;
    let message = unreachable_message(&answer);
    assert!(message.contains("did not answer the CONNECT"), "{message}");
    assert!(message.contains("`upstream.proxy_url`"), "{message}");
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
    held.abort();
}
