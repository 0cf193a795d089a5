//! The PostgreSQL backend: the only code that talks to PostgreSQL
//! (tokio-postgres through a deadpool-postgres pool).
//!
//! Several opampd replicas may share one database: the schema is migrated
//! under an advisory lock by whichever replica takes it first, and the first
//! replica to find no user creates the admin user.

mod agents;
mod backend;
mod configs;
pub mod dump;
mod maintenance;
mod package_rollouts;
mod packages;
pub mod schema;
mod selector;
mod sessions;
mod staged;
#[cfg(test)]
pub(crate) mod tests;
pub mod url;
mod users;
mod writer;

use super::StoreOptions;
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
pub use url::DatabaseUrl;

/// How long a caller waits for a pooled connection before the operation fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle to a PostgreSQL database; cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    url: DatabaseUrl,
    metrics: Arc<Metrics>,
    writer: Arc<writer::Writer>,
}

impl Postgres {
    /// Connects and migrates the schema (under the migration lock).
    pub async fn open(
        url: &DatabaseUrl,
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Postgres> {
        let mut config = url.config().clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("opampd");
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let lifetime = opts.conn_max_lifetime;
        let pool = Pool::builder(manager)
            .max_size(opts.max_open_conns.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if metrics.age() > lifetime {
                    Err(HookError::message("past database.conn_max_lifetime"))
                } else {
                    Ok(())
                }
            }))
            .build()
            .context("cannot build the PostgreSQL connection pool")?;
        let writer = Arc::new(writer::Writer::start(
            pool.clone(),
            opts.flush_interval,
            opts.max_queued_writes,
            metrics.clone(),
        ));
        let postgres = Postgres {
            pool,
            url: url.clone(),
            metrics,
            writer,
        };
        let mut client = postgres.client().await?;
        let applied = schema::migrate(&mut client)
            .await
            .with_context(|| format!("cannot migrate database {}", url.redacted()))?;
        if !applied.is_empty() {
            tracing::info!(database = %url.redacted(), versions = ?applied, "schema migrated");
        }
        // Other replicas may hold agents now: their stored status stays.
        // What replicas past their lease held is stored disconnected by the
        // cluster's reaping (cluster::postgres::Coordinator::reap).
        drop(client);
        postgres.publish_pool();
        postgres.start_pool_upkeep(opts.max_idle_conns);
        Ok(postgres)
    }

    /// Pool usage, for /health and the memory report.
    pub fn pool_stats(&self) -> crate::store::PoolStats {
        let status = self.pool.status();
        crate::store::PoolStats {
            max_open: status.max_size,
            open: status.size,
            idle: status.available,
            waits: self.metrics.pool_waits.load(Ordering::Relaxed),
        }
    }

    /// The URL with the password hidden, for logs and messages.
    pub fn redacted_url(&self) -> &str {
        self.url.redacted()
    }

    /// A pooled connection; fails after a wait of [`WAIT_TIMEOUT`].
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        let status = self.pool.status();
        if status.available == 0 && status.size >= status.max_size {
            // Every connection is busy: this caller waits (db_pool_waits_total).
            self.metrics.pool_waits.fetch_add(1, Ordering::Relaxed);
        }
        let client = self.pool.get().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot get a PostgreSQL connection to {}: {e}",
                self.url.redacted()
            )
        });
        self.publish_pool();
        client
    }

    /// Copies the pool's state into the `db_connections_*` gauges
    /// (`pool="read"`: every query but the writer's batches).
    fn publish_pool(&self) {
        let status = self.pool.status();
        let gauges = &self.metrics.read_pool;
        gauges.open.store(status.size as i64, Ordering::Relaxed);
        gauges
            .idle
            .store(status.available as i64, Ordering::Relaxed);
        gauges.max.store(status.max_size as i64, Ordering::Relaxed);
    }

    /// Every second: closes idle connections past `max_idle` and refreshes
    /// the gauges. Ends with the pool.
    fn start_pool_upkeep(&self, max_idle: usize) {
        let weak = self.pool.weak();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                if pool.is_closed() {
                    return;
                }
                let mut idle = pool.status().available;
                pool.retain(|_, _| {
                    if idle > max_idle {
                        idle -= 1;
                        false
                    } else {
                        true
                    }
                });
                publish_pool(&pool, &metrics);
            }
        });
    }
}

/// Copies a pool's state into the `db_connections_*` gauges (`pool="read"`).
fn publish_pool(pool: &Pool, metrics: &Metrics) {
    let status = pool.status();
    let gauges = &metrics.read_pool;
    gauges.open.store(status.size as i64, Ordering::Relaxed);
    gauges
        .idle
        .store(status.available as i64, Ordering::Relaxed);
    gauges.max.store(status.max_size as i64, Ordering::Relaxed);
}
