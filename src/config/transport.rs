//! How an endpoint is reached besides its `base_url`: the roots its TLS trusts, the client
//! certificate it presents, and the outbound proxy its calls go through.
//!
//! `[upstream]` sets these keys for the upstream. A `[judge]`, `[judges.NAME]` or `[fuser]`
//! table with its own `base_url` may set them for that endpoint; each one it leaves out is
//! taken from `[upstream]`, except the client certificate, which is presented only where it is
//! configured (as the upstream API key never travels to a judge's host).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::redact::redact_url;

/// Which certificate authorities an endpoint's TLS trusts, before `ca_file` adds its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRoots {
    /// Mozilla's list, compiled into the binary: the same on every host, no CA store needed.
    #[default]
    Webpki,
    /// The host's trust store (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), where a
    /// company CA is often installed already.
    System,
    /// Both of them.
    Both,
}

/// The connection keys one table sets, as written: an empty string (or no `tls_roots`) means
/// the table left the key out.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TransportKeys {
    pub ca_file: String,
    pub tls_roots: Option<TlsRoots>,
    pub client_cert_file: String,
    pub client_key_file: String,
    pub proxy_url: String,
}

/// One endpoint's connection settings, complete: what its HTTP client is built from. Two
/// endpoints with equal settings share one client and its connection pool.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Transport {
    /// A PEM bundle of CA certificates trusted besides `tls_roots`; empty: none.
    pub ca_file: String,
    pub tls_roots: TlsRoots,
    /// The client certificate chain (PEM) presented to an upstream that asks for one (mutual
    /// TLS); empty with `client_key_file`: none.
    pub client_cert_file: String,
    /// The private key (PEM, PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    pub client_key_file: String,
    /// The outbound HTTP proxy (`http://[user:password@]host:port`); empty: the environment's
    /// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`, if any.
    pub proxy_url: String,
    /// Only HTTP/2 (`upstream.http2_only`); another host's endpoint never inherits it, as it
    /// may not speak HTTP/2.
    pub http2_only: bool,
}

// Written out so that a proxy URL's credentials never reach a log line through `{:?}`.
impl std::fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (cert, key) = (&self.client_cert_file, &self.client_key_file);
        let roots: &dyn std::fmt::Debug = &self.tls_roots;
        let mut out = f.debug_struct("TransportKeys");
        debug_fields(&mut out, &self.ca_file, roots, cert, key, &self.proxy_url);
        out.finish()
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (cert, key) = (&self.client_cert_file, &self.client_key_file);
        let roots: &dyn std::fmt::Debug = &self.tls_roots;
        let mut out = f.debug_struct("Transport");
        debug_fields(&mut out, &self.ca_file, roots, cert, key, &self.proxy_url);
        out.field("http2_only", &self.http2_only).finish()
    }
}

/// The five keys as `Debug` fields, the proxy URL's credentials masked.
fn debug_fields(
    out: &mut std::fmt::DebugStruct<'_, '_>,
    ca_file: &str,
    tls_roots: &dyn std::fmt::Debug,
    client_cert_file: &str,
    client_key_file: &str,
    proxy_url: &str,
) {
    out.field("ca_file", &ca_file)
        .field("tls_roots", tls_roots)
        .field("client_cert_file", &client_cert_file)
        .field("client_key_file", &client_key_file)
        .field("proxy_url", &redact_url(proxy_url));
}

impl TransportKeys {
    /// True when the table sets none of the keys.
    pub fn is_empty(&self) -> bool {
        *self == TransportKeys::default()
    }

    /// These keys as a whole transport, the ones left out taken from `inherited` (the
    /// upstream's), except the client certificate, which is never inherited.
    pub fn over(&self, inherited: &Transport) -> Transport {
        let or = |own: &str, theirs: &str| if own.is_empty() { theirs } else { own }.to_string();
        Transport {
            ca_file: or(&self.ca_file, &inherited.ca_file),
            tls_roots: self.tls_roots.unwrap_or(inherited.tls_roots),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            proxy_url: or(&self.proxy_url, &inherited.proxy_url),
            http2_only: false,
        }
    }

    /// Checks what can be checked without reading a file: the certificate and its key come
    /// together, and a table without its own endpoint sets none of them. `table` is where the
    /// keys live (`upstream`, `judges.NAME`, `fuser`); `own_endpoint` whether it has a
    /// `base_url` (always true for `[upstream]`).
    pub(super) fn validate(&self, table: &str, own_endpoint: bool) -> Result<(), ConfigError> {
        if !own_endpoint && !self.is_empty() {
            return Err(ConfigError(format!(
                "`{table}`: sets connection keys (ca_file, tls_roots, client_cert_file, \
                 client_key_file, proxy_url) but no `{table}.base_url`, so its calls go to the \
                 upstream with `[upstream]`'s settings; set `{table}.base_url`, or move the keys \
                 to `[upstream]`"
            )));
        }
        let (cert, key) = (&self.client_cert_file, &self.client_key_file);
        if cert.is_empty() != key.is_empty() {
            let (set, missing) = if cert.is_empty() {
                ("client_key_file", "client_cert_file")
            } else {
                ("client_cert_file", "client_key_file")
            };
            return Err(ConfigError(format!(
                "`{table}.{set}` is set without `{table}.{missing}`: mutual TLS needs both the \
                 certificate (PEM) and its private key (PEM)"
            )));
        }
        Ok(())
    }
}

/// Makes the relative file paths among `paths` relative to the config file's directory, as the
/// other file keys are: the proxy may be started from anywhere.
pub(super) fn resolve_files<const N: usize>(paths: [&mut String; N], base: &Path) {
    for path in paths {
        if !path.is_empty() && Path::new(path.as_str()).is_relative() {
            *path = base.join(path.as_str()).display().to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ca: &str, roots: Option<TlsRoots>, cert: &str, proxy: &str) -> TransportKeys {
        TransportKeys {
            ca_file: ca.into(),
            tls_roots: roots,
            client_cert_file: cert.into(),
            client_key_file: if cert.is_empty() { "" } else { "key.pem" }.into(),
            proxy_url: proxy.into(),
        }
    }

    #[test]
    fn a_judge_inherits_all_but_the_client_certificate() {
        let upstream = keys("/ca.pem", Some(TlsRoots::Both), "/me.pem", "http://p:3128")
            .over(&Transport::default());
        assert_eq!(upstream.client_cert_file, "/me.pem");
        let judge = TransportKeys::default().over(&upstream);
        assert_eq!(judge.ca_file, "/ca.pem");
        assert_eq!(judge.tls_roots, TlsRoots::Both);
        assert_eq!(judge.proxy_url, "http://p:3128");
        assert!(judge.client_cert_file.is_empty() && judge.client_key_file.is_empty());
        let own = keys("/judge-ca.pem", Some(TlsRoots::Webpki), "", "").over(&upstream);
        assert_eq!(own.ca_file, "/judge-ca.pem");
        assert_eq!(own.tls_roots, TlsRoots::Webpki);
        assert_eq!(own.proxy_url, "http://p:3128");
    }

    #[test]
    fn a_certificate_needs_its_key_and_keys_need_an_endpoint() {
        let mut half = keys("", None, "/me.pem", "");
        half.client_key_file.clear();
        let err = half.validate("upstream", true).unwrap_err();
        assert!(
            err.0
                .contains("`upstream.client_cert_file` is set without `upstream.client_key_file`"),
            "{err}"
        );
        let err = keys("/ca.pem", None, "", "")
            .validate("judges.rm", false)
            .unwrap_err();
        assert!(err.0.contains("`judges.rm.base_url`"), "{err}");
        assert!(TransportKeys::default().validate("fuser", false).is_ok());
        assert!(keys("/ca.pem", None, "/me.pem", "")
            .validate("fuser", true)
            .is_ok());
    }

    #[test]
    fn debug_never_shows_a_proxy_password() {
        let keys = keys("", None, "", "http://u:hunter2-secret@p:3128");
        let transport = keys.over(&Transport::default());
        for text in [format!("{keys:?}"), format!("{transport:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("http://***@p:3128"), "{text}");
        }
    }

    #[test]
    fn relative_files_are_read_beside_the_config_file() {
        let (mut ca, mut cert, mut absolute) =
            ("ca.pem".into(), "certs/me.pem".into(), "/k".into());
        resolve_files([&mut ca, &mut cert, &mut absolute], Path::new("/etc/bon"));
        assert_eq!(ca, "/etc/bon/ca.pem");
        assert_eq!(cert, "/etc/bon/certs/me.pem");
        assert_eq!(absolute, "/k");
    }
}
