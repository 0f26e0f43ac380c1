//! Who may skip authentication: Kafka clients without SASL (`kafka.allow_anonymous`) and admin
//! API requests without basic auth (`observe.allow_anonymous`). One type for both, so the two
//! switches read and behave alike: never, from loopback peers only, or from anywhere.

use serde::{Deserialize, Serialize};

/// `kafka.allow_anonymous` and `observe.allow_anonymous`: `"loopback"`, `true` or `false` in
/// the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AnonymousAccessValue", into = "AnonymousAccessValue")]
pub enum AnonymousAccess {
    /// Every client must authenticate.
    Never,
    /// Clients on this machine may skip authentication (the default).
    Loopback,
    /// Every client may skip authentication (Kafka's behaviour before SASL).
    Always,
}

impl AnonymousAccess {
    /// Whether a client at `peer` may skip authentication.
    pub fn allows(self, peer: std::net::IpAddr) -> bool {
        match self {
            AnonymousAccess::Never => false,
            AnonymousAccess::Loopback => super::is_loopback(peer),
            AnonymousAccess::Always => true,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum AnonymousAccessValue {
    Flag(bool),
    Word(String),
}

impl TryFrom<AnonymousAccessValue> for AnonymousAccess {
    type Error = String;
    fn try_from(v: AnonymousAccessValue) -> Result<Self, String> {
        match v {
            AnonymousAccessValue::Flag(true) => Ok(AnonymousAccess::Always),
            AnonymousAccessValue::Flag(false) => Ok(AnonymousAccess::Never),
            AnonymousAccessValue::Word(w) if w == "loopback" => Ok(AnonymousAccess::Loopback),
            AnonymousAccessValue::Word(w) => {
                Err(format!("`{w}` is not one of true, false, \"loopback\""))
            }
        }
    }
}

impl From<AnonymousAccess> for AnonymousAccessValue {
    fn from(a: AnonymousAccess) -> Self {
        match a {
            AnonymousAccess::Never => AnonymousAccessValue::Flag(false),
            AnonymousAccess::Loopback => AnonymousAccessValue::Word("loopback".into()),
            AnonymousAccess::Always => AnonymousAccessValue::Flag(true),
        }
    }
}
