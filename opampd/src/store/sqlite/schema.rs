//! Schema migrations. `PRAGMA user_version` records the applied version.
//!
//! Migrations only ever append: a released migration is never edited.

use rusqlite::Connection;

/// Every migration, in order; index + 1 is the schema version it produces.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE agents (
        uid TEXT PRIMARY KEY,
        status TEXT NOT NULL DEFAULT 'disconnected',
        transport TEXT NOT NULL DEFAULT 'http',
        capabilities INTEGER NOT NULL DEFAULT 0,
        identifying TEXT NOT NULL DEFAULT '{}',
        non_identifying TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        health TEXT,
        effective_config TEXT,
        effective_config_hash TEXT,
        remote_status TEXT,
        sequence_num INTEGER NOT NULL DEFAULT 0,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        remote_addr TEXT,
        offered TEXT
    );
    CREATE INDEX agents_updated_at ON agents(updated_at);
    CREATE INDEX agents_status ON agents(status);

    CREATE TABLE agent_events (
        id INTEGER PRIMARY KEY,
        uid TEXT NOT NULL,
        at INTEGER NOT NULL,
        event TEXT NOT NULL,
        remote_addr TEXT,
        details TEXT
    );
    CREATE INDEX agent_events_uid_at ON agent_events(uid, at);
    CREATE INDEX agent_events_at ON agent_events(at);

    CREATE TABLE configurations (
        name TEXT PRIMARY KEY,
        selector TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        content_type TEXT NOT NULL,
        latest_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        created_by TEXT
    );
    CREATE INDEX configurations_created_at ON configurations(created_at);

    CREATE TABLE config_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        content_type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT,
        note TEXT,
        PRIMARY KEY (name, version)
    );

    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        hash TEXT NOT NULL,
        state TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        max_failures INTEGER NOT NULL,
        released_batches INTEGER NOT NULL DEFAULT 1,
        previous_version INTEGER,
        reason TEXT,
        started_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_by TEXT
    );
    CREATE INDEX rollouts_name ON rollouts(name, id);

    CREATE TABLE rollout_agents (
        rollout_id INTEGER NOT NULL,
        uid TEXT NOT NULL,
        batch INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, uid)
    );

    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        remote_addr TEXT,
        outcome TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_at ON audit_log(at);

    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );

    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE revoked_jwts (
        jti TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 2: status filters page in uid order without sorting.
    r#"
    DROP INDEX agents_status;
    CREATE INDEX agents_status_uid ON agents(status, uid);
    CREATE INDEX agents_status_last_seen ON agents(status, last_seen);
    "#,
    // 3: a rollout keeps the selector it was started with (saving a new
    // selector never changes who receives a rolled-out version); agents keep
    // the offer they applied.
    r#"
    ALTER TABLE rollouts ADD COLUMN selector TEXT NOT NULL DEFAULT '';
    UPDATE rollouts SET selector = COALESCE(
        (SELECT c.selector FROM configurations c WHERE c.name = rollouts.name), '');
    -- The last offer the agent reported APPLIED: what it runs (CONFIG column).
    ALTER TABLE agents ADD COLUMN applied TEXT;
    UPDATE agents SET applied = offered
        WHERE json_valid(remote_status) AND json_valid(offered)
          AND json_extract(remote_status, '$.status') = 'applied'
          AND json_extract(remote_status, '$.hash') = json_extract(offered, '$.hash');
    "#,
    // 4: a user's session generation; login tokens of an older one are refused.
    r#"
    ALTER TABLE users ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: the connection settings offered to each agent and its reported
    // status (JSON), so a restart does not offer them again.
    r#"
    ALTER TABLE agents ADD COLUMN connection_settings TEXT;
    "#,
    // 6: available components (one row per reported list, shared by every
    // agent reporting its hash), custom capabilities, forced rollouts.
    r#"
    CREATE TABLE component_sets (
        hash TEXT PRIMARY KEY,
        entries TEXT NOT NULL,
        types TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    ALTER TABLE agents ADD COLUMN components_hash TEXT;
    ALTER TABLE agents ADD COLUMN custom_capabilities TEXT;
    ALTER TABLE rollouts ADD COLUMN force INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: the SHA-256 fingerprint (hex) of the client certificate an agent
    // registered with: another certificate cannot speak for its uid.
    r#"
    ALTER TABLE agents ADD COLUMN cert_fingerprint TEXT;
    "#,
    // 8: every batch of a rollout has a time limit, counted from its release
    // (or the resume); agents silent past it are counted unconfirmed.
    r#"
    ALTER TABLE rollouts ADD COLUMN batch_timeout_ms INTEGER NOT NULL DEFAULT 300000;
    ALTER TABLE rollouts ADD COLUMN batch_started_at INTEGER NOT NULL DEFAULT 0;
    UPDATE rollouts SET batch_started_at = updated_at;
    "#,
    // 9: packages: each agent's reported package statuses (JSON), and the
    // catalogue — package versions and their files, one per platform, by
    // reference (a URL) or hosted (the bytes live in packages.dir, by SHA-256).
    r#"
    ALTER TABLE agents ADD COLUMN package_statuses TEXT;
    CREATE TABLE packages (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        top_level INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE package_files (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        os TEXT NOT NULL,
        arch TEXT NOT NULL,
        url TEXT,
        sha256 TEXT NOT NULL,
        signature BLOB,
        size INTEGER,
        hosted INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, version, os, arch),
        FOREIGN KEY (name, version) REFERENCES packages(name, version) ON DELETE CASCADE
    );
    "#,
    // 10: several replicas (used on PostgreSQL, kept alike here): each
    // replica's lease, and which replica holds each connected agent.
    r#"
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL,
        address TEXT
    );
    CREATE TABLE agent_owners (
        uid TEXT PRIMARY KEY,
        replica TEXT NOT NULL,
        since INTEGER NOT NULL
    );
    CREATE INDEX agent_owners_replica ON agent_owners(replica);
    "#,
    // 11: package rollouts: a package version going to agents batch by
    // batch, as configuration rollouts do, with each agent's batch.
    r#"
    CREATE TABLE package_rollouts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        state TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        max_failures INTEGER NOT NULL,
        released_batches INTEGER NOT NULL DEFAULT 1,
        previous_version TEXT,
        reason TEXT,
        started_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_by TEXT,
        selector TEXT NOT NULL DEFAULT '',
        batch_timeout_ms INTEGER NOT NULL,
        batch_started_at INTEGER NOT NULL
    );
    CREATE INDEX package_rollouts_name ON package_rollouts(name, id);
    CREATE TABLE package_rollout_agents (
        rollout_id INTEGER NOT NULL,
        uid TEXT NOT NULL,
        batch INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, uid)
    );
    "#,
    // 12: the shared session record of each plain-HTTP agent (used on
    // PostgreSQL, kept alike here): whichever replica serves its next poll
    // continues the same session.
    r#"
    CREATE TABLE agent_sessions (
        uid TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        row_changes INTEGER NOT NULL,
        replica TEXT NOT NULL,
        sequence_num INTEGER NOT NULL,
        restart_pending INTEGER NOT NULL DEFAULT 0,
        disconnected INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the database up to [`SCHEMA_VERSION`]; refuses a newer database.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<u32> {
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        anyhow::bail!(
            "database schema version {current} is newer than this opampd supports ({SCHEMA_VERSION}): upgrade opampd or restore an older backup"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(SCHEMA_VERSION)
}

/// Creates schema `version` in an empty database as the migrations do,
/// without recording the version: what a database of that version must hold.
pub fn create(conn: &Connection, version: u32) -> rusqlite::Result<()> {
    for sql in MIGRATIONS.iter().take(version as usize) {
        conn.execute_batch(sql)?;
    }
    Ok(())
}
