//! CreateAcls, DescribeAcls and DeleteAcls as a Kafka broker without an authorizer answers
//! them: SECURITY_DISABLED ("No Authorizer is configured on the broker"). Ferry does not
//! authorize Kafka requests per topic or group yet (docs/security.md), and saying so is better
//! than storing ACLs nothing enforces, or closing the connection on an admin call.

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::protocol::kafka::codec::RawRequest;

const NO_AUTHORIZER: &str = "No Authorizer is configured on the broker";

fn disabled() -> (i16, Option<StrBytes>) {
    (
        ResponseError::SecurityDisabled.code(),
        Some(StrBytes::from_static_str(NO_AUTHORIZER)),
    )
}

pub fn create_acls(req: &RawRequest) -> Outcome {
    let request: CreateAclsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let (code, message) = disabled();
    let results = request
        .creations
        .iter()
        .map(|_| {
            AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(message.clone())
        })
        .collect();
    let body = CreateAclsResponse::default().with_results(results);
    respond(req.api_key, req.api_version, req.correlation_id, &body)
}

pub fn describe_acls(req: &RawRequest) -> Outcome {
    let (code, message) = disabled();
    let body = DescribeAclsResponse::default()
        .with_error_code(code)
        .with_error_message(message);
    respond(req.api_key, req.api_version, req.correlation_id, &body)
}

pub fn delete_acls(req: &RawRequest) -> Outcome {
    let request: DeleteAclsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let (code, message) = disabled();
    let results = request
        .filters
        .iter()
        .map(|_| {
            DeleteAclsFilterResult::default()
                .with_error_code(code)
                .with_error_message(message.clone())
        })
        .collect();
    let body = DeleteAclsResponse::default().with_filter_results(results);
    respond(req.api_key, req.api_version, req.correlation_id, &body)
}
