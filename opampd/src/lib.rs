//! opampd: an OpAMP server with a SQLite inventory and a REST API.
//!
//! Layout (data flows down):
//! - `server`: listeners, TLS, HTTP/1.1 + HTTP/2, graceful drain.
//! - `opamp/`: the OpAMP endpoint — `ws` and `http` transports, `session` rules.
//! - `fleet`: live agents and their push channels (sharded, no global lock).
//! - `targeting`: which configuration each agent should run.
//! - `components`: agents' available components, and what a configuration uses.
//! - `configs`, `rollouts`: configuration rules; staged rollouts and their progress.
//! - `store/`: the only code that touches SQLite (batching writer, read pool).
//! - `api/`: REST handlers, health probes, metrics; `auth`: tokens and roles.
//! - `cli`: the command line (flags, and the man page's other sections).
//! - `config`, `metrics`, `procinfo`, `logring`, `files`: cross-cutting pieces.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod components;
pub mod config;
pub mod configs;
pub mod files;
pub mod fleet;
pub mod forwarded;
pub mod fuzzing;
pub mod logring;
pub mod metrics;
pub mod opamp;
pub mod packages;
pub mod procinfo;
pub mod replica;
pub mod rollouts;
pub mod selector;
pub mod server;
pub mod store;
pub mod targeting;

use anyhow::{Context, Result};
use app::App;
use config::Config;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Listeners opampd serves on.
pub struct Listeners {
    pub main: TcpListener,
    pub agent: Option<TcpListener>,
}

/// Accept-queue length: a reconnect storm of thousands of agents must not
/// overflow it (dropped SYNs are retried only after a second). The kernel caps
/// it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 16384;

fn listen(addr: &str) -> Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not an address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

impl Listeners {
    /// Binds the configured addresses (port 0 picks a free port).
    pub async fn bind(config: &Config) -> Result<Listeners> {
        let main = listen(&config.listen).with_context(|| {
            format!(
                "cannot listen on {} (in use? see `opampctl troubleshoot startup`)",
                config.listen
            )
        })?;
        let agent = match &config.agent_listen {
            Some(a) => {
                Some(listen(a).with_context(|| format!("cannot listen on agent_listen {a}"))?)
            }
            None => None,
        };
        Ok(Listeners { main, agent })
    }
}

/// Options that are not part of the config file.
pub struct RunOptions {
    /// No config file was given: a JWT key may be generated.
    pub zero_config: bool,
    pub logs: logring::LogRing,
    /// Flips to true on SIGHUP-style reloads of agent secrets.
    pub reload: Option<tokio::sync::mpsc::Receiver<Config>>,
}

/// Runs opampd until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let started = Instant::now();
    let database_url = config
        .database
        .url
        .as_deref()
        .map(store::postgres::DatabaseUrl::parse)
        .transpose()?;
    create_data_dir(&config.data_dir)?;
    let jwt_key = auth::load_jwt_key(&config, opts.zero_config)?;
    let tls = server::tls_acceptor(&config.tls)?;
    let agent_tls = server::agent_tls_acceptor(&config)?;
    let backend = if database_url.is_some() {
        "postgresql"
    } else {
        "sqlite"
    };
    let replica = replica::Replica::new(config.cluster.replica_id.as_deref(), backend);
    let metrics = Arc::new(metrics::Metrics::new(
        Duration::from_millis(config.database.slow_query_ms),
        replica,
    ));
    let store_opts = store::StoreOptions {
        max_open_conns: config.database.max_open_conns,
        max_idle_conns: config
            .database
            .max_idle_conns
            .min(config.database.max_open_conns),
        conn_max_lifetime: Duration::from_secs(config.database.conn_max_lifetime.max(1)),
        flush_interval: Duration::from_millis(config.database.flush_interval_ms),
        max_queued_writes: config.database.max_queued_writes,
        busy_timeout: Duration::from_millis(config.database.busy_timeout_ms),
        synchronous: if config.database.synchronous == "full" {
            "FULL"
        } else {
            "NORMAL"
        },
    };
    let store = match &database_url {
        Some(url) => store::Store::new(Arc::new(
            store::postgres::Postgres::open(url, &store_opts, metrics.clone()).await?,
        )),
        None => {
            let metrics = metrics.clone();
            let path = config.db_path();
            tokio::task::spawn_blocking(move || store::Store::open(&path, &store_opts, metrics))
                .await??
        }
    };
    if config.opamp.agent_secrets.is_empty() {
        tracing::warn!("no opamp.agent_secrets configured: any agent that can reach the OpAMP endpoint is accepted");
    }
    let connection_settings =
        opamp::connection::ConnectionSettings::new(&config, &config.opamp.agent_secrets);
    if !connection_settings.offers_opamp() {
        tracing::info!("{}", opamp::connection::NO_PUBLIC_URL);
    }
    let cluster = match &database_url {
        Some(url) => {
            let coordinator = cluster::postgres::Coordinator::open(
                url,
                &metrics.replica().id,
                Some(server::local_addr(&listeners.main).to_string()),
                Duration::from_secs(config.cluster.lease_seconds),
            )
            .await?;
            cluster::Cluster::Postgres(coordinator)
        }
        None => cluster::Cluster::local(),
    };
    let hosted = {
        let (agent_addr, agent_tls) = match &listeners.agent {
            Some(agent) => (server::local_addr(agent), agent_tls.is_some()),
            None => (server::local_addr(&listeners.main), tls.is_some()),
        };
        packages::hosted::Hosted::open(&config, agent_addr, agent_tls)?
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let components = components::Cache::with_limit(config.opamp.max_stored_bytes_per_agent);
    let app = Arc::new(App {
        agent_secrets: RwLock::new(
            config
                .opamp
                .agent_secrets
                .iter()
                .map(|s| opamp::secret_digest(s))
                .collect(),
        ),
        auth: auth::Auth::new(jwt_key, config.auth.token_ttl_minutes),
        connection_settings: RwLock::new(Arc::new(connection_settings)),
        config,
        store,
        fleet: fleet::Fleet::default(),
        cluster,
        targets: targeting::Targets::default(),
        package_targets: Default::default(),
        hosted,
        components,
        metrics,
        logs: opts.logs,
        started,
        ready: Default::default(),
        draining: Default::default(),
        rollout_wakeup: Default::default(),
        foreign_certificates: Default::default(),
        shutdown: shutdown_rx.clone(),
    });
    app.auth.bootstrap(&app.store, &app.config.data_dir).await?;
    // Agents get their rolled-out configurations from the first message on.
    app.components.load(&app.store).await?;
    rollouts::rebuild_targets(&app).await?;

    let timeouts = server::Timeouts {
        header: Duration::from_secs(app.config.http.header_timeout_seconds),
        idle: Duration::from_secs(app.config.http.idle_timeout_seconds),
    };
    let drain = Duration::from_secs(10);
    let proxies = Arc::new(
        forwarded::TrustedProxies::parse(&app.config.http.trusted_proxies)
            .map_err(anyhow::Error::msg)?,
    );
    let main_addr = server::local_addr(&listeners.main);
    let main_router = api::router(app.clone());
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(server::serve(
        listeners.main,
        main_router,
        tls.clone(),
        timeouts,
        proxies.clone(),
        shutdown_rx.clone(),
        drain,
    ));
    let agent_addr = listeners.agent.as_ref().map(server::local_addr);
    if let Some(l) = listeners.agent {
        servers.spawn(server::serve(
            l,
            api::agent_router(app.clone()),
            agent_tls,
            timeouts,
            proxies.clone(),
            shutdown_rx.clone(),
            drain,
        ));
    }
    cluster::Cluster::start(&app);
    let background = [
        tokio::spawn(app::flush_last_seen(app.clone())),
        tokio::spawn(app::liveness(app.clone())),
        tokio::spawn(rollouts::progress(app.clone())),
        tokio::spawn(packages::hosted::sweep_loop(app.clone())),
    ];
    if let Some(mut reload) = opts.reload {
        let app = app.clone();
        tokio::spawn(async move {
            while let Some(new) = reload.recv().await {
                apply_reload(&app, &new);
            }
        });
    }
    app.ready.store(true, Ordering::Relaxed);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        addr = %main_addr,
        agent_addr = agent_addr.map(|a| a.to_string()).unwrap_or_default(),
        url = %format!("{scheme}://{main_addr}"),
        opamp_path = %app.config.opamp.path,
        data_dir = %app.config.data_dir.display(),
        replica = %app.metrics.replica().id,
        backend = app.metrics.replica().backend,
        startup_ms = started.elapsed().as_millis() as u64,
        "opampd listening"
    );

    shutdown.await;
    tracing::info!("shutting down: draining agent connections");
    app.draining.store(true, Ordering::Relaxed);
    app.fleet
        .close_all(opamp::ws::CLOSE_GOING_AWAY, "server shutting down");
    // Let WebSocket tasks send their close frames and record the disconnects.
    let wait_until = Instant::now() + Duration::from_secs(5);
    while app.fleet.connections() > 0 && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = shutdown_tx.send(true);
    while servers.join_next().await.is_some() {}
    for t in background {
        let _ = t.await;
    }
    // Persist what the live sessions still hold, then stop the writer.
    for uid in app.fleet.uids() {
        opamp::agent_left(
            &app,
            &uid,
            app.fleet.with(&uid, |s| s.conn_id()).unwrap_or(0),
            "server shutdown",
        );
    }
    app.store.flush().await;
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    tracing::info!("opampd stopped");
    Ok(())
}

/// Creates the data directory, private to the service user.
fn create_data_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "data directory {} is not writable by this user",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn apply_reload(app: &App, new: &Config) {
    if new.opamp.agent_secrets.is_empty()
        && !app
            .agent_secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    {
        tracing::warn!(
            "reload: opamp.agent_secrets is now empty; keeping the current agent secrets \
             (opening the agent plane needs a restart)"
        );
        return;
    }
    let secrets: Vec<[u8; 32]> = new
        .opamp
        .agent_secrets
        .iter()
        .map(|s| opamp::secret_digest(s))
        .collect();
    let count = secrets.len();
    *app.agent_secrets.write().unwrap_or_else(|e| e.into_inner()) = secrets;
    // The first secret is part of the OpAMP connection settings: a new one
    // is offered to the agents that accept them.
    let settings =
        opamp::connection::ConnectionSettings::new(&app.config, &new.opamp.agent_secrets);
    *app.connection_settings
        .write()
        .unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    tracing::info!(
        agent_secrets = count,
        "reloaded agent secrets; other changes need a restart"
    );
}
