//! The security blocks of the configuration: `[[users]]`, how the legacy keys
//! (`amqp.users`, `amqp.permissions`, `observe.admin_user`/`admin_password`) fold into the one
//! user store, Kafka's anonymous-access rule, and redaction of secrets for `--print-config`.

use serde::{Deserialize, Serialize};

use super::{AmqpPermission, AmqpSettings, AmqpUser, Config, ConfigError};
pub use crate::broker::users::AnonymousAccess;
use crate::broker::users::{ConfiguredUser, Password, Seed};

/// One `[[users]]` entry: a user of every protocol and the admin API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub name: String,
    /// The clear password: hashed (RabbitMQ's salted SHA-256, and SCRAM-SHA-256/512 for Kafka)
    /// before it is stored. Give this or `password_hash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// RabbitMQ's `password_hash` (base64 of salt ++ SHA-256, as `rabbitmqctl hash_password`
    /// and definition exports give it). Kafka SCRAM needs the clear password or
    /// AlterUserScramCredentials.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password_hash: String,
    /// RabbitMQ tags: `administrator`, `management`, `monitoring` (admin API access).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The SASL mechanisms Kafka clients may use (`kafka.sasl_enabled_mechanisms`).
pub const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Secrets `--print-config` and errors never show.
const SECRET_KEYS: &[&str] = &["password", "password_hash", "admin_password"];
pub(super) const REDACTED: &str = "<redacted>";

/// Whether a dotted key (`users`, `amqp.users`, `observe.admin_password`) holds a secret.
pub(super) fn is_secret_key(dotted: &str) -> bool {
    let last = dotted.rsplit('.').next().unwrap_or(dotted);
    SECRET_KEYS.contains(&last) || matches!(dotted, "users" | "amqp.users")
}

/// Replaces every secret in a serialized configuration with [`REDACTED`].
pub(super) fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                match v {
                    toml::Value::String(s)
                        if SECRET_KEYS.contains(&key.as_str()) && !s.is_empty() =>
                    {
                        *s = REDACTED.to_string();
                    }
                    other => redact(other),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

impl Config {
    /// What the configuration says about users, for [`crate::broker::users::UserStore::seed`].
    /// Legacy keys still work: `amqp.users` entries (other than the default `guest`) are users
    /// without tags, `observe.admin_user`/`admin_password` (other than `admin`/`admin`) an
    /// `administrator`, `amqp.permissions` limits users to some vhosts. The defaults become
    /// the loopback-only default users.
    pub fn user_seed(&self) -> Seed {
        let default_amqp = AmqpSettings::default();
        let default_observe = super::ObserveSettings::default();
        let vhosts_of = |name: &str| -> Option<Vec<String>> {
            let entries: Vec<&AmqpPermission> = self
                .amqp
                .permissions
                .iter()
                .filter(|p| p.user == name)
                .collect();
            (!entries.is_empty()).then(|| {
                entries
                    .iter()
                    .flat_map(|p| p.vhosts.iter().cloned())
                    .collect()
            })
        };
        let mut users: Vec<ConfiguredUser> = self
            .users
            .iter()
            .map(|u| ConfiguredUser {
                name: u.name.clone(),
                password: match (u.password.is_empty(), u.password_hash.is_empty()) {
                    (false, _) => Password::Clear(u.password.clone()),
                    (true, false) => Password::Hash(u.password_hash.clone()),
                    (true, true) => Password::None,
                },
                tags: u.tags.clone(),
                vhosts: vhosts_of(&u.name),
            })
            .collect();
        // With `[[users]]` the operator has said who exists: no default users.
        let mut defaults = Vec::new();
        let defaults_wanted = self.users.is_empty();
        let legacy_amqp = |u: &AmqpUser, tags: Vec<String>| ConfiguredUser {
            name: u.name.clone(),
            password: Password::Clear(u.password.clone()),
            tags,
            vhosts: vhosts_of(&u.name),
        };
        if self.amqp.users == default_amqp.users {
            if defaults_wanted {
                // RabbitMQ's default user is an administrator.
                defaults.extend(
                    self.amqp
                        .users
                        .iter()
                        .map(|u| legacy_amqp(u, vec!["administrator".into()])),
                );
            }
        } else {
            users.extend(self.amqp.users.iter().map(|u| legacy_amqp(u, Vec::new())));
        }
        let observe = &self.observe;
        let admin = ConfiguredUser {
            name: observe.admin_user.clone(),
            password: Password::Clear(observe.admin_password.clone()),
            tags: vec!["administrator".into()],
            vhosts: vhosts_of(&observe.admin_user),
        };
        let admin_is_default = observe.admin_user == default_observe.admin_user
            && observe.admin_password == default_observe.admin_password;
        if admin_is_default && defaults_wanted {
            defaults.push(admin);
        } else if !admin_is_default && !observe.admin_user.is_empty() {
            users.push(admin);
        }
        Seed {
            users,
            defaults,
            vhosts: self.amqp.vhosts.clone(),
            loopback_users: self.amqp.loopback_users.clone(),
        }
    }

    /// Whether the admin API is switched on (`observe.admin_user` and `admin_password` both
    /// empty turn it off, as before the user store).
    pub fn admin_api_enabled(&self) -> bool {
        !(self.observe.admin_user.is_empty() && self.observe.admin_password.is_empty())
    }

    pub(super) fn validate_users(&self) -> Result<(), ConfigError> {
        for principal in &self.kafka.super_users {
            if !matches!(principal.split_once(':'), Some((kind, name)) if !kind.is_empty() && !name.is_empty())
            {
                return Err(ConfigError::Invalid {
                    key: "kafka.super_users".into(),
                    message: format!("`{principal}` is not a principal like `User:admin`"),
                });
            }
        }
        for m in &self.kafka.sasl_enabled_mechanisms {
            if !SASL_MECHANISMS.contains(&m.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "kafka.sasl_enabled_mechanisms".into(),
                    message: format!("`{m}` is not one of {}", SASL_MECHANISMS.join(", ")),
                });
            }
        }
        let invalid = |message: String| ConfigError::Invalid {
            key: "users".into(),
            message,
        };
        let mut seen = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.is_empty() {
                return Err(invalid("every [[users]] entry needs a name".into()));
            }
            if !seen.insert(u.name.as_str()) {
                return Err(invalid(format!("user '{}' is listed twice", u.name)));
            }
            if !u.password.is_empty() && !u.password_hash.is_empty() {
                return Err(invalid(format!(
                    "user '{}' has both password and password_hash; give one",
                    u.name
                )));
            }
            if !u.password_hash.is_empty()
                && !crate::broker::users::credentials::is_valid_hash(&u.password_hash)
            {
                return Err(invalid(format!(
                    "the password_hash of user '{}' is not RabbitMQ's salted SHA-256 form \
                     (base64 of a 4-byte salt and a 32-byte digest)",
                    u.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_section_and_legacy_keys_fold_into_one_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "[[users]]\nname = \"app\"\npassword = \"pw1\"\ntags = [\"management\"]\n\
             [amqp]\nusers = [{ name = \"legacy\", password = \"pw2\" }]\n\
             permissions = [{ user = \"legacy\", vhosts = [\"/\"] }]\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), Vec::new(), vec![]).unwrap();
        let seed = c.user_seed();
        let names: Vec<&str> = seed.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["app", "legacy"]);
        assert_eq!(seed.users[1].vhosts, Some(vec!["/".to_string()]));
        // `[[users]]` says who exists: no default users.
        assert!(seed.defaults.is_empty());

        let printed = super::super::to_toml_string(&c);
        assert!(
            !printed.contains("pw1") && !printed.contains("pw2"),
            "{printed}"
        );
        assert!(printed.contains(REDACTED), "{printed}");

        std::fs::write(
            &path,
            "[[users]]\nname = \"app\"\npassword = \"a\"\npassword_hash = \"b\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), Vec::new(), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("both password and password_hash"), "{err}");
    }

    #[test]
    fn super_users_take_a_list_or_kafkas_joined_string() {
        let from_env = Config::load(
            None,
            vec![(
                "FERRY_KAFKA__SUPER_USERS".to_string(),
                "User:admin; User:ops".to_string(),
            )],
            vec![],
        )
        .unwrap();
        assert_eq!(from_env.kafka.super_users, vec!["User:admin", "User:ops"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "[kafka]\nsuper_users = [\"User:root\"]\n").unwrap();
        let from_file = Config::load(Some(&path), Vec::new(), vec![]).unwrap();
        assert_eq!(from_file.kafka.super_users, vec!["User:root"]);
        std::fs::write(&path, "[kafka]\nsuper_users = [\"root\"]\n").unwrap();
        let err = Config::load(Some(&path), Vec::new(), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.super_users"), "{err}");
    }

    #[test]
    fn allow_anonymous_takes_a_flag_or_loopback() {
        let load = |v: &str| {
            Config::load(
                None,
                vec![("FERRY_KAFKA__ALLOW_ANONYMOUS".to_string(), v.to_string())],
                vec![],
            )
        };
        assert_eq!(
            load("true").unwrap().kafka.allow_anonymous,
            AnonymousAccess::Always
        );
        assert_eq!(
            load("false").unwrap().kafka.allow_anonymous,
            AnonymousAccess::Never
        );
        assert_eq!(
            load("loopback").unwrap().kafka.allow_anonymous,
            AnonymousAccess::Loopback
        );
        let err = load("sometimes").unwrap_err().to_string();
        assert!(err.contains("kafka.allow_anonymous"), "{err}");
        let err = Config::load(
            None,
            vec![(
                "FERRY_KAFKA__SASL_ENABLED_MECHANISMS".to_string(),
                "GSSAPI".to_string(),
            )],
            vec![],
        );
        assert!(err.is_err());
    }

    #[test]
    fn defaults_seed_guest_and_admin() {
        let seed = Config::default().user_seed();
        assert!(seed.users.is_empty());
        let names: Vec<&str> = seed.defaults.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["guest", "admin"]);
    }
}
