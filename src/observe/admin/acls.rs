//! `/api/acls`: Kafka ACL bindings through the admin API, with Kafka's names (`TOPIC`,
//! `PREFIXED`, `READ`, `ALLOW`), for `ferry acl` and scripts that do not speak the Kafka
//! protocol. The same store as CreateAcls / DescribeAcls / DeleteAcls, so a binding made here
//! is enforced and listed over Kafka, and the other way round.
//!
//! Unlike the Kafka APIs these work while `kafka.acl_enabled` is off, so an operator can write
//! the bindings first and then switch enforcement on without locking every client out. They
//! need the `administrator` tag: ACLs are part of who may do what, like users and permissions.
//!
//! - `GET /api/acls` lists every binding (filters as query parameters, as for DELETE);
//! - `POST /api/acls` creates one: `{"resource_type": "TOPIC", "resource_name": "orders",
//!   "pattern_type": "LITERAL", "principal": "User:alice", "host": "*", "operation": "READ",
//!   "permission": "ALLOW"}` (`pattern_type`, `host` and `permission` default as shown);
//! - `DELETE /api/acls?principal=User:alice&resource_type=TOPIC` deletes the matching
//!   bindings (an omitted field matches any, as kafka-acls --remove) and returns them.

use axum::extract::rejection::JsonRejection;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Administrator;
use super::{bad_request, json_body, ApiError};
use crate::broker::acl_names::*;
use crate::broker::acls::{self, AclFilter};
use crate::meta::AclRecord;

/// One binding as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct AclView {
    resource_type: &'static str,
    resource_name: String,
    pattern_type: &'static str,
    principal: String,
    host: String,
    operation: &'static str,
    permission: &'static str,
}

fn view(a: &AclRecord) -> AclView {
    AclView {
        resource_type: resource_type_name(a.resource_type),
        resource_name: a.resource_name.clone(),
        pattern_type: pattern_type_name(a.pattern_type),
        principal: a.principal.clone(),
        host: a.host.clone(),
        operation: operation_name(a.operation),
        permission: permission_name(a.permission),
    }
}

/// A filter from query parameters; every field is optional and matches anything when absent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilterQuery {
    resource_type: Option<String>,
    resource_name: Option<String>,
    pattern_type: Option<String>,
    principal: Option<String>,
    host: Option<String>,
    operation: Option<String>,
    permission: Option<String>,
}

fn code(
    value: Option<&str>,
    any: i8,
    parse: fn(&str) -> Result<i8, String>,
) -> Result<i8, ApiError> {
    value.map_or(Ok(any), |v| parse(v).map_err(bad_request))
}

impl FilterQuery {
    fn filter(self) -> Result<AclFilter, ApiError> {
        Ok(AclFilter {
            resource_type: code(
                self.resource_type.as_deref(),
                acls::resource::ANY,
                parse_resource_type,
            )?,
            resource_name: self.resource_name,
            pattern_type: code(
                self.pattern_type.as_deref(),
                acls::pattern::ANY,
                parse_pattern_type,
            )?,
            principal: self.principal,
            host: self.host,
            operation: code(
                self.operation.as_deref(),
                acls::operation::ANY,
                parse_operation,
            )?,
            permission: code(
                self.permission.as_deref(),
                acls::permission::ANY,
                parse_permission,
            )?,
        })
    }
}

/// A metadata store failure, told without its storage details (`client_message` logs them).
fn storage_failed(e: crate::meta::MetaError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        e.client_message(),
    )
}

pub(super) async fn list_acls(
    Administrator(core, _): Administrator,
    query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AclView>>, ApiError> {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let filter = query.filter()?;
    let mut all: Vec<AclView> = core.acls().describe(&filter).iter().map(view).collect();
    all.sort_by(|a, b| {
        (a.resource_type, &a.resource_name, &a.principal, a.operation).cmp(&(
            b.resource_type,
            &b.resource_name,
            &b.principal,
            b.operation,
        ))
    });
    Ok(Json(all))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAcl {
    resource_type: String,
    resource_name: String,
    #[serde(default)]
    pattern_type: Option<String>,
    principal: String,
    #[serde(default)]
    host: Option<String>,
    operation: String,
    #[serde(default)]
    permission: Option<String>,
}

pub(super) async fn create_acl(
    Administrator(core, _): Administrator,
    body: Result<Json<NewAcl>, JsonRejection>,
) -> Result<(StatusCode, Json<AclView>), ApiError> {
    let body = json_body(body)?;
    let record = AclRecord {
        resource_type: parse_resource_type(&body.resource_type).map_err(bad_request)?,
        resource_name: body.resource_name,
        pattern_type: parse_pattern_type(body.pattern_type.as_deref().unwrap_or("LITERAL"))
            .map_err(bad_request)?,
        principal: body.principal,
        host: body.host.unwrap_or_else(|| acls::WILDCARD.to_string()),
        operation: parse_operation(&body.operation).map_err(bad_request)?,
        permission: parse_permission(body.permission.as_deref().unwrap_or("ALLOW"))
            .map_err(bad_request)?,
    };
    // The same checks CreateAcls makes (ANY is a filter value, never a binding's).
    acls::validate(&record).map_err(bad_request)?;
    core.acls()
        .create(std::slice::from_ref(&record))
        .map_err(storage_failed)?;
    Ok((StatusCode::CREATED, Json(view(&record))))
}

pub(super) async fn delete_acls(
    Administrator(core, _): Administrator,
    query: Result<Query<FilterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AclView>>, ApiError> {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let filter = query.filter()?;
    let gone = core.acls().delete(&filter).map_err(storage_failed)?;
    Ok(Json(gone.iter().map(view).collect()))
}
