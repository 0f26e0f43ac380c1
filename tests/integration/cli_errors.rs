//! What the `ferry` binary says when something is wrong, asserted on its real output: port
//! conflicts (every listener at once, naming the flag), a missing config file, a bad value with
//! its source, unknown keys and misspelled `FERRY_*` variables with a suggestion, a data dir
//! that is a file, a client with no broker, and `--help` describing every argument.

use std::net::TcpListener;
use std::process::{Command, Output};

fn ferry(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args).env("NO_COLOR", "1");
    // The caller's settings must not leak in.
    for (key, _) in std::env::vars() {
        if key.starts_with("FERRY_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and insists on failure, returning stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run ferry");
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        stderr(&out)
    );
    stderr(&out)
}

#[test]
fn every_listener_in_use_is_reported_at_once_naming_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let kafka = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_addr = http.local_addr().unwrap().to_string();
    let kafka_addr = kafka.local_addr().unwrap().to_string();
    let err = fails(
        ferry(&["serve", "--data-dir"])
            .arg(dir.path().join("d"))
            .args(["--http-listen", &http_addr, "--kafka-listen", &kafka_addr])
            .args(["--amqp-listen", "127.0.0.1:0"])
            .args(["--native-listen", "127.0.0.1:0"]),
    );
    assert!(err.contains("cannot listen on 2 addresses"), "{err}");
    assert!(
        err.contains(&format!(
            "--http-listen {http_addr} (http_listen / FERRY_HTTP_LISTEN): address already in use"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("--kafka-listen {kafka_addr} (kafka_listen / FERRY_KAFKA_LISTEN): address already in use")),
        "{err}"
    );
    assert!(!err.contains("amqp-listen"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    // Nothing started: the failure comes before the HTTP listener is announced.
    assert!(!err.contains("HTTP listening"), "{err}");
}

#[test]
fn a_missing_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = fails(ferry(&["serve", "--config"]).arg(&path));
    assert_eq!(
        err,
        format!(
            "ferry: error: invalid configuration: config file {} does not exist (check --config \
             or FERRY_CONFIG)\n",
            path.display()
        )
    );
}

#[test]
fn a_bad_value_names_key_value_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, "[log]\nsegment_bytes = \"big\"\n").unwrap();
    let err = fails(ferry(&["serve", "--config"]).arg(&cfg));
    assert!(err.contains("`log.segment_bytes`"), "{err}");
    assert!(
        err.contains(&format!("(got \"big\" from config file {})", cfg.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let err = fails(ferry(&["serve"]).env("FERRY_LOG__FSYNC", "sometimes"));
    assert!(
        err.contains(
            "invalid value for `log.fsync`: expected `always`, `never` or `interval:<ms>` (got \
             \"sometimes\" from environment variable FERRY_LOG__FSYNC)"
        ),
        "{err}"
    );
    let err = fails(&mut ferry(&["serve", "--fsync", "sometimes"]));
    assert!(
        err.contains("(got \"sometimes\" from flag --fsync)"),
        "{err}"
    );
}

#[test]
fn unknown_keys_and_misspelled_variables_get_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(&cfg, "[log]\nfsynk = \"never\"\n").unwrap();
    let err = fails(ferry(&["serve", "--config"]).arg(&cfg));
    assert!(
        err.contains(&format!(
            "unknown setting `log.fsynk` in config file {} — did you mean `log.fsync`?",
            cfg.display()
        )),
        "{err}"
    );
    // A key in the wrong section is found by its name.
    std::fs::write(&cfg, "fsync = \"never\"\n").unwrap();
    let err = fails(ferry(&["serve", "--config"]).arg(&cfg));
    assert!(err.contains("did you mean `log.fsync`?"), "{err}");

    // Variables only warn (orchestrators set FERRY_PORT and such), with the right spelling.
    let out = ferry(&["serve", "--print-config"])
        .env("FERRY_LOG__FSYNKK", "never")
        .env("FERRY_BOOTSTRAP", "127.0.0.1:9092")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ignoring environment variable FERRY_LOG__FSYNKK: it names no setting — did you mean FERRY_LOG__FSYNC?"),
        "{err}"
    );
    // The CLI's own variables are not settings, and not warned about either.
    assert!(!err.contains("FERRY_BOOTSTRAP"), "{err}");
}

#[test]
fn a_data_dir_that_is_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, "").unwrap();
    let err = fails(
        ferry(&["serve", "--data-dir"])
            .arg(&file)
            .args([
                "--kafka-listen",
                "127.0.0.1:0",
                "--amqp-listen",
                "127.0.0.1:0",
                "--native-listen",
                "127.0.0.1:0",
            ])
            .args(["--http-listen", "127.0.0.1:0"]),
    );
    assert!(
        err.contains(&format!(
            "data directory {}: is a file, not a directory",
            file.display()
        )),
        "{err}"
    );
    assert!(!err.contains("File exists"), "{err}");
}

#[test]
fn clients_without_a_broker_suggest_ferry_serve() {
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for args in [
        vec!["consume", "-t", "orders", "-b", free.as_str()],
        vec!["produce", "-t", "orders", "-b", free.as_str()],
    ] {
        let err = fails(&mut ferry(&args));
        assert!(err.contains("start one with `ferry serve`"), "{err}");
        assert!(!err.contains("cargo run"), "{err}");
    }
}

/// Every subcommand's `-h` (each leaf and each command that groups them): each flag and
/// argument has a description, connection options have their own heading, and there is at least
/// one example of that very command, whose flags and values parse (each example is run again
/// with `-h` appended: clap reads what comes before it and refuses an unknown flag or a bad
/// value, but prints the help instead of running).
#[test]
fn help_describes_every_argument() {
    let commands: &[&[&str]] = &[
        &["serve"],
        &["bench"],
        &["bench", "kafka"],
        &["bench", "amqp"],
        &["topic"],
        &["topic", "list"],
        &["topic", "create"],
        &["topic", "delete"],
        &["topic", "describe"],
        &["queue"],
        &["queue", "list"],
        &["queue", "create"],
        &["queue", "delete"],
        &["queue", "describe"],
        &["queue", "purge"],
        &["exchange"],
        &["exchange", "list"],
        &["exchange", "create"],
        &["exchange", "delete"],
        &["exchange", "bind"],
        &["group"],
        &["group", "list"],
        &["group", "describe"],
        &["group", "reset-offsets"],
        &["dlq"],
        &["dlq", "list"],
        &["dlq", "browse"],
        &["dlq", "replay"],
        &["dlq", "purge"],
        &["produce"],
        &["consume"],
        &["completions"],
        &["man"],
    ];
    for command in commands {
        let out = ferry(command).arg("-h").output().unwrap();
        assert!(out.status.success(), "{command:?}: {}", stderr(&out));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in help.lines() {
            let t = line.trim_start();
            // Entries start at column 2 or 6; deeper lines continue a wrapped description.
            let indent = line.len() - t.len();
            let is_entry = (2..=6).contains(&indent) && (t.starts_with('-') || t.starts_with('<'));
            if !is_entry {
                continue;
            }
            // "  -p, --partitions <N>  Description": the entry, two spaces, the text.
            let described = t.contains("  ");
            assert!(described, "{command:?}: `{t}` has no description:\n{help}");
        }
        let name = command.join(" ");
        let examples: Vec<Vec<String>> = help
            .lines()
            .skip_while(|l| !l.starts_with("Example"))
            .filter_map(|l| l.strip_prefix("  ferry "))
            .map(example_args)
            .collect();
        assert!(
            examples
                .iter()
                .any(|args| args.join(" ").starts_with(&name)),
            "{command:?} has no example of `ferry {name}`:\n{help}"
        );
        for args in &examples {
            let out = ferry(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .arg("-h")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{command:?}: the example `ferry {}` does not parse: {}",
                args.join(" "),
                stderr(&out)
            );
        }
        let takes_connection =
            !matches!(command[0], "serve" | "completions" | "man") && *command != ["bench"];
        if takes_connection {
            assert!(
                help.contains("Connection (also from the environment):"),
                "{command:?}: connection options not grouped:\n{help}"
            );
        }
    }
}

/// The arguments of one example line of a help text, as a shell would split them: the comment
/// (`  # ...`), a pipe and a redirection are cut off, and single or double quotes are removed.
fn example_args(line: &str) -> Vec<String> {
    let command = line.split("  #").next().unwrap_or(line);
    let command = command.split(" | ").next().unwrap_or(command);
    let command = command.split(" > ").next().unwrap_or(command);
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in command.trim().chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        args.push(current);
    }
    args
}
