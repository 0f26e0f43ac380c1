//! The server side of a SCRAM exchange (RFC 5802, with SHA-256 / SHA-512 as RFC 7677 and
//! Kafka's KIP-84 use them), as a pure state machine: bytes in, bytes out, no I/O. Kafka's
//! SaslAuthenticate carries the messages; any other SASL transport could.
//!
//! The exchange is client-first, server-first, client-final, server-final. An unknown user is
//! not revealed at the first step: the server answers with a made-up salt and fails at the
//! proof, as a wrong password would, so the exchange cannot be used to list users.

use super::credentials::{self, hash, hmac_sign, ScramMechanism};
use crate::meta::ScramRecord;
use crate::util::{base64_decode, base64_encode};

/// Why an exchange failed; the text is safe to send to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("authentication failed: invalid credentials")]
    BadCredentials,
    #[error("SCRAM exchange is already complete")]
    Finished,
}

enum Phase {
    AwaitClientFirst,
    AwaitClientFinal {
        user: String,
        /// The user exists and has a credential for this mechanism.
        known: bool,
        credential: ScramRecord,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// One SCRAM exchange on one connection.
pub struct ScramServer {
    mechanism: ScramMechanism,
    phase: Phase,
}

impl ScramServer {
    pub fn new(mechanism: ScramMechanism) -> Self {
        Self {
            mechanism,
            phase: Phase::AwaitClientFirst,
        }
    }

    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Whether the next message is client-first (else client-final).
    pub fn awaits_client_first(&self) -> bool {
        matches!(self.phase, Phase::AwaitClientFirst)
    }

    /// Handles client-first; `credential_of` looks the user's credential up. Returns
    /// server-first.
    pub fn client_first(
        &mut self,
        message: &[u8],
        credential_of: impl FnOnce(&str) -> Option<ScramRecord>,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.phase, Phase::AwaitClientFirst) {
            return Err(ScramError::Finished);
        }
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: "n," or "y," (no channel binding), an optional "a=authzid", then ",".
        let (cbind, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !matches!(cbind, "n" | "y") {
            return Err(ScramError::Malformed("channel binding is not supported"));
        }
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        let mut user = None;
        let mut client_nonce = None;
        for attribute in bare.split(',') {
            match attribute.split_once('=') {
                Some(("n", v)) => user = Some(unescape_name(v)?),
                Some(("r", v)) if !v.is_empty() => client_nonce = Some(v.to_string()),
                Some(("m", _)) => return Err(ScramError::Malformed("unsupported extension")),
                // Kafka's `tokenauth=true` asks for delegation tokens, which Ferry has none of.
                Some(("tokenauth", "true")) => return Err(ScramError::BadCredentials),
                _ => {}
            }
        }
        let user = user.ok_or(ScramError::Malformed("no user name"))?;
        let client_nonce = client_nonce.ok_or(ScramError::Malformed("no nonce"))?;
        let (known, credential) = match credential_of(&user) {
            Some(c) => (true, c),
            None => (
                false,
                ScramRecord {
                    salt: credentials::random_bytes(32),
                    iterations: credentials::DEFAULT_SCRAM_ITERATIONS,
                    stored_key: credentials::random_bytes(self.mechanism.digest().output_len()),
                    server_key: Vec::new(),
                },
            ),
        };
        // Alphanumeric, like Kafka's own server nonce.
        let server_nonce: String = credentials::random_bytes(16)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            base64_encode(&credential.salt),
            credential.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.phase = Phase::AwaitClientFinal {
            user,
            known,
            credential,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Handles client-final; on success returns the authenticated user and server-final.
    pub fn client_final(&mut self, message: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let Phase::AwaitClientFinal {
            user,
            known,
            credential,
            client_first_bare,
            server_first,
            nonce,
        } = phase
        else {
            return Err(ScramError::Finished);
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let proof = base64_decode(proof).ok_or(ScramError::Malformed("proof is not base64"))?;
        let mut channel_binding = None;
        let mut final_nonce = None;
        for attribute in without_proof.split(',') {
            match attribute.split_once('=') {
                Some(("c", v)) => channel_binding = Some(v),
                Some(("r", v)) => final_nonce = Some(v),
                _ => {}
            }
        }
        let channel_binding = channel_binding
            .and_then(base64_decode)
            .ok_or(ScramError::Malformed("no channel binding"))?;
        if !(channel_binding.starts_with(b"n,") || channel_binding.starts_with(b"y,")) {
            return Err(ScramError::Malformed("channel binding is not supported"));
        }
        // Kafka's broker accepts a final nonce that *ends with* the server's (its
        // ScramSaslServer checks `endsWith`), and librdkafka relies on it: it sends its own
        // nonce again in front of the combined one.
        if !final_nonce.is_some_and(|n| n.ends_with(nonce.as_str())) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac_sign(
            self.mechanism,
            &credential.stored_key,
            auth_message.as_bytes(),
        );
        if proof.len() != client_signature.len() {
            return Err(ScramError::BadCredentials);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let matches = credentials::constant_time_eq(
            &hash(self.mechanism, &client_key),
            &credential.stored_key,
        );
        if !(known && matches) {
            return Err(ScramError::BadCredentials);
        }
        let server_signature = hmac_sign(
            self.mechanism,
            &credential.server_key,
            auth_message.as_bytes(),
        );
        Ok((
            user,
            format!("v={}", base64_encode(&server_signature)).into_bytes(),
        ))
    }
}

/// SCRAM's saslname: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed.
fn unescape_name(raw: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i + 1..i + 3) {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::users::credentials::{salted_password, scram_from_salted_password};

    /// A client side of the exchange, straight from RFC 5802 section 3.
    fn client_final(
        mechanism: ScramMechanism,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        nonce_prefix: &str,
    ) -> (String, Vec<u8>) {
        let attrs: Vec<(&str, &str)> = server_first
            .split(',')
            .filter_map(|a| a.split_once('='))
            .collect();
        let get = |k: &str| attrs.iter().find(|(n, _)| *n == k).unwrap().1;
        let salt = base64_decode(get("s")).unwrap();
        let iterations: u32 = get("i").parse().unwrap();
        let salted = salted_password(mechanism, password.as_bytes(), &salt, iterations);
        let client_key = hmac_sign(mechanism, &salted, b"Client Key");
        let stored_key = hash(mechanism, &client_key);
        let without_proof = format!("c=biws,r={nonce_prefix}{}", get("r"));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sign(mechanism, &stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac_sign(mechanism, &salted, b"Server Key");
        let expected = hmac_sign(mechanism, &server_key, auth.as_bytes());
        (
            format!("{without_proof},p={}", base64_encode(&proof)),
            format!("v={}", base64_encode(&expected)).into_bytes(),
        )
    }

    fn exchange(
        mechanism: ScramMechanism,
        user: &str,
        stored_pw: &str,
        given_pw: &str,
    ) -> Result<String, ScramError> {
        exchange_with_prefix(mechanism, user, stored_pw, given_pw, "")
    }

    fn exchange_with_prefix(
        mechanism: ScramMechanism,
        user: &str,
        stored_pw: &str,
        given_pw: &str,
        nonce_prefix: &str,
    ) -> Result<String, ScramError> {
        let salt = b"0123456789abcdef".to_vec();
        let salted = salted_password(mechanism, stored_pw.as_bytes(), &salt, 4096);
        let credential = scram_from_salted_password(mechanism, salt, &salted, 4096);
        let mut server = ScramServer::new(mechanism);
        let bare = format!("n={user},r=fyko+d2lbbFgONRv9qkxdawL");
        let server_first = server.client_first(format!("n,,{bare}").as_bytes(), |u| {
            (u == "al,ice").then(|| credential.clone())
        })?;
        let server_first = String::from_utf8(server_first).unwrap();
        assert!(server_first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let (final_message, expected_server_final) =
            client_final(mechanism, given_pw, &bare, &server_first, nonce_prefix);
        let (who, server_final) = server.client_final(final_message.as_bytes())?;
        assert_eq!(server_final, expected_server_final);
        Ok(who)
    }

    #[test]
    fn full_exchange_both_mechanisms() {
        for m in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            assert_eq!(exchange(m, "al=2Cice", "pw", "pw").unwrap(), "al,ice");
            assert_eq!(
                exchange(m, "al=2Cice", "pw", "wrong"),
                Err(ScramError::BadCredentials)
            );
            // Unknown user: the same answer as a wrong password, and only at the end.
            assert_eq!(
                exchange(m, "mallory", "pw", "pw"),
                Err(ScramError::BadCredentials)
            );
        }
    }

    #[test]
    fn librdkafka_repeating_its_nonce_is_accepted_as_kafka_does() {
        let repeated = exchange_with_prefix(
            ScramMechanism::Sha512,
            "al=2Cice",
            "pw",
            "pw",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(repeated.unwrap(), "al,ice");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut s = ScramServer::new(ScramMechanism::Sha256);
        assert!(matches!(
            s.client_first(b"p=tls-unique,,n=a,r=x", |_| None),
            Err(ScramError::Malformed(_))
        ));
        let mut s = ScramServer::new(ScramMechanism::Sha256);
        assert!(s.client_first(b"n,,n=a=zz,r=x", |_| None).is_err());
        let mut s = ScramServer::new(ScramMechanism::Sha256);
        assert!(s.client_final(b"c=biws,r=x,p=AAAA").is_err());
        let mut s = ScramServer::new(ScramMechanism::Sha256);
        s.client_first(b"n,,n=a,r=abc", |_| None).unwrap();
        assert_eq!(
            s.client_final(b"c=biws,r=abc,p=AAAA"),
            Err(ScramError::Malformed("nonce does not match"))
        );
    }
}
