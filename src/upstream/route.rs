//! How an upstream endpoint's calls travel: straight to it, or through an outbound HTTP proxy
//! for hosts that reach their model only through an egress proxy.
//!
//! Every endpoint has one fixed base URL, so the way is decided once, at start, per endpoint
//! ([`Route::for_endpoint`]), from its `proxy_url` key or else the environment variables curl
//! and Go read (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, either case). An https
//! upstream is reached through a CONNECT tunnel (hyper-util's [`Tunnel`]; TLS then runs inside
//! it, end to end); a plain-http one is sent to the proxy in absolute form, the classic forward
//! proxy. The client's connector that does either is in `connector`.
//!
//! Proxy credentials (`http://user:password@host:port`) become a `Proxy-Authorization` header
//! and nothing else: `Debug`, [`Route::describe`] and every error message mask them.

use std::error::Error as StdError;
use std::net::IpAddr;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use http::header::HeaderValue;
use http::uri::Scheme;
use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;

use crate::redact::redact_url;

/// How one endpoint's calls travel. Equal routes can share a client (and its pool).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight to the endpoint.
    Direct,
    /// An https endpoint, through a CONNECT tunnel opened by `proxy` (with `auth` as its
    /// `Proxy-Authorization`).
    Tunnel {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
    /// A plain-http endpoint: each request goes to `proxy` in absolute form, `auth` as a
    /// `Proxy-Authorization` header on it.
    Forward {
        proxy: Uri,
        auth: Option<HeaderValue>,
    },
}

impl Route {
    /// The route to `base_url`: through `proxy_url` when it is set (`NO_PROXY` still honoured),
    /// else as the environment says. `key_prefix` is the config table whose `proxy_url` the
    /// messages name (`upstream`, `judges.rm`, `fuser`).
    pub(crate) fn for_endpoint(
        base_url: &str,
        proxy_url: &str,
        key_prefix: &str,
    ) -> Result<Route, RouteError> {
        Route::resolve(base_url, proxy_url, key_prefix, |name| {
            std::env::var(name).ok()
        })
    }

    /// [`Route::for_endpoint`] with the environment read through `env`, so tests need not
    /// change the process's own.
    fn resolve(
        base_url: &str,
        proxy_url: &str,
        key_prefix: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Route, RouteError> {
        // A base URL that does not parse is reported, with its key, when the endpoint is built.
        let Ok(destination) = base_url.trim().parse::<Uri>() else {
            return Ok(Route::Direct);
        };
        let https = destination.scheme() == Some(&Scheme::HTTPS);
        let Some(setting) = Setting::choose(proxy_url, key_prefix, https, &env) else {
            return Ok(Route::Direct);
        };
        // A key the user wrote is checked whether or not this endpoint uses it; a variable of
        // the environment (set for other tools too) only when it is used.
        if setting.from_config {
            setting.check()?;
        }
        // As Go's net/http does for proxies from the environment: a model server beside the
        // proxy must never go through a corporate egress proxy.
        match destination.host() {
            Some(host) if !is_loopback(host) => {}
            _ => return Ok(Route::Direct),
        }
        let no_proxy = first_set(&env, &["NO_PROXY", "no_proxy"]).map(|(_, value)| value);
        if exempt(&destination, &no_proxy.unwrap_or_default()) {
            return Ok(Route::Direct);
        }
        setting.check()?;
        Ok(setting.route(&destination, https))
    }

    /// True for a plain-http endpoint reached through a forward proxy.
    pub(crate) fn is_forward(&self) -> bool {
        matches!(self, Route::Forward { .. })
    }

    /// The header a forward proxy wants on each request; `None` for a tunnel, which sends it
    /// once, with the CONNECT.
    pub(crate) fn proxy_authorization(&self) -> Option<&HeaderValue> {
        match self {
            Route::Forward { auth, .. } => auth.as_ref(),
            _ => None,
        }
    }

    /// The route in words, credentials masked: for `check-config` and the start-up log.
    pub(crate) fn describe(&self) -> String {
        match self {
            Route::Direct => "direct".to_string(),
            Route::Tunnel { proxy, auth } => {
                format!("through the proxy {} (CONNECT)", shown(proxy, auth))
            }
            Route::Forward { proxy, auth } => {
                format!("through the proxy {} (forwarded)", shown(proxy, auth))
            }
        }
    }

    /// The proxy's password and the `Proxy-Authorization` token that carries it, for the
    /// [`Redactor`](crate::redact::Redactor): upstream text echoing either is hidden.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let (Route::Tunnel { auth, .. } | Route::Forward { auth, .. }) = self else {
            return Vec::new();
        };
        let Some(token) = auth
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return Vec::new();
        };
        let mut secrets = vec![token.to_string()];
        secrets.extend(password(token));
        secrets
    }
}

/// Shortest proxy password hidden on its own in upstream text: a shorter one (`proxy`, `abc`)
/// is an ordinary word, and hiding it would garble every error quoted to a client. The Basic
/// token that carries it is hidden whatever its length.
const MIN_HIDDEN_PASSWORD: usize = 8;

/// The password in a Basic token (`base64(user:password)`), when it is long enough to hide.
fn password(token: &str) -> Option<String> {
    let decoded = String::from_utf8(BASE64_STANDARD.decode(token).ok()?).ok()?;
    let (_, password) = decoded.split_once(':')?;
    (password.len() >= MIN_HIDDEN_PASSWORD).then(|| password.to_string())
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            Route::Tunnel { proxy, auth } => f
                .debug_struct("Tunnel")
                .field("proxy", &shown(proxy, auth))
                .finish(),
            Route::Forward { proxy, auth } => f
                .debug_struct("Forward")
                .field("proxy", &shown(proxy, auth))
                .finish(),
        }
    }
}

/// `http://host:port`, with `***@` standing for credentials when there are some. Built from
/// the host and port, never from the authority's text, which holds the credentials.
fn shown(proxy: &Uri, auth: &Option<HeaderValue>) -> String {
    let credentials = if auth.is_some() { "***@" } else { "" };
    let host = proxy.host().unwrap_or_default();
    let port = proxy
        .port_u16()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!("http://{credentials}{host}{port}")
}

/// True for `localhost` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// True when `no_proxy` (NO_PROXY's list) names `destination`'s host. The matcher answers
/// that only together with a proxy, so it is given one that always parses.
fn exempt(destination: &Uri, no_proxy: &str) -> bool {
    let matcher = Matcher::builder()
        .all("http://exempt.invalid:1")
        .no(without_ports(no_proxy))
        .build();
    matcher.intercept(destination).is_none()
}

/// NO_PROXY's entries as hyper-util's matcher reads them: it takes `host:8443` and
/// `[fd00::1]` for domain names that never match, where curl and Go match the host (for any
/// port) and the address.
fn without_ports(no_proxy: &str) -> String {
    let entries = no_proxy.split(',').map(|entry| {
        let entry = entry.trim();
        if let Some(inside) = entry.strip_prefix('[') {
            return inside.split(']').next().unwrap_or_default();
        }
        match entry.rsplit_once(':') {
            Some((host, port))
                if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) =>
            {
                host
            }
            _ => entry,
        }
    });
    entries.collect::<Vec<_>>().join(",")
}

/// The value of the first of `names` that is set and not blank, as Go reads these variables.
fn first_set(
    env: &impl Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names.iter().find_map(|name| {
        let value = env(name)?.trim().to_string();
        (!value.is_empty()).then_some((*name, value))
    })
}

/// The proxy URL that applies to one endpoint, and where it was set.
struct Setting {
    /// How messages name it: `` `upstream.proxy_url` `` or `the environment variable X`.
    source: String,
    value: String,
    /// Written in the config (`proxy_url`), not read from the environment.
    from_config: bool,
}

impl Setting {
    /// `proxy_url` when set; else `HTTPS_PROXY` (https) or `HTTP_PROXY` (http), then
    /// `ALL_PROXY`.
    fn choose(
        proxy_url: &str,
        key_prefix: &str,
        https: bool,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Option<Setting> {
        if !proxy_url.trim().is_empty() {
            return Some(Setting {
                source: format!("`{key_prefix}.proxy_url`"),
                value: proxy_url.trim().to_string(),
                from_config: true,
            });
        }
        let names = if https {
            ["HTTPS_PROXY", "https_proxy"]
        } else {
            ["HTTP_PROXY", "http_proxy"]
        };
        let (name, value) =
            first_set(env, &names).or_else(|| first_set(env, &["ALL_PROXY", "all_proxy"]))?;
        Some(Setting {
            source: format!("the environment variable {name}"),
            value,
            from_config: false,
        })
    }

    /// Refuses what this connector cannot use. The matcher would pass over an unusable value
    /// in silence, and the calls would go direct while the user believes them proxied.
    fn check(&self) -> Result<(), RouteError> {
        let error = |variant: fn(Named) -> RouteError| {
            variant(Named {
                setting: self.source.clone(),
                value: redact_url(&self.value),
            })
        };
        // http would take the last `@` as the end of the credentials, hyper-util the first:
        // an unencoded `@` in a password would send part of it as the user name.
        let authority_text = self
            .value
            .split_once("://")
            .map_or(&*self.value, |(_, r)| r);
        let authority_text = authority_text
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if authority_text.matches('@').count() > 1 {
            return Err(error(RouteError::NotAUrl));
        }
        let uri: Uri = self.value.parse().map_err(|_| error(RouteError::NotAUrl))?;
        match uri.scheme_str() {
            // Without a scheme it is `http`, as for curl and Go.
            None | Some("http") => {}
            Some("https") => return Err(error(RouteError::HttpsProxy)),
            Some(scheme) if scheme.starts_with("socks") => return Err(error(RouteError::Socks)),
            Some(_) => return Err(error(RouteError::OtherScheme)),
        }
        let authority = uri.authority().ok_or_else(|| error(RouteError::NotAUrl))?;
        if authority.host().is_empty() {
            return Err(error(RouteError::NotAUrl));
        }
        // Tools disagree on a proxy's default port (curl 1080, Go 80): it must be written.
        if authority.port_u16().is_none() {
            return Err(error(RouteError::NoPort));
        }
        Ok(())
    }

    /// The way through this (checked) proxy to `destination`: hyper-util's matcher parses it,
    /// credentials included.
    fn route(self, destination: &Uri, https: bool) -> Route {
        let matcher = Matcher::builder().all(self.value).build();
        let Some(intercept) = matcher.intercept(destination) else {
            return Route::Direct;
        };
        let (proxy, auth) = (intercept.uri().clone(), intercept.basic_auth().cloned());
        if https {
            Route::Tunnel { proxy, auth }
        } else {
            Route::Forward { proxy, auth }
        }
    }
}

/// A proxy setting this proxy cannot use: which setting, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteError {
    NotAUrl(Named),
    /// `https://`: TLS to the proxy itself.
    HttpsProxy(Named),
    /// `socks4://`, `socks5h://` and the like.
    Socks(Named),
    OtherScheme(Named),
    NoPort(Named),
}

/// The setting a [`RouteError`] is about, as its message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named {
    /// `` `upstream.proxy_url` `` or `the environment variable HTTPS_PROXY`.
    setting: String,
    /// Its value, credentials masked.
    value: String,
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (named, what) = match self {
            RouteError::NotAUrl(named) => (
                named,
                "which is not a proxy URL: write it as `http://host:port`, or \
                 `http://user:password@host:port` when the proxy wants credentials \
                 (percent-encode `@`, `:`, `/` and `#` in them)",
            ),
            RouteError::HttpsProxy(named) => (
                named,
                "an https:// proxy, which this proxy cannot speak TLS to: use the proxy's \
                 plain-HTTP address, `http://host:port` (calls to an https upstream stay \
                 encrypted end to end inside the CONNECT tunnel)",
            ),
            RouteError::Socks(named) => (
                named,
                "a SOCKS proxy, which is not supported: use an HTTP proxy that allows \
                 CONNECT, `http://host:port`, or add the upstream's host to NO_PROXY",
            ),
            RouteError::OtherScheme(named) => (
                named,
                "whose scheme is not that of an HTTP proxy: write it as `http://host:port`",
            ),
            RouteError::NoPort(named) => (
                named,
                "which has no port: write the proxy's port in, e.g. `http://host:3128` (tools \
                 disagree on the default)",
            ),
        };
        write!(f, "{} holds `{}`, {what}.", named.setting, named.value)
    }
}

impl StdError for RouteError {}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pa55-w0rd-secret";

    /// The route to `base_url` in an environment holding only `vars`.
    fn route(base_url: &str, proxy_url: &str, vars: &[(&str, &str)]) -> Result<Route, RouteError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Route::resolve(base_url, proxy_url, "judges.rm", move |name| {
            vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        })
    }

    fn proxy_of(route: &Route) -> String {
        match route {
            Route::Tunnel { proxy, .. } | Route::Forward { proxy, .. } => {
                proxy.authority().map(|a| a.to_string()).unwrap_or_default()
            }
            Route::Direct => "direct".to_string(),
        }
    }

    #[test]
    fn without_settings_every_call_goes_direct() {
        let direct = route("https://api.openai.com/v1", "", &[]).unwrap();
        assert!(matches!(direct, Route::Direct));
        assert_eq!(direct.describe(), "direct");
        assert!(direct.proxy_authorization().is_none() && direct.secrets().is_empty());
    }

    #[test]
    fn https_tunnels_and_http_forwards() {
        let vars = [
            ("HTTPS_PROXY", "http://tls:3128"),
            ("HTTP_PROXY", "http://plain:8080"),
        ];
        let https = route("https://api.openai.com/v1", "", &vars).unwrap();
        assert!(matches!(https, Route::Tunnel { .. }), "{https:?}");
        assert_eq!(proxy_of(&https), "tls:3128");
        assert_eq!(
            https.describe(),
            "through the proxy http://tls:3128 (CONNECT)"
        );
        let http = route("http://models.internal:8000/v1", "", &vars).unwrap();
        assert!(matches!(http, Route::Forward { .. }), "{http:?}");
        assert_eq!(proxy_of(&http), "plain:8080");
        assert_eq!(
            http.describe(),
            "through the proxy http://plain:8080 (forwarded)"
        );
    }

    #[test]
    fn environment_variables_are_read_as_go_reads_them() {
        let https = "https://api.openai.com/v1";
        let lower = route(https, "", &[("https_proxy", "http://lower:1")]).unwrap();
        assert_eq!(proxy_of(&lower), "lower:1");
        let both = [
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:1"),
        ];
        assert_eq!(proxy_of(&route(https, "", &both).unwrap()), "upper:1");
        // A blank variable counts as unset.
        let blank = [("HTTPS_PROXY", " "), ("https_proxy", "http://lower:1")];
        assert_eq!(proxy_of(&route(https, "", &blank).unwrap()), "lower:1");
        let all = [
            ("ALL_PROXY", "http://all:1"),
            ("HTTP_PROXY", "http://plain:1"),
        ];
        assert_eq!(proxy_of(&route(https, "", &all).unwrap()), "all:1");
        let only_http = [("HTTP_PROXY", "http://plain:1")];
        assert!(matches!(
            route(https, "", &only_http).unwrap(),
            Route::Direct
        ));
        let schemeless = [("HTTPS_PROXY", "proxy.corp:3128")];
        assert_eq!(
            proxy_of(&route(https, "", &schemeless).unwrap()),
            "proxy.corp:3128"
        );
    }

    #[test]
    fn proxy_url_serves_both_schemes_over_the_environment() {
        let vars = [
            ("HTTPS_PROXY", "http://env:1"),
            ("HTTP_PROXY", "http://env:2"),
        ];
        let key = "http://key:3128";
        let https = route("https://api.openai.com/v1", key, &vars).unwrap();
        assert!(matches!(https, Route::Tunnel { .. }));
        assert_eq!(proxy_of(&https), "key:3128");
        let http = route("http://models.internal/v1", key, &vars).unwrap();
        assert!(matches!(http, Route::Forward { .. }));
        assert_eq!(proxy_of(&http), "key:3128");
    }

    #[test]
    fn loopback_destinations_are_always_direct() {
        let vars = [("ALL_PROXY", "http://p:1"), ("HTTPS_PROXY", "http://p:1")];
        for base in [
            "http://localhost:8000/v1",
            "https://LOCALHOST./v1",
            "http://127.0.0.1:8000/v1",
            "https://127.3.4.5/v1",
            "http://[::1]:8000/v1",
            "http://[::ffff:127.0.0.1]:8000/v1",
        ] {
            let direct = route(base, "http://p:1", &vars).unwrap();
            assert!(matches!(direct, Route::Direct), "{base}: {direct:?}");
        }
        let near = route("http://localhost.example.com/v1", "http://p:1", &[]).unwrap();
        assert!(matches!(near, Route::Forward { .. }));
    }

    #[test]
    fn no_proxy_bypasses_the_proxy_also_for_proxy_url() {
        let vars = [
            ("HTTPS_PROXY", "http://p:1"),
            ("no_proxy", "internal.corp, 10.0.0.0/8"),
        ];
        for base in ["https://models.internal.corp/v1", "https://10.1.2.3/v1"] {
            assert!(matches!(route(base, "", &vars).unwrap(), Route::Direct));
            assert!(matches!(
                route(base, "http://key:2", &vars).unwrap(),
                Route::Direct
            ));
        }
        let outside = route("https://api.openai.com/v1", "", &vars).unwrap();
        assert!(matches!(outside, Route::Tunnel { .. }));
        let everything = [("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")];
        let none = route("https://api.openai.com/v1", "", &everything).unwrap();
        assert!(matches!(none, Route::Direct));
    }

    fn kind(error: &RouteError) -> &'static str {
        match error {
            RouteError::NotAUrl(_) => "not a URL",
            RouteError::HttpsProxy(_) => "https",
            RouteError::Socks(_) => "socks",
            RouteError::OtherScheme(_) => "other scheme",
            RouteError::NoPort(_) => "no port",
        }
    }

    #[test]
    fn unusable_proxy_urls_are_refused_naming_the_setting() {
        let cases = [
            ("https://p:3128", "https"),
            ("socks5h://p:1080", "socks"),
            ("socks4://p:1080", "socks"),
            ("ftp://p:21", "other scheme"),
            ("http://p", "no port"),
            ("http://", "not a URL"),
            ("http://exa mple:1", "not a URL"),
        ];
        let https = "https://api.openai.com/v1";
        for (value, expected) in cases {
            let err = route(https, value, &[]).unwrap_err();
            assert_eq!(kind(&err), expected, "{value}: {err}");
            assert!(err.to_string().contains("`judges.rm.proxy_url`"), "{err}");
            let err = route(https, "", &[("https_proxy", value)]).unwrap_err();
            assert_eq!(kind(&err), expected, "{value}: {err}");
            assert!(
                err.to_string()
                    .contains("the environment variable https_proxy"),
                "{err}"
            );
        }
        let err = route(https, "", &[("ALL_PROXY", "socks5://p:1")]).unwrap_err();
        assert!(err.to_string().contains("ALL_PROXY"), "{err}");
        let exempt = [("ALL_PROXY", "socks5://p:1"), ("NO_PROXY", "openai.com")];
        assert!(matches!(route(https, "", &exempt), Ok(Route::Direct)));
        // A setting that does not apply to this endpoint is not judged.
        let http_only = [("HTTP_PROXY", "socks5://p:1")];
        assert!(route(https, "", &http_only).is_ok());
    }

    #[test]
    fn credentials_become_a_header_and_are_never_shown() {
        let url = format!("http://alice:{PASSWORD}@proxy.corp:3128");
        let tunnel = route("https://api.openai.com/v1", &url, &[]).unwrap();
        let forward = route("http://models.internal/v1", &url, &[]).unwrap();
        let expected = format!("alice:{PASSWORD}");
        let expected = format!("Basic {}", BASE64_STANDARD.encode(expected));
        assert!(
            tunnel.proxy_authorization().is_none(),
            "sent with the CONNECT"
        );
        assert_eq!(
            forward.proxy_authorization().map(|v| v.to_str().unwrap()),
            Some(expected.as_str())
        );
        for route in [&tunnel, &forward] {
            let (debug, described) = (format!("{route:?}"), route.describe());
            for text in [&debug, &described] {
                assert!(
                    !text.contains(PASSWORD) && !text.contains("alice"),
                    "{text}"
                );
                assert!(text.contains("http://***@proxy.corp:3128"), "{text}");
            }
            let token = expected.trim_start_matches("Basic ").to_string();
            assert_eq!(route.secrets(), vec![token, PASSWORD.to_string()]);
        }
    }

    #[test]
    fn percent_encoded_credentials_are_decoded() {
        let tunnel = route(
            "https://api.openai.com/v1",
            "http://bob:p%40ss%3Aword@p:3128",
            &[],
        )
        .unwrap();
        assert!(tunnel.secrets().contains(&"p@ss:word".to_string()));
    }

    #[test]
    fn refusals_mask_credentials() {
        for value in [
            format!("https://alice:{PASSWORD}@p:3128"),
            format!("socks5://alice:{PASSWORD}@p:1080"),
            format!("http://alice:{PASSWORD}@p"),
            format!("http://alice:pa#ss/{PASSWORD}@p:3128"),
            format!("alice:{PASSWORD}@p"),
        ] {
            let err =
                route("https://api.openai.com/v1", "", &[("HTTPS_PROXY", &value)]).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains(PASSWORD) && !text.contains("alice"),
                "{text}"
            );
            assert!(text.contains("***@p"), "{text}");
        }
    }

    #[test]
    fn a_bad_proxy_url_key_is_refused_even_where_it_would_not_be_used() {
        for base_url in ["http://127.0.0.1:8000/v1", "https://api.example.com/v1"] {
            let vars = [("NO_PROXY", "api.example.com")];
            let error = route(base_url, "socks5://p:1080", &vars).unwrap_err();
            assert_eq!(kind(&error), "socks", "{base_url}");
            assert!(
                error.to_string().contains("`judges.rm.proxy_url`"),
                "{error}"
            );
        }
        // A variable set for other tools is judged only where it is used.
        let vars = [("HTTPS_PROXY", "socks5://p:1080")];
        let loopback = route("https://localhost:8443/v1", "", &vars).unwrap();
        assert_eq!(loopback, Route::Direct);
    }

    #[test]
    fn an_unencoded_at_in_a_password_is_refused_and_never_shown() {
        let error = route(
            "https://api.example.com/v1",
            "http://alice:p@ss-w0rd@proxy:3128",
            &[],
        )
        .unwrap_err();
        assert_eq!(kind(&error), "not a URL");
        let text = error.to_string();
        assert!(!text.contains("p@ss") && !text.contains("w0rd"), "{text}");
        assert!(text.contains("percent-encode"), "{text}");
    }

    #[test]
    fn no_proxy_entries_with_ports_and_bracketed_addresses_match() {
        let via = [("HTTPS_PROXY", "http://p:3128")];
        for (no_proxy, base_url) in [
            ("api.example.com:8443", "https://api.example.com:8443/v1"),
            ("[fd00::1]", "https://[fd00::1]:8443/v1"),
            ("fd00::1", "https://[fd00::1]/v1"),
            ("10.0.0.0/8", "https://10.1.2.3/v1"),
        ] {
            let vars = [via[0], ("NO_PROXY", no_proxy)];
            assert_eq!(
                route(base_url, "", &vars).unwrap(),
                Route::Direct,
                "{no_proxy}"
            );
        }
        let ipv6 = route("https://[fd00::1]:8443/v1", "", &via).unwrap();
        assert!(matches!(ipv6, Route::Tunnel { .. }), "{ipv6:?}");
    }

    #[test]
    fn a_short_password_is_not_hidden_on_its_own_but_its_token_is() {
        let short = route("http://api.example.com/v1", "http://u:abc@p:3128", &[]).unwrap();
        let secrets = short.secrets();
        assert_eq!(secrets.len(), 1, "{secrets:?}");
        assert_eq!(secrets[0], BASE64_STANDARD.encode("u:abc"));
        let long = route(
            "http://api.example.com/v1",
            "http://u:long-enough@p:3128",
            &[],
        );
        assert!(long.unwrap().secrets().contains(&"long-enough".to_string()));
    }
}
