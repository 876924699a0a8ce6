//! The session registry on Postgres, for several `serve` replicas sharing state. Selected by
//! `[host] database_url`; migrations live in `host/migrations/postgres/` and are applied in
//! order under an advisory lock (replicas starting together migrate once), recorded in
//! `sandbox_host_schema`.
//!
//! [`SessionStore`] is synchronous (SQLite is), so the blocking `postgres` client runs on a few
//! dedicated threads, each with its own connection; callers wait for their answer on a channel.
//! This keeps the client's internal runtime off the caller's tokio workers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use crate::config::Config;
use crate::error::Error;
use crate::registry::{now_ms, SessionRecord, SessionStore, SqliteStore, StateChange};

/// Migrations, applied in order; the table `sandbox_host_schema` records how many ran.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/postgres/0001_sessions.sql")];

/// An arbitrary constant: the advisory lock replicas take while migrating.
const MIGRATION_LOCK: i64 = 0x5a4d_b0c5;

/// Connections (and threads) per store.
const CONNECTIONS: usize = 4;

type Job = Box<dyn FnOnce(&mut postgres::Client) + Send>;

pub struct PostgresStore {
    jobs: Mutex<mpsc::Sender<Job>>,
}

fn pg_err(e: postgres::Error) -> Error {
    Error::Registry(format!("postgres: {e}"))
}

/// The store the configuration asks for: Postgres when `[host] database_url` is set, else SQLite
/// in `state_dir`.
pub fn open_configured(config: &Config, state_dir: &Path) -> Result<Arc<dyn SessionStore>, Error> {
    match config
        .host
        .database_url
        .as_ref()
        .map(|s| s.resolve())
        .transpose()?
    {
        Some(Some(url)) if !url.is_empty() => Ok(Arc::new(PostgresStore::connect(&url)?)),
        _ => Ok(Arc::new(SqliteStore::open(&state_dir.join("sessions.db"))?)),
    }
}

impl PostgresStore {
    /// Connects, migrates, and starts the connection threads.
    pub fn connect(url: &str) -> Result<Self, Error> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::InvalidArgument(
                "database_url must start with postgres:// (TLS is not supported: use a loopback or private network)".into(),
            ));
        }
        let url = url.to_string();
        // Connecting runs the client's own runtime: do it on a plain thread.
        let first = std::thread::spawn({
            let url = url.clone();
            move || -> Result<postgres::Client, Error> {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(pg_err)?;
                migrate(&mut c)?;
                Ok(c)
            }
        })
        .join()
        .map_err(|_| Error::Registry("postgres: connect thread panicked".into()))??;
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut first = Some(first);
        for i in 0..CONNECTIONS {
            let rx = rx.clone();
            let url = url.clone();
            let conn = first.take();
            std::thread::Builder::new()
                .name(format!("registry-pg-{i}"))
                .spawn(move || worker(conn, &url, &rx))
                .map_err(|e| Error::Registry(format!("postgres: thread: {e}")))?;
        }
        Ok(PostgresStore {
            jobs: Mutex::new(tx),
        })
    }

    /// Runs `f` on a connection thread and waits for its result.
    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c).map_err(pg_err));
        });
        self.jobs
            .lock()
            .unwrap()
            .send(job)
            .map_err(|_| Error::Registry("postgres: connection threads are gone".into()))?;
        rx.recv()
            .map_err(|_| Error::Registry("postgres: connection lost during the query".into()))?
    }
}

/// One connection thread: takes jobs until the store is dropped; reconnects after a broken
/// connection (the job that saw the break fails, the next one gets a fresh connection).
fn worker(mut conn: Option<postgres::Client>, url: &str, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = match postgres::Client::connect(url, postgres::NoTls) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!("registry: postgres reconnect failed: {e}");
                    // Dropping the job drops its reply sender: the caller sees an error.
                    drop(job);
                    continue;
                }
            };
        }
        job(conn.as_mut().expect("connected"));
    }
}

fn migrate(c: &mut postgres::Client) -> Result<(), Error> {
    let mut tx = c.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS sandbox_host_schema (version INTEGER NOT NULL)")
        .map_err(pg_err)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM sandbox_host_schema", &[])
        .map_err(pg_err)?
        .map_or(0, |r| r.get(0));
    if version as usize > MIGRATIONS.len() {
        return Err(Error::Registry(format!(
            "database schema {version} is newer than this host ({})",
            MIGRATIONS.len()
        )));
    }
    for sql in MIGRATIONS.iter().skip(version as usize) {
        tx.batch_execute(sql).map_err(pg_err)?;
    }
    tx.execute("DELETE FROM sandbox_host_schema", &[])
        .map_err(pg_err)?;
    tx.execute(
        "INSERT INTO sandbox_host_schema (version) VALUES ($1)",
        &[&(MIGRATIONS.len() as i32)],
    )
    .map_err(pg_err)?;
    tx.commit().map_err(pg_err)
}

const COLUMNS: &str = "provider, sandbox_id, name, token, labels::text, workdir, image, state, owner, created_at_ms, updated_at_ms";

fn row_to_record(r: &postgres::Row) -> SessionRecord {
    let labels: String = r.get(4);
    SessionRecord {
        provider: r.get(0),
        sandbox_id: r.get(1),
        name: r.get(2),
        token: r.get(3),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        workdir: r.get(5),
        image: r.get(6),
        state: r.get(7),
        owner: r.get(8),
        created_at_ms: r.get(9),
        updated_at_ms: r.get(10),
    }
}

impl SessionStore for PostgresStore {
    fn put(&self, rec: &SessionRecord) -> Result<(), Error> {
        let rec = rec.clone();
        let labels = serde_json::to_string(&rec.labels).expect("labels serialize");
        self.run(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO sessions ({}) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (provider, sandbox_id) DO UPDATE SET name = EXCLUDED.name, token = EXCLUDED.token,
                       labels = EXCLUDED.labels, workdir = EXCLUDED.workdir, image = EXCLUDED.image, state = EXCLUDED.state,
                       owner = EXCLUDED.owner, created_at_ms = EXCLUDED.created_at_ms, updated_at_ms = EXCLUDED.updated_at_ms",
                    COLUMNS.replace("::text", "")
                ),
                &[
                    &rec.provider,
                    &rec.sandbox_id,
                    &rec.name,
                    &rec.token,
                    &labels,
                    &rec.workdir,
                    &rec.image,
                    &rec.state,
                    &rec.owner,
                    &rec.created_at_ms,
                    &rec.updated_at_ms,
                ],
            )
            .map(drop)
        })
    }

    fn get(&self, provider: &str, sandbox_id: &str) -> Result<Option<SessionRecord>, Error> {
        let (p, id) = (provider.to_string(), sandbox_id.to_string());
        self.run(move |c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM sessions WHERE provider = $1 AND sandbox_id = $2"),
                &[&p, &id],
            )
            .map(|r| r.as_ref().map(row_to_record))
        })
    }

    fn find(&self, sandbox_id: &str) -> Result<Vec<SessionRecord>, Error> {
        let id = sandbox_id.to_string();
        self.run(move |c| {
            c.query(
                &format!("SELECT {COLUMNS} FROM sessions WHERE sandbox_id = $1 ORDER BY provider"),
                &[&id],
            )
            .map(|rows| rows.iter().map(row_to_record).collect())
        })
    }

    fn list(
        &self,
        provider: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<SessionRecord>, Error> {
        let p = provider.map(str::to_string);
        let want = serde_json::to_string(labels).expect("labels serialize");
        self.run(move |c| {
            c.query(
                &format!(
                    "SELECT {COLUMNS} FROM sessions WHERE ($1::text IS NULL OR provider = $1)
                     AND labels @> $2::text::jsonb ORDER BY created_at_ms, sandbox_id"
                ),
                &[&p, &want],
            )
            .map(|rows| rows.iter().map(row_to_record).collect())
        })
    }

    fn set_token(&self, provider: &str, sandbox_id: &str, token: &str) -> Result<(), Error> {
        let (p, id, t) = (
            provider.to_string(),
            sandbox_id.to_string(),
            token.to_string(),
        );
        self.run(move |c| {
            c.execute(
                "UPDATE sessions SET token = $3, updated_at_ms = $4 WHERE provider = $1 AND sandbox_id = $2",
                &[&p, &id, &t, &now_ms()],
            )
            .map(drop)
        })
    }

    fn set_state(
        &self,
        provider: &str,
        sandbox_id: &str,
        state: &str,
        detail: &str,
    ) -> Result<(), Error> {
        let (p, id, st, d) = (
            provider.to_string(),
            sandbox_id.to_string(),
            state.to_string(),
            detail.to_string(),
        );
        self.run(move |c| {
            let mut tx = c.transaction()?;
            let now = now_ms();
            tx.execute(
                "UPDATE sessions SET state = $3, updated_at_ms = $4 WHERE provider = $1 AND sandbox_id = $2",
                &[&p, &id, &st, &now],
            )?;
            tx.execute(
                "INSERT INTO state_history (provider, sandbox_id, state, detail, at_ms) VALUES ($1, $2, $3, $4, $5)",
                &[&p, &id, &st, &d, &now],
            )?;
            tx.commit()
        })
    }

    fn history(&self, provider: &str, sandbox_id: &str) -> Result<Vec<StateChange>, Error> {
        let (p, id) = (provider.to_string(), sandbox_id.to_string());
        self.run(move |c| {
            c.query(
                "SELECT state, detail, at_ms FROM state_history WHERE provider = $1 AND sandbox_id = $2 ORDER BY seq",
                &[&p, &id],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| StateChange {
                        state: r.get(0),
                        detail: r.get(1),
                        at_ms: r.get(2),
                    })
                    .collect()
            })
        })
    }

    fn remove(&self, provider: &str, sandbox_id: &str) -> Result<(), Error> {
        let (p, id) = (provider.to_string(), sandbox_id.to_string());
        self.run(move |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "DELETE FROM sessions WHERE provider = $1 AND sandbox_id = $2",
                &[&p, &id],
            )?;
            tx.execute(
                "DELETE FROM state_history WHERE provider = $1 AND sandbox_id = $2",
                &[&p, &id],
            )?;
            tx.commit()
        })
    }
}
