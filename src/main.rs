//! The `ferry` binary: parse the command line, build the configuration, run.
//!
//! Everything of substance lives in the library; this file only wires the process to it:
//! environment variables, signals, exit codes and human-facing error messages.

// Peers and the disk control most inputs; a panic there takes every connection down. Outside
// tests, errors are handled, never unwrapped.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;

/// The broker makes many small short-lived allocations per message (frames, records, headers);
/// mimalloc serves them with less CPU than glibc's malloc (measured in `ferry bench amqp`, see
/// the commit that added it). It is built without transparent huge pages (`no_thp`, see
/// Cargo.toml): re-touching purged memory as 2 MiB pages stalled the log writer for tens of
/// milliseconds. The library leaves the choice to whoever embeds it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{CommandFactory, Parser};

mod cli;

use cli::{Cli, Command, ServeArgs};
use ferry::config::{self, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => ferry::bench::run(args.into()).map_err(anyhow::Error::from),
        Command::Topic(args) => admin(ferry::admin_cli::topic(args.into())),
        Command::Queue(args) => admin(ferry::admin_cli::queue(args.into())),
        Command::Exchange(args) => admin(ferry::admin_cli::exchange(args.into())),
        Command::Group(args) => admin(ferry::admin_cli::group(args.into())),
        Command::Dlq(args) => admin(ferry::admin_cli::dlq(args.into())),
        Command::Bridge(args) => admin(ferry::admin_cli::bridges::bridge(args.into())),
        Command::User(args) => admin(ferry::admin_cli::user(args.into())),
        Command::Permission(args) => admin(ferry::admin_cli::permission(args.into())),
        Command::Vhost(args) => admin(ferry::admin_cli::vhost(args.into())),
        Command::Acl(args) => admin(ferry::admin_cli::acl(args.into())),
        Command::Status(args) => admin(ferry::admin_cli::manage::status(args.conn.into())),
        Command::Catalog(args) => admin(ferry::admin_cli::catalog::catalog(
            args.conn.into(),
            args.markdown,
        )),
        Command::Connection(args) => {
            let conn = args.conn.into();
            match args.command {
                cli::manage::ConnectionCommand::List => {
                    admin(ferry::admin_cli::manage::connections(conn))
                }
                cli::manage::ConnectionCommand::Close { name, reason } => admin(
                    ferry::admin_cli::manage::close_connection(conn, &name, reason.as_deref()),
                ),
            }
        }
        Command::Channel(args) => admin(ferry::admin_cli::manage::channels(args.conn.into())),
        Command::Consumer(args) => admin(ferry::admin_cli::manage::consumers(args.conn.into())),
        Command::Produce(args) => {
            ferry::admin_cli::kcat::run_blocking(ferry::admin_cli::kcat::produce(args.into()))
                .map_err(anyhow::Error::from)
        }
        Command::Publish(args) => ferry::admin_cli::kcat::run_blocking(
            ferry::admin_cli::native_publish::publish(args.into()),
        )
        .map_err(anyhow::Error::from),
        Command::Consume(args) => {
            ferry::admin_cli::kcat::run_blocking(ferry::admin_cli::kcat::consume(args.into()))
                .map_err(anyhow::Error::from)
        }
        Command::Completions { shell } => {
            // Into memory first: the generator panics on a write error, and `| head` is one.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut script);
            print_bytes(&script)
        }
        Command::Man { dir } => man(dir),
        Command::Cert(cli::CertCommand::Generate(args)) => cert_generate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The manual from the same clap definitions as `--help`: ferry(1) on stdout, or every page
/// (ferry.1, ferry-serve.1, ferry-topic-create.1, ...) into `dir`.
fn man(dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write the manual pages to {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .context("cannot render the manual page")?;
            print_bytes(&page)?;
        }
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) is a normal end, not an error.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::from(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

fn cert_generate(args: cli::CertGenerateArgs) -> anyhow::Result<()> {
    let generated = ferry::tls::generate::generate(&ferry::tls::generate::CertRequest {
        dns: args.dns,
        ips: args.ip,
        clients: args.client,
        out: args.out,
        days: args.days,
        force: args.force,
    })?;
    print!("{}", generated.describe());
    Ok(())
}

/// Runs an admin subcommand (HTTP to the admin API) to completion.
fn admin(
    f: impl std::future::Future<Output = Result<(), ferry::admin_cli::CliError>>,
) -> anyhow::Result<()> {
    ferry::admin_cli::run_blocking(f).map_err(anyhow::Error::from)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config, warnings) =
        Config::load_with_warnings(args.config.as_deref(), std::env::vars(), args.overrides().0)
            .context("invalid configuration")?;
    if args.print_config {
        for warning in &warnings {
            eprintln!("ferry: warning: {warning}");
        }
        print!("{}", config::to_toml_string(&config));
        return Ok(());
    }
    ferry::observe::tracing::init_with_otlp(
        &config.observe.log_level,
        &config.observe.log_format,
        std::env::var("RUST_LOG").ok(),
        std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("NO_COLOR").is_none(),
        &config.observe.otlp_endpoint,
    );
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let broker = ferry::Broker::builder()
            .config(config)
            .start_with(|http| {
                // 0.0.0.0 is where it listens, not an address to browse to.
                let url = if http.ip().is_unspecified() {
                    format!("http://127.0.0.1:{}", http.port())
                } else {
                    format!("http://{http}")
                };
                tracing::info!(
                    %http,
                    "HTTP listening: admin API at {url}/api (`ferry topic list` uses it), \
                     health at {url}/readyz, metrics at {url}/metrics"
                );
            })
            .await
            .context("ferry could not start")?;
        wait_for_signal(&broker).await?;
        tracing::info!("shutting down");
        broker.shutdown().await;
        ferry::observe::otlp::shutdown();
        Ok(())
    })
}

/// Waits for SIGTERM or SIGINT; SIGHUP meanwhile reloads the TLS certificates (the outcome
/// is logged by the reload).
async fn wait_for_signal(broker: &ferry::Broker) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading TLS certificates");
                let _ = broker.reload_tls();
            }
        }
    }
}
