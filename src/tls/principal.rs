//! The identity a verified client certificate carries, and the one rule that turns it into a
//! user name for every protocol.
//!
//! The subject is printed as Java's `X500Principal.getName()` prints it (RFC 2253: most
//! specific attribute first, commas without spaces, `CN=app,OU=team,O=corp`), and then mapped
//! by `tls.principal_mapping_rules`, Kafka's `ssl.principal.mapping.rules` with its syntax
//! (`RULE:pattern/replacement/[LU]` and `DEFAULT`, first match wins). The mapped name is the
//! Kafka principal `User:<name>` *and* the AMQP EXTERNAL user, so one certificate is one user
//! on both protocols and a Kafka ACL written for it also governs the topic's exchange face.
//! The default (`DEFAULT`) keeps the whole subject, as Kafka does and as RabbitMQ's
//! `ssl_cert_login_from = distinguished_name` does.

use regex::Regex;
use rustls_pki_types::CertificateDer;
use x509_parser::objects::{oid2abbrev, oid_registry};

/// One rule of `tls.principal_mapping_rules`.
#[derive(Clone, Debug)]
enum MappingRule {
    /// The subject unchanged.
    Default,
    /// A subject matching `pattern` as a whole becomes `replacement` (with `$1` groups),
    /// optionally lower- or upper-cased.
    Rule {
        pattern: Regex,
        replacement: String,
        case: Option<char>,
    },
}

/// Parsed `tls.principal_mapping_rules`.
#[derive(Clone, Debug)]
pub struct PrincipalMapping {
    rules: Vec<MappingRule>,
}

impl Default for PrincipalMapping {
    fn default() -> Self {
        Self {
            rules: vec![MappingRule::Default],
        }
    }
}

impl PrincipalMapping {
    /// Parses Kafka's syntax: rules separated by commas, each `DEFAULT` or
    /// `RULE:pattern/replacement/` with an optional `L` or `U` after the last slash; `\/`
    /// is a slash inside the pattern or replacement.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("DEFAULT") {
                rules.push(MappingRule::Default);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("RULE:") {
                let (pattern, after) = until_slash(after)
                    .ok_or_else(|| format!("`{rest}`: a RULE needs pattern/replacement/"))?;
                let (replacement, after) = until_slash(after)
                    .ok_or_else(|| format!("`{rest}`: a RULE needs pattern/replacement/"))?;
                let (case, after) = match after.chars().next() {
                    Some(c @ ('L' | 'U')) => (Some(c), &after[1..]),
                    _ => (None, after),
                };
                let pattern = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("`{pattern}` is not a regular expression: {e}"))?;
                rules.push(MappingRule::Rule {
                    pattern,
                    replacement,
                    case,
                });
                rest = after;
            } else {
                return Err(format!("`{rest}` is neither RULE:... nor DEFAULT"));
            }
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None if rest.is_empty() => {}
                None => return Err(format!("`{rest}`: rules are separated by commas")),
            }
        }
        if rules.is_empty() {
            return Err("no rules (use DEFAULT to keep the subject)".into());
        }
        Ok(Self { rules })
    }

    /// The user name for `subject`, from the first rule that applies; `None` if none does
    /// (Kafka then refuses the connection).
    pub fn apply(&self, subject: &str) -> Option<String> {
        self.rules.iter().find_map(|rule| match rule {
            MappingRule::Default => Some(subject.to_string()),
            MappingRule::Rule {
                pattern,
                replacement,
                case,
            } => {
                let captures = pattern.captures(subject)?;
                let mut name = String::new();
                captures.expand(replacement, &mut name);
                Some(match case {
                    Some('L') => name.to_lowercase(),
                    Some('U') => name.to_uppercase(),
                    _ => name,
                })
            }
        })
    }
}

/// The text up to the next unescaped `/` (with `\/` unescaped) and what follows that slash.
fn until_slash(text: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if text[i + 1..].starts_with('/') => {
                out.push('/');
                chars.next();
            }
            '/' => return Some((out, &text[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// A client certificate's subject and the user name it maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The distinguished name in RFC 2253 form, e.g. `CN=app,OU=team,O=corp`.
    pub subject: String,
    /// The first common name (CN), if the subject has one.
    pub common_name: Option<String>,
    /// The user this certificate authenticates, by `tls.principal_mapping_rules`: the Kafka
    /// principal `User:<name>` and the AMQP EXTERNAL user.
    pub name: String,
}

impl Principal {
    /// Reads the subject of a DER certificate and maps it to a user name; fails if the
    /// certificate cannot be read or no mapping rule applies.
    pub fn from_der(der: &CertificateDer<'_>, mapping: &PrincipalMapping) -> Result<Self, String> {
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
        let name = mapping.apply(&subject_text).ok_or_else(|| {
            format!("no tls.principal_mapping_rules rule applies to the subject `{subject_text}`")
        })?;
        Ok(Self {
            subject: subject_text,
            common_name,
            name,
        })
    }

    /// The Kafka principal, `User:<mapped name>`.
    pub fn kafka_principal(&self) -> String {
        format!("User:{}", self.name)
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
        let p = Principal::from_der(cert.der(), &PrincipalMapping::default()).unwrap();
        assert_eq!(p.subject, "CN=orders-app,O=Acme\\, Inc");
        assert_eq!(p.common_name.as_deref(), Some("orders-app"));
        assert_eq!(p.kafka_principal(), "User:CN=orders-app,O=Acme\\, Inc");

        let cn = PrincipalMapping::parse("RULE:^CN=([^,]*),.*$/$1/U").unwrap();
        let p = Principal::from_der(cert.der(), &cn).unwrap();
        assert_eq!(p.name, "ORDERS-APP");
        assert_eq!(p.kafka_principal(), "User:ORDERS-APP");
        let none_apply = PrincipalMapping::parse("RULE:^CN=billing.*$/billing/").unwrap();
        assert!(Principal::from_der(cert.der(), &none_apply).is_err());
    }

    /// The examples of Kafka's documentation for `ssl.principal.mapping.rules`.
    #[test]
    fn kafka_mapping_rules_map_as_kafka_documents() {
        let rules = PrincipalMapping::parse(
            "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/, \
             RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L,\
             RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L, DEFAULT",
        )
        .unwrap();
        for (subject, name) in [
            (
                "CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown",
                "serviceuser",
            ),
            (
                "CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown",
                "adminuser@admin",
            ),
            ("OU=Users,CN=Alice.Smith,O=x", "alice.smith"),
            ("OU=JustAnOU", "OU=JustAnOU"),
        ] {
            assert_eq!(rules.apply(subject).as_deref(), Some(name), "{subject}");
        }
        let slash = PrincipalMapping::parse("RULE:^CN=a\\/b$/a\\/b-user/").unwrap();
        assert_eq!(slash.apply("CN=a/b").as_deref(), Some("a/b-user"));
        for bad in [
            "",
            "RULE:^CN=x$",
            "RULE:^CN=(x$/y/",
            "NOPE",
            "DEFAULT DEFAULT",
        ] {
            assert!(PrincipalMapping::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 1, 2]);
        assert!(Principal::from_der(&garbage, &PrincipalMapping::default()).is_err());
    }
}
