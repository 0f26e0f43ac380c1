//! Command-line types of `ferry user`, `ferry permission`, `ferry vhost` (the user store,
//! through the admin API) and `ferry acl` (Kafka ACL bindings). Positionals that name a user or
//! a password get their own clap ids: the global `--user`/`--password` are the admin API's
//! credentials, and a shared id would silently fill one from the other. Parsing only: each
//! converts into its plain twin in [`ferry::admin_cli`].

use clap::{Args, Subcommand};

use super::admin::AdminConn;
use ferry::admin_cli as plain_acl;
use ferry::admin_cli::users as plain;

/// `ferry user ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry user add alice --tags management        # password from stdin\n  echo 's3cret' | ferry user add svc-orders\n  ferry user passwd alice\n  ferry user list\n  ferry user delete alice"
)]
pub struct UserArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List users with their tags and which Kafka SCRAM mechanisms they can use.
    List,
    /// Create a user of every protocol (or replace its password and tags).
    Add {
        /// User name (also the Kafka principal User:NAME).
        name: String,
        /// The password; omitted, it is read from the first line of stdin.
        #[arg(id = "new_password", value_name = "PASSWORD")]
        password: Option<String>,
        /// RabbitMQ tags: administrator, management, monitoring (admin API access).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Change a user's password (its tags stay).
    Passwd {
        name: String,
        /// The new password; omitted, it is read from the first line of stdin.
        #[arg(id = "new_password", value_name = "PASSWORD")]
        password: Option<String>,
    },
    /// Delete a user and its permissions.
    Delete { name: String },
}

/// `ferry permission ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry permission set alice '^alice-.*' '.*' '.*'\n  ferry permission set svc-orders '' '^orders$' '^orders\\.' --vhost staging\n  ferry permission list\n  ferry permission clear alice"
)]
pub struct PermissionArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: PermissionCommand,
}

#[derive(Debug, Subcommand)]
pub enum PermissionCommand {
    /// List permissions (of every vhost, or of --vhost).
    List {
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Set a user's configure/write/read patterns in a vhost (rabbitmqctl set_permissions).
    Set {
        /// The user whose permissions these are.
        #[arg(id = "permission_user", value_name = "USER")]
        user: String,
        /// Regex of queue/exchange names the user may declare and delete.
        configure: String,
        /// Regex of names the user may publish to (and bind as destination).
        write: String,
        /// Regex of names the user may consume from (and bind as source).
        read: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Remove a user's permissions in a vhost (it can no longer open it).
    Clear {
        #[arg(id = "permission_user", value_name = "USER")]
        user: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `ferry vhost ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry vhost add staging --description 'pre-production'\n  ferry vhost list\n  ferry vhost delete staging"
)]
pub struct VhostArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: VhostCommand,
}

#[derive(Debug, Subcommand)]
pub enum VhostCommand {
    /// List vhosts (configured and created at run time).
    List,
    /// Create a vhost; the calling user gets full permissions on it.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a vhost created at run time, with every queue and exchange in it.
    Delete { name: String },
}

impl From<UserArgs> for plain::UserArgs {
    fn from(a: UserArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: match a.command {
                UserCommand::List => plain::UserCommand::List,
                UserCommand::Add {
                    name,
                    password,
                    tags,
                } => plain::UserCommand::Add {
                    name,
                    password,
                    tags,
                },
                UserCommand::Passwd { name, password } => {
                    plain::UserCommand::Passwd { name, password }
                }
                UserCommand::Delete { name } => plain::UserCommand::Delete { name },
            },
        }
    }
}

impl From<PermissionArgs> for plain::PermissionArgs {
    fn from(a: PermissionArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: match a.command {
                PermissionCommand::List { vhost } => plain::PermissionCommand::List { vhost },
                PermissionCommand::Set {
                    user,
                    configure,
                    write,
                    read,
                    vhost,
                } => plain::PermissionCommand::Set {
                    user,
                    vhost,
                    configure,
                    write,
                    read,
                },
                PermissionCommand::Clear { user, vhost } => {
                    plain::PermissionCommand::Clear { user, vhost }
                }
            },
        }
    }
}

impl From<VhostArgs> for plain::VhostArgs {
    fn from(a: VhostArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: match a.command {
                VhostCommand::List => plain::VhostCommand::List,
                VhostCommand::Add { name, description } => {
                    plain::VhostCommand::Add { name, description }
                }
                VhostCommand::Delete { name } => plain::VhostCommand::Delete { name },
            },
        }
    }
}

/// `ferry acl ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry acl add --principal User:orders-svc --operation write --topic orders. --prefixed\n  ferry acl add --principal User:billing --operation read --group billing\n  ferry acl add --principal User:* --operation read --topic audit --permission deny\n  ferry acl list --principal User:orders-svc\n  ferry acl delete --principal User:orders-svc --topic orders. --prefixed"
)]
pub struct AclArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: AclCommand,
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// List Kafka ACL bindings (every one, or those matching the flags).
    List(AclFlags),
    /// Create a binding: a principal is allowed (or denied) an operation on a resource.
    Add(AclFlags),
    /// Delete the bindings matching the flags (omitted flags match any, as kafka-acls --remove).
    Delete(AclFlags),
}

/// A binding or a filter, with kafka-acls' vocabulary.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("resource").multiple(false))]
pub struct AclFlags {
    /// A topic (with --prefixed: every topic whose name starts with it; `*`: every topic).
    #[arg(long, value_name = "NAME", group = "resource")]
    pub topic: Option<String>,
    /// A consumer group.
    #[arg(long, value_name = "NAME", group = "resource")]
    pub group: Option<String>,
    /// The cluster (CreateTopics, ACL and SCRAM administration, idempotent writes).
    #[arg(long, group = "resource")]
    pub cluster: bool,
    /// A transactional id.
    #[arg(long, value_name = "ID", group = "resource")]
    pub transactional_id: Option<String>,
    /// The name is a prefix (Kafka's PREFIXED pattern) instead of a literal name.
    #[arg(long)]
    pub prefixed: bool,
    /// Who: `User:NAME` (a SASL user or a mapped certificate subject), or `User:*`.
    #[arg(long, value_name = "User:NAME")]
    pub principal: Option<String>,
    /// From which client address: an IP, or `*` (the default of add).
    #[arg(long, value_name = "IP")]
    pub host: Option<String>,
    /// read, write, create, delete, alter, describe, describe-configs, alter-configs,
    /// idempotent-write, cluster-action or all.
    #[arg(long, value_name = "OPERATION")]
    pub operation: Option<String>,
    /// allow (the default of add) or deny.
    #[arg(long, value_name = "allow|deny")]
    pub permission: Option<String>,
}

impl From<AclArgs> for plain_acl::AclArgs {
    fn from(a: AclArgs) -> Self {
        let (command, f) = match a.command {
            AclCommand::List(f) => (plain_acl::AclCommand::List, f),
            AclCommand::Add(f) => (plain_acl::AclCommand::Add, f),
            AclCommand::Delete(f) => (plain_acl::AclCommand::Delete, f),
        };
        let resource = match (f.topic, f.group, f.cluster, f.transactional_id) {
            (Some(t), _, _, _) => Some(("TOPIC".to_string(), t)),
            (_, Some(g), _, _) => Some(("GROUP".to_string(), g)),
            (_, _, true, _) => Some(("CLUSTER".to_string(), "kafka-cluster".to_string())),
            (_, _, _, Some(id)) => Some(("TRANSACTIONAL_ID".to_string(), id)),
            _ => None,
        };
        Self {
            conn: a.conn.into(),
            command,
            spec: plain_acl::AclSpec {
                resource,
                pattern_type: f.prefixed.then(|| "PREFIXED".to_string()),
                principal: f.principal,
                host: f.host,
                operation: f.operation,
                permission: f.permission,
            },
        }
    }
}
