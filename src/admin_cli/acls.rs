//! `ferry acl add|list|delete`: Kafka ACL bindings through the admin API's `/api/acls` (the
//! store CreateAcls/DescribeAcls/DeleteAcls use), with kafka-acls' vocabulary: a resource
//! (`--topic`, `--group`, `--cluster`, `--transactional-id`), `--prefixed`, `--principal`,
//! `--host`, `--operation`, `--permission`. For `list` and `delete` every omitted field matches
//! any binding, as `kafka-acls --list/--remove` filters.

use super::*;

/// `ferry acl ...`
#[derive(Debug, Clone)]
pub struct AclArgs {
    pub conn: AdminConn,
    pub command: AclCommand,
    pub spec: AclSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclCommand {
    List,
    Add,
    Delete,
}

/// A binding (for `add`) or a filter (for `list`/`delete`), with Kafka's names.
#[derive(Debug, Clone, Default)]
pub struct AclSpec {
    /// TOPIC, GROUP, CLUSTER or TRANSACTIONAL_ID, with its name.
    pub resource: Option<(String, String)>,
    /// LITERAL or PREFIXED (`add` defaults to LITERAL).
    pub pattern_type: Option<String>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<String>,
    /// ALLOW or DENY (`add` defaults to ALLOW).
    pub permission: Option<String>,
}

impl AclSpec {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some((kind, name)) = &self.resource {
            out.push(("resource_type", kind.clone()));
            out.push(("resource_name", name.clone()));
        }
        let optional = [
            ("pattern_type", &self.pattern_type),
            ("principal", &self.principal),
            ("host", &self.host),
            ("operation", &self.operation),
            ("permission", &self.permission),
        ];
        out.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v.clone()))),
        );
        out
    }

    fn query(&self) -> String {
        let parts: Vec<String> = self
            .fields()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", segment(&v)))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

fn print_bindings(json: bool, v: &Value) {
    if json {
        print_json(v);
        return;
    }
    let keys = [
        "principal",
        "permission",
        "operation",
        "resource_type",
        "resource_name",
        "pattern_type",
        "host",
    ];
    let rows: Vec<Vec<String>> = arr(v)
        .iter()
        .map(|b| keys.iter().map(|k| cell(&b[*k])).collect())
        .collect();
    print!(
        "{}",
        table(
            &[
                "PRINCIPAL",
                "PERMISSION",
                "OPERATION",
                "RESOURCE",
                "NAME",
                "PATTERN",
                "HOST"
            ],
            &rows
        )
    );
}

pub async fn acl(a: AclArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        AclCommand::List => {
            let v = c
                .call("GET", &format!("/api/acls{}", a.spec.query()), None)
                .await?;
            print_bindings(json, &v);
        }
        AclCommand::Add => {
            let missing = |what: &str| CliError::Usage(format!("ferry acl add needs {what}"));
            if a.spec.resource.is_none() {
                return Err(missing(
                    "a resource: --topic NAME, --group NAME, --cluster or --transactional-id NAME",
                ));
            }
            if a.spec.principal.is_none() {
                return Err(missing(
                    "--principal (e.g. User:alice, or User:* for everyone)",
                ));
            }
            if a.spec.operation.is_none() {
                return Err(missing("--operation (e.g. read, write, describe, all)"));
            }
            let body: Map<String, Value> = a
                .spec
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect();
            let v = c
                .call("POST", "/api/acls", Some(&Value::Object(body)))
                .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} {} {} on {} {} ({}) from host {}",
                    cell(&v["principal"]),
                    cell(&v["permission"]).to_lowercase(),
                    cell(&v["operation"]),
                    cell(&v["resource_type"]),
                    cell(&v["resource_name"]),
                    cell(&v["pattern_type"]),
                    cell(&v["host"]),
                );
            }
        }
        AclCommand::Delete => {
            if a.spec.fields().is_empty() {
                return Err(CliError::Usage(
                    "ferry acl delete without a filter would delete every binding: name at \
                     least one of --principal, --topic/--group/--cluster/--transactional-id, \
                     --operation, --permission, --host, --prefixed"
                        .into(),
                ));
            }
            let v = c
                .call("DELETE", &format!("/api/acls{}", a.spec.query()), None)
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("deleted {} binding(s)", arr(&v).len());
                print_bindings(false, &v);
            }
        }
    }
    Ok(())
}
