//! Password hashes and SCRAM credentials, with `ring` (already in the tree through rustls).
//!
//! The password hash is RabbitMQ's `rabbit_password_hashing_sha256`: base64 of a 4-byte random
//! salt followed by SHA-256(salt ++ password). Using RabbitMQ's exact form means a
//! `password_hash` from a RabbitMQ definitions export (or `rabbitmqctl hash_password`) works
//! here unchanged, and `GET /api/users` shows what RabbitMQ shows.
//!
//! SCRAM credentials follow RFC 5802: SaltedPassword = PBKDF2(HMAC-H, password, salt, i),
//! StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword, "Server
//! Key"). Kafka's default and minimum iteration count is 4096.

use ring::rand::SecureRandom;
use ring::{digest, hmac, pbkdf2};

use crate::meta::ScramRecord;
use crate::util::{base64_decode, base64_encode};

/// Kafka's default (and minimum) SCRAM iteration count.
pub const DEFAULT_SCRAM_ITERATIONS: u32 = 4096;
/// Kafka's maximum SCRAM iteration count (`AlterUserScramCredentials` refuses more).
pub const MAX_SCRAM_ITERATIONS: u32 = 16384;

/// The two SCRAM mechanisms, with Kafka's mechanism numbers (DescribeUserScramCredentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub fn sasl_name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_sasl_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(ScramMechanism::Sha256),
            "SCRAM-SHA-512" => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// Kafka's `ScramMechanism` numbers: 1 = SHA-256, 2 = SHA-512.
    pub fn kafka_type(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    pub fn from_kafka_type(t: i8) -> Option<Self> {
        match t {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramMechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramMechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    pub(crate) fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramMechanism::Sha256 => hmac::HMAC_SHA256,
            ScramMechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    pub(crate) fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramMechanism::Sha256 => &digest::SHA256,
            ScramMechanism::Sha512 => &digest::SHA512,
        }
    }

    pub fn output_len(self) -> usize {
        self.digest().output_len()
    }
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    // The OS random source failing is not something a login can recover from; fall back to
    // std's per-process random state rather than a fixed salt.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        for chunk in out.chunks_mut(16) {
            let r = crate::util::random_bytes16();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
    out
}

/// RabbitMQ's salted SHA-256 hash of `password`, with a fresh salt.
pub fn hash_password(password: &str) -> String {
    let salt = random_bytes(4);
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(ctx.finish().as_ref());
    base64_encode(&out)
}

/// Whether `hash` (RabbitMQ's SHA-256 form) is well formed.
pub fn is_valid_hash(hash: &str) -> bool {
    base64_decode(hash).is_some_and(|raw| raw.len() == 4 + 32)
}

/// Checks `password` against a stored hash, in constant time over the digest.
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Some(raw) = base64_decode(hash) else {
        return false;
    };
    if raw.len() != 4 + 32 {
        return false;
    }
    let expected = hash_with_salt(&raw[..4], password);
    let Some(expected) = base64_decode(&expected) else {
        return false;
    };
    constant_time_eq(&expected, &raw)
}

/// Compares secrets without an early exit, so the time taken does not tell how many leading
/// bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The SaltedPassword of RFC 5802.
pub(crate) fn salted_password(
    mechanism: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let mut out = vec![0u8; mechanism.output_len()];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(mechanism.pbkdf2(), rounds, salt, password, &mut out);
    out
}

pub(crate) fn hmac_sign(mechanism: ScramMechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(mechanism.hmac(), key);
    hmac::sign(&key, data).as_ref().to_vec()
}

pub(crate) fn hash(mechanism: ScramMechanism, data: &[u8]) -> Vec<u8> {
    digest::digest(mechanism.digest(), data).as_ref().to_vec()
}

/// The SCRAM credential of `password` with a fresh salt.
pub fn scram_credential(mechanism: ScramMechanism, password: &str, iterations: u32) -> ScramRecord {
    let salt = random_bytes(32);
    let salted = salted_password(mechanism, password.as_bytes(), &salt, iterations);
    scram_from_salted_password(mechanism, salt, &salted, iterations)
}

/// The credential from an already salted password (Kafka's AlterUserScramCredentials sends
/// the salt and SaltedPassword, never the password).
pub fn scram_from_salted_password(
    mechanism: ScramMechanism,
    salt: Vec<u8>,
    salted: &[u8],
    iterations: u32,
) -> ScramRecord {
    let mut record = scram_from_salted(mechanism, salted, iterations);
    record.salt = salt;
    record
}

fn scram_from_salted(mechanism: ScramMechanism, salted: &[u8], iterations: u32) -> ScramRecord {
    let client_key = hmac_sign(mechanism, salted, b"Client Key");
    ScramRecord {
        salt: Vec::new(),
        iterations,
        stored_key: hash(mechanism, &client_key),
        server_key: hmac_sign(mechanism, salted, b"Server Key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_hash_round_trips_and_matches_rabbitmq() {
        let h = hash_password("s3cret");
        assert!(is_valid_hash(&h));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cres"));
        assert!(!verify_password("not base64!", "s3cret"));
        // The worked example of RabbitMQ's "Computing Password Hash" documentation: salt
        // 908D C60A, password "test12".
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let known = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
        assert_eq!(hash_with_salt(&salt, "test12"), known);
        assert!(verify_password(known, "test12"));
    }

    #[test]
    fn scram_credential_matches_rfc_7677_vector() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
        // 4096 iterations; the server signature in the exchange follows from ServerKey.
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(ScramMechanism::Sha256, b"pencil", &salt, 4096);
        let record = scram_from_salted_password(ScramMechanism::Sha256, salt, &salted, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac_sign(
            ScramMechanism::Sha256,
            &record.server_key,
            auth_message.as_bytes(),
        );
        assert_eq!(
            base64_encode(&server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let fresh = scram_credential(ScramMechanism::Sha512, "pencil", 4096);
        assert_eq!(fresh.salt.len(), 32);
        assert_eq!(fresh.stored_key.len(), 64);
    }
}
