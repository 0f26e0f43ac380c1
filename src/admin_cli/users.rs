//! `ferry user add|passwd|delete|list`, `ferry permission set|clear|list` and `ferry vhost
//! add|delete|list`, over the admin API's RabbitMQ-shaped `/api/users`, `/api/permissions` and
//! `/api/vhosts` (the same calls `rabbitmqadmin` makes). A password not given on the command
//! line is read from the first line of stdin, so it need not appear in `ps` or shell history.

use std::io::BufRead;

use super::*;

/// `ferry user ...`
#[derive(Debug, Clone)]
pub struct UserArgs {
    pub conn: AdminConn,
    pub command: UserCommand,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    List,
    /// Create a user (or replace its password and tags).
    Add {
        name: String,
        /// `None`: read from stdin.
        password: Option<String>,
        tags: Vec<String>,
    },
    /// Change a user's password, keeping its tags.
    Passwd {
        name: String,
        password: Option<String>,
    },
    Delete {
        name: String,
    },
}

/// `ferry permission ...`
#[derive(Debug, Clone)]
pub struct PermissionArgs {
    pub conn: AdminConn,
    pub command: PermissionCommand,
}

#[derive(Debug, Clone)]
pub enum PermissionCommand {
    List {
        vhost: Option<String>,
    },
    Set {
        user: String,
        vhost: String,
        configure: String,
        write: String,
        read: String,
    },
    Clear {
        user: String,
        vhost: String,
    },
}

/// `ferry vhost ...`
#[derive(Debug, Clone)]
pub struct VhostArgs {
    pub conn: AdminConn,
    pub command: VhostCommand,
}

#[derive(Debug, Clone)]
pub enum VhostCommand {
    List,
    Add { name: String, description: String },
    Delete { name: String },
}

fn password_or_stdin(given: Option<String>) -> Result<String, CliError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Io(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err(CliError::Usage(
            "give the password as an argument or on the first line of stdin".into(),
        ));
    }
    Ok(password)
}

fn user_path(name: &str) -> String {
    format!("/api/users/{}", segment(name))
}

pub async fn user(a: UserArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        UserCommand::List => {
            let v = c.call("GET", "/api/users", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|u| {
                    let tags: Vec<String> = arr(&u["tags"]).iter().map(cell).collect();
                    let scram: Vec<String> = arr(&u["scram_mechanisms"]).iter().map(cell).collect();
                    vec![
                        cell(&u["name"]),
                        tags.join(","),
                        scram.join(","),
                        if u["loopback_only"].as_bool() == Some(true) {
                            "loopback only".into()
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "TAGS", "SCRAM", "NOTE"], &rows));
        }
        UserCommand::Add {
            name,
            password,
            tags,
        } => {
            let password = password_or_stdin(password)?;
            c.call(
                "PUT",
                &user_path(&name),
                Some(&json!({"password": password, "tags": tags})),
            )
            .await?;
            done(json, json!({"user": name}), &format!("user {name} saved"));
        }
        UserCommand::Passwd { name, password } => {
            let password = password_or_stdin(password)?;
            // Without `tags` the API keeps the user's tags; a missing user is refused there.
            c.call("GET", &user_path(&name), None).await?;
            c.call(
                "PUT",
                &user_path(&name),
                Some(&json!({"password": password})),
            )
            .await?;
            done(
                json,
                json!({"user": name}),
                &format!("password of user {name} changed"),
            );
        }
        UserCommand::Delete { name } => {
            c.call("DELETE", &user_path(&name), None).await?;
            done(
                json,
                json!({"deleted": name}),
                &format!("deleted user {name}"),
            );
        }
    }
    Ok(())
}

fn done(json: bool, value: Value, text: &str) {
    if json {
        print_json(&value);
    } else {
        println!("{text}");
    }
}

pub async fn permission(a: PermissionArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    let path =
        |vhost: &str, user: &str| format!("/api/permissions/{}/{}", segment(vhost), segment(user));
    match a.command {
        PermissionCommand::List { vhost } => {
            let v = c.call("GET", "/api/permissions", None).await?;
            let rows: Vec<&Value> = arr(&v)
                .iter()
                .filter(|p| vhost.as_deref().is_none_or(|want| p["vhost"] == want))
                .collect();
            if json {
                print_json(&Value::Array(rows.into_iter().cloned().collect()));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = rows
                .iter()
                .map(|p| {
                    ["vhost", "user", "configure", "write", "read"]
                        .iter()
                        .map(|k| cell(&p[*k]))
                        .collect()
                })
                .collect();
            print!(
                "{}",
                table(&["VHOST", "USER", "CONFIGURE", "WRITE", "READ"], &rows)
            );
        }
        PermissionCommand::Set {
            user,
            vhost,
            configure,
            write,
            read,
        } => {
            c.call(
                "PUT",
                &path(&vhost, &user),
                Some(&json!({"configure": configure, "write": write, "read": read})),
            )
            .await?;
            done(
                json,
                json!({"user": user, "vhost": vhost}),
                &format!("permissions of user {user} in vhost {vhost} set"),
            );
        }
        PermissionCommand::Clear { user, vhost } => {
            c.call("DELETE", &path(&vhost, &user), None).await?;
            done(
                json,
                json!({"user": user, "vhost": vhost, "cleared": true}),
                &format!("permissions of user {user} in vhost {vhost} cleared"),
            );
        }
    }
    Ok(())
}

pub async fn vhost(a: VhostArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        VhostCommand::List => {
            let v = c.call("GET", "/api/vhosts", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|h| {
                    vec![
                        cell(&h["name"]),
                        if h["configured"].as_bool() == Some(true) {
                            "config".into()
                        } else {
                            "runtime".into()
                        },
                        cell(&h["description"]),
                    ]
                })
                .collect();
            print!("{}", table(&["NAME", "FROM", "DESCRIPTION"], &rows));
        }
        VhostCommand::Add { name, description } => {
            c.call(
                "PUT",
                &format!("/api/vhosts/{}", segment(&name)),
                Some(&json!({"description": description})),
            )
            .await?;
            done(json, json!({"vhost": name}), &format!("vhost {name} saved"));
        }
        VhostCommand::Delete { name } => {
            c.call("DELETE", &format!("/api/vhosts/{}", segment(&name)), None)
                .await?;
            done(
                json,
                json!({"deleted": name}),
                &format!("deleted vhost {name} and everything in it"),
            );
        }
    }
    Ok(())
}
