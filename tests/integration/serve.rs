//! `ferry serve` as a process: readiness, metrics, clean SIGTERM exit, restart on the same data
//! directory, and clear failures for bad configuration.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// Starts `ferry serve` on loopback port 0 and returns it with its HTTP address, read from the
/// log line that announces it.
fn start(data_dir: &Path, extra: &[&str]) -> (common::serve::KillOnDrop, String) {
    let (child, http, _warnings) = start_watching_warnings(data_dir, extra);
    (child, http)
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`start`], also collecting every WARN/ERROR line the process logs.
fn start_watching_warnings(
    data_dir: &Path,
    extra: &[&str],
) -> (common::serve::KillOnDrop, String, Lines) {
    let mut child = ferry()
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args([
            "--kafka-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
            "--native-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(common::serve::KillOnDrop)
        .expect("spawn ferry");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let warnings = Lines::default();
    let collected = warnings.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                collected.lock().unwrap().push(line.clone());
            }
            if !sent {
                if let Some(rest) = line.split("http=").nth(1) {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    tx.send(addr).ok();
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ferry never announced its HTTP address");
    (child, format!("http://{addr}"), warnings)
}

async fn wait_ready(http: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{http}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "/readyz never became 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm_and_wait(mut child: common::serve::KillOnDrop) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("ferry did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn serve_ready_metrics_sigterm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (child, http, warnings) = start_watching_warnings(dir.path(), &[]);
    wait_ready(&http).await;
    // A first start with the defaults has nothing to warn about: a WARN there teaches users
    // to ignore the log.
    assert_eq!(*warnings.lock().unwrap(), Vec::<String>::new());

    let health = reqwest::get(format!("{http}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("{http}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("ferry_ready 1"), "metrics:\n{text}");

    // A second broker on the same data directory is refused while the first runs.
    let second = ferry()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--kafka-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
            "--native-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another ferry"), "stderr: {err}");

    let status = sigterm_and_wait(child);
    assert!(status.success(), "exit status {status:?}");

    let (child, http) = start(dir.path(), &[]);
    wait_ready(&http).await;
    let status = sigterm_and_wait(child);
    assert!(status.success(), "exit status after restart {status:?}");
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[log]\nfsync = \"sometimes\"\n").unwrap();
    let out = ferry()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.fsync"), "stderr: {err}");

    std::fs::write(&cfg, "no_such_setting = 1\n").unwrap();
    let out = ferry()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_setting"));

    let out = ferry()
        .args(["serve", "--kafka-listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka_listen"));

    let out = ferry()
        .args(["serve", "--print-config", "--fsync", "interval:50"])
        .env("FERRY_KAFKA__DEFAULT_PARTITIONS", "3")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("fsync = \"interval:50\""), "{printed}");
    assert!(printed.contains("default_partitions = 3"), "{printed}");
}

#[test]
fn version_and_help_are_useful() {
    let out = ferry().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = ferry().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--data-dir",
        "--kafka-listen",
        "--amqp-listen",
        "--native-listen",
        "--http-listen",
        "--kafka-advertised",
    ] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
}

/// `ferry completions` and `ferry man` come from the same clap definitions as `--help`: the
/// scripts load in their shells' syntax and know the subcommands, the manual renders.
#[test]
fn completions_and_manual_pages() {
    let bash = ferry().args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout).into_owned();
    assert!(script.contains("complete -F _ferry"), "{script}");
    for sub in [
        "serve",
        "topic",
        "consume",
        "reset-offsets",
        "--if-not-exists",
    ] {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.bash");
    std::fs::write(&file, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    let zsh = ferry().args(["completions", "zsh"]).output().unwrap();
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef ferry"));
    let fish = ferry().args(["completions", "fish"]).output().unwrap();
    assert!(String::from_utf8_lossy(&fish.stdout).contains("complete -c ferry"));
    let bad = ferry().args(["completions", "tcsh"]).output().unwrap();
    assert!(!bad.status.success());

    let man = ferry().arg("man").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout).into_owned();
    assert!(page.contains(".TH ferry 1"), "{page}");
    assert!(page.contains("ferry\\-topic(1)"), "{page}");

    let pages = dir.path().join("man1");
    let out = ferry().args(["man", "--dir"]).arg(&pages).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let create = std::fs::read_to_string(pages.join("ferry-topic-create.1")).unwrap();
    assert!(create.contains("if\\-not\\-exists"), "{create}");
    assert!(pages.join("ferry-serve.1").exists());
}
