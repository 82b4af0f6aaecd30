//! The TLS side of an endpoint's client: which roots it trusts, which certificate it presents,
//! with which crypto provider.
//!
//! The roots are the bundled webpki ones (Mozilla's list, compiled in, so the proxy needs no CA
//! store on its host), the host's store, or both (`tls_roots`); `ca_file` adds the certificates
//! of a PEM bundle, for a private upstream whose chain ends in a private CA. `client_cert_file`
//! and `client_key_file` are presented to an upstream that asks for a client certificate. Every
//! file is read once, when the client is built at start, so a missing or malformed one stops
//! the start (and `check-config`) with the key and the path, rather than failing every call
//! later as an unknown issuer or a refused handshake.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::chain;
use crate::config::{TlsRoots, Transport};

/// Why an endpoint's TLS could not be set up. `key` is the config key that names the file
/// (`upstream.ca_file`, `judges.rm.client_key_file`, ...).
#[derive(Debug)]
pub enum TlsSetupError {
    /// A file cannot be opened or read.
    Unreadable {
        key: String,
        path: String,
        error: std::io::Error,
    },
    /// It holds no PEM certificate section.
    NoCertificate { key: String, path: String },
    /// A certificate section (`index` counts from 1) whose PEM or DER does not parse.
    BadCertificate {
        key: String,
        path: String,
        index: usize,
        why: String,
    },
    /// `client_key_file` holds no usable private key.
    BadKey {
        key: String,
        path: String,
        why: String,
    },
    /// The private key is not the one of the client certificate.
    KeyMismatch { cert: String, key: String },
    /// `tls_roots` names the host's store, and it holds no certificate.
    NoSystemRoots { key: String, why: String },
    /// The crypto provider refused the default protocol versions (not expected with ring).
    Provider(rustls::Error),
}

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSetupError::Unreadable { key, path, error } => write!(
                f,
                "`{key}`: cannot read {path}: {error}. Point it at a readable PEM file, or \
                 remove the key."
            ),
            TlsSetupError::NoCertificate { key, path } => write!(
                f,
                "`{key}`: {path} holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` \
                 section). It must hold the certificates PEM-encoded; a DER file converts with \
                 `openssl x509 -inform der -in cert.der -out cert.pem`."
            ),
            TlsSetupError::BadCertificate {
                key,
                path,
                index,
                why,
            } => write!(
                f,
                "`{key}`: certificate {index} in {path} does not parse: {why}. Replace it with \
                 the certificate, PEM-encoded, or remove it from the file."
            ),
            TlsSetupError::BadKey { key, path, why } => write!(
                f,
                "`{key}`: {path} holds no usable private key: {why}. It must hold the client \
                 certificate's private key, PEM-encoded (`-----BEGIN PRIVATE KEY-----`, \
                 `RSA PRIVATE KEY` or `EC PRIVATE KEY`), unencrypted."
            ),
            TlsSetupError::KeyMismatch { cert, key } => write!(
                f,
                "`{key}` is not the private key of the certificate in `{cert}`: name the key \
                 the certificate was issued for (compare `openssl x509 -noout -pubkey -in \
                 CERT` with `openssl pkey -pubout -in KEY`)."
            ),
            TlsSetupError::NoSystemRoots { key, why } => write!(
                f,
                "`{key}` asks for the host's trust store, and none was found ({why}). Install \
                 the CA certificates package (Debian: `ca-certificates`), point SSL_CERT_FILE \
                 at a PEM bundle, or use `webpki`."
            ),
            TlsSetupError::Provider(error) => {
                write!(f, "the TLS provider refused its protocol versions: {error}")
            }
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// The rustls client config of an endpoint whose keys live in `table` (`upstream`,
/// `judges.rm`, ...): ring, the default protocol versions, the roots `transport` asks for,
/// and its client certificate when it has one. ALPN stays empty: hyper-rustls sets h2 and
/// http/1.1 itself and refuses a config that already has protocols. The second value says
/// what it trusts and presents, for `check-config`.
pub(super) fn client_config(
    transport: &Transport,
    table: &str,
) -> Result<(ClientConfig, String), TlsSetupError> {
    let (roots, mut summary) = trusted_roots(transport, table)?;
    // The provider is named explicitly: another crate in the build may enable a second one,
    // and rustls refuses to guess between two.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Provider)?
        .with_root_certificates(roots);
    if transport.client_cert_file.is_empty() {
        return Ok((builder.with_no_client_auth(), summary));
    }
    let cert_key = format!("{table}.client_cert_file");
    let key_key = format!("{table}.client_key_file");
    let chain = read_certificates(&cert_key, &transport.client_cert_file)?;
    let key = read_private_key(&key_key, &transport.client_key_file)?;
    let config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => TlsSetupError::KeyMismatch {
                cert: cert_key,
                key: key_key.clone(),
            },
            other => TlsSetupError::BadKey {
                key: key_key.clone(),
                path: transport.client_key_file.clone(),
                why: other.to_string(),
            },
        })?;
    summary.push_str(&format!(
        "; presents the client certificate in {}",
        transport.client_cert_file
    ));
    Ok((config, summary))
}

/// The roots `transport` trusts, and how they read in `check-config`.
fn trusted_roots(
    transport: &Transport,
    table: &str,
) -> Result<(RootCertStore, String), TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let mut parts = Vec::new();
    if matches!(transport.tls_roots, TlsRoots::Webpki | TlsRoots::Both) {
        roots
            .roots
            .extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        parts.push("the bundled webpki roots".to_string());
    }
    if matches!(transport.tls_roots, TlsRoots::System | TlsRoots::Both) {
        let added = add_system_roots(&mut roots, &format!("{table}.tls_roots"))?;
        parts.push(format!("the host's store ({added} certificates)"));
    }
    if !transport.ca_file.is_empty() {
        let key = format!("{table}.ca_file");
        let added = read_ca_file(&key, &transport.ca_file)?;
        let plural = if added.len() == 1 { "" } else { "s" };
        parts.push(format!(
            "{} ({} certificate{plural})",
            transport.ca_file,
            added.len()
        ));
        roots.roots.extend(added.roots);
    }
    Ok((roots, format!("trusts {}", parts.join(" + "))))
}

/// Adds the host's trust store (rustls-native-certs: `SSL_CERT_FILE` / `SSL_CERT_DIR` when
/// set, else the platform's store) and says how many certificates it held. A store often holds
/// a certificate webpki cannot use (an old one, a non-CA); those are passed over, as every TLS
/// client does, but a store with none usable stops the start.
fn add_system_roots(roots: &mut RootCertStore, key: &str) -> Result<usize, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(error) => error.to_string(),
            None => "it holds no certificate webpki can use".to_string(),
        };
        return Err(TlsSetupError::NoSystemRoots {
            key: key.to_string(),
            why,
        });
    }
    Ok(added)
}

/// The certificates of the PEM bundle at `path` (the file `key` names) as trust anchors: at
/// least one, and every `CERTIFICATE` section must parse (other sections, such as a key, are
/// passed over). Strict on purpose: a bundle that silently lost a certificate would only show
/// as failed calls.
pub(super) fn read_ca_file(key: &str, path: &str) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for (i, certificate) in read_certificates(key, path)?.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| TlsSetupError::BadCertificate {
                key: key.to_string(),
                path: path.to_string(),
                index: i + 1,
                why: format!("it is not an X.509 certificate that can serve as a root ({e})"),
            })?;
    }
    Ok(roots)
}

/// Every `CERTIFICATE` section of the PEM file at `path`: at least one, each well-formed PEM.
fn read_certificates(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let unreadable = |error| TlsSetupError::Unreadable {
        key: key.to_string(),
        path: path.to_string(),
        error,
    };
    let sections = CertificateDer::pem_file_iter(path).map_err(|e| match e {
        pem::Error::Io(error) => unreadable(error),
        other => unreadable(std::io::Error::other(other)),
    })?;
    let mut certificates = Vec::new();
    for (i, section) in sections.enumerate() {
        match section {
            Ok(certificate) => certificates.push(certificate),
            Err(pem::Error::Io(error)) => return Err(unreadable(error)),
            Err(other) => {
                return Err(TlsSetupError::BadCertificate {
                    key: key.to_string(),
                    path: path.to_string(),
                    index: i + 1,
                    why: pem_problem(&other),
                })
            }
        }
    }
    if certificates.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            key: key.to_string(),
            path: path.to_string(),
        });
    }
    Ok(certificates)
}

/// The first private key in the PEM file at `path`.
fn read_private_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::Io(error) => TlsSetupError::Unreadable {
            key: key.to_string(),
            path: path.to_string(),
            error,
        },
        pem::Error::NoItemsFound => TlsSetupError::BadKey {
            key: key.to_string(),
            path: path.to_string(),
            why: "no `-----BEGIN ... PRIVATE KEY-----` section".to_string(),
        },
        other => TlsSetupError::BadKey {
            key: key.to_string(),
            path: path.to_string(),
            why: pem_problem(&other),
        },
    })
}

/// A PEM syntax error in words; pki-types' own text shows the marker lines as byte arrays.
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "its section has no `{}` line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed `-----BEGIN` line `{}`",
            String::from_utf8_lossy(line).trim()
        ),
        pem::Error::Base64Decode(why) => format!("its base64 does not decode ({why})"),
        other => other.to_string(),
    }
}

/// What a user can do about the TLS failure in `error`'s chain, when it is one they can fix:
/// said after rustls's own words in the 502, naming the setting of `table` (the config table
/// of the endpoint called) to change, or the fix.
pub(super) fn advice(error: &(dyn std::error::Error + 'static), table: &str) -> Option<String> {
    advice_for(chain::find::<rustls::Error>(error)?, table)
}

fn advice_for(error: &rustls::Error, table: &str) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as Certificate, Error};
    let text = match error {
        Error::InvalidCertificate(Certificate::UnknownIssuer) => format!(
            "The upstream's certificate is signed by a CA this proxy does not trust: if it is a \
             private CA, put its certificate (PEM) in the file `{table}.ca_file` names, or set \
             `{table}.tls_roots = \"system\"` when the host's store has it"
        ),
        Error::InvalidCertificate(Certificate::Expired | Certificate::ExpiredContext { .. }) => {
            "The upstream's certificate has expired (or this host's clock is wrong): renew \
             the certificate on the upstream"
                .to_string()
        }
        Error::InvalidCertificate(
            Certificate::NotValidYet | Certificate::NotValidYetContext { .. },
        ) => "The upstream's certificate is not valid yet: check the clocks of this host and of \
              the CA"
            .to_string(),
        Error::InvalidCertificate(
            Certificate::NotValidForName | Certificate::NotValidForNameContext { .. },
        ) => format!(
            "The upstream's certificate is not issued for the host in `{table}.base_url`: use \
             a name the certificate lists, or reissue it for this one"
        ),
        Error::AlertReceived(Alert::CertificateRequired) => format!(
            "The upstream asks for a client certificate (mutual TLS), and this proxy presents \
             none: set `{table}.client_cert_file` and `{table}.client_key_file`"
        ),
        Error::AlertReceived(Alert::NoApplicationProtocol) => format!(
            "The upstream does not speak HTTP/2 (it refused the only protocol offered): remove \
             `{table}.http2_only`"
        ),
        // rustls answers a client certificate it cannot verify with DecryptError, other
        // servers with one of the certificate alerts.
        Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::AccessDenied
            | Alert::DecryptError,
        ) => format!(
            "The upstream refused the TLS handshake, as a server does with a client \
             certificate it does not accept: check that `{table}.client_cert_file` is current \
             and issued by a CA the upstream trusts for client certificates"
        ),
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "upstream.ca_file";

    fn with_ca(path: &str) -> Transport {
        Transport {
            ca_file: path.to_string(),
            ..Transport::default()
        }
    }

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn a_bundle_adds_each_of_its_certificates() {
        let bundle = format!("# two CAs\n{}\n{}", ca_pem("one"), ca_pem("two"));
        let (_dir, path) = file(&bundle);
        assert_eq!(read_ca_file(KEY, &path).unwrap().len(), 2);
        let (config, summary) = client_config(&with_ca(&path), "upstream").unwrap();
        assert!(config.alpn_protocols.is_empty());
        assert!(summary.ends_with("(2 certificates)"), "{summary}");
    }

    #[test]
    fn no_file_means_the_bundled_roots_only() {
        let (_, summary) = client_config(&Transport::default(), "upstream").unwrap();
        assert_eq!(summary, "trusts the bundled webpki roots");
    }

    #[test]
    fn a_missing_file_names_the_key_and_the_path() {
        let err = read_ca_file(KEY, "/nonexistent/ca.pem").unwrap_err();
        assert!(matches!(err, TlsSetupError::Unreadable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("`upstream.ca_file`") && text.contains("/nonexistent/ca.pem"));
        let dir = tempfile::tempdir().unwrap();
        let err = read_ca_file(KEY, &dir.path().display().to_string()).unwrap_err();
        assert!(matches!(err, TlsSetupError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        for text in [
            "",
            "not a certificate\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let (_dir, path) = file(text);
            let err = read_ca_file(KEY, &path).unwrap_err();
            assert!(matches!(err, TlsSetupError::NoCertificate { .. }), "{err}");
            assert!(err.to_string().contains("`upstream.ca_file`"), "{err}");
        }
    }

    #[test]
    fn a_broken_certificate_is_named_by_its_place() {
        let good = ca_pem("good");
        let cases = [
            // Not a certificate once decoded.
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            // Not base64.
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            // Cut off.
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
        ];
        for broken in cases {
            let (_dir, path) = file(&format!("{good}{broken}"));
            let err = read_ca_file(KEY, &path).unwrap_err();
            match &err {
                TlsSetupError::BadCertificate { index, .. } => assert_eq!(*index, 2),
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("certificate 2 in"), "{err}");
        }
    }
}
