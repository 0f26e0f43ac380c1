//! `ferry cert generate`: a private CA and certificates signed by it, for development and
//! tests, so TLS can be tried without OpenSSL commands.
//!
//! The CA certificate (`ca.pem`) is what clients trust (`ssl.ca.location`, pika's `cafile`,
//! `curl --cacert`) and what `tls.ca_file` names for mTLS; the server certificate carries the
//! requested DNS names and IP addresses as subject alternative names, which is what clients
//! check. Client certificates get the name as their CN (the AMQP EXTERNAL user; the Kafka
//! principal `User:CN=<name>`). Private keys are written readable by their owner only. Files
//! are not overwritten unless asked, so a second run cannot silently replace a CA that other
//! certificates were issued from.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// What to generate.
#[derive(Clone, Debug)]
pub struct CertRequest {
    /// DNS names of the server certificate (none and no IPs: `localhost` and `127.0.0.1`).
    pub dns: Vec<String>,
    /// IP addresses of the server certificate.
    pub ips: Vec<IpAddr>,
    /// A client certificate is made for each name (its CN).
    pub clients: Vec<String>,
    /// Directory the files go to (created if missing).
    pub out: PathBuf,
    /// Days the certificates are valid from now.
    pub days: u32,
    /// Replace files that exist.
    pub force: bool,
}

/// The files written, in the order they were written.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// (name, certificate, key) per client.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0} exists; pass --force to replace it (certificates issued from an old CA stop verifying)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Makes the CA, the server certificate and the client certificates and writes them.
pub fn generate(request: &CertRequest) -> Result<Generated, GenerateError> {
    let (mut dns, mut ips) = (request.dns.clone(), request.ips.clone());
    if dns.is_empty() && ips.is_empty() {
        dns.push("localhost".into());
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    for client in &request.clients {
        if client.is_empty() || client.contains(['/', '\\']) || client.starts_with('.') {
            return Err(GenerateError::Invalid {
                what: "--client name",
                message: format!("{client:?} must be non-empty and usable in a file name"),
            });
        }
    }
    let out = &request.out;
    let path = |name: String| out.join(name);
    let mut planned = vec![
        path("ca.pem".into()),
        path("ca.key".into()),
        path("server.pem".into()),
        path("server.key".into()),
    ];
    for client in &request.clients {
        planned.push(path(format!("client-{client}.pem")));
        planned.push(path(format!("client-{client}.key")));
    }
    if !request.force {
        if let Some(existing) = planned.iter().find(|p| p.exists()) {
            return Err(GenerateError::Exists(existing.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| GenerateError::Write {
        path: out.clone(),
        source,
    })?;

    let now = time::OffsetDateTime::now_utc();
    let validity = |params: &mut CertificateParams| {
        // A day of slack for clocks that run behind.
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(i64::from(request.days.max(1)));
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("Ferry development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&planned[0], ca_cert.pem().as_bytes(), false)?;
    write(&planned[1], ca_key.serialize_pem().as_bytes(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params =
        CertificateParams::new(dns.clone()).map_err(|e| GenerateError::Invalid {
            what: "--dns name",
            message: e.to_string(),
        })?;
    server_params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let server_cn = dns
        .first()
        .cloned()
        .or_else(|| ips.first().map(ToString::to_string))
        .unwrap_or_default();
    server_params.distinguished_name = name(&server_cn);
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut server_params);
    let server_cert = server_params.signed_by(&server_key, &issuer)?;
    write(&planned[2], server_cert.pem().as_bytes(), false)?;
    write(&planned[3], server_key.serialize_pem().as_bytes(), true)?;

    let mut generated = Generated {
        ca_cert: planned[0].clone(),
        ca_key: planned[1].clone(),
        server_cert: planned[2].clone(),
        server_key: planned[3].clone(),
        clients: Vec::new(),
    };
    for (i, client) in request.clients.iter().enumerate() {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(client);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (&planned[4 + 2 * i], &planned[5 + 2 * i]);
        write(cert_path, cert.pem().as_bytes(), false)?;
        write(key_path, key.serialize_pem().as_bytes(), true)?;
        generated
            .clients
            .push((client.clone(), cert_path.clone(), key_path.clone()));
    }
    Ok(generated)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), GenerateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| GenerateError::Write {
        path: path.to_path_buf(),
        source,
    };
    // A key file is created with mode 0600 rather than chmod-ed after being written.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

impl Generated {
    /// What `ferry cert generate` prints: the files and the settings that use them.
    pub fn describe(&self) -> String {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = format!(
            "CA certificate:     {}  (clients trust this: ssl.ca.location, --cacert, cafile)\n\
             CA key:             {}  (keep it private; it signs certificates)\n\
             server certificate: {}\n\
             server key:         {}\n",
            abs(&self.ca_cert).display(),
            abs(&self.ca_key).display(),
            abs(&self.server_cert).display(),
            abs(&self.server_key).display(),
        );
        for (name, cert, key) in &self.clients {
            out.push_str(&format!(
                "client {name}: certificate {}, key {}\n",
                abs(cert).display(),
                abs(key).display()
            ));
        }
        out.push_str(&format!(
            "\nIn ferry.toml:\n\
             kafka_tls_listen = \"0.0.0.0:9093\"\n\
             amqp_tls_listen = \"0.0.0.0:5671\"\n\
             http_tls_listen = \"0.0.0.0:8443\"\n\
             [tls]\n\
             cert_file = \"{}\"\n\
             key_file = \"{}\"\n",
            abs(&self.server_cert).display(),
            abs(&self.server_key).display(),
        ));
        if !self.clients.is_empty() {
            out.push_str(&format!(
                "ca_file = \"{}\"   # verify client certificates (mTLS)\n",
                abs(&self.ca_cert).display()
            ));
        }
        out
    }
}
