//! `ferry serve` as a child process, for tests that SIGKILL the broker (no clean shutdown, no
//! producer-state snapshot, no clean-shutdown marker) and restart it on the same data directory,
//! and the readiness wait every such test needs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running `ferry serve` and its Kafka address; dropped (or [`kill`](Self::kill)ed) with SIGKILL.
pub struct ServeChild {
    pub process: KillOnDrop,
    pub kafka: String,
}

impl ServeChild {
    /// Starts `ferry serve` on `data` (with `--config` when given), every listener on a
    /// loopback port the OS picks, and waits for the line that announces the Kafka listener.
    pub fn start(data: &Path, config: Option<&Path>) -> ServeChild {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut process = command
            .arg("--data-dir")
            .arg(data)
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
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map(KillOnDrop)
            .expect("spawn ferry serve");
        let stderr = process.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // What the process logged before the listening line, to show if it never comes (a
        // start that fails, after a crash say, says why on stderr and exits).
        let early = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = early.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") && line.contains("kafka") {
                    let _ = tx.send(line);
                } else if let Ok(mut seen) = seen.lock() {
                    if seen.len() < 50 {
                        seen.push(line);
                    }
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(e) => panic!(
                "ferry serve never logged its Kafka address ({e}; exit: {:?}); its log:\n{}",
                process.try_wait(),
                early.lock().map(|l| l.join("\n")).unwrap_or_default()
            ),
        };
        let kafka = line
            .split("addr=")
            .nth(1)
            .map(|rest| rest.chars().take_while(|c| !c.is_whitespace()).collect())
            .expect("addr= in the listening line");
        ServeChild { process, kafka }
    }

    /// SIGKILL now (what dropping it does), for a test that reads better saying so.
    pub fn kill(self) {}
}

/// A child process that is SIGKILLed when dropped, so a test that panics never leaves a
/// `ferry serve` running (holding ports, files and whatever descriptors it inherited) after the
/// test binary is gone. It derefs to the [`Child`](std::process::Child).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `ferry serve`'s `/readyz` on `http` answers 200 (recovery done, every listener
/// accepting); fails at once if the process exits first, and after 30 s.
pub async fn wait_ready(http: u16, child: &mut std::process::Child) {
    let url = format!("http://127.0.0.1:{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ferry exited during startup: {status}");
        }
        assert!(Instant::now() < deadline, "/readyz never became 200");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
