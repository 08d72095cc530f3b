//! The `sipscreen` binary: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sipscreen::config::{self, LogFormat};
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::server::{self, Server};
use sipscreen::shutdown;

#[derive(Parser)]
#[command(
    name = "sipscreen",
    version,
    about = "SIP call-screening sidecar between a carrier trunk and a PBX"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        /// Config file.
        #[arg(long, short, default_value = "config/sipscreen.toml")]
        config: PathBuf,
        /// Log as JSON lines (overrides [log] format).
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a config (and the exceptions file it names); exit 2 on error.
    CheckConfig {
        /// Config file.
        #[arg(long, short, default_value = "config/sipscreen.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config, log_json } => serve(config, log_json),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match server::prepare(path, Arc::new(ExceptionSet::new())) {
        Ok((rt, report)) => {
            let file = rt
                .loaded
                .config
                .screening
                .exceptions_file
                .as_ref()
                .map(|p| p.get_ref().display().to_string());
            for r in &report.rejected {
                eprintln!(
                    "{}:{}: {} ({:?})",
                    file.as_deref().unwrap_or("exceptions"),
                    r.line,
                    r.reason,
                    r.text
                );
            }
            println!(
                "{}: ok: {} line(s), {} trunk(s), {} phone and {} e-mail exception(s)",
                path.display(),
                rt.loaded.config.lines.len(),
                rt.loaded.config.trunks.len(),
                report.phones.len(),
                report.emails.len()
            );
            if report.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("{} exception line(s) refused", report.rejected.len());
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: journald and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn serve(path: PathBuf, log_json: bool) -> ExitCode {
    // Logging is set up from the config before anything else can log; a
    // config that does not load is reported on stderr as check-config does.
    let log = match config::load(&path) {
        Ok(l) => l.config.log,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(
        if log_json {
            LogFormat::Json
        } else {
            log.format
        },
        &log.level,
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::bind(&path).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let (trigger, shutdown) = shutdown::channel();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down");
            trigger.fire();
        });
        server.run(shutdown).await;
        ExitCode::SUCCESS
    })
}
