//! TLS: HTTPS listeners whose certificate is picked by the client's SNI, and the CA
//! bundles pools verify their backends against.

use openssl::ssl::{
    AlpnError, NameType, SniError, SslAcceptor, SslContext, SslFiletype, SslMethod, SslRef,
    select_next_proto,
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

/// Settings for the HTTPS listener `listener` (at `proxy.tls[index]`): the first
/// certificate by default, another when the SNI matches one of its names (its subject
/// alternative names, else its common name; `*.example.com` matches one label).
pub fn listener_settings(listener: &TlsListener, index: usize) -> Result<TlsSettings, String> {
    let field = format!("proxy.tls[{index}]");
    let alpn: &'static [u8] = if listener.http2 { H2_H1 } else { H1 };
    let mut served = Vec::new();
    for (i, files) in listener.certificates.iter().enumerate() {
        let at = format!("{field}.certificates[{i}]");
        served.push(load_certificate(files, alpn).map_err(|e| format!("{at}: {e}"))?);
    }
    let Some(first) = listener.certificates.first() else {
        return Err(format!("{field}: no certificate"));
    };
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let mut settings = TlsSettings::intermediate(&text(&first.cert), &text(&first.key))
        .map_err(|e| format!("{field}.certificates[0]: {e}"))?;
    settings.set_alpn_select_callback(move |_, offered| select_alpn(alpn, offered));
    let served = Arc::new(served);
    settings.set_servername_callback(move |ssl: &mut SslRef, _alert| {
        let Some(name) = ssl
            .servername(NameType::HOST_NAME)
            .map(str::to_ascii_lowercase)
        else {
            return Ok(());
        };
        if let Some(s) = served
            .iter()
            .find(|s| s.names.iter().any(|n| name_matches(n, &name)))
        {
            ssl.set_ssl_context(&s.context)
                .map_err(|_| SniError::ALERT_FATAL)?;
        }
        Ok(())
    });
    Ok(settings)
}

fn select_alpn<'a>(ours: &'static [u8], offered: &'a [u8]) -> Result<&'a [u8], AlpnError> {
    select_next_proto(ours, offered).ok_or(AlpnError::NOACK)
}

fn load_certificate(files: &CertificateFiles, alpn: &'static [u8]) -> Result<Served, String> {
    let pem = std::fs::read(&files.cert)
        .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?;
    let leaf = X509::from_pem(&pem)
        .map_err(|e| format!("{} is not a PEM certificate: {e}", files.cert.display()))?;
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
        .map_err(|e| format!("cannot load {}: {e}", files.cert.display()))?;
    builder
        .set_private_key_file(&files.key, SslFiletype::PEM)
        .map_err(|e| format!("cannot load the key {}: {e}", files.key.display()))?;
    builder.check_private_key().map_err(|_| {
        format!(
            "the key {} does not belong to the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
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
