//! CreateAcls, DescribeAcls and DeleteAcls over the broker's ACL store
//! ([`crate::broker::acls`]).
//!
//! With `kafka.acl_enabled` off they answer SECURITY_DISABLED ("No Authorizer is configured on
//! the broker"), as a Kafka broker without `authorizer.class.name` does: storing rules nothing
//! enforces would mislead. With it on, describing needs DESCRIBE on the cluster and creating or
//! deleting needs ALTER on the cluster (CLUSTER_AUTHORIZATION_FAILED otherwise), as in Kafka;
//! an invalid binding gets INVALID_REQUEST with the reason.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::acls::{self, AclFilter};
use crate::meta::AclRecord;
use crate::protocol::kafka::authz::operation;
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::KafkaContext;

const NO_AUTHORIZER: &str = "No Authorizer is configured on the broker";

fn text(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

/// Why the request as a whole is refused, if it is: ACLs off, or the principal lacks `op` on
/// the cluster.
fn refusal(ctx: &KafkaContext, conn: &ConnInfo, op: i8) -> Option<(i16, Option<StrBytes>)> {
    if !ctx.acl_enabled() {
        return Some((
            ResponseError::SecurityDisabled.code(),
            Some(StrBytes::from_static_str(NO_AUTHORIZER)),
        ));
    }
    if !ctx.allowed_on_cluster(conn, op) {
        return Some((
            ResponseError::ClusterAuthorizationFailed.code(),
            text("not authorized to manage ACLs on the cluster"),
        ));
    }
    None
}

fn record(c: &AclCreation) -> AclRecord {
    AclRecord {
        resource_type: c.resource_type,
        resource_name: c.resource_name.to_string(),
        pattern_type: c.resource_pattern_type,
        principal: c.principal.to_string(),
        host: c.host.to_string(),
        operation: c.operation,
        permission: c.permission_type,
    }
}

pub fn create_acls(ctx: &KafkaContext, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: CreateAclsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let result = |code: i16, message: Option<StrBytes>| {
        AclCreationResult::default()
            .with_error_code(code)
            .with_error_message(message)
    };
    let results = if let Some((code, message)) = refusal(ctx, conn, operation::ALTER) {
        request
            .creations
            .iter()
            .map(|_| result(code, message.clone()))
            .collect()
    } else {
        let checked: Vec<Result<AclRecord, String>> = request
            .creations
            .iter()
            .map(|c| {
                let acl = record(c);
                acls::validate(&acl).map(|()| acl)
            })
            .collect();
        let valid: Vec<AclRecord> = checked.iter().filter_map(|c| c.clone().ok()).collect();
        let stored = ctx.core.acls().create(&valid);
        if let Err(e) = &stored {
            tracing::error!(error = %e, "cannot store Kafka ACLs");
        } else if !valid.is_empty() {
            tracing::info!(principal = %conn.principal(), count = valid.len(), "Kafka ACLs created");
        }
        checked
            .into_iter()
            .map(|c| match (c, &stored) {
                (Err(reason), _) => result(ResponseError::InvalidRequest.code(), text(reason)),
                (Ok(_), Ok(())) => result(0, None),
                (Ok(_), Err(_)) => result(
                    ResponseError::UnknownServerError.code(),
                    text("the ACL could not be stored"),
                ),
            })
            .collect()
    };
    let body = CreateAclsResponse::default().with_results(results);
    respond(req.api_key, req.api_version, req.correlation_id, &body)
}

fn filter_of(
    resource_type: i8,
    resource_name: &Option<StrBytes>,
    pattern_type: i8,
    principal: &Option<StrBytes>,
    host: &Option<StrBytes>,
    operation: i8,
    permission: i8,
) -> AclFilter {
    AclFilter {
        resource_type,
        resource_name: resource_name.as_ref().map(|s| s.to_string()),
        pattern_type,
        principal: principal.as_ref().map(|s| s.to_string()),
        host: host.as_ref().map(|s| s.to_string()),
        operation,
        permission,
    }
}

pub fn describe_acls(ctx: &KafkaContext, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DescribeAclsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let answer = |body: DescribeAclsResponse| {
        respond(req.api_key, req.api_version, req.correlation_id, &body)
    };
    if let Some((code, message)) = refusal(ctx, conn, operation::DESCRIBE) {
        return answer(
            DescribeAclsResponse::default()
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    let filter = filter_of(
        request.resource_type_filter,
        &request.resource_name_filter,
        request.pattern_type_filter,
        &request.principal_filter,
        &request.host_filter,
        request.operation,
        request.permission_type,
    );
    // One entry per resource pattern, each with its bindings, as Kafka groups them.
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for acl in ctx.core.acls().describe(&filter) {
        by_resource
            .entry((acl.resource_type, acl.resource_name, acl.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(StrBytes::from_string(acl.principal))
                    .with_host(StrBytes::from_string(acl.host))
                    .with_operation(acl.operation)
                    .with_permission_type(acl.permission),
            );
    }
    let resources = by_resource
        .into_iter()
        .map(|((resource_type, name, pattern_type), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(StrBytes::from_string(name))
                .with_pattern_type(pattern_type)
                .with_acls(acls)
        })
        .collect();
    answer(DescribeAclsResponse::default().with_resources(resources))
}

fn delete_one(ctx: &KafkaContext, f: &DeleteAclsFilter) -> DeleteAclsFilterResult {
    let filter = filter_of(
        f.resource_type_filter,
        &f.resource_name_filter,
        f.pattern_type_filter,
        &f.principal_filter,
        &f.host_filter,
        f.operation,
        f.permission_type,
    );
    match ctx.core.acls().delete(&filter) {
        Ok(gone) => DeleteAclsFilterResult::default().with_matching_acls(
            gone.into_iter()
                .map(|acl| {
                    DeleteAclsMatchingAcl::default()
                        .with_resource_type(acl.resource_type)
                        .with_resource_name(StrBytes::from_string(acl.resource_name))
                        .with_pattern_type(acl.pattern_type)
                        .with_principal(StrBytes::from_string(acl.principal))
                        .with_host(StrBytes::from_string(acl.host))
                        .with_operation(acl.operation)
                        .with_permission_type(acl.permission)
                })
                .collect(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot delete Kafka ACLs");
            DeleteAclsFilterResult::default()
                .with_error_code(ResponseError::UnknownServerError.code())
                .with_error_message(text("the ACLs could not be deleted"))
        }
    }
}

pub fn delete_acls(ctx: &KafkaContext, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DeleteAclsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let refused = refusal(ctx, conn, operation::ALTER);
    let results = request
        .filters
        .iter()
        .map(|f| match &refused {
            Some((code, message)) => DeleteAclsFilterResult::default()
                .with_error_code(*code)
                .with_error_message(message.clone()),
            None => delete_one(ctx, f),
        })
        .collect();
    if refused.is_none() {
        tracing::info!(principal = %conn.principal(), "Kafka ACLs deleted");
    }
    let body = DeleteAclsResponse::default().with_filter_results(results);
    respond(req.api_key, req.api_version, req.correlation_id, &body)
}
