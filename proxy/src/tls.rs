//! TLS: HTTPS listeners whose certificate is picked by the client's SNI, and the CA
//! bundles pools verify their backends against.
//!
//! Each listener's certificates live in a [`ListenerCertificates`] store read by the
//! SNI callback on every handshake, so a configuration reload swaps them without
//! rebinding (new handshakes get the new certificates, open connections keep theirs).

use arc_swap::ArcSwap;
use openssl::pkey::PKey;
use openssl::ssl::{
    AlpnError, NameType, SniError, SslAcceptor, SslContext, SslMethod, SslRef, select_next_proto,
};
use openssl::x509::X509;
use pingora::listeners::tls::TlsSettings;
use std::path::Path;
use std::sync::Arc;

use crate::config::{CertificateFiles, TlsListener};

/// ALPN wire lists, most preferred first.
const H2_H1: &[u8] = b"\x02h2\x08http/1.1";
const H1: &[u8] = b"\x08http/1.1";

/// One certificate and the host names it serves.
struct Served {
    names: Vec<String>,
    context: SslContext,
}

/// The certificates of one HTTPS listener, replaceable while it runs.
pub struct ListenerCertificates {
    served: ArcSwap<Vec<Served>>,
    alpn: &'static [u8],
}

impl std::fmt::Debug for ListenerCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCertificates")
            .field("certificates", &self.served.load().len())
            .finish()
    }
}

impl ListenerCertificates {
    /// Loads every certificate of `listener`; the error names the file and the field.
    pub fn load(listener: &TlsListener) -> Result<Self, String> {
        let alpn: &'static [u8] = if listener.http2 { H2_H1 } else { H1 };
        Ok(ListenerCertificates {
            served: ArcSwap::from_pointee(load_all(listener, alpn)?),
            alpn,
        })
    }

    /// Loads `listener`'s certificates again and serves them from the next handshake.
    /// On error the current ones stay.
    pub fn reload(&self, listener: &TlsListener) -> Result<(), String> {
        self.served.store(Arc::new(load_all(listener, self.alpn)?));
        Ok(())
    }

    /// The certificate for `sni`: the first whose names match, else the first.
    fn pick(&self, ssl: &mut SslRef) -> Result<(), SniError> {
        let served = self.served.load();
        let name = ssl
            .servername(NameType::HOST_NAME)
            .map(str::to_ascii_lowercase);
        let chosen = name
            .and_then(|n| {
                served
                    .iter()
                    .find(|s| s.names.iter().any(|p| name_matches(p, &n)))
            })
            .or_else(|| served.first());
        if let Some(s) = chosen {
            ssl.set_ssl_context(&s.context)
                .map_err(|_| SniError::ALERT_FATAL)?;
        }
        Ok(())
    }
}

fn load_all(listener: &TlsListener, alpn: &'static [u8]) -> Result<Vec<Served>, String> {
    if listener.certificates.is_empty() {
        return Err(format!(
            "HTTPS listener {}: no certificate",
            listener.listen
        ));
    }
    listener
        .certificates
        .iter()
        .map(|files| {
            load_certificate(files, alpn).map_err(|e| format!("{}: {}: {e}", files.at, files.field))
        })
        .collect()
}

/// Settings for an HTTPS listener serving `certificates`: every handshake asks the
/// store (SNI, else the first certificate), so reloads take effect at once.
pub fn listener_settings(
    listener: &TlsListener,
    certificates: Arc<ListenerCertificates>,
) -> Result<TlsSettings, String> {
    let Some(first) = listener.certificates.first() else {
        return Err(format!(
            "HTTPS listener {}: no certificate",
            listener.listen
        ));
    };
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let mut settings = TlsSettings::intermediate(&text(&first.cert), &text(&first.key))
        .map_err(|e| format!("{}: {}: {e}", first.at, first.field))?;
    let alpn = certificates.alpn;
    settings.set_alpn_select_callback(move |_, offered| select_alpn(alpn, offered));
    settings.set_servername_callback(move |ssl: &mut SslRef, _alert| certificates.pick(ssl));
    Ok(settings)
}

fn select_alpn<'a>(ours: &'static [u8], offered: &'a [u8]) -> Result<&'a [u8], AlpnError> {
    select_next_proto(ours, offered).ok_or(AlpnError::NOACK)
}

fn load_certificate(files: &CertificateFiles, alpn: &'static [u8]) -> Result<Served, String> {
    let pem = std::fs::read(&files.cert)
        .map_err(|e| format!("cert: cannot read {}: {e}", files.cert.display()))?;
    let leaf = X509::from_pem(&pem).map_err(|e| {
        format!(
            "cert: {} is not a PEM certificate: {e}",
            files.cert.display()
        )
    })?;
    let mut names: Vec<String> = leaf
        .subject_alt_names()
        .into_iter()
        .flatten()
        .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
        .collect();
    if names.is_empty() {
        names.extend(
            leaf.subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .map(|e| String::from_utf8_lossy(e.data().as_slice()).to_ascii_lowercase()),
        );
    }
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    builder
        .set_certificate_chain_file(&files.cert)
        .map_err(|e| format!("cert: cannot load {}: {e}", files.cert.display()))?;
    let key_pem = std::fs::read(&files.key)
        .map_err(|e| format!("key: cannot read {}: {e}", files.key.display()))?;
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|e| format!("key: {} is not a PEM private key: {e}", files.key.display()))?;
    let matches = leaf.public_key().is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err(format!(
            "key: {} does not belong to the certificate {} (a renewed certificate with the old key?)",
            files.key.display(),
            files.cert.display()
        ));
    }
    builder
        .set_private_key(&key)
        .map_err(|e| format!("key: cannot use {}: {e}", files.key.display()))?;
    builder.set_alpn_select_callback(move |_, offered| select_alpn(alpn, offered));
    Ok(Served {
        names,
        context: builder.build().into_context(),
    })
}

/// `pattern` is a host name or `*.suffix`, which matches exactly one more label.
fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// The CA certificates in the PEM file `path`.
pub fn load_ca(path: &Path) -> Result<Arc<Box<[X509]>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(Arc::new(certs.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("example.com", "example.com"));
    }
}
