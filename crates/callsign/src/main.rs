//! `callsign`: the self-hosted identity and access-token service.
//!
//! A thin binary over `callsign-server`: it parses flags, environment and an optional TOML file
//! into `Settings`, sets up logging and signals, and runs one of the subcommands.

/// Prints a line on stdout; a closed pipe (`| head`) ends output quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod access_cmd;
mod audit_cmd;
mod cli_docs;
mod client_cmd;
mod config;
mod config_cmd;
mod copy_progress;
mod dev;
mod doctor;
mod doctor_tls;
mod resource_cmd;
mod signing_key_cmd;
mod sources;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use config::{Cli, Command, ConnectionStringArgs, MigrateArgs, MigrateStoreArgs, ServeArgs};

/// See the dependency's note in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Whatever this process creates (data dir, database, keys) is private to its user.
    callsign_store::restrict_umask();
    warn_about_secrets_in_arguments();
    // The matches are kept: `callsign config` tells a flag from its environment variable.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
    // Commands that work on a store report what they notice (permissions tightened, keys not
    // sealed); client and load commands keep to their one-line output.
    if matches!(
        cli.command,
        Command::ConnectionString(_)
            | Command::Resource(_)
            | Command::Keys(_)
            | Command::CaCert(_)
            | Command::Migrate(_)
            | Command::Seal(_)
            | Command::RotateMasterKey(_)
            | Command::MigrateStore(_)
            | Command::Audit(_)
            | Command::SigningKey(_)
    ) {
        init_command_logging();
    }
    let result = runtime.block_on(async {
        survive_file_size_limit();
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::ConnectionString(args) => print_connection_string(args).await,
            Command::Resource(cmd) => resource_cmd::resource(cmd).await,
            Command::Keys(cmd) => resource_cmd::keys(cmd).await,
            Command::CaCert(args) => print_ca_cert(args),
            Command::Migrate(args) => migrate(args).await,
            Command::Seal(args) => seal(args).await,
            Command::RotateMasterKey(args) => rotate_master_key(args).await,
            Command::User(cmd) => client_cmd::user(cmd).await,
            Command::Token(cmd) => client_cmd::token(cmd).await,
            Command::Assignment(cmd) => access_cmd::assignment(cmd).await,
            Command::Exchange(args) => access_cmd::exchange(args).await,
            Command::MigrateStore(args) => migrate_store(args).await,
            Command::Bench(args) => callsign_bench::run_bench(args).await,
            Command::Seed(args) => callsign_bench::run_seed(args).await,
            Command::Audit(args) => audit_cmd::run(args).await,
            Command::SigningKey(cmd) => signing_key_cmd::run(cmd).await,
            Command::Config(args) => config_cmd::run(*args, matches.subcommand_matches("config")),
            Command::Doctor(args) => doctor::run(*args).await,
            Command::Completions(args) => cli_docs::completions(args),
            Command::Man(args) => cli_docs::man(args),
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

/// Every local user can read a process's arguments (`ps`, `/proc/PID/cmdline`): say so when a
/// password, an access key or a bearer token is among them, and what to use instead.
fn warn_about_secrets_in_arguments() {
    for arg in std::env::args().skip(1) {
        if arg == "--token" || arg.starts_with("--token=") {
            eprintln!(
                "warning: a token on the command line is visible to every local user (ps, /proc); \
                 pass it with --token-file PATH (- for standard input) or in {} instead",
                access_cmd::TOKEN_ENV
            );
        }
        let value = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
        if value.contains("://") && callsign_store::mask_database_url(value) != value {
            eprintln!(
                "warning: a database password on the command line is visible to every local user \
                 (ps, /proc); pass the URL in CALLSIGN_DATABASE_URL or the config file instead"
            );
        }
        if value.to_ascii_lowercase().contains("accesskey=") {
            eprintln!(
                "warning: an access key on the command line is visible to every local user (ps, \
                 /proc); pass the connection string in COMMUNICATION_SERVICES_CONNECTION_STRING \
                 instead"
            );
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

/// A write past the file-size limit (`ulimit -f`, systemd's `LimitFSIZE`) raises SIGXFSZ, whose
/// default action kills the process. With a handler registered the write fails with EFBIG
/// instead: the store answers it as "cannot write" (503, not ready) and recovers once the limit
/// is raised. Tokio keeps a signal handler for the life of the process, so the stream is
/// dropped at once. (No `libc` here: SIGXFSZ is 25 on these targets.)
fn survive_file_size_limit() {
    #[cfg(all(
        any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "freebsd"
        ),
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64",
            target_arch = "powerpc64",
            target_arch = "s390x",
            target_arch = "loongarch64"
        )
    ))]
    {
        const SIGXFSZ: i32 = 25;
        let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ));
    }
}

/// Commands other than `serve` log warnings (a permission tightened, keys not sealed) to stderr,
/// plainly.
fn init_command_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Logs go to stderr through a background writer thread, so a request never waits on the
/// terminal or pipe. The guard flushes what is buffered when `serve` returns.
fn init_logging(json: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // rustls warns about protocol oddities of peers (an IP address sent as SNI, on every
    // connection of some clients): any client could fill the log with them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
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
    let shutdown = shutdown_signal()?;
    if args.dev {
        return serve_dev(args, shutdown).await;
    }
    let resolved = config::resolve_serve(args)?;
    let _log_guard = init_logging(resolved.log_json);
    // A panic anywhere is an error event of the log (JSON with --log-json), not a bare stderr
    // line; the pipeline adds the request id for a panic in a handler.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "a thread panicked");
    }));
    let settings = resolved.settings;
    let data_dir = settings.data_dir.clone();
    let local_ca = matches!(settings.tls, callsign_server::TlsMode::LocalCa { .. });
    let postgres = matches!(settings.database, callsign_store::Database::Postgres { .. });
    let ca_before = std::fs::read(callsign_server::LocalCaPaths::new(&data_dir).ca_cert()).ok();
    let app = callsign_server::Application::build(settings).await?;

    // Lets `callsign connection-string` print the endpoint actually in use.
    if let Err(e) = std::fs::write(config::endpoint_file(&data_dir), app.endpoint()) {
        tracing::warn!(error = %e, "cannot record the endpoint in the data dir");
    }
    // A closed standard output (`callsign serve | head -1`, a supervisor that stopped reading)
    // must not stop a server that is already listening.
    if let Err(e) = print_banner(&app, &data_dir, postgres, local_ca, ca_before) {
        tracing::warn!(error = %e, "cannot print the start banner on standard output; serving on");
    }
    app.serve(shutdown).await
}

/// `serve --dev`: the well-known resource in a temporary store with the public dev CA; the
/// store is removed when the server stops.
async fn serve_dev(
    mut args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let parent = dev::store_parent();
    let swept = dev::sweep_stale(&parent);
    let tmp = tempfile::Builder::new()
        .prefix("callsign-dev-")
        .tempdir_in(&parent)
        .context("cannot make the dev store's temporary directory")?;
    dev::claim(tmp.path())?;
    dev::install_ca(tmp.path())?;
    args.common.data_dir = Some(tmp.path().to_path_buf());
    let (seed, allow_remote) = (args.seed.take(), args.dev_allow_remote);
    let resolved = config::resolve_serve(args)?;
    let _log_guard = init_logging(resolved.log_json);
    let mut settings = resolved.settings;
    dev::check_listen(settings.listen, allow_remote)?;
    if let Some(metrics) = settings.metrics_listen {
        dev::check_listen(metrics, allow_remote)?;
    }
    settings.default_resource = Some(dev::resource()?);
    settings.ephemeral = true;
    let store: std::sync::Arc<dyn callsign_store::Store> =
        callsign_store::StoreLocation::DataDir(tmp.path().to_path_buf())
            .open(
                &callsign_store::PostgresOptions::default(),
                settings.keys.clone(),
            )
            .await?;
    let app = callsign_server::Application::build_with(
        settings,
        std::sync::Arc::clone(&store),
        std::sync::Arc::new(callsign_core::SystemClock),
    )
    .await?;
    let seeded = match seed {
        Some(file) => dev::seed(store.as_ref(), &file).await?,
        None => 0,
    };
    if swept > 0 {
        tracing::info!(swept, "removed dev stores left by servers that are gone");
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = print_dev_banner(&app, seeded, ready_ms) {
        tracing::warn!(error = %e, "cannot print the start banner on standard output; serving on");
    }
    let served = app.serve(shutdown).await;
    drop(store);
    tmp.close().context("cannot remove the dev store")?;
    served
}

/// What a developer needs: the endpoint, the well-known connection string, how to trust the
/// dev CA, and that it protects nothing.
fn print_dev_banner(
    app: &callsign_server::Application,
    seeded: usize,
    ready_ms: f64,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "callsign: listening on {} (dev mode, resource {}, ready in {ready_ms:.0} ms, {seeded} identities seeded)",
        app.endpoint(),
        app.resource_id()
    )?;
    writeln!(
        out,
        "callsign: dev mode: the key and the CA are public and protect nothing; nothing is kept after exit"
    )?;
    writeln!(out, "  {}", dev::connection_string(&app.endpoint()))?;
    if app.is_tls() {
        writeln!(
            out,
            "callsign: trust the dev CA (`callsign ca-cert --dev > callsign-dev-ca.pem`), then"
        )?;
        writeln!(
            out,
            "  export REQUESTS_CA_BUNDLE=$PWD/callsign-dev-ca.pem NODE_EXTRA_CA_CERTS=$PWD/callsign-dev-ca.pem SSL_CERT_FILE=$PWD/callsign-dev-ca.pem CURL_CA_BUNDLE=$PWD/callsign-dev-ca.pem"
        )?;
    }
    out.flush()
}

/// Where the server listens, how to get its connection string and, with the local CA, how to
/// trust it.
fn print_banner(
    app: &callsign_server::Application,
    data_dir: &std::path::Path,
    postgres: bool,
    local_ca: bool,
    ca_before: Option<Vec<u8>>,
) -> std::io::Result<()> {
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
        if postgres {
            writeln!(
                out,
                "callsign: connection string: callsign connection-string with the same \
                 CALLSIGN_DATABASE_URL (or --database-url)"
            )?;
        } else {
            writeln!(
                out,
                "callsign: connection string: callsign connection-string --data-dir {}",
                data_dir.display()
            )?;
        }
    }
    if local_ca {
        let ca = callsign_server::LocalCaPaths::new(data_dir).ca_cert();
        let ca_after = std::fs::read(&ca).ok();
        if ca_before.is_some() && ca_before != ca_after {
            writeln!(
                out,
                "callsign: the local CA was REPLACED (a name outside the old one's constraints was \
                 asked for): clients must trust the new CA below"
            )?;
        }
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
    out.flush()
}

/// Registers for SIGTERM and SIGINT now (so a signal that arrives before serving starts is not
/// fatal) and returns the future that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

async fn print_connection_string(args: ConnectionStringArgs) -> anyhow::Result<()> {
    if args.dev {
        let endpoint = args.endpoint.as_deref().unwrap_or(dev::DEFAULT_ENDPOINT);
        out!("{}", dev::connection_string(endpoint));
        return Ok(());
    }
    resource_cmd::print_connection_string(config::resolve_connection_string(args)?).await
}

/// Why `migrate-store` refused a target, with a few of the ids concerned.
fn report_divergence(
    created_on_target: usize,
    deleted_on_target: usize,
    examples: &[callsign_store::DivergedId],
) -> std::io::Result<()> {
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
    for example in examples {
        writeln!(err, "  {example}")?;
    }
    Ok(())
}

/// What `migrate-store` did, for the operator.
fn print_copy_report(report: &callsign_store::CopyReport) {
    println!(
        "callsign: copied {} signing key(s), {} of {} identities ({} already there, {} revocation epoch(s) raised), {} Teams assignment(s) and {} access assignment(s)",
        report.signing_keys,
        report.identities_inserted,
        report.identities_read,
        report
            .identities_read
            .saturating_sub(report.identities_inserted)
            .saturating_sub(report.skipped_deleted)
            .saturating_sub(report.custom_id_conflicts),
        report.epochs_raised,
        report.assignments,
        report.access_assignments
    );
    println!("callsign: {} audit record(s) copied", report.audit_records);
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
}

/// Reads the master key file, creating it (0600) first if it does not exist.
fn master_key_at(path: &std::path::Path) -> anyhow::Result<callsign_store::MasterKey> {
    if path.exists() {
        Ok(callsign_store::MasterKey::read_file(path)?)
    } else {
        let key = callsign_store::MasterKey::generate_file(path)?;
        println!(
            "callsign: created the master key {} (id {}); keep a copy apart from the store's backups",
            path.display(),
            key.id()
        );
        Ok(key)
    }
}

/// Checks, before a master key file is created for it, that the store exists and can be
/// written: a mistyped --data-dir must not become a new sealed store, nor a read-only one leave
/// a key file that seals nothing.
async fn check_store_for_sealing(resolved: &config::ResolvedStore) -> anyhow::Result<()> {
    if let callsign_store::StoreLocation::DataDir(dir) = &resolved.location
        && !callsign_store::database_path(dir).exists()
    {
        anyhow::bail!(
            "there is no store in {}: start `callsign serve --data-dir {0}` first, or name the \
                 right --data-dir / --database-url",
            dir.display()
        );
    }
    let probe = resolved
        .location
        .open(&resolved.options, callsign_store::KeyProtection::plain())
        .await?;
    let writable = probe.writable();
    probe.close().await;
    writable.context("the store cannot be written")
}

async fn seal(args: MigrateArgs) -> anyhow::Result<()> {
    let Some(path) = args.db.master_key_file.clone() else {
        anyhow::bail!(
            "--master-key-file (or CALLSIGN_MASTER_KEY_FILE) names the master key to seal with"
        );
    };
    // Resolved without the key (its file may not exist yet), checked before it is created.
    let mut args = args;
    args.db.master_key_file = None;
    let mut resolved = config::resolve_migrate(args)?;
    check_store_for_sealing(&resolved).await?;
    let key = master_key_at(&path)?;
    let id = key.id().to_owned();
    resolved.keys = callsign_store::KeyProtection::sealed(callsign_store::Sealer::new(key));
    reseal(&resolved, &id).await
}

async fn rotate_master_key(args: config::RotateMasterKeyArgs) -> anyhow::Result<()> {
    let Some(old_path) = args.store.db.master_key_file.clone() else {
        anyhow::bail!("--master-key-file names the current master key");
    };
    let old = callsign_store::MasterKey::read_file(&old_path)?;
    let new = master_key_at(&args.new_master_key_file)?;
    if new.id() == old.id() {
        anyhow::bail!("the new master key is the current one");
    }
    let id = new.id().to_owned();
    let mut resolved = config::resolve_migrate(args.store)?;
    resolved.keys =
        callsign_store::KeyProtection::sealed(callsign_store::Sealer::new(new).with_previous(old));
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
        callsign_store::ensure_default_resource(store.as_ref(), &callsign_core::SystemClock)
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
    let from = callsign_store::StoreLocation::parse(&args.from).context("--from")?;
    let to = callsign_store::StoreLocation::parse(&args.to).context("--to")?;
    let options = callsign_store::PostgresOptions::default();
    if args.from.trim_end_matches('/') == args.to.trim_end_matches('/') {
        anyhow::bail!("--from and --to name the same store");
    }
    if let callsign_store::StoreLocation::DataDir(dir) = &from
        && !callsign_store::database_path(dir).exists()
    {
        anyhow::bail!(
            "--from {}: there is no store in that directory (nothing to copy)",
            dir.display()
        );
    }
    let keys = config::key_protection(args.master_key_file.as_deref())?;
    let keys_sealed = keys.is_sealed();
    let from = from
        .open(&options, keys.clone())
        .await
        .context("cannot open the source store")?;
    // The source's keys must open (a sealed source needs its master key) before the target is
    // created or touched.
    if let Err(e) = from.default_resource().await {
        from.close().await;
        return Err(anyhow::Error::from(e).context("cannot read the source store"));
    }
    let to = to
        .open(&options, keys)
        .await
        .context("cannot open the target store")?;
    let copy = callsign_store::CopyOptions {
        batch: args.batch,
        force: args.force,
    };
    let sealing = keys_sealed;
    let progress = copy_progress::CopyBar::default();
    let mut result =
        callsign_store::copy_store_with_progress(from.as_ref(), to.as_ref(), &copy, &progress)
            .await;
    progress.finish();
    if sealing && result.is_ok() {
        // The target may have held plain keys from an earlier copy: seal them too.
        if let Err(e) = to.reseal_keys().await {
            result = Err(e.into());
        }
    }
    from.close().await;
    to.close().await;
    let report = match result {
        Ok(report) => report,
        Err(callsign_store::CopyError::Diverged {
            created_on_target,
            deleted_on_target,
            examples,
        }) => {
            report_divergence(created_on_target, deleted_on_target, &examples)?;
            anyhow::bail!(
                "nothing was copied; rerun with --force to copy anyway (identities created on the \
                 target are kept, identities deleted on the target stay deleted)"
            );
        }
        Err(e) => return Err(e.into()),
    };
    print_copy_report(&report);
    Ok(())
}

fn print_ca_cert(args: config::CaCertArgs) -> anyhow::Result<()> {
    if args.dev {
        print!("{}", dev::CA_PEM);
        return Ok(());
    }
    let data_dir = config::resolve_data_dir(args.common)?;
    callsign_store::secure_data_dir(&data_dir)?;
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
    } else if !paths.ca_covers(&args.tls_names) {
        anyhow::bail!(
            "the existing local CA cannot certify {}: `callsign serve --tls-name …` replaces it \
             with one that can (clients must then trust the new CA)",
            args.tls_names.join(", ")
        );
    }
    let pem = std::fs::read_to_string(paths.ca_cert())
        .with_context(|| format!("cannot read {}", paths.ca_cert().display()))?;
    print!("{pem}");
    Ok(())
}
