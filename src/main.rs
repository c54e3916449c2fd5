//! Command line: clap commands -> library calls; nothing else.
//!
//! Exit codes: 0 success; 1 failure of the command itself (invalid topology, drift, refused
//! declarations); 2 unusable settings or arguments; 3 a dependency (broker, database) unreachable.

use std::{path::PathBuf, process::ExitCode};

// glibc's malloc spent ~25% of the service's CPU under publish load (consolidating free lists).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (the prefixed build's `malloc_conf`): freed pages go back
/// to the system after 1 s instead of 10, which took the peak RSS under publish load from ~50 to
/// ~45 MiB, and one arena instead of four per core, which took ~4 MiB more off a run of every
/// publish scenario (threads' caches keep the arena's lock off the hot path), both at no
/// measurable CPU cost. `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use clap::{Parser, Subcommand};
use messages_broker::{
    amqp::{connection, management::ManagementClient},
    app::{self, App},
    roles::Roles,
    settings::Settings,
    store, telemetry,
    topology::{self, declare, diff, users},
};

#[derive(Parser)]
#[command(
    name = "messages-broker",
    version,
    about = "Coordinates RabbitMQ for the e-commerce platform: topology, publishing, dead letters, retries, queue stats.",
    after_help = "Settings: config/default.toml < config/{APP_ENV}.toml < --config FILE < environment \
(APP_PORT, RABBITMQ_HOST, DB_HOST, WORKER_ROLES, ... see README). Logs: RUST_LOG, LOG_FORMAT=json|pretty."
)]
struct Cli {
    /// Extra TOML settings layer, above config/{APP_ENV}.toml.
    #[arg(long, global = true, env = "CONFIG_FILE", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory holding default.toml and {APP_ENV}.toml.
    #[arg(
        long,
        global = true,
        env = "CONFIG_DIR",
        default_value = "config",
        value_name = "DIR"
    )]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker fleet (the default command).
    Serve {
        /// Roles to run, comma-separated: applier,api,ingester,retrier,stats,scheduler (default: all; also WORKER_ROLES).
        #[arg(long, value_name = "R,R")]
        roles: Option<String>,
    },
    /// Check, apply or compare the topology file.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Run the database migrations and exit.
    Migrate,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate a topology file offline and print every error (exit 1 if invalid).
    Check {
        /// Defaults to TOPOLOGY_FILE, then topology.toml.
        file: Option<PathBuf>,
    },
    /// Declare the topology on the broker, print what was created, exit.
    Apply,
    /// Compare the file with the live broker via the management API (exit 1 on drift).
    Diff,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut settings = match Settings::load(&cli.config_dir, cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Serve { roles: Some(roles) }) = &cli.command {
        match roles.parse::<Roles>() {
            Ok(roles) => settings.app.roles = roles,
            Err(reason) => {
                eprintln!("error: invalid setting `--roles`: {reason}");
                return ExitCode::from(2);
            }
        }
    }
    telemetry::init(settings.app.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve { roles: None }) {
            Command::Serve { .. } => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Topology(TopologyCommand::Check { file }) => check(settings, file),
            Command::Topology(TopologyCommand::Apply) => apply(settings).await,
            Command::Topology(TopologyCommand::Diff) => diff(settings).await,
        }
    })
}

async fn serve(settings: Settings) -> ExitCode {
    let app = match App::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(mut settings: Settings, file: Option<PathBuf>) -> ExitCode {
    if let Some(file) = file {
        settings.app.topology_file = file;
    }
    let path = settings.app.topology_file.display().to_string();
    match app::load_topology(&settings) {
        Ok(topology) => {
            println!(
                "{path}: valid ({} exchanges, {} queues of which {} dead-letter, {} bindings, {} rate limits, {} users, {} event schemas)",
                topology.exchanges.len(),
                topology.queues.len(),
                topology.dead_letter_queues().count(),
                topology.bindings.len(),
                topology.rate_limits.len(),
                topology.users.len(),
                topology.schemas.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                println!("{path}: {error}");
            }
            println!("{path}: {} error(s)", errors.len());
            ExitCode::FAILURE
        }
    }
}

fn load_or_exit(settings: &Settings) -> Result<topology::Topology, ExitCode> {
    app::load_topology(settings).map_err(|errors| {
        for error in errors {
            eprintln!("{}: {error}", settings.app.topology_file.display());
        }
        eprintln!("hint: `messages-broker topology check` lists the same errors");
        ExitCode::FAILURE
    })
}

async fn apply(settings: Settings) -> ExitCode {
    let topology = match load_or_exit(&settings) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let conn = match connection::connect(&settings.rabbitmq, "messages-broker topology apply").await {
        Ok(conn) => conn,
        Err(err) => {
            eprintln!(
                "error: cannot connect to RabbitMQ at {}: {err}",
                settings.rabbitmq.display_uri()
            );
            return ExitCode::from(3);
        }
    };
    let result = declare::declare(&conn, &topology, declare::Probe::Existence).await;
    let _ = conn.close(200, "done".into()).await;
    match result {
        Ok(report) => {
            for item in &report.items {
                println!("{item}");
            }
            let failed = report.failures().count();
            println!(
                "{} created, {} already present, {failed} failed",
                report.created(),
                report.items.len() - report.created() - failed
            );
            let users_failed = apply_users(&settings, &topology).await;
            if failed == 0 && users_failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: the connection failed while declaring: {err}");
            ExitCode::from(3)
        }
    }
}

/// The file's users after its entities: each one's outcome, then a summary. A user skipped for
/// its missing password source is printed but is no failure (this machine may simply not hold
/// the services' passwords); one the broker refused is. Returns how many failed.
async fn apply_users(settings: &Settings, topology: &topology::Topology) -> usize {
    if topology.users.is_empty() {
        return 0;
    }
    let client = ManagementClient::new(&settings.rabbitmq);
    let report = users::apply_users(&client, &topology.users, settings.topology.delete_unknown_users).await;
    for item in &report.items {
        println!("{item}");
    }
    let count = |wanted: fn(&users::UserOutcome) -> bool| report.items.iter().filter(|u| wanted(&u.outcome)).count();
    let in_place = count(|o| matches!(o, users::UserOutcome::Created | users::UserOutcome::Updated));
    let skipped = count(|o| matches!(o, users::UserOutcome::Skipped(_)));
    let deleted = count(|o| matches!(o, users::UserOutcome::Deleted));
    let failed = report.failed();
    println!(
        "users: {in_place} in place, {skipped} skipped (password source missing), {failed} failed, {deleted} deleted"
    );
    failed
}

async fn diff(settings: Settings) -> ExitCode {
    let topology = match load_or_exit(&settings) {
        Ok(t) => t,
        Err(code) => return code,
    };
    // Not drift of the broker, but what `topology apply` from here would skip.
    for (user, reason) in users::missing_passwords(&topology.users) {
        println!("note: user {user} cannot be applied from here: {reason}");
    }
    let client = ManagementClient::new(&settings.rabbitmq);
    match diff::diff_live(&client, &topology).await {
        Ok(differences) if differences.is_empty() => {
            println!("no drift: the broker matches {}", settings.app.topology_file.display());
            ExitCode::SUCCESS
        }
        Ok(differences) => {
            for difference in &differences {
                println!("{difference}");
            }
            println!("{} difference(s)", differences.len());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(3)
        }
    }
}

async fn migrate(settings: Settings) -> ExitCode {
    let pool = store::pool(&settings.database);
    match store::migrate(&pool).await {
        Ok(()) => {
            println!(
                "migrated {}@{}:{}/{} ({} migrations known)",
                settings.database.username,
                settings.database.host,
                settings.database.port,
                settings.database.database,
                store::MIGRATOR.iter().count()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(3)
        }
    }
}
