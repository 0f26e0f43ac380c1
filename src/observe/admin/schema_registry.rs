//! Confluent Schema Registry's REST API at the root paths it uses (`/subjects`, `/schemas`,
//! `/config`, `/compatibility`, `/mode`), so confluent-kafka's `SchemaRegistryClient` and its
//! Avro, JSON Schema and Protobuf serdes work with `url=http://<ferry http listener>`.
//!
//! Answers carry `application/vnd.schemaregistry.v1+json`, and errors Confluent's shape
//! `{"error_code": 40401, "message": ...}` with the code's leading digits as the status. Access
//! is the admin API's: HTTP basic auth of a user with a management tag (monitoring reads only).
//! The registry itself is `crate::schema`; this file only maps HTTP to it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Admin;
use crate::meta::SchemaReference;
use crate::observe::http::AppState;
use crate::schema::{
    Compatibility, Mode, NewSchema, RegistryError, SchemaRegistry, SchemaType, StoredSchema,
    SubjectVersion, VersionRef,
};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/contexts", get(contexts))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schema_text_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(list_subjects))
        .route(
            "/subjects/{subject}",
            post(lookup_schema).delete(delete_subject),
        )
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/config", get(global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(test_against_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(test_against_subject),
        )
        .route("/mode", get(global_mode).put(put_global_mode))
        .route(
            "/mode/{subject}",
            get(subject_mode)
                .put(put_subject_mode)
                .delete(delete_subject_mode),
        )
}

/// An authenticated registry request (the admin API's credentials and tags).
struct Registry(Arc<SchemaRegistry>);

impl FromRequestParts<AppState> for Registry {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if let Err(refused) = Admin::from_request_parts(parts, state).await {
            let status = refused.status;
            let mut response = error_response(status, status.as_u16().into(), refused.message);
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"ferry\""),
                );
            }
            return Err(response);
        }
        match state.health.schemas() {
            Some(registry) => Ok(Registry(registry.clone())),
            None => Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                50003,
                "the broker is still recovering its data directory".into(),
            )),
        }
    }
}

type Answer = Result<Response, Failure>;

/// A registry error as its HTTP answer.
struct Failure(RegistryError);

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_response(status, self.0.code(), self.0.client_message())
    }
}

fn error_response(status: StatusCode, code: u32, message: String) -> Response {
    let body = json!({"error_code": code, "message": message}).to_string();
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

fn ok(value: Value) -> Answer {
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], value.to_string()).into_response())
}

/// Query flags as the registry reads them: `true` (any case) is true, anything else false.
fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_id(text: &str) -> Result<i32, RegistryError> {
    text.parse::<i32>()
        .map_err(|_| RegistryError::SchemaNotFound(text.to_string()))
}

/// The body of a registration, lookup or compatibility test.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<SchemaReference>,
    /// IMPORT mode only.
    #[serde(default)]
    id: Option<i32>,
}

/// A JSON request body, or 400 saying what is wrong with it.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, RegistryError> {
    serde_json::from_slice(body)
        .map_err(|e| RegistryError::BadRequest(format!("malformed request body: {e}")))
}

fn schema_body(body: &Bytes) -> Result<(NewSchema, Option<i32>), RegistryError> {
    let parsed: SchemaBody = parse_body(body)?;
    let schema = parsed
        .schema
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| RegistryError::InvalidSchema("Empty schema".into()))?;
    Ok((
        NewSchema {
            schema_type: SchemaType::parse(parsed.schema_type.as_deref())?,
            schema,
            references: parsed.references,
        },
        parsed.id.filter(|id| *id >= 0),
    ))
}

/// `schema`, and `schemaType`/`references` when they say something (AVRO and none are the
/// defaults clients assume when absent).
fn schema_fields(schema: &StoredSchema, out: &mut serde_json::Map<String, Value>) {
    out.insert("schema".into(), Value::String(schema.record.schema.clone()));
    if schema.schema_type != SchemaType::Avro {
        out.insert("schemaType".into(), schema.schema_type.as_str().into());
    }
    if !schema.record.references.is_empty() {
        out.insert(
            "references".into(),
            serde_json::to_value(&schema.record.references).unwrap_or_default(),
        );
    }
}

fn version_json(version: &SubjectVersion) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("subject".into(), version.subject.clone().into());
    out.insert("version".into(), version.version.into());
    out.insert("id".into(), version.schema.record.id.into());
    schema_fields(&version.schema, &mut out);
    if version.deleted {
        out.insert("deleted".into(), true.into());
    }
    Value::Object(out)
}

async fn contexts(_: Registry) -> Answer {
    ok(json!(["."]))
}

async fn schema_types(_: Registry) -> Answer {
    ok(json!(SchemaType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()))
}

async fn schema_by_id(Registry(registry): Registry, Path(id): Path<String>) -> Answer {
    let schema = registry.schema_by_id(parse_id(&id)?)?;
    let mut out = serde_json::Map::new();
    schema_fields(&schema, &mut out);
    ok(Value::Object(out))
}

async fn schema_text_by_id(Registry(registry): Registry, Path(id): Path<String>) -> Answer {
    let schema = registry.schema_by_id(parse_id(&id)?)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], schema.record.schema).into_response())
}

async fn subjects_of_id(
    Registry(registry): Registry,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let mut subjects: Vec<String> = registry
        .versions_of_id(parse_id(&id)?, flag(&query, "deleted"))?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn versions_of_id(
    Registry(registry): Registry,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let versions: Vec<Value> = registry
        .versions_of_id(parse_id(&id)?, flag(&query, "deleted"))?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok(Value::Array(versions))
}

async fn list_subjects(
    Registry(registry): Registry,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let prefix = query.get("subjectPrefix").map_or("", String::as_str);
    ok(json!(registry.subjects(flag(&query, "deleted"), prefix)))
}

async fn list_versions(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    ok(json!(registry.versions(&subject, flag(&query, "deleted"))?))
}

async fn register_schema(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    let (schema, id) = schema_body(&body)?;
    let registered = registry.register(&subject, schema, id)?;
    ok(json!({
        "id": registered.schema.record.id,
        "version": registered.version,
        "subject": registered.subject,
    }))
}

async fn lookup_schema(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let (schema, _) = schema_body(&body)?;
    let found = registry.lookup(&subject, &schema, flag(&query, "deleted"))?;
    ok(version_json(&found))
}

async fn delete_subject(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    ok(json!(
        registry.delete_subject(&subject, flag(&query, "permanent"))?
    ))
}

async fn get_version(
    Registry(registry): Registry,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let which = VersionRef::parse(&version)?;
    ok(version_json(&registry.version(
        &subject,
        which,
        flag(&query, "deleted"),
    )?))
}

async fn get_version_schema(
    Registry(registry): Registry,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let which = VersionRef::parse(&version)?;
    let found = registry.version(&subject, which, flag(&query, "deleted"))?;
    Ok((
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        found.schema.record.schema,
    )
        .into_response())
}

async fn referenced_by(
    Registry(registry): Registry,
    Path((subject, version)): Path<(String, String)>,
) -> Answer {
    let which = VersionRef::parse(&version)?;
    ok(json!(registry.referenced_by(&subject, which)?))
}

async fn delete_version(
    Registry(registry): Registry,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let which = VersionRef::parse(&version)?;
    ok(json!(registry.delete_version(
        &subject,
        which,
        flag(&query, "permanent")
    )?))
}

// --- compatibility levels -----------------------------------------------------------------------

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Option<String>,
}

fn config_body(body: &Bytes) -> Result<Compatibility, RegistryError> {
    let parsed: ConfigBody = parse_body(body)?;
    Compatibility::parse(parsed.compatibility.as_deref().unwrap_or(""))
}

async fn global_config(Registry(registry): Registry) -> Answer {
    ok(json!({"compatibilityLevel": registry.global_compatibility().as_str()}))
}

async fn put_global_config(Registry(registry): Registry, body: Bytes) -> Answer {
    let level = config_body(&body)?;
    registry.update_config(None, |c| c.compatibility = Some(level.as_str().into()))?;
    ok(json!({"compatibility": level.as_str()}))
}

async fn subject_config(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    match registry.scope_config(Some(&subject)).compatibility {
        Some(level) => ok(json!({"compatibilityLevel": level})),
        None if flag(&query, "defaultToGlobal") => {
            ok(json!({"compatibilityLevel": registry.compatibility(&subject).as_str()}))
        }
        None => Err(RegistryError::SubjectCompatibilityNotConfigured(subject).into()),
    }
}

async fn put_subject_config(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    body: Bytes,
) -> Answer {
    let level = config_body(&body)?;
    registry.update_config(Some(&subject), |c| {
        c.compatibility = Some(level.as_str().into())
    })?;
    ok(json!({"compatibility": level.as_str()}))
}

async fn delete_subject_config(
    Registry(registry): Registry,
    Path(subject): Path<String>,
) -> Answer {
    let Some(previous) = registry.scope_config(Some(&subject)).compatibility else {
        return Err(RegistryError::SubjectCompatibilityNotConfigured(subject).into());
    };
    registry.update_config(Some(&subject), |c| c.compatibility = None)?;
    ok(json!({"compatibilityLevel": previous}))
}

async fn test_against_version(
    Registry(registry): Registry,
    Path((subject, version)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let which = VersionRef::parse(&version)?;
    let (schema, _) = schema_body(&body)?;
    let problems = registry.test_compatibility(&subject, &schema, Some(which))?;
    compatibility_answer(problems, flag(&query, "verbose"))
}

async fn test_against_subject(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let (schema, _) = schema_body(&body)?;
    let problems = registry.test_compatibility(&subject, &schema, None)?;
    compatibility_answer(problems, flag(&query, "verbose"))
}

fn compatibility_answer(problems: Vec<String>, verbose: bool) -> Answer {
    if verbose {
        ok(json!({"is_compatible": problems.is_empty(), "messages": problems}))
    } else {
        ok(json!({"is_compatible": problems.is_empty()}))
    }
}

// --- modes --------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ModeBody {
    mode: Option<String>,
}

fn mode_body(body: &Bytes) -> Result<Mode, RegistryError> {
    let parsed: ModeBody = parse_body(body)?;
    Mode::parse(parsed.mode.as_deref().unwrap_or(""))
}

async fn global_mode(Registry(registry): Registry) -> Answer {
    ok(json!({"mode": registry.mode(None).as_str()}))
}

async fn put_global_mode(
    Registry(registry): Registry,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let mode = mode_body(&body)?;
    if mode == Mode::Import && !flag(&query, "force") && !registry.subjects(true, "").is_empty() {
        return Err(RegistryError::OperationNotPermitted(
            "Cannot import since found existing subjects (force=true overrides)".into(),
        )
        .into());
    }
    registry.update_config(None, |c| c.mode = Some(mode.as_str().into()))?;
    ok(json!({"mode": mode.as_str()}))
}

async fn subject_mode(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    match registry.scope_config(Some(&subject)).mode {
        Some(mode) => ok(json!({"mode": mode})),
        None if flag(&query, "defaultToGlobal") => {
            ok(json!({"mode": registry.mode(Some(&subject)).as_str()}))
        }
        None => Err(RegistryError::SubjectModeNotConfigured(subject).into()),
    }
}

async fn put_subject_mode(
    Registry(registry): Registry,
    Path(subject): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Answer {
    let mode = mode_body(&body)?;
    let has_versions = registry.versions(&subject, true).is_ok();
    if mode == Mode::Import && !flag(&query, "force") && has_versions {
        return Err(RegistryError::OperationNotPermitted(format!(
            "Cannot import since subject '{subject}' has versions (force=true overrides)"
        ))
        .into());
    }
    registry.update_config(Some(&subject), |c| c.mode = Some(mode.as_str().into()))?;
    ok(json!({"mode": mode.as_str()}))
}

async fn delete_subject_mode(Registry(registry): Registry, Path(subject): Path<String>) -> Answer {
    let Some(previous) = registry.scope_config(Some(&subject)).mode else {
        return Err(RegistryError::SubjectModeNotConfigured(subject).into());
    };
    registry.update_config(Some(&subject), |c| c.mode = None)?;
    ok(json!({"mode": previous}))
}
