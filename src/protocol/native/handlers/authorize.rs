//! Vhost permissions for native requests, with the rules the AMQP adapter applies (RabbitMQ's):
//! configure to declare or delete, write to publish, read to consume, and for a binding write
//! on the queue and read on the exchange. A topic counts as the exchange of its name in vhost
//! `/` (its exchange face): declaring or deleting it needs configure, publishing to it write,
//! subscribing to it read. A passive declare and a server-named queue need nothing; the
//! processed-id requests need only the login, since their ids are scoped by user (see
//! `processed`).
//!
//! Decisions are cached per connection (a publish then costs a hash lookup, not a regex match)
//! and the cache is dropped whenever the user store changes, so a revoked permission refuses
//! the very next request.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::super::connection::Ctx;
use super::super::convert::{self, NativeError};
use crate::broker::routing::DEFAULT_VHOST;
use crate::broker::users::{Access, Resource};
use crate::proto::v1::{publish, publish_batch, request::Op, ErrorCode};

/// Most decisions one connection remembers; past it the memory starts over.
const MAX_CACHED: usize = 1024;

/// One decision's question: (vhost, access, resource, name).
type Question = (String, Access, Resource, String);

/// A connection's memory of permission decisions, for one user-store generation.
#[derive(Default)]
pub(crate) struct PermissionCache {
    inner: Mutex<(u64, HashMap<Question, bool>)>,
}

/// What `op` needs: (vhost, access, resource, name).
fn needs(op: &Op) -> Vec<(&str, Access, Resource, &str)> {
    use Access::{Configure, Read, Write};
    use Resource::{Exchange, Queue};
    match op {
        Op::Publish(p) => match &p.destination {
            Some(publish::Destination::Topic(t)) => {
                vec![(DEFAULT_VHOST, Write, Exchange, &t.topic)]
            }
            Some(publish::Destination::Exchange(e)) => {
                vec![(convert::vhost(&e.vhost), Write, Exchange, &e.exchange)]
            }
            None => Vec::new(),
        },
        Op::PublishBatch(b) => match &b.destination {
            Some(publish_batch::Destination::Topic(t)) => {
                vec![(DEFAULT_VHOST, Write, Exchange, &t.topic)]
            }
            Some(publish_batch::Destination::Exchange(e)) => {
                vec![(convert::vhost(&e.vhost), Write, Exchange, &e.exchange)]
            }
            None => Vec::new(),
        },
        Op::SubscribeQueue(s) => vec![(convert::vhost(&s.vhost), Read, Queue, &s.queue)],
        Op::SubscribeTopic(s) => vec![(DEFAULT_VHOST, Read, Exchange, &s.topic)],
        Op::DeclareTopic(d) => vec![(DEFAULT_VHOST, Configure, Exchange, &d.name)],
        Op::DeleteTopic(d) => vec![(DEFAULT_VHOST, Configure, Exchange, &d.name)],
        Op::DeclareExchange(d) => vec![(convert::vhost(&d.vhost), Configure, Exchange, &d.name)],
        Op::DeleteExchange(d) => vec![(convert::vhost(&d.vhost), Configure, Exchange, &d.name)],
        // A server-named queue (empty name) is the client's own, as RabbitMQ's amq.gen-*.
        Op::DeclareQueue(d) if !d.passive && !d.name.is_empty() => {
            vec![(convert::vhost(&d.vhost), Configure, Queue, &d.name)]
        }
        Op::DeleteQueue(d) => vec![(convert::vhost(&d.vhost), Configure, Queue, &d.name)],
        Op::Bind(b) => vec![
            (convert::vhost(&b.vhost), Write, Queue, &b.queue),
            (convert::vhost(&b.vhost), Read, Exchange, &b.exchange),
        ],
        Op::Unbind(b) => vec![
            (convert::vhost(&b.vhost), Write, Queue, &b.queue),
            (convert::vhost(&b.vhost), Read, Exchange, &b.exchange),
        ],
        // Event store: appending and deleting a stream write to the topic, reading reads it.
        Op::AppendToStream(a) => vec![(DEFAULT_VHOST, Write, Exchange, &a.topic)],
        Op::DeleteStream(d) => vec![(DEFAULT_VHOST, Write, Exchange, &d.topic)],
        Op::GetStreamInfo(g) => vec![(DEFAULT_VHOST, Read, Exchange, &g.topic)],
        Op::ReadStream(r) => vec![(DEFAULT_VHOST, Read, Exchange, &r.topic)],
        Op::ReadAll(r) => vec![(DEFAULT_VHOST, Read, Exchange, &r.topic)],
        Op::SetStreamMetadata(m) => vec![(DEFAULT_VHOST, Write, Exchange, &m.topic)],
        Op::SubscribeToStream(s) => vec![(DEFAULT_VHOST, Read, Exchange, &s.topic)],
        Op::SubscribeToAll(s) => vec![(DEFAULT_VHOST, Read, Exchange, &s.topic)],
        // Persistent subscriptions: managing a group configures the topic, consuming reads it.
        Op::CreatePersistentSubscription(c) => vec![(DEFAULT_VHOST, Configure, Exchange, &c.topic)],
        Op::UpdatePersistentSubscription(u) => vec![(DEFAULT_VHOST, Configure, Exchange, &u.topic)],
        Op::DeletePersistentSubscription(d) => vec![(DEFAULT_VHOST, Configure, Exchange, &d.topic)],
        Op::ReplayParked(r) => vec![(DEFAULT_VHOST, Configure, Exchange, &r.topic)],
        Op::SubscribePersistent(s) => vec![(DEFAULT_VHOST, Read, Exchange, &s.topic)],
        _ => Vec::new(),
    }
}

/// Refuses `op` with `PERMISSION_DENIED` unless the connection's user may do it.
pub(crate) fn authorize(ctx: &Ctx, op: &Op) -> Result<(), NativeError> {
    let Some(user) = ctx.user.get() else {
        return Err(NativeError::new(
            ErrorCode::Unauthenticated,
            "authenticate first",
        ));
    };
    for (vhost, access, resource, name) in needs(op) {
        if !ctx
            .permissions
            .allowed(ctx, vhost, user, access, resource, name)
        {
            let shown = match (resource, name) {
                (Resource::Exchange, "") => "amq.default",
                _ => name,
            };
            return Err(NativeError::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{} access to {} '{shown}' in vhost '{vhost}' refused for user '{user}'",
                    access.as_str(),
                    resource.as_str()
                ),
            ));
        }
    }
    Ok(())
}

impl PermissionCache {
    fn allowed(
        &self,
        ctx: &Ctx,
        vhost: &str,
        user: &str,
        access: Access,
        resource: Resource,
        name: &str,
    ) -> bool {
        let users = ctx.core.users();
        let generation = users.generation();
        let mut guard = self.inner.lock();
        let (seen, decisions) = &mut *guard;
        if *seen != generation || decisions.len() >= MAX_CACHED {
            decisions.clear();
            *seen = generation;
        }
        let key = (vhost.to_string(), access, resource, name.to_string());
        if let Some(ok) = decisions.get(&key) {
            return *ok;
        }
        let ok = users.allowed(vhost, user, access, resource, name);
        decisions.insert(key, ok);
        ok
    }
}
