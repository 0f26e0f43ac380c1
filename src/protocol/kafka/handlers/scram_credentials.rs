//! DescribeUserScramCredentials and AlterUserScramCredentials (KIP-554): the Kafka face of the
//! user store's SCRAM credentials, so `kafka-configs --entity-type users` and librdkafka's
//! admin calls manage the same users AMQP and the admin API see.
//!
//! Kafka sends a salt and SaltedPassword, never the password, so an upsertion sets only the
//! SCRAM credential; a user it names that does not exist yet is created without a PLAIN
//! password, tags or AMQP permissions (Kafka has no user objects beyond credentials). Errors
//! follow Kafka's broker: RESOURCE_NOT_FOUND, DUPLICATE_RESOURCE, UNACCEPTABLE_CREDENTIAL,
//! UNSUPPORTED_SASL_MECHANISM, CLUSTER_AUTHORIZATION_FAILED.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::users::credentials::{
    scram_from_salted_password, DEFAULT_SCRAM_ITERATIONS, MAX_SCRAM_ITERATIONS,
};
use crate::broker::users::{Password, ScramMechanism};
use crate::protocol::kafka::authz::operation;
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::KafkaContext;

/// The first problem of each user: its result.
#[derive(Default)]
struct Errors(BTreeMap<String, (i16, String)>);

impl Errors {
    fn fail(&mut self, user: &str, code: ResponseError, message: &str) {
        self.0
            .entry(user.to_string())
            .or_insert((code.code(), message.to_string()));
    }
}

const MECHANISMS: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

/// Whether the connection may read or change credentials: an `administrator` user, or a
/// client the broker lets in without authentication (`kafka.allow_anonymous`), which is what a
/// Kafka broker without an authorizer allows. With ACLs on, an `administrator` user or a
/// principal the ACLs allow `op` (DESCRIBE or ALTER) on the cluster, as Kafka requires.
fn may_manage_credentials(ctx: &KafkaContext, conn: &ConnInfo, op: i8) -> bool {
    let administrator = conn.user.as_ref().is_some_and(|user| {
        ctx.core
            .users()
            .user(user)
            .is_some_and(|u| u.tags.iter().any(|t| t == "administrator"))
    });
    if ctx.acl_enabled() {
        return administrator || ctx.allowed_on_cluster(conn, op);
    }
    conn.user.is_none() || administrator
}

fn text(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

pub fn describe(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DescribeUserScramCredentialsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let answer = |body: DescribeUserScramCredentialsResponse| {
        respond(req.api_key, req.api_version, req.correlation_id, &body)
    };
    if !may_manage_credentials(ctx, conn, operation::DESCRIBE) {
        return answer(
            DescribeUserScramCredentialsResponse::default()
                .with_error_code(ResponseError::ClusterAuthorizationFailed.code())
                .with_error_message(text("describing SCRAM credentials needs an administrator")),
        );
    }
    let users = ctx.core.users();
    let infos = |name: &str| -> Vec<CredentialInfo> {
        MECHANISMS
            .iter()
            .filter_map(|m| {
                users.scram(name, *m).map(|c| {
                    CredentialInfo::default()
                        .with_mechanism(m.kafka_type())
                        .with_iterations(i32::try_from(c.iterations).unwrap_or(i32::MAX))
                })
            })
            .collect()
    };
    let results = match request.users {
        // Every user with at least one credential.
        None => users
            .users()
            .into_iter()
            .filter_map(|u| {
                let found = infos(&u.name);
                (!found.is_empty()).then(|| {
                    DescribeUserScramCredentialsResult::default()
                        .with_user(StrBytes::from_string(u.name))
                        .with_credential_infos(found)
                })
            })
            .collect(),
        Some(names) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for n in &names {
                *seen.entry(n.name.to_string()).or_default() += 1;
            }
            let mut results = Vec::new();
            for (name, count) in seen.into_iter().collect::<BTreeMap<_, _>>() {
                let result = DescribeUserScramCredentialsResult::default()
                    .with_user(StrBytes::from_string(name.clone()));
                let found = infos(&name);
                results.push(if count > 1 {
                    result
                        .with_error_code(ResponseError::DuplicateResource.code())
                        .with_error_message(text("Cannot describe SCRAM credentials for the same user twice in a single request"))
                } else if found.is_empty() {
                    result
                        .with_error_code(ResponseError::ResourceNotFound.code())
                        .with_error_message(text("Attempt to describe a user credential that does not exist"))
                } else {
                    result.with_credential_infos(found)
                });
            }
            results
        }
    };
    answer(DescribeUserScramCredentialsResponse::default().with_results(results))
}

pub fn alter(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: AlterUserScramCredentialsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    // One result per user, as Kafka answers; the first problem of a user is its result.
    let mut errors = Errors::default();
    let touched: BTreeSet<String> = request
        .deletions
        .iter()
        .map(|d| d.name.to_string())
        .chain(request.upsertions.iter().map(|u| u.name.to_string()))
        .collect();
    let allowed = may_manage_credentials(ctx, conn, operation::ALTER);
    // A (user, mechanism) named twice in one request is refused for that user.
    let mut pairs: HashMap<(String, i8), usize> = HashMap::new();
    for (name, mechanism) in request
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.to_string(), u.mechanism)),
        )
    {
        *pairs.entry((name, mechanism)).or_default() += 1;
    }
    for ((name, _), count) in &pairs {
        if *count > 1 {
            errors.fail(
                name,
                ResponseError::DuplicateResource,
                "A user credential cannot be altered twice in the same request",
            );
        }
    }
    let users = ctx.core.users();
    for name in &touched {
        if !allowed {
            errors.fail(
                name,
                ResponseError::ClusterAuthorizationFailed,
                "altering SCRAM credentials needs an administrator",
            );
        } else if name.is_empty() {
            errors.fail(
                name,
                ResponseError::UnacceptableCredential,
                "Username must not be empty",
            );
        }
    }
    for d in &request.deletions {
        let name = d.name.to_string();
        match ScramMechanism::from_kafka_type(d.mechanism) {
            None => errors.fail(
                &name,
                ResponseError::UnsupportedSaslMechanism,
                "Unknown SCRAM mechanism",
            ),
            Some(m) if users.scram(&name, m).is_none() => errors.fail(
                &name,
                ResponseError::ResourceNotFound,
                "Attempt to delete a user credential that does not exist",
            ),
            Some(_) => {}
        }
    }
    for u in &request.upsertions {
        let name = u.name.to_string();
        let Some(m) = ScramMechanism::from_kafka_type(u.mechanism) else {
            errors.fail(
                &name,
                ResponseError::UnsupportedSaslMechanism,
                "Unknown SCRAM mechanism",
            );
            continue;
        };
        let iterations = u32::try_from(u.iterations).unwrap_or(0);
        if !(DEFAULT_SCRAM_ITERATIONS..=MAX_SCRAM_ITERATIONS).contains(&iterations) {
            errors.fail(
                &name,
                ResponseError::UnacceptableCredential,
                &format!(
                    "Iterations {} must be between {DEFAULT_SCRAM_ITERATIONS} and {MAX_SCRAM_ITERATIONS}",
                    u.iterations
                ),
            );
        } else if u.salt.is_empty() || u.salted_password.len() != m.output_len() {
            errors.fail(
                &name,
                ResponseError::UnacceptableCredential,
                "Salt must not be empty and the salted password must be one digest long",
            );
        }
    }
    // Apply what is left, user by user.
    for d in &request.deletions {
        let name = d.name.to_string();
        if errors.0.contains_key(&name) {
            continue;
        }
        if let Some(m) = ScramMechanism::from_kafka_type(d.mechanism) {
            if let Err(e) = users.set_scram(&name, m, None) {
                errors.fail(&name, ResponseError::UnknownServerError, &e.to_string());
            }
        }
    }
    for u in &request.upsertions {
        let name = u.name.to_string();
        if errors.0.contains_key(&name) {
            continue;
        }
        let Some(m) = ScramMechanism::from_kafka_type(u.mechanism) else {
            continue;
        };
        if users.user(&name).is_none() {
            if let Err(e) = users.put_user(&name, Password::None, Vec::new()) {
                errors.fail(&name, ResponseError::UnacceptableCredential, &e.to_string());
                continue;
            }
        }
        let record = scram_from_salted_password(
            m,
            u.salt.to_vec(),
            &u.salted_password,
            u32::try_from(u.iterations).unwrap_or(DEFAULT_SCRAM_ITERATIONS),
        );
        if let Err(e) = users.set_scram(&name, m, Some(record)) {
            errors.fail(&name, ResponseError::UnknownServerError, &e.to_string());
        }
    }
    let results = touched
        .iter()
        .map(|name| {
            let result = AlterUserScramCredentialsResult::default()
                .with_user(StrBytes::from_string(name.clone()));
            match errors.0.get(name) {
                Some((code, message)) => result
                    .with_error_code(*code)
                    .with_error_message(text(message.clone())),
                None => result,
            }
        })
        .collect();
    respond(
        req.api_key,
        req.api_version,
        req.correlation_id,
        &AlterUserScramCredentialsResponse::default().with_results(results),
    )
}
