//! The client side of Kafka SASL for the wire client (`ferry bench kafka --sasl-mechanism`):
//! SaslHandshake v1 then SaslAuthenticate, with PLAIN (RFC 4616) or SCRAM-SHA-256/512
//! (RFC 5802, as Kafka's KIP-84 uses it: no channel binding, `c=biws`).
//!
//! The SCRAM exchange is kept as a small state machine ([`ScramClient`]) with no I/O, so it can
//! be checked against the broker's own SCRAM server in unit tests. The client verifies the
//! server's final signature: a broker that does not know the password cannot pass it.

use std::num::NonZeroU32;
use std::str::FromStr;

use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

use super::kafka::{kafka_error, Connection};
use super::ClientError;
use crate::util::{base64_decode, base64_encode};

/// Most PBKDF2 iterations a server may ask for: Kafka caps SCRAM at 16,384; more would let a
/// hostile server make the client spin.
const MAX_ITERATIONS: u32 = 16_384;

/// A SASL mechanism the client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(format!(
                "unknown SASL mechanism `{s}` (use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
            )),
        }
    }
}

/// Who to log in as, and how.
#[derive(Clone)]
pub struct SaslLogin {
    pub mechanism: SaslMechanism,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Logs `conn` in with `login` (after ApiVersions, before any other request).
pub(crate) async fn authenticate(conn: &Connection, login: &SaslLogin) -> Result<(), ClientError> {
    let handshake_v = conn.version(ApiKey::SaslHandshake, (1, 1))?;
    let auth_v = conn.version(ApiKey::SaslAuthenticate, (0, 2))?;
    let request = SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str(login.mechanism.name()));
    let (response, _) = conn.send(handshake_v, &request).await?.wait().await?;
    if response.error_code != 0 {
        let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(kafka_error(
            "SaslHandshake",
            String::new(),
            response.error_code,
            Some(&format!("the broker offers {}", offered.join(", "))),
        ));
    }
    let step = |bytes: Vec<u8>| async move {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(bytes.into());
        let (response, _) = conn.send(auth_v, &request).await?.wait().await?;
        if response.error_code != 0 {
            let message = response.error_message.as_ref().map(|m| m.to_string());
            return Err(kafka_error(
                "SaslAuthenticate",
                String::new(),
                response.error_code,
                message.as_deref(),
            ));
        }
        Ok::<_, ClientError>(response.auth_bytes.to_vec())
    };
    match login.mechanism {
        SaslMechanism::Plain => {
            let token = format!("\0{}\0{}", login.user, login.password);
            step(token.into_bytes()).await?;
        }
        SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
            let mut scram = ScramClient::new(login)?;
            let server_first = step(scram.client_first()).await?;
            let client_final = scram.client_final(&server_first)?;
            let server_final = step(client_final).await?;
            scram.verify_server_final(&server_final)?;
        }
    }
    Ok(())
}

/// One SCRAM exchange from the client's side: [`client_first`](Self::client_first), then
/// [`client_final`](Self::client_final) for the server's first message, then
/// [`verify_server_final`](Self::verify_server_final).
pub struct ScramClient {
    sha512: bool,
    password: String,
    nonce: String,
    first_bare: String,
    server_signature: Vec<u8>,
}

fn scram_error(detail: &str) -> ClientError {
    ClientError::Failed(format!("SCRAM login failed: {detail}"))
}

impl ScramClient {
    pub fn new(login: &SaslLogin) -> Result<Self, ClientError> {
        let mut raw = [0u8; 24];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| scram_error("no random numbers for the nonce"))?;
        let nonce = base64_encode(&raw);
        // RFC 5802: `=` and `,` in the user name are escaped.
        let user = login.user.replace('=', "=3D").replace(',', "=2C");
        Ok(ScramClient {
            sha512: login.mechanism == SaslMechanism::ScramSha512,
            password: login.password.clone(),
            first_bare: format!("n={user},r={nonce}"),
            nonce,
            server_signature: Vec::new(),
        })
    }

    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let alg = if self.sha512 {
            hmac::HMAC_SHA512
        } else {
            hmac::HMAC_SHA256
        };
        hmac::sign(&hmac::Key::new(alg, key), data)
            .as_ref()
            .to_vec()
    }

    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ClientError> {
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| scram_error("the server's first message is not UTF-8"))?;
        let attr = |k: char| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(k)?.strip_prefix('='))
                .ok_or_else(|| scram_error(&format!("the server's first message lacks `{k}=`")))
        };
        let nonce = attr('r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(scram_error("the server's nonce does not extend ours"));
        }
        let salt =
            base64_decode(attr('s')?).ok_or_else(|| scram_error("the salt is not base64"))?;
        let iterations = attr('i')?
            .parse::<u32>()
            .ok()
            .filter(|i| *i <= MAX_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| scram_error("the iteration count is not a number in 1..=16384"))?;
        let (alg, len, hash) = if self.sha512 {
            (pbkdf2::PBKDF2_HMAC_SHA512, 64, &digest::SHA512)
        } else {
            (pbkdf2::PBKDF2_HMAC_SHA256, 32, &digest::SHA256)
        };
        let mut salted = vec![0u8; len];
        pbkdf2::derive(
            alg,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let client_key = self.hmac(&salted, b"Client Key");
        let stored_key = digest::digest(hash, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = self.hmac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = self.hmac(&salted, b"Server Key");
        self.server_signature = self.hmac(&server_key, auth_message.as_bytes());
        Ok(format!("{without_proof},p={}", base64_encode(&proof)).into_bytes())
    }

    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ClientError> {
        let text = std::str::from_utf8(server_final).unwrap_or("");
        if let Some(error) = text.strip_prefix("e=") {
            return Err(scram_error(&format!("the server says {error}")));
        }
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| base64_decode(v.split(',').next().unwrap_or(v)))
            .ok_or_else(|| scram_error("the server's final message has no signature"))?;
        if signature != self.server_signature {
            return Err(scram_error(
                "the server's signature is wrong (it does not know the password)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::users::credentials::scram_credential;
    use crate::broker::users::scram::ScramServer;
    use crate::broker::users::ScramMechanism;

    #[test]
    fn the_client_logs_in_to_the_brokers_scram_server_and_checks_its_signature() {
        for (mechanism, server_mechanism) in [
            (SaslMechanism::ScramSha256, ScramMechanism::Sha256),
            (SaslMechanism::ScramSha512, ScramMechanism::Sha512),
        ] {
            let login = SaslLogin {
                mechanism,
                user: "alice".into(),
                password: "s3cret".into(),
            };
            let stored = scram_credential(server_mechanism, "s3cret", 4096);
            let mut client = ScramClient::new(&login).unwrap();
            let mut server = ScramServer::new(server_mechanism);
            let server_first = server
                .client_first(&client.client_first(), |_| Some(stored.clone()))
                .unwrap();
            let client_final = client.client_final(&server_first).unwrap();
            let (user, server_final) = server.client_final(&client_final).unwrap();
            assert_eq!(user, "alice");
            client.verify_server_final(&server_final).unwrap();
            // A server that answers with another signature is refused.
            // Change the signature's first base64 digit ("v=" is two bytes): all six of its
            // bits are data, while the last digit before the padding carries padding bits, so
            // changing 'A' to 'B' there could leave the decoded signature as it was.
            let mut forged = server_final.clone();
            assert!(forged.starts_with(b"v="), "{forged:?}");
            forged[2] = if forged[2] == b'A' { b'B' } else { b'A' };
            assert!(client.verify_server_final(&forged).is_err());
        }
    }

    #[test]
    fn hostile_server_messages_are_refused() {
        let login = SaslLogin {
            mechanism: SaslMechanism::ScramSha256,
            user: "alice".into(),
            password: "pw".into(),
        };
        let mut client = ScramClient::new(&login).unwrap();
        let nonce = client.nonce.clone();
        for bad in [
            "r=other,s=c2FsdA==,i=4096".to_string(),
            format!("r={nonce},s=c2FsdA==,i=4096"),
            format!("r={nonce}x,s=c2FsdA==,i=99999999"),
            format!("r={nonce}x,s=c2FsdA==,i=0"),
            format!("r={nonce}x,s=!!,i=4096"),
            format!("r={nonce}x,i=4096"),
        ] {
            assert!(client.client_final(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(client.verify_server_final(b"e=invalid-proof").is_err());
    }
}
