//! The TLS side of the upstream client: which roots it trusts, with which crypto provider.
//!
//! The bundled webpki roots (Mozilla's list, compiled in, so the proxy needs no CA store on its
//! host) are always trusted; `upstream.ca_file` adds the certificates of a PEM bundle, for a
//! private upstream whose chain ends in a private CA. The file is read once, when the client is
//! built at start, so a missing or malformed file stops the start (and `check-config`) with the
//! key and the path, rather than failing every call later as an unknown issuer.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// The config key this file reads, for messages.
const KEY: &str = "upstream.ca_file";

/// Why the upstream client's TLS could not be set up.
#[derive(Debug)]
pub enum TlsSetupError {
    /// `upstream.ca_file` cannot be opened or read.
    CaFileUnreadable { path: String, error: std::io::Error },
    /// It holds no PEM certificate section.
    CaFileEmpty { path: String },
    /// A certificate section (`index` counts from 1) whose PEM or DER does not parse.
    CaFileBadCertificate {
        path: String,
        index: usize,
        why: String,
    },
    /// The crypto provider refused the default protocol versions (not expected with ring).
    Provider(rustls::Error),
}

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSetupError::CaFileUnreadable { path, error } => write!(
                f,
                "`{KEY}`: cannot read {path}: {error}. Point it at a readable PEM file of CA \
                 certificates, or remove the key to trust only the bundled webpki roots."
            ),
            TlsSetupError::CaFileEmpty { path } => write!(
                f,
                "`{KEY}`: {path} holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` \
                 section). It must hold the CA certificates the upstream's chain ends in, \
                 PEM-encoded; a DER file converts with \
                 `openssl x509 -inform der -in ca.der -out ca.pem`."
            ),
            TlsSetupError::CaFileBadCertificate { path, index, why } => write!(
                f,
                "`{KEY}`: certificate {index} in {path} does not parse: {why}. Replace it with \
                 the CA certificate, PEM-encoded, or remove it from the file."
            ),
            TlsSetupError::Provider(error) => {
                write!(f, "the TLS provider refused its protocol versions: {error}")
            }
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// The rustls client config: ring, the default protocol versions, the bundled roots plus those
/// of `ca_file` (when not empty), no client certificate. ALPN stays empty: hyper-rustls sets
/// h2 and http/1.1 itself and refuses a config that already has protocols.
pub(super) fn client_config(ca_file: &str) -> Result<ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.is_empty() {
        roots.roots.extend(read_ca_file(ca_file)?.roots);
    }
    // The provider is named explicitly: another crate in the build may enable a second one,
    // and rustls refuses to guess between two.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Provider)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates of the PEM bundle at `path` as trust anchors: at least one, and every
/// `CERTIFICATE` section must parse (other sections, such as a key, are passed over). Strict on
/// purpose: a bundle that silently lost a certificate would only show as failed calls.
pub fn read_ca_file(path: &str) -> Result<RootCertStore, TlsSetupError> {
    let unreadable = |error| TlsSetupError::CaFileUnreadable {
        path: path.to_string(),
        error,
    };
    let sections = CertificateDer::pem_file_iter(path).map_err(|e| match e {
        pem::Error::Io(error) => unreadable(error),
        other => unreadable(std::io::Error::other(other)),
    })?;
    let mut roots = RootCertStore::empty();
    for (i, section) in sections.enumerate() {
        let bad = |why: String| TlsSetupError::CaFileBadCertificate {
            path: path.to_string(),
            index: i + 1,
            why,
        };
        let certificate = match section {
            Ok(certificate) => certificate,
            Err(pem::Error::Io(error)) => return Err(unreadable(error)),
            Err(other) => return Err(bad(pem_problem(&other))),
        };
        roots.add(certificate).map_err(|e| {
            bad(format!(
                "it is not an X.509 certificate that can serve as a root ({e})"
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::CaFileEmpty {
            path: path.to_string(),
        });
    }
    Ok(roots)
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
/// said after rustls's own words in the 502, naming the setting or the fix.
pub(super) fn advice(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(found) = rustls_error(error) {
            return advice_for(found);
        }
        cause = error.source();
    }
    None
}

/// The rustls error `error` is or wraps. tokio-rustls returns it inside an `io::Error`, which
/// hyper-rustls wraps in another; `source()` looks past both, so they are opened here.
fn rustls_error<'a>(mut error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        error = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

fn advice_for(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription, CertificateError as Certificate, Error};
    match error {
        Error::InvalidCertificate(Certificate::UnknownIssuer) => Some(
            "The upstream's certificate is signed by a CA this proxy does not trust: if it is a \
             private CA, put its certificate (PEM) in the file `upstream.ca_file` names",
        ),
        Error::InvalidCertificate(Certificate::Expired | Certificate::ExpiredContext { .. }) => {
            Some(
                "The upstream's certificate has expired (or this host's clock is wrong): renew \
                 the certificate on the upstream",
            )
        }
        Error::InvalidCertificate(
            Certificate::NotValidYet | Certificate::NotValidYetContext { .. },
        ) => Some(
            "The upstream's certificate is not valid yet: check the clocks of this host and of \
             the CA",
        ),
        Error::InvalidCertificate(
            Certificate::NotValidForName | Certificate::NotValidForNameContext { .. },
        ) => Some(
            "The upstream's certificate is not issued for the host in `upstream.base_url`: use \
             a name the certificate lists, or reissue it for this one",
        ),
        Error::AlertReceived(AlertDescription::CertificateRequired) => Some(
            "The upstream asks for a client certificate (mutual TLS), and this proxy presents \
             none",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(read_ca_file(&path).unwrap().len(), 2);
        let config = client_config(&path).unwrap();
        assert!(config.alpn_protocols.is_empty());
    }

    #[test]
    fn no_file_means_the_bundled_roots_only() {
        assert!(client_config("").is_ok());
    }

    #[test]
    fn a_missing_file_names_the_key_and_the_path() {
        let err = read_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(
            matches!(err, TlsSetupError::CaFileUnreadable { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("`upstream.ca_file`") && text.contains("/nonexistent/ca.pem"));
        let dir = tempfile::tempdir().unwrap();
        let err = read_ca_file(&dir.path().display().to_string()).unwrap_err();
        assert!(
            matches!(err, TlsSetupError::CaFileUnreadable { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        for text in [
            "",
            "not a certificate\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let (_dir, path) = file(text);
            let err = read_ca_file(&path).unwrap_err();
            assert!(matches!(err, TlsSetupError::CaFileEmpty { .. }), "{err}");
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
            let err = read_ca_file(&path).unwrap_err();
            match &err {
                TlsSetupError::CaFileBadCertificate { index, .. } => assert_eq!(*index, 2),
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains("certificate 2 in"), "{err}");
        }
    }
}
