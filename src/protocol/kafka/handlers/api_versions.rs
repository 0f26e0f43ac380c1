//! ApiVersions: the advertised table, and KIP-511's answer to a version we do not know.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{respond, Outcome};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::versions;

pub fn handle(req: &RawRequest) -> Outcome {
    // The request body (client software name/version) only matters for logging; a client whose
    // body we cannot parse still deserves the table, so it is not decoded.
    let api_keys = versions::SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    let body = ApiVersionsResponse::default()
        .with_error_code(0)
        .with_api_keys(api_keys);
    respond(
        ApiKey::ApiVersions,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

/// KIP-511: a client asking with a newer ApiVersions version gets UNSUPPORTED_VERSION and our
/// ApiVersions range, encoded as v0 with a v0 header, and retries with a version we speak.
pub fn unsupported_version(req: &RawRequest) -> Outcome {
    let (min, max) = versions::range(ApiKey::ApiVersions).unwrap_or((0, 3));
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(min)
            .with_max_version(max)]);
    respond(ApiKey::ApiVersions, 0, req.correlation_id, &body)
}
