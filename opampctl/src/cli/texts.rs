//! The man pages' texts: exit status, environment and files (also the end
//! of `opampctl --help`), and the long descriptions of the subcommands whose
//! page says more than their one-line help.

/// Exit status, environment and files: the end of `opampctl --help` and the
/// man pages.
pub const EXIT_STATUS: &str = "\
0  success; the server or check is healthy
1  the operation failed, a check failed, or the server is unhealthy (also 401/403)
2  usage error: a bad flag, argument, file or value (also when opampd refuses the input: 400/413)
3  the server is unreachable: connection refused, DNS failure or timeout";

pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "OPAMPCTL_SERVER",
        "Base URL of opampd, like --server (default http://127.0.0.1:8080).",
    ),
    ("OPAMPCTL_TOKEN", "API token, like --token."),
    (
        "OPAMPCTL_TOKEN_FILE",
        "File holding the API token, like --token-file.",
    ),
    (
        "OPAMPCTL_CONTEXT",
        "Context of the config file to use, like --context.",
    ),
    (
        "OPAMPCTL_CONFIG",
        "Path of the config file (default ~/.config/opampctl/config.yaml).",
    ),
    (
        "NO_COLOR",
        "When set and not empty, no colour (like --no-color); so does TERM=dumb.",
    ),
];

pub const FILES: &[(&str, &str)] = &[
    (
        "~/.config/opampctl/config.yaml",
        "Named contexts: current-context and contexts: {NAME: {server, token-file, ca-file, token}}; token is the session opampctl login stores (the file is then written owner-only, 0600). $XDG_CONFIG_HOME is honoured.",
    ),
    (
        "./data/admin.token, /var/lib/opampd/admin.token",
        "Admin API token written by opampd at its first start; read when no token is given and the server is on this host.",
    ),
    (
        "opamp_YYYYmmdd_HHMMSS.db.gz, opamp_YYYYmmdd_HHMMSS.sql.gz, FILE.sha256",
        "Backups written by opampctl backup (.sql.gz: opampd's SQL dump of a PostgreSQL deployment), with checksums in sha256sum format.",
    ),
    (
        "DATA_DIR/opamp.db.before-restore-TIMESTAMP, DATA_DIR/opamp-postgresql.sql.before-restore-TIMESTAMP",
        "The database a restore replaced, kept aside (on PostgreSQL as a dump, in the restoring replica's data directory).",
    ),
];

pub fn after_help() -> String {
    let mut s = String::from("Exit status:\n");
    for l in EXIT_STATUS.lines() {
        s.push_str("  ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("\nEnvironment:\n");
    for (k, v) in ENVIRONMENT {
        s.push_str(&format!("  {k}  {v}\n"));
    }
    s.push_str("\nFiles:\n");
    for (k, v) in FILES {
        s.push_str(&format!("  {k}\n      {v}\n"));
    }
    s
}

/// The man page of `opampctl login`.
pub const LOGIN_ABOUT: &str = "\
Log in to opampd with a user name and password (POST /api/v1/auth/login) and \
store the session token it returns in a context of opampctl's config file \
(OPAMPCTL_CONFIG, else ~/.config/opampctl/config.yaml), which is written \
owner-only (0600). Later commands with that context use the token, until it \
expires or opampctl logout ends it.\n\n\
The context is --context (or OPAMPCTL_CONTEXT), else the file's \
current-context, else a context named default; a context that does not \
exist yet is created with the server of --server (or the default), and \
becomes the current context when the file has none.\n\n\
On a terminal opampctl asks for the user name (without --username) and the \
password, which is not echoed. Scripts pass --username and \
--password-stdin. A wrong user name or password exits 1.";

/// The man page of `opampctl packages rollout`.
pub const PACKAGES_ROLLOUT_ABOUT: &str = "\
Roll a package version out to agents in staged batches, as `opampctl rollout` \
does for configurations. Each agent gets the catalogue file for its platform \
(its os.type and host.arch attributes); agents without AcceptsPackages or \
without a file for their platform are skipped and reported. A failed install \
pauses the rollout once failures exceed --max-failures; progress survives a \
restart of opampd.";

/// The man page of `opampctl packages add`.
pub const PACKAGES_ADD_ABOUT: &str = "\
List a package version in opampd's catalogue by reference: agents will \
download the file from its URL (opampd never fetches it). One call adds one \
platform's file; call again with another --platform to add more files to \
the same version (a platform's file never changes once listed).\n\n\
Safety rules, each with its override: the URL must be https (--allow-http); \
a signature is required, e.g. the .sigstore.json bundle published beside a \
collector release (--unsigned); a version older than the newest listed for \
the name is refused (--allow-downgrade). The SHA-256 comes from the release's \
checksums file.";

/// The man page of `opampctl packages upload`.
pub const PACKAGES_UPLOAD_ABOUT: &str = "\
Upload a package file (e.g. a collector release's .tar.gz) to opampd, which \
keeps it in packages.dir named by its SHA-256 and serves it to agents under \
/v1/packages/ with their OpAMP credentials, resumable with Range requests. \
opampd computes the SHA-256 as the bytes arrive; with --sha256 (from the \
release's checksums file) an upload whose bytes differ is refused and \
nothing is kept. opampctl also checks that the server's SHA-256 is the one \
of the bytes it sent. The file size is limited by packages.max_file_bytes \
(512 MiB by default).\n\n\
The same safety rules as `packages add`: a signature is required \
(--signature-file, e.g. the .sigstore.json bundle; --unsigned to accept \
none), and a version older than the newest listed needs --allow-downgrade. \
A progress bar shows the transfer on a terminal; -o json prints the \
package version as stored.";

/// The man page of `opampctl backup`.
pub const BACKUP_ABOUT: &str = "\
Write a consistent snapshot of the database as \
opamp_YYYYmmdd_HHMMSS.db.gz plus a .sha256 file (sha256sum format), while opampd runs. \
The snapshot comes from the server (GET /api/v1/admin/backup, admin token), or with \
--data-dir from the database file through SQLite's online backup API. The file is \
written under a temporary name, synced and renamed: there is never a partial file under \
the final name, and on any error (a full disk too) the temporary file is removed and the \
exit status is not 0. A server on PostgreSQL sends opampd's SQL dump instead, written as \
opamp_YYYYmmdd_HHMMSS.sql.gz: one REPEATABLE READ snapshot of every table in pg_dump's \
plain format (the schema, then COPY blocks), which `gunzip -c FILE | psql -v \
ON_ERROR_STOP=1 URL` loads into an empty database and opampctl restore loads into a running \
deployment.";

/// The man page of `opampctl restore`.
pub const RESTORE_ABOUT: &str = "\
Restore the database from a backup made by opampctl backup. \
The checksum (FILE.sha256, when present), SQLite integrity and schema version are checked \
first; nothing is touched if any check fails. Through the API the running server keeps \
the current database aside and asks every agent to report its full state; with \
--data-dir the daemon must be stopped, and the current database is moved aside as \
opamp.db.before-restore-TIMESTAMP before the restored file is moved in. A PostgreSQL dump \
(.sql.gz) is checked completely first (see backup --verify) and restored through the \
server only: in one transaction, every other replica then asks its agents for their full \
state; the replaced content is kept as a dump in the restoring replica's data directory.";

/// The man page of `opampctl db migrate`.
pub const DB_MIGRATE_ABOUT: &str = "\
Move a SQLite deployment to PostgreSQL. Its opampd must be \
stopped (refused while a process holds DATA_DIR/opamp.db). The database is copied with \
SQLite's online backup API, the copy brought to this release's schema and written as \
opampd's dump in a private directory inside DATA_DIR; the dump is loaded into the \
PostgreSQL database in one transaction (users, API tokens, audit log, configurations with \
every version, rollouts, agents and their events, component lists, packages), and every \
table's row count is compared with the SQLite one before and after the commit. A database \
that already holds opampd rows is refused unless --replace. The SQLite file is only read. \
Then start opampd with --database-url URL and the JWT key the deployment used.";

/// The man page of `opampctl bench`.
pub const BENCH_ABOUT: &str = "\
Simulate agents against a running opampd and measure what the server spends \
on them, to size a deployment. Run it against a release build on a test \
server, not against production: the simulated agents register (service.name \
opampctl-bench, attribute bench.run=RUN) and are deleted from the inventory \
when the run ends, which needs an operator token; --keep leaves them there \
(as disconnected agents), and so does a run without a token, which says so \
and how to delete them later.\n\n\
hold: connect --agents WebSocket agents (a full first report with an \
effective config of --config-bytes, then a heartbeat every --heartbeat, each \
reply awaited) and hold them for --duration. Reports connect time (p50, p99), \
heartbeat latency and errors; with --server-pid, the server's RSS before, \
after connecting and at the end, the RSS per agent (against a freshly \
started opampd: memory freed by an earlier run stays with the process), \
whether RSS stays flat (sampled every few seconds) and the server CPU time \
per heartbeat.\n\n\
status: agents send a changed health status, wait for the reply and repeat, \
as fast as possible, for --duration: messages/s, latency p50/p99 and, with \
--server-pid, server CPU seconds per 1000 messages.\n\n\
http: agents poll over plain HTTP (uid, sequence number and capabilities; a \
full report first) through --connections keep-alive connections, as fast as \
possible: requests/s, latency p50/p99, server CPU seconds per 1000 polls. \
--gzip sends Accept-Encoding: gzip.\n\n\
rollout: agents that accept remote configuration answer every offer with \
APPLIED. A configuration bench-RUN of --config-bytes with the selector \
bench.run=RUN is created and rolled out (an operator token is needed): the \
time until every agent received it and until the rollout says all applied. \
The configuration is deleted afterwards.\n\n\
reconnect: agents wait for opampd to restart (run --restart-cmd, or restart \
it yourself within --duration), reconnect at once with a jitter of up to \
--jitter, send a minimal message and a full report when asked for one: the \
time until all are back, and the slowest answer of /health/live polled every \
50 ms meanwhile.\n\n\
One process holds at most as many connections as its open-file limit allows \
(opampctl raises its soft limit to the hard limit), and one source address \
gives about 28,000 ports to one server: --processes P runs P worker \
processes, each simulating a share of the agents, and --source-ips spreads \
the connections over local addresses. Every process uses one core. The exit \
status is 1 when any error occurred.\n\n\
Several replicas (opampd on PostgreSQL): --server URL once per replica (or \
one comma list) and, to measure them, --server-pid PID once per replica in \
the same order. The agents are spread round-robin over the replicas and \
connect to each one's own address; with --opamp-url they all go through that \
one URL instead (a load balancer), and each replica's share is read from its \
/metrics. The figures are totals, and each replica's (its agents, RSS, RSS \
per agent, open files, CPU, CPU per heartbeat or per 1000 messages) follow \
in a second table (-o json: replicas). rollout starts the rollout on the \
first --server once it lists every connected agent, and times the agents of \
every replica (each replica's last agent too). The operator token must be \
valid on all replicas (it is, on one database): each simulated agent is \
deleted through its own replica (through the first with --opamp-url).\n\n\
compare: runs --load (hold, status or http; default hold) with the same \
flags against two OpAMP servers on this host, any implementation: --server-a \
URL --pid-a PID and --server-b URL --pid-b PID, --rounds times each, \
alternating which goes first (A B, then B A), each run a fresh opampctl bench \
process that keeps its agents (--keep: the servers' inventories are not \
touched). Shows the server CPU per heartbeat, per message or per poll, the \
RSS per agent and the latency of each server (median over the rounds) and \
B/A, the ratio that counts: absolute figures move between runs on a shared \
machine, the ratio of one comparison much less.\n\n\
Example:\n\n\
opampctl bench hold --agents 15000 --processes 2 --source-ips 127.0.0.1-127.0.0.4 \
--ramp 2000/s --duration 60s --server-pid $(pidof opampd)\n\n\
opampctl bench hold --agents 30000 --processes 4 --source-ips 127.0.0.1-127.0.0.8 \
--server http://127.0.0.1:8081,http://127.0.0.1:8082 --server-pid PID1,PID2";
