//! Kafka's names for the ACL codes (`TOPIC`, `PREFIXED`, `READ`, `ALLOW`, ...), as
//! `kafka-acls` and AdminClient print them, for the places that speak to people rather than to
//! Kafka clients: the admin API's `/api/acls` and `ferry acl`. Parsing ignores case and
//! accepts `-` for `_` (`describe-configs`), as Kafka's own `fromString` does.

use super::acls::{operation, pattern, permission, resource};

const RESOURCE_TYPES: &[(i8, &str)] = &[
    (resource::ANY, "ANY"),
    (resource::TOPIC, "TOPIC"),
    (resource::GROUP, "GROUP"),
    (resource::CLUSTER, "CLUSTER"),
    (resource::TRANSACTIONAL_ID, "TRANSACTIONAL_ID"),
];

const PATTERN_TYPES: &[(i8, &str)] = &[
    (pattern::ANY, "ANY"),
    (pattern::MATCH, "MATCH"),
    (pattern::LITERAL, "LITERAL"),
    (pattern::PREFIXED, "PREFIXED"),
];

const OPERATIONS: &[(i8, &str)] = &[
    (operation::ANY, "ANY"),
    (operation::ALL, "ALL"),
    (operation::READ, "READ"),
    (operation::WRITE, "WRITE"),
    (operation::CREATE, "CREATE"),
    (operation::DELETE, "DELETE"),
    (operation::ALTER, "ALTER"),
    (operation::DESCRIBE, "DESCRIBE"),
    (operation::CLUSTER_ACTION, "CLUSTER_ACTION"),
    (operation::DESCRIBE_CONFIGS, "DESCRIBE_CONFIGS"),
    (operation::ALTER_CONFIGS, "ALTER_CONFIGS"),
    (operation::IDEMPOTENT_WRITE, "IDEMPOTENT_WRITE"),
];

const PERMISSIONS: &[(i8, &str)] = &[
    (permission::ANY, "ANY"),
    (permission::DENY, "DENY"),
    (permission::ALLOW, "ALLOW"),
];

fn name(table: &[(i8, &'static str)], code: i8) -> &'static str {
    table
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("UNKNOWN", |(_, n)| n)
}

fn parse(table: &[(i8, &str)], what: &str, text: &str) -> Result<i8, String> {
    let wanted = text.trim().to_ascii_uppercase().replace('-', "_");
    table
        .iter()
        .find(|(_, n)| *n == wanted)
        .map(|(c, _)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(_, n)| *n).collect();
            format!("`{text}` is not {what} (one of {})", names.join(", "))
        })
}

pub fn resource_type_name(code: i8) -> &'static str {
    name(RESOURCE_TYPES, code)
}

pub fn pattern_type_name(code: i8) -> &'static str {
    name(PATTERN_TYPES, code)
}

pub fn operation_name(code: i8) -> &'static str {
    name(OPERATIONS, code)
}

pub fn permission_name(code: i8) -> &'static str {
    name(PERMISSIONS, code)
}

pub fn parse_resource_type(text: &str) -> Result<i8, String> {
    parse(RESOURCE_TYPES, "a resource type", text)
}

pub fn parse_pattern_type(text: &str) -> Result<i8, String> {
    parse(PATTERN_TYPES, "a pattern type", text)
}

pub fn parse_operation(text: &str) -> Result<i8, String> {
    parse(OPERATIONS, "an operation", text)
}

pub fn parse_permission(text: &str) -> Result<i8, String> {
    parse(PERMISSIONS, "a permission type", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_parse_like_kafka() {
        for (code, n) in OPERATIONS {
            assert_eq!(operation_name(*code), *n);
            assert_eq!(parse_operation(n), Ok(*code));
        }
        assert_eq!(
            parse_operation("describe-configs"),
            Ok(operation::DESCRIBE_CONFIGS)
        );
        assert_eq!(parse_resource_type("Topic"), Ok(resource::TOPIC));
        assert_eq!(parse_pattern_type("prefixed"), Ok(pattern::PREFIXED));
        assert_eq!(parse_permission("deny"), Ok(permission::DENY));
        let err = parse_operation("rede").unwrap_err();
        assert!(err.contains("READ") && err.contains("`rede`"), "{err}");
    }
}
