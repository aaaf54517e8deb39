//! `keybrake`: runs the control service and administers it.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use keybrake_control::cli::{self, AuditCommand, Connection, FxCommand, KeysCommand};

#[derive(Parser)]
#[command(
    name = "keybrake",
    version,
    about = "Keybrake: a brake on the secret keys your jobs use to call paid APIs.",
    long_about = "Keybrake: a brake on the secret keys your jobs use to call paid APIs.\n\n\
        `keybrake serve` runs the control service (the vault, caps, idempotency, audit log, admin API)\n\
        that the Keybrake filter in Envoy calls. The other commands talk to a running gateway's admin API\n\
        (KEYBRAKE_URL, default http://127.0.0.1:10000) with the admin key (KEYBRAKE_ADMIN_KEY).",
    after_help = "Examples:\n  \
        keybrake keys create --label ray-billing-cus_123 --endpoint 'POST /v1/charges' --daily-usd-cap 32.99 --expires-in 3600\n  \
        keybrake keys revoke --label-prefix ray-billing-\n  \
        keybrake usage\n  \
        keybrake audit query --idempotency-key inv-42\n  \
        keybrake audit verify"
)]
struct Cli {
    /// Log format on stderr (serve).
    #[arg(long, env = "KEYBRAKE_LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control service (gRPC for the Envoy filter, admin HTTP API, metrics).
    Serve(keybrake_control::serve::ServeArgs),
    /// Issue, list, show and revoke vault keys.
    Keys {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Spend today against each key's cap, most spent first.
    Usage {
        #[command(flatten)]
        conn: Connection,
    },
    /// Query, verify and export the audit log.
    Audit {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Exchange rates used to price non-USD calls.
    Fx {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: FxCommand,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYBRAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rmcp logs every MCP request's arguments and every result at debug level:
    // an agent's arguments are its own text (it may paste anything), so the MCP
    // layer logs at info at most; tool calls are logged by keybrake_control::mcp.
    let filter = match "rmcp=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // Colours only on a terminal: log files and CI output stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: Result<bool, String> = match cli.command {
        Command::Serve(args) => {
            init_logging(&cli.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(keybrake_control::serve::serve(args)).map_err(|e| format!("{e:#}")))
                .map(|()| true)
        }
        Command::Keys { conn, command } => cli::keys(&conn, command).map(|()| true).map_err(|e| e.to_string()),
        Command::Usage { conn } => cli::usage(&conn).map(|()| true).map_err(|e| e.to_string()),
        Command::Audit { conn, command } => cli::audit(&conn, command).map_err(|e| e.to_string()),
        Command::Fx { conn, command } => cli::fx(&conn, command).map(|()| true).map_err(|e| e.to_string()),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keybrake: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
