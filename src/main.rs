//! The `sipscreen` binary: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use sipscreen::check;
use sipscreen::client::{Api, CliError};
use sipscreen::config::{self, LogFormat};
use sipscreen::screening::exceptions::ExceptionSet;
use sipscreen::server::Server;
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
    /// Manage the exception list of a running sidecar (through its API).
    Exceptions {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: ExceptionsCommand,
    },
    /// Manage the contacts directory (client -> responsible user).
    Contacts {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// CRM sinks: their state, connecting a Bitrix24 application.
    Crm {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: CrmCommand,
    },
    /// The store itself (run on the machine, not through the API).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Screen a number as a live call would be (through the API).
    Screen {
        /// The client: the caller (inbound) or the number dialled (outbound).
        number: String,
        /// The line: the number dialled (inbound) or the PBX caller (outbound).
        #[arg(long)]
        line: String,
        /// inbound or outbound.
        #[arg(long, default_value = "inbound")]
        direction: String,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
struct ApiArgs {
    /// Base URL of the sidecar's admin listener.
    #[arg(
        long,
        global = true,
        env = "SIPSCREEN_API",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// API token (better: the SIPSCREEN_TOKEN environment variable).
    #[arg(long, global = true, env = "SIPSCREEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a single machine's SQLite store into PostgreSQL (one
    /// transaction): entries, audit, contacts, meta, the undelivered
    /// outbox, dead letters, CRM calls, tokens and answers, calls in
    /// progress. Stop the sidecar that uses the SQLite file first.
    Migrate {
        /// `sqlite:PATH`: the store file, or the data directory holding
        /// sipscreen.db.
        #[arg(long)]
        from: String,
        /// `postgres`: the database at the URL in the --url-env variable.
        #[arg(long)]
        to: String,
        /// The environment variable holding the postgres:// URL (default:
        /// the config's [store] url_env).
        #[arg(long)]
        url_env: Option<String>,
        /// Config file (for [store] url_env, pool and CA).
        #[arg(long, short, default_value = "config/sipscreen.toml")]
        config: PathBuf,
        /// Copy even if the target already holds entries (values in both
        /// take the SQLite row).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CrmCommand {
    /// Each sink: connected or not, events queued, the last line sync.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Bitrix24 sinks.
    Bitrix24 {
        #[command(subcommand)]
        command: Bitrix24Command,
    },
}

#[derive(Subcommand)]
enum Bitrix24Command {
    /// Connect the sink's local application: prints the portal's authorize
    /// URL, reads the code of its redirect, and has the sidecar exchange
    /// it for tokens (kept in its store).
    Connect {
        /// The `[[crm.bitrix24]]` sink's name.
        #[arg(long)]
        sink: String,
        /// The code (else read from stdin after printing the URL).
        #[arg(long)]
        code: Option<String>,
    },
}

#[derive(Subcommand)]
enum ContactsCommand {
    /// Import `client,user_id,extension` rows (CSV) or a JSON array (.json).
    Import { file: String },
    /// List contacts.
    List {
        /// Only this user's clients.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove one client.
    Remove { client: String },
}

#[derive(Subcommand)]
enum ExceptionsCommand {
    /// Import `VALUE; comment` lines from FILE, or from stdin with `-`.
    Import { file: String },
    /// List entries, newest first.
    List {
        /// phone or email.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Text in the comment (case-insensitive).
        #[arg(long)]
        q: Option<String>,
        /// Exact value (any form; normalised by the sidecar).
        #[arg(long)]
        value: Option<String>,
        /// Prefix of the stored value (+4930, sales@).
        #[arg(long)]
        prefix: Option<String>,
        /// Only entries that match so: exact, prefix or domain.
        #[arg(long = "match")]
        pattern: Option<String>,
        /// Only block or allow entries.
        #[arg(long)]
        action: Option<String>,
        /// Entries per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add one value: a number, a prefix (+4930901*), a range (A..B), an
    /// e-mail, @domain or @*.domain.
    Add {
        value: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// An allow entry: wins over shorter blocking prefixes (or the
        /// domain, for an e-mail).
        #[arg(long)]
        allow: bool,
        /// Write a range covering more than [screening] max_range_numbers.
        #[arg(long)]
        allow_large_range: bool,
    },
    /// Remove one value (a range removes its prefixes).
    Remove { value: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config, log_json } => serve(config, log_json),
        Command::Exceptions { api, command } => client(&api, |c| match command {
            ExceptionsCommand::Import { file } => c.import(&file),
            ExceptionsCommand::List {
                kind,
                q,
                value,
                prefix,
                pattern,
                action,
                limit,
                all,
                json,
            } => {
                let mut query = vec![("limit", limit.to_string())];
                for (k, v) in [
                    ("type", kind),
                    ("q", q),
                    ("value", value),
                    ("prefix", prefix),
                    ("match", pattern),
                    ("action", action),
                ] {
                    if let Some(v) = v {
                        query.push((k, v));
                    }
                }
                c.list(&query, all, json)
            }
            ExceptionsCommand::Add {
                value,
                comment,
                allow,
                allow_large_range,
            } => c.add(&value, &comment, allow, allow_large_range),
            ExceptionsCommand::Remove { value } => c.remove(&value),
        }),
        Command::Contacts { api, command } => client(&api, |c| match command {
            ContactsCommand::Import { file } => c.contacts_import(&file),
            ContactsCommand::List { user, json } => c.contacts_list(user.as_deref(), json),
            ContactsCommand::Remove { client } => c.contacts_remove(&client),
        }),
        Command::Crm { api, command } => client(&api, |c| match command {
            CrmCommand::Status { json } => c.crm_status(json),
            CrmCommand::Bitrix24 {
                command: Bitrix24Command::Connect { sink, code },
            } => c.bitrix24_connect(&sink, code),
        }),
        Command::Store {
            command:
                StoreCommand::Migrate {
                    from,
                    to,
                    url_env,
                    config,
                    force,
                },
        } => store_migrate(&from, &to, url_env, &config, force),
        Command::Screen {
            number,
            line,
            direction,
            json,
            api,
        } => client(&api, |c| c.screen(&number, &line, &direction, json)),
    }
}

/// `store migrate`: 0 when copied, 1 when the copy failed or was refused
/// (nothing written), 2 on bad arguments.
fn store_migrate(
    from: &str,
    to: &str,
    url_env: Option<String>,
    config: &std::path::Path,
    force: bool,
) -> ExitCode {
    use sipscreen::store::{migrate, open, postgres::PgStore};
    let usage = |msg: String| {
        eprintln!("sipscreen store migrate: {msg}");
        ExitCode::from(2)
    };
    let Some(path) = from.strip_prefix("sqlite:") else {
        return usage(format!("--from {from:?}: expected sqlite:PATH"));
    };
    if to != "postgres" {
        return usage(format!("--to {to:?}: expected postgres"));
    }
    // The config gives url_env (unless --url-env), the pool size and CA.
    let cfg = if config.exists() {
        match config::load(config) {
            Ok(l) => Some(l.config.store),
            Err(e) => return usage(e.to_string()),
        }
    } else {
        None
    };
    let var = match url_env.or_else(|| {
        cfg.as_ref()
            .and_then(|c| c.url_env.as_ref().map(|v| v.get_ref().clone()))
    }) {
        Some(v) => v,
        None => {
            return usage(format!(
                "no --url-env, and {} has no [store] url_env",
                config.display()
            ));
        }
    };
    let fail = |msg: String| {
        eprintln!("sipscreen store migrate: {msg}");
        ExitCode::from(1)
    };
    let url = match open::url_from_env(&var) {
        Ok(u) => u,
        Err(e) => return fail(e.to_string()),
    };
    let ca = cfg
        .as_ref()
        .and_then(|c| c.ca.as_ref().map(|p| p.get_ref().clone()));
    let pg = match PgStore::open(&url, ca.as_deref(), 2) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    match migrate::sqlite_to_postgres(std::path::Path::new(path), &pg, force) {
        Ok(copied) => {
            println!("copied from {path} to postgres {}: {copied}", pg.shown());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn client(args: &ApiArgs, f: impl FnOnce(&Api) -> Result<(), CliError>) -> ExitCode {
    match Api::new(&args.api, args.token.clone()).and_then(|c| f(&c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipscreen: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match check::prepare(path, Arc::new(ExceptionSet::new())) {
        Ok((rt, report)) => {
            let sinks = match check::crm_sinks(&rt.loaded.config.crm) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
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
            let other = if report.other > 0 {
                format!(
                    " (and {} prefix, range, allow or domain entries)",
                    report.other
                )
            } else {
                String::new()
            };
            println!(
                "{}: ok: {} line(s), {} trunk(s), {} phone and {} e-mail exception(s){other}, {} CRM sink(s)",
                path.display(),
                rt.loaded.config.lines.len(),
                rt.loaded.config.trunks.len(),
                report.phones.len(),
                report.emails.len(),
                sinks
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
    sipscreen::transport::panics::install_hook();
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
            Ok(s) => s,
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
