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
    inner: Mutex<Decisions>,
}

#[derive(Default)]
struct Decisions {
    generation: u64,
    known: HashMap<Question, bool>,
    /// The last question allowed: a publish stream asks the same one for every message, and
    /// comparing it costs less than hashing and allocating its key.
    last_allowed: Option<Question>,
}

/// One permission a request needs: (vhost, access, resource, name).
type Need<'a> = (&'a str, Access, Resource, &'a str);

/// At most two permissions, in an array: no allocation per publish.
type Needs<'a> = [Option<Need<'a>>; 2];

const NOTHING: Needs<'static> = [None, None];

fn one(need: Need<'_>) -> Needs<'_> {
    [Some(need), None]
}

/// What `op` needs.
fn needs(op: &Op) -> Needs<'_> {
    use Access::{Configure, Read, Write};
    use Resource::{Exchange, Queue};
    match op {
        Op::Publish(p) => match &p.destination {
            Some(publish::Destination::Topic(t)) => one((DEFAULT_VHOST, Write, Exchange, &t.topic)),
            Some(publish::Destination::Exchange(e)) => {
                one((convert::vhost(&e.vhost), Write, Exchange, &e.exchange))
            }
            None => NOTHING,
        },
        Op::PublishBatch(b) => match &b.destination {
            Some(publish_batch::Destination::Topic(t)) => {
                one((DEFAULT_VHOST, Write, Exchange, &t.topic))
            }
            Some(publish_batch::Destination::Exchange(e)) => {
                one((convert::vhost(&e.vhost), Write, Exchange, &e.exchange))
            }
            None => NOTHING,
        },
        Op::SubscribeQueue(s) => one((convert::vhost(&s.vhost), Read, Queue, &s.queue)),
        Op::SubscribeTopic(s) => one((DEFAULT_VHOST, Read, Exchange, &s.topic)),
        Op::DeclareTopic(d) => one((DEFAULT_VHOST, Configure, Exchange, &d.name)),
        Op::DeleteTopic(d) => one((DEFAULT_VHOST, Configure, Exchange, &d.name)),
        Op::DeclareExchange(d) => one((convert::vhost(&d.vhost), Configure, Exchange, &d.name)),
        Op::DeleteExchange(d) => one((convert::vhost(&d.vhost), Configure, Exchange, &d.name)),
        // A server-named queue (empty name) is the client's own, as RabbitMQ's amq.gen-*.
        Op::DeclareQueue(d) if !d.passive && !d.name.is_empty() => {
            one((convert::vhost(&d.vhost), Configure, Queue, &d.name))
        }
        Op::DeleteQueue(d) => one((convert::vhost(&d.vhost), Configure, Queue, &d.name)),
        Op::Bind(b) => [
            Some((convert::vhost(&b.vhost), Write, Queue, &b.queue)),
            Some((convert::vhost(&b.vhost), Read, Exchange, &b.exchange)),
        ],
        Op::Unbind(b) => [
            Some((convert::vhost(&b.vhost), Write, Queue, &b.queue)),
            Some((convert::vhost(&b.vhost), Read, Exchange, &b.exchange)),
        ],
        // Event store: appending and deleting a stream write to the topic, reading reads it.
        Op::AppendToStream(a) => one((DEFAULT_VHOST, Write, Exchange, &a.topic)),
        Op::DeleteStream(d) => one((DEFAULT_VHOST, Write, Exchange, &d.topic)),
        Op::GetStreamInfo(g) => one((DEFAULT_VHOST, Read, Exchange, &g.topic)),
        Op::ReadStream(r) => one((DEFAULT_VHOST, Read, Exchange, &r.topic)),
        Op::ReadAll(r) => one((DEFAULT_VHOST, Read, Exchange, &r.topic)),
        Op::SetStreamMetadata(m) => one((DEFAULT_VHOST, Write, Exchange, &m.topic)),
        Op::SubscribeToStream(s) => one((DEFAULT_VHOST, Read, Exchange, &s.topic)),
        Op::SubscribeToAll(s) => one((DEFAULT_VHOST, Read, Exchange, &s.topic)),
        // Persistent subscriptions: managing a group configures the topic, consuming reads it.
        Op::CreatePersistentSubscription(c) => one((DEFAULT_VHOST, Configure, Exchange, &c.topic)),
        Op::UpdatePersistentSubscription(u) => one((DEFAULT_VHOST, Configure, Exchange, &u.topic)),
        Op::DeletePersistentSubscription(d) => one((DEFAULT_VHOST, Configure, Exchange, &d.topic)),
        Op::ReplayParked(r) => one((DEFAULT_VHOST, Configure, Exchange, &r.topic)),
        Op::SubscribePersistent(s) => one((DEFAULT_VHOST, Read, Exchange, &s.topic)),
        _ => NOTHING,
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
    for (vhost, access, resource, name) in needs(op).into_iter().flatten() {
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
        let mut d = self.inner.lock();
        if d.generation != generation || d.known.len() >= MAX_CACHED {
            d.known.clear();
            d.last_allowed = None;
            d.generation = generation;
        }
        if let Some((v, a, r, n)) = &d.last_allowed {
            if v == vhost && *a == access && *r == resource && n == name {
                return true;
            }
        }
        let key = (vhost.to_string(), access, resource, name.to_string());
        let ok = match d.known.get(&key) {
            Some(ok) => *ok,
            None => {
                let ok = users.allowed(vhost, user, access, resource, name);
                d.known.insert(key.clone(), ok);
                ok
            }
        };
        if ok {
            d.last_allowed = Some(key);
        }
        ok
    }
}
