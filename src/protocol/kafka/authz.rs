//! Kafka ACL enforcement for the handlers: who a connection is (its principal) and
//! [`KafkaContext::allowed`], the one check every handler calls. With `kafka.acl_enabled` off
//! every check passes without touching the bindings, so brokers without ACLs pay nothing.
//!
//! The principal is Kafka's: `User:<SASL user>`, else `User:<certificate subject>` for a
//! verified client certificate, else `User:ANONYMOUS`.

pub use crate::broker::acls::{operation, resource, CLUSTER_NAME};

use super::connection::ConnInfo;
use super::KafkaContext;
use crate::broker::acls::ANONYMOUS;

impl ConnInfo {
    /// The Kafka principal of this connection.
    pub fn principal(&self) -> String {
        if let Some(user) = &self.user {
            return format!("User:{user}");
        }
        match &self.security.client_cert {
            Some(cert) => cert.kafka_principal(),
            None => ANONYMOUS.to_string(),
        }
    }
}

impl KafkaContext {
    pub fn acl_enabled(&self) -> bool {
        self.settings.kafka.acl_enabled
    }

    /// May `conn` do `op` on the resource `(resource_type, name)`?
    pub fn allowed(&self, conn: &ConnInfo, op: i8, resource_type: i8, name: &str) -> bool {
        if !self.acl_enabled() {
            return true;
        }
        let principal = conn.principal();
        let ok = self.core.acls().authorize(
            &self.acl_policy,
            &principal,
            conn.peer.ip(),
            op,
            resource_type,
            name,
        );
        if !ok {
            tracing::debug!(%principal, op, resource_type, name, "Kafka ACL denied");
            metrics::counter!("ferry_kafka_acl_denied_total").increment(1);
        }
        ok
    }

    /// May `conn` do `op` on the cluster?
    pub fn allowed_on_cluster(&self, conn: &ConnInfo, op: i8) -> bool {
        self.allowed(conn, op, resource::CLUSTER, CLUSTER_NAME)
    }

    /// May `conn` have the topic `name` created for it by Metadata or Produce (auto-creation)?
    /// Kafka asks CREATE on the cluster or on the topic.
    pub fn may_auto_create(&self, conn: &ConnInfo, name: &str) -> bool {
        self.allowed_on_cluster(conn, operation::CREATE)
            || self.allowed(conn, operation::CREATE, resource::TOPIC, name)
    }

    /// Kafka 3.x's rule for an idempotent producer: IDEMPOTENT_WRITE on the cluster, or WRITE
    /// on at least one topic.
    pub fn allowed_idempotent_write(&self, conn: &ConnInfo) -> bool {
        if !self.acl_enabled() || self.allowed_on_cluster(conn, operation::IDEMPOTENT_WRITE) {
            return true;
        }
        self.core.acls().authorize_any(
            &self.acl_policy,
            &conn.principal(),
            conn.peer.ip(),
            operation::WRITE,
            resource::TOPIC,
        )
    }
}
