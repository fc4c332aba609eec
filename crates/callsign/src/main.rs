//! `callsign`: the self-hosted identity and access-token service.
//!
//! A thin binary over `callsign-server`: it parses flags, environment and an optional TOML file
//! into `Settings`, sets up logging and signals, and runs one of the subcommands.

mod client_cmd;
mod config;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use config::{Cli, Command, ConnectionStringArgs, MigrateArgs, MigrateStoreArgs, ServeArgs};

fn main() -> ExitCode {
    // Whatever this process creates (data dir, database, keys) is private to its user.
    callsign_server::restrict_umask();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::ConnectionString(args) => print_connection_string(args).await,
            Command::CaCert(args) => print_ca_cert(args),
            Command::Migrate(args) => migrate(args).await,
            Command::Seal(args) => seal(args).await,
            Command::RotateMasterKey(args) => rotate_master_key(args).await,
            Command::User(cmd) => client_cmd::user(cmd).await,
            Command::Token(cmd) => client_cmd::token(cmd).await,
            Command::MigrateStore(args) => migrate_store(args).await,
            Command::Bench(args) => callsign_bench::run_bench(args).await,
            Command::Seed(args) => callsign_bench::run_seed(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once (HTTP stacks repeat their message in
/// their sources), with what to do about an untrusted server certificate.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    let out = out.replace('\n', " ");
    let untrusted = [
        "UnknownIssuer",
        "invalid peer certificate",
        "certificate verify failed",
    ];
    if untrusted.iter().any(|t| out.contains(t)) {
        return format!(
            "{out} (the server's TLS certificate is not trusted: point --ca-cert or SSL_CERT_FILE \
             at the output of `callsign ca-cert --data-dir <the server's data dir>`)"
        );
    }
    out
}

/// Logs go to stderr through a background writer thread, so a request never waits on the
/// terminal or pipe. The guard flushes what is buffered when `serve` returns.
fn init_logging(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The PostgreSQL driver logs statements with their parameters (access keys, signing keys)
    // at debug level: never emitted, whatever RUST_LOG says.
    let no_driver_parameters = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target().starts_with("tokio_postgres") && *meta.level() > tracing::Level::INFO)
    });
    let filter = filter.and(no_driver_parameters);
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry();
    if json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter);
        registry.with(layer).init();
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(filter);
        registry.with(layer).init();
    }
    guard
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let resolved = config::resolve_serve(args)?;
    let _log_guard = init_logging(resolved.log_json);
    let settings = resolved.settings;
    let data_dir = settings.data_dir.clone();
    let local_ca = matches!(settings.tls, callsign_server::TlsMode::LocalCa { .. });
    let app = callsign_server::Application::build(settings).await?;

    // Lets `callsign connection-string` print the endpoint actually in use.
    if let Err(e) = std::fs::write(config::endpoint_file(&data_dir), app.endpoint()) {
        tracing::warn!(error = %e, "cannot record the endpoint in the data dir");
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "callsign: listening on {} (resource {})",
        app.endpoint(),
        app.resource_id()
    )?;
    if app.first_start() {
        writeln!(
            out,
            "callsign: created a new resource. Its connection string (a secret):"
        )?;
        writeln!(out, "  {}", app.connection_string())?;
    } else {
        writeln!(
            out,
            "callsign: connection string: callsign connection-string --data-dir {}",
            data_dir.display()
        )?;
    }
    if local_ca {
        let ca = callsign_server::LocalCaPaths::new(&data_dir).ca_cert();
        let ca = std::fs::canonicalize(&ca).unwrap_or(ca);
        writeln!(
            out,
            "callsign: to trust its TLS certificate, point clients at the local CA:"
        )?;
        writeln!(
            out,
            "  export REQUESTS_CA_BUNDLE={0} SSL_CERT_FILE={0} NODE_EXTRA_CA_CERTS={0}",
            ca.display()
        )?;
    }
    out.flush()?;
    drop(out);

    app.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

async fn print_connection_string(args: ConnectionStringArgs) -> anyhow::Result<()> {
    let resolved = config::resolve_connection_string(args)?;
    let store = resolved.store.open().await?;
    let (resource, _) =
        callsign_server::ensure_default_resource(store.as_ref(), &callsign_core::SystemClock)
            .await?;
    let key = if resolved.secondary {
        &resource.secondary_key
    } else {
        &resource.primary_key
    };
    println!(
        "{}",
        callsign_server::connection_string(&resolved.endpoint, key)
    );
    store.close().await;
    Ok(())
}

/// Reads the master key file, creating it (0600) first if it does not exist.
fn master_key_at(path: &std::path::Path) -> anyhow::Result<callsign_server::MasterKey> {
    if path.exists() {
        Ok(callsign_server::MasterKey::read_file(path)?)
    } else {
        let key = callsign_server::MasterKey::generate_file(path)?;
        println!(
            "callsign: created the master key {} (id {}); keep a copy apart from the store's backups",
            path.display(),
            key.id()
        );
        Ok(key)
    }
}

async fn seal(args: MigrateArgs) -> anyhow::Result<()> {
    let Some(path) = args.db.master_key_file.clone() else {
        anyhow::bail!(
            "--master-key-file (or CALLSIGN_MASTER_KEY_FILE) names the master key to seal with"
        );
    };
    let key = master_key_at(&path)?;
    let id = key.id().to_owned();
    let mut resolved = config::resolve_migrate(args)?;
    resolved.keys = callsign_server::KeyProtection::sealed(callsign_server::Sealer::new(key));
    reseal(&resolved, &id).await
}

async fn rotate_master_key(args: config::RotateMasterKeyArgs) -> anyhow::Result<()> {
    let Some(old_path) = args.store.db.master_key_file.clone() else {
        anyhow::bail!("--master-key-file names the current master key");
    };
    let old = callsign_server::MasterKey::read_file(&old_path)?;
    let new = master_key_at(&args.new_master_key_file)?;
    if new.id() == old.id() {
        anyhow::bail!("the new master key is the current one");
    }
    let id = new.id().to_owned();
    let mut resolved = config::resolve_migrate(args.store)?;
    resolved.keys = callsign_server::KeyProtection::sealed(
        callsign_server::Sealer::new(new).with_previous(old),
    );
    reseal(&resolved, &id).await?;
    println!(
        "callsign: start every node with --master-key-file {}; the old key opens nothing now",
        args.new_master_key_file.display()
    );
    Ok(())
}

async fn reseal(resolved: &config::ResolvedStore, id: &str) -> anyhow::Result<()> {
    let store = resolved.open().await?;
    let result = async {
        // A store nobody has started yet gets its resource and keys first, sealed.
        callsign_server::ensure_default_resource(store.as_ref(), &callsign_core::SystemClock)
            .await?;
        let n = store.reseal_keys().await?;
        anyhow::Ok(n)
    }
    .await;
    store.close().await;
    let n = result?;
    println!("callsign: {n} key value(s) sealed under master key {id}");
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let resolved = config::resolve_migrate(args)?;
    // Opening a store applies its pending migrations (under an advisory lock for PostgreSQL).
    let store = resolved.open().await?;
    store.close().await;
    println!("callsign: the schema is up to date");
    Ok(())
}

async fn migrate_store(args: MigrateStoreArgs) -> anyhow::Result<()> {
    // Both locations are checked before either store is opened (opening a data dir creates it).
    let from = callsign_server::StoreLocation::parse(&args.from).context("--from")?;
    let to = callsign_server::StoreLocation::parse(&args.to).context("--to")?;
    let options = callsign_server::PostgresOptions::default();
    let keys = config::key_protection(args.master_key_file.as_deref())?;
    let from = from
        .open(&options, keys.clone())
        .await
        .context("cannot open the source store")?;
    let to = to
        .open(&options, keys)
        .await
        .context("cannot open the target store")?;
    let copy = callsign_store::CopyOptions {
        batch: args.batch,
        force: args.force,
    };
    let result = callsign_store::copy_store(from.as_ref(), to.as_ref(), &copy).await;
    from.close().await;
    to.close().await;
    let report = match result {
        Ok(report) => report,
        Err(callsign_store::CopyError::Diverged {
            created_on_target,
            deleted_on_target,
            examples,
        }) => {
            let mut err = std::io::stderr().lock();
            writeln!(
                err,
                "callsign: the target has diverged from the source since the last copy:"
            )?;
            writeln!(
                err,
                "  {created_on_target} identities created on the target (unknown to the source)"
            )?;
            writeln!(
                err,
                "  {deleted_on_target} identities deleted on the target (alive on the source)"
            )?;
            for example in &examples {
                writeln!(err, "  {example}")?;
            }
            anyhow::bail!(
                "nothing was copied; rerun with --force to copy anyway (identities created on the \
                 target are kept, identities deleted on the target stay deleted)"
            );
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "callsign: copied {} signing key(s), {} of {} identities ({} already there, {} revocation epoch(s) raised) and {} Teams assignment(s)",
        report.signing_keys,
        report.identities_inserted,
        report.identities_read,
        report
            .identities_read
            .saturating_sub(report.identities_inserted)
            .saturating_sub(report.skipped_deleted)
            .saturating_sub(report.custom_id_conflicts),
        report.epochs_raised,
        report.assignments
    );
    println!(
        "callsign: {} deletion(s) read, {} new, {} identities deleted on the target",
        report.tombstones_read, report.tombstones_inserted, report.identities_deleted
    );
    if report.created_on_target + report.deleted_on_target > 0 {
        println!(
            "callsign: --force: kept {} identities created on the target; {} deleted on the target stay deleted ({} not copied); {} not copied because their custom id is taken on the target",
            report.created_on_target,
            report.deleted_on_target,
            report.skipped_deleted,
            report.custom_id_conflicts
        );
    }
    Ok(())
}

fn print_ca_cert(args: config::CaCertArgs) -> anyhow::Result<()> {
    let data_dir = config::resolve_data_dir(args.common)?;
    let paths = callsign_server::LocalCaPaths::new(&data_dir);
    // Creating the CA here lets clients trust it before the first `serve`; an existing CA is
    // only printed (a running server may be using it).
    if !paths.ca_cert().exists() {
        callsign_server::tls::server_config(
            &callsign_server::TlsMode::LocalCa {
                extra_names: args.tls_names,
            },
            &data_dir,
            time::OffsetDateTime::now_utc(),
        )?;
    }
    let pem = std::fs::read_to_string(paths.ca_cert())
        .with_context(|| format!("cannot read {}", paths.ca_cert().display()))?;
    print!("{pem}");
    Ok(())
}
