//! The identity a verified client certificate carries.
//!
//! Kafka's default `ssl.principal.mapping.rules` make the principal the certificate subject as
//! Java's `X500Principal.getName()` prints it (RFC 2253: most specific attribute first, commas
//! without spaces, `User:CN=app,OU=team,O=corp`), so ACLs written for Kafka match Ferry's
//! principal unchanged. RabbitMQ's EXTERNAL mechanism uses the subject's common name.

use rustls_pki_types::CertificateDer;
use x509_parser::objects::{oid2abbrev, oid_registry};

/// A client certificate's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The distinguished name in RFC 2253 form, e.g. `CN=app,OU=team,O=corp`.
    pub subject: String,
    /// The first common name (CN), if the subject has one.
    pub common_name: Option<String>,
}

impl Principal {
    /// Reads the subject of a DER certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let subject = cert.subject();
        let rdns: Vec<String> = subject
            .iter_rdn()
            .map(|rdn| {
                rdn.iter()
                    .map(|attr| {
                        let name = oid2abbrev(attr.attr_type(), oid_registry())
                            .map(str::to_string)
                            .unwrap_or_else(|_| attr.attr_type().to_id_string());
                        let value = attr.as_str().map(escape_rfc2253).unwrap_or_default();
                        format!("{name}={value}")
                    })
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect();
        // ASN.1 order is most general first; RFC 2253 prints the reverse.
        let subject_text = rdns.into_iter().rev().collect::<Vec<_>>().join(",");
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(Self {
            subject: subject_text,
            common_name,
        })
    }

    /// The Kafka principal, `User:<subject>`.
    pub fn kafka_principal(&self) -> String {
        format!("User:{}", self.subject)
    }
}

/// Escapes the characters RFC 2253 reserves in attribute values.
fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_printed_most_specific_first_like_java() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "orders-app");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let p = Principal::from_der(cert.der()).unwrap();
        assert_eq!(p.subject, "CN=orders-app,O=Acme\\, Inc");
        assert_eq!(p.common_name.as_deref(), Some("orders-app"));
        assert_eq!(p.kafka_principal(), "User:CN=orders-app,O=Acme\\, Inc");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Principal::from_der(&CertificateDer::from(vec![0x30, 0x03, 1, 2])).is_err());
    }
}
