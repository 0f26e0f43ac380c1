//! Virtual hosts created and deleted at run time (RabbitMQ's `PUT/DELETE /api/vhosts/{name}`),
//! beside the ones the configuration lists (`amqp.vhosts`), and the core's async login, which
//! adds the login guard's accounting to [`super::UserStore::check_password`].

use std::net::IpAddr;

use super::{LoginRefused, UserError, UserInfo};
use crate::broker::BrokerCore;
use crate::meta::VhostRecord;

/// A vhost as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostInfo {
    pub name: String,
    pub description: String,
    /// Listed in the configuration (it cannot be deleted at run time, only there).
    pub configured: bool,
}

impl BrokerCore {
    /// Checks a password the way every protocol does, counting a failure in the login guard
    /// (metric, rate-limited WARN line) and waiting out the guard's per-peer delay before
    /// answering. `protocol` labels the metric: `"amqp"`, `"http"`, `"kafka"`, `"native"`.
    pub async fn login(
        &self,
        protocol: &'static str,
        peer: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Result<UserInfo, LoginRefused> {
        let guard = self.login_guard();
        match self.users().check_password(user, password, peer) {
            Ok(info) => {
                guard.succeeded(peer);
                Ok(info)
            }
            Err(refused) => {
                if let LoginRefused::LoopbackOnly(name) = &refused {
                    tracing::warn!(
                        protocol,
                        peer = %peer.map_or_else(|| "unknown".into(), |p| p.to_string()),
                        user = %name,
                        "login refused: this user may only connect from a loopback address \
                         (give it another password or create a user)"
                    );
                }
                guard.failed(protocol, peer, user).wait().await;
                Err(refused)
            }
        }
    }

    /// Every vhost clients may open: the configured ones and those created at run time.
    pub fn vhosts(&self) -> Result<Vec<VhostInfo>, UserError> {
        let configured = self.users().configured_vhosts.read().clone();
        let mut all: Vec<VhostInfo> = configured
            .iter()
            .map(|name| VhostInfo {
                name: name.clone(),
                description: String::new(),
                configured: true,
            })
            .collect();
        for v in self.meta().vhosts()? {
            if !configured.contains(&v.name) {
                all.push(VhostInfo {
                    name: v.name,
                    description: v.description,
                    configured: false,
                });
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// Tells the router which vhosts exist (at start, and after every change).
    pub fn apply_vhosts(&self) -> Result<(), UserError> {
        let names: Vec<String> = self.vhosts()?.into_iter().map(|v| v.name).collect();
        self.router().set_vhosts(&names);
        Ok(())
    }

    /// Creates a vhost; `creator` (the admin API's user) gets full permissions on it, as
    /// RabbitMQ's management API grants. Returns whether it was created.
    pub fn add_vhost(
        &self,
        name: &str,
        description: &str,
        creator: Option<&str>,
    ) -> Result<bool, UserError> {
        if name.is_empty() {
            return Err(UserError::Invalid("vhost names must not be empty".into()));
        }
        let exists = self.vhosts()?.iter().any(|v| v.name == name);
        if !exists
            || !self
                .users()
                .configured_vhosts
                .read()
                .iter()
                .any(|v| v == name)
        {
            self.meta().put_vhost(&VhostRecord {
                name: name.to_string(),
                description: description.to_string(),
            })?;
        }
        self.apply_vhosts()?;
        if !exists {
            if let Some(user) = creator.filter(|u| self.users().user(u).is_some()) {
                self.users().grant_all(name, user)?;
            }
        }
        Ok(!exists)
    }

    /// Deletes a vhost created at run time with every queue and exchange in it, and every
    /// permission on it (RabbitMQ's `DELETE /api/vhosts/{name}`).
    pub async fn delete_vhost(&self, name: &str) -> Result<(), UserError> {
        if self
            .users()
            .configured_vhosts
            .read()
            .iter()
            .any(|v| v == name)
        {
            return Err(UserError::Invalid(format!(
                "vhost '{name}' is listed in the configuration (amqp.vhosts); remove it there"
            )));
        }
        if !self.meta().vhosts()?.iter().any(|v| v.name == name) {
            return Err(UserError::NotFound(format!("vhost '{name}'")));
        }
        for queue in self.router().queues() {
            if queue.vhost() == name {
                let queue_name = queue.name().to_string();
                if let Err(e) = self
                    .router()
                    .delete_queue(name, &queue_name, false, false, None)
                    .await
                {
                    tracing::warn!(vhost = %name, queue = %queue_name, error = %e, "deleting a queue of a deleted vhost failed");
                }
            }
        }
        for exchange in self.router().exchanges() {
            let def = exchange.def();
            if def.vhost == name && !def.name.is_empty() && !def.name.starts_with("amq.") {
                let _ = self.router().delete_exchange(name, &def.name, false).await;
            }
        }
        self.meta().delete_vhost(name)?;
        self.users().forget_vhost(name);
        self.apply_vhosts()?;
        Ok(())
    }
}
