//! The opampd binary: logging, signals. The flags are defined in `opampd::cli`;
//! everything else is in the library too.

use anyhow::{Context, Result};
use clap::Parser;
use opampd::cli::{Cli, Command};
use opampd::config::{Config, Overrides};
use opampd::logring::LogRing;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

fn env_pairs() -> Vec<(String, String)> {
    // Flags already carry these three; the rest are config keys.
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("OPAMPD_")
                && !matches!(
                    k.as_str(),
                    "OPAMPD_LISTEN" | "OPAMPD_AGENT_LISTEN" | "OPAMPD_DATA_DIR"
                )
        })
        .collect()
}

fn load(cli: &Cli) -> Result<Config> {
    let flags = Overrides {
        listen: cli.listen.clone(),
        agent_listen: cli.agent_listen.clone(),
        data_dir: cli.data_dir.clone(),
        log_level: cli.log_level.clone(),
        log_format: cli.log_format.clone(),
        database_url: cli.database_url.clone(),
    };
    Config::load(cli.config.as_deref(), &env_pairs(), &flags)
}

fn masked(config: &Config) -> Config {
    let mut c = config.clone();
    c.database.url = c
        .database
        .url
        .as_deref()
        .map(opampd::store::postgres::url::redact);
    c.opamp.agent_secrets = c
        .opamp
        .agent_secrets
        .iter()
        .map(|_| "********".to_string())
        .collect();
    // Telemetry headers usually carry API keys.
    for destination in [
        &mut c.telemetry.own_metrics,
        &mut c.telemetry.own_logs,
        &mut c.telemetry.own_traces,
    ] {
        for value in destination.headers.values_mut() {
            *value = "********".to_string();
        }
    }
    c
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opampd: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    if let Some(Command::CheckConfig {
        print_defaults,
        print,
    }) = &cli.command
    {
        if *print_defaults {
            print!("{}", serde_yaml::to_string(&Config::default())?);
            return Ok(());
        }
        let config = load(&cli)?;
        if *print {
            print!("{}", serde_yaml::to_string(&masked(&config))?);
        }
        opampd::auth::load_jwt_key_check(&config, cli.config.is_none())?;
        opampd::server::tls_acceptor(&config.tls)?;
        if config.opamp.public_url.is_none() {
            eprintln!("note: {}", opampd::opamp::connection::NO_PUBLIC_URL);
        }
        opampd::server::agent_tls_acceptor(&config)?;
        eprintln!(
            "ok: configuration is valid ({})",
            cli.config
                .as_ref()
                .map_or("built-in defaults".to_string(), |p| p.display().to_string())
        );
        return Ok(());
    }
    let config = load(&cli)?;
    let ring = LogRing::new(config.log.ring_lines);
    let filter_handle = init_logging(&config, &ring)?;
    // Blocking threads run database reads, which wait for one of
    // `database.max_open_conns` connections anyway: more threads only cost
    // memory (stacks, allocator arenas) during a connection storm.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.database.max_open_conns + 8)
        .build()?;
    runtime.block_on(async move {
        let listeners = opampd::Listeners::bind(&config).await?;
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config_path = cli.config.clone();
        tokio::spawn(signals(stop_tx, reload_tx, move || {
            let new = load(&cli).context("reload: configuration not reloaded")?;
            filter_handle
                .modify(|f| *f = EnvFilter::new(&new.log.level))
                .context("reload: log level")?;
            tracing::info!(config = ?config_path, level = %new.log.level, "configuration reloaded (log level, agent secrets)");
            Ok(new)
        }));
        let opts = opampd::RunOptions { zero_config: cli_zero_config(), logs: ring, reload: Some(reload_rx) };
        opampd::run(config, listeners, opts, async move {
            let _ = stop_rx.await;
        })
        .await
    })
}

fn cli_zero_config() -> bool {
    std::env::var_os("OPAMPD_CONFIG").is_none()
        && !std::env::args().any(|a| a == "--config" || a == "-c" || a.starts_with("--config="))
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn init_logging(config: &Config, ring: &LogRing) -> Result<FilterHandle> {
    let filter = EnvFilter::try_new(&config.log.level)?;
    let (filter, handle) = reload::Layer::new(filter);
    let json = match config.log.format.as_str() {
        "json" => true,
        "text" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let stderr_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let file_layer = match &config.log.file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log.file {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::sync::Mutex::new(file))
                    .boxed(),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(file_layer)
        .with(ring.layer())
        .init();
    Ok(handle)
}

async fn signals(
    stop: tokio::sync::oneshot::Sender<()>,
    reload: tokio::sync::mpsc::Sender<Config>,
    mut reload_config: impl FnMut() -> Result<Config> + Send + 'static,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = hup.recv() => match reload_config() {
                Ok(c) => { let _ = reload.send(c).await; }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload failed; keeping the running configuration"),
            },
        }
    }
    let _ = stop.send(());
}
