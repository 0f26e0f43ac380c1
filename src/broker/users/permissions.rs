//! RabbitMQ's permission model: per (vhost, user), three regular expressions over resource
//! names: `configure` (declare and delete queues and exchanges), `write` (publish to an
//! exchange, bind a queue or exchange as destination) and `read` (consume from or purge a
//! queue, use an exchange as a binding's source).
//!
//! As in RabbitMQ, a pattern is searched for anywhere in the name (not anchored: `^orders-`
//! anchors itself), the empty pattern matches nothing, and the default exchange (named `""`
//! on the wire) is checked as `amq.default`.

use regex::Regex;

use crate::meta::PermissionRecord;

/// What an operation needs on a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// Whether a permission names a queue or an exchange (only for messages: RabbitMQ matches
/// both kinds against the same patterns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Queue,
    Exchange,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Queue => "queue",
            Resource::Exchange => "exchange",
        }
    }
}

/// One stored permission with its patterns compiled.
pub struct Permission {
    pub record: PermissionRecord,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

impl Permission {
    /// Compiles the three patterns; the error names the one that does not parse.
    pub fn compile(record: PermissionRecord) -> Result<Self, String> {
        let compile = |which: &str, pattern: &str| -> Result<Option<Regex>, String> {
            if pattern.is_empty() {
                return Ok(None);
            }
            // Bounded so a pathological pattern from the API cannot eat memory.
            regex::RegexBuilder::new(pattern)
                .size_limit(1 << 20)
                .build()
                .map(Some)
                .map_err(|e| format!("{which} pattern `{pattern}` is not a valid regex: {e}"))
        };
        Ok(Self {
            configure: compile("configure", &record.configure)?,
            write: compile("write", &record.write)?,
            read: compile("read", &record.read)?,
            record,
        })
    }

    pub fn allows(&self, access: Access, resource: Resource, name: &str) -> bool {
        let name = match (resource, name) {
            (Resource::Exchange, "") => "amq.default",
            _ => name,
        };
        let pattern = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        pattern.as_ref().is_some_and(|re| re.is_match(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(configure: &str, write: &str, read: &str) -> Permission {
        Permission::compile(PermissionRecord {
            vhost: "/".into(),
            user: "u".into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
        .unwrap()
    }

    #[test]
    fn patterns_follow_rabbitmq() {
        let p = perm("^orders-", ".*", "");
        assert!(p.allows(Access::Configure, Resource::Queue, "orders-eu"));
        assert!(!p.allows(Access::Configure, Resource::Queue, "my-orders-eu"));
        assert!(p.allows(Access::Write, Resource::Exchange, ""));
        assert!(!p.allows(Access::Read, Resource::Queue, "orders-eu"));
        // Unanchored: "log" matches inside a name.
        let p = perm("log", "^$", "^amq\\.default$");
        assert!(p.allows(Access::Configure, Resource::Exchange, "app.logs"));
        assert!(!p.allows(Access::Write, Resource::Exchange, "x"));
        assert!(p.allows(Access::Read, Resource::Exchange, ""));
        assert!(Permission::compile(PermissionRecord {
            vhost: "/".into(),
            user: "u".into(),
            configure: "(".into(),
            write: String::new(),
            read: String::new(),
        })
        .is_err());
    }
}
