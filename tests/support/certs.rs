//! Certificates made at test time: a CA and leaf certificates it signs. No key is
//! committed to the repository.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use std::path::{Path, PathBuf};

/// A certificate authority for one test.
pub struct TestCa {
    cert: X509,
    key: PKey<Private>,
    /// The CA certificate as a PEM file.
    pub pem: PathBuf,
}

/// PEM files of a leaf certificate and its key.
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn builder(common_name: &str, key: &PKey<Private>) -> openssl::x509::X509Builder {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", common_name).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b
}

impl TestCa {
    /// A new CA whose certificate is written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = key();
        let mut b = builder(name, &key);
        // Self-signed: the issuer is the subject.
        let mut issuer = X509NameBuilder::new().unwrap();
        issuer.append_entry_by_text("CN", name).unwrap();
        b.set_issuer_name(&issuer.build()).unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.to_pem().unwrap()).unwrap();
        TestCa { cert, key, pem }
    }

    /// A leaf certificate for `names` (DNS subject alternative names; the first is also
    /// the common name), written to `dir/<first name>.pem` and `.key`.
    pub fn leaf(&self, dir: &Path, names: &[&str]) -> LeafFiles {
        let key = key();
        let mut b = builder(names[0], &key);
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        let mut san = SubjectAlternativeName::new();
        for n in names {
            san.dns(n);
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let files = LeafFiles {
            cert: dir.join(format!("{}.pem", names[0])),
            key: dir.join(format!("{}.key", names[0])),
        };
        std::fs::write(&files.cert, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&files.key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        files
    }
}
