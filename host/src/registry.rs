//! The session registry: which sandboxes this host knows, on which provider, with the opaque
//! token each plugin handed back, and their state history. SQLite by default (one file in the
//! state dir); the [`SessionStore`] trait is what a Postgres store would implement for several
//! host replicas sharing state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// One sandbox as the registry records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub provider: String,
    pub sandbox_id: String,
    pub name: Option<String>,
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub workdir: String,
    pub image: Option<String>,
    pub state: String,
    pub owner: Option<String>,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A state change, as kept in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: String,
    pub detail: String,
    pub at_ms: i64,
}

/// Storage for session records. Implementations must be safe to share between threads.
pub trait SessionStore: Send + Sync {
    /// Inserts or replaces the record for (provider, sandbox id).
    fn put(&self, rec: &SessionRecord) -> Result<(), Error>;
    fn get(&self, provider: &str, sandbox_id: &str) -> Result<Option<SessionRecord>, Error>;
    /// The record's token alone (every sandbox call reads it): `None` without a record,
    /// `Some(None)` for a record without a token.
    fn token(&self, provider: &str, sandbox_id: &str) -> Result<Option<Option<String>>, Error> {
        Ok(self.get(provider, sandbox_id)?.map(|r| r.token))
    }
    /// Records with this sandbox id on any provider.
    fn find(&self, sandbox_id: &str) -> Result<Vec<SessionRecord>, Error>;
    /// Records on `provider` (all when None) carrying all `labels`.
    fn list(
        &self,
        provider: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<SessionRecord>, Error>;
    fn set_token(&self, provider: &str, sandbox_id: &str, token: &str) -> Result<(), Error>;
    /// Sets the current state and appends it to the history.
    fn set_state(
        &self,
        provider: &str,
        sandbox_id: &str,
        state: &str,
        detail: &str,
    ) -> Result<(), Error>;
    fn history(&self, provider: &str, sandbox_id: &str) -> Result<Vec<StateChange>, Error>;
    fn remove(&self, provider: &str, sandbox_id: &str) -> Result<(), Error>;
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[r#"
    CREATE TABLE sessions (
        provider TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        name TEXT,
        token TEXT,
        labels TEXT NOT NULL DEFAULT '{}',
        workdir TEXT NOT NULL DEFAULT '',
        image TEXT,
        state TEXT NOT NULL,
        owner TEXT,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (provider, sandbox_id)
    );
    CREATE INDEX sessions_by_id ON sessions(sandbox_id);
    CREATE TABLE state_history (
        provider TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        at_ms INTEGER NOT NULL
    );
    CREATE INDEX history_by_sandbox ON state_history(provider, sandbox_id);
"#];

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::Registry(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Registry(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Tokens are credentials: keep the file private.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        // In WAL mode NORMAL syncs at checkpoints, not at every commit: a power cut may lose
        // the last few state changes (the provider still has the sandboxes, and `list`
        // re-attaches them), never corrupt the file; a crash of the host loses nothing.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        Self::migrate(conn)
    }

    /// A private in-memory database (tests, throwaway hosts).
    pub fn in_memory() -> Result<Self, Error> {
        Self::migrate(Connection::open_in_memory().map_err(db_err)?)
    }

    fn migrate(mut conn: Connection) -> Result<Self, Error> {
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        if version > MIGRATIONS.len() {
            return Err(Error::Registry(format!(
                "database schema {version} is newer than this host ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(db_err)?;
            tx.execute_batch(sql).map_err(db_err)?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }
}

/// The record's columns, in [`row_to_record`]'s order (a macro, so that the statements built
/// from it are string constants rather than formatted at every call).
macro_rules! columns {
    () => {
        "provider, sandbox_id, name, token, labels, workdir, image, state, owner, created_at_ms, updated_at_ms"
    };
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    let labels: String = r.get(4)?;
    Ok(SessionRecord {
        provider: r.get(0)?,
        sandbox_id: r.get(1)?,
        name: r.get(2)?,
        token: r.get(3)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        workdir: r.get(5)?,
        image: r.get(6)?,
        state: r.get(7)?,
        owner: r.get(8)?,
        created_at_ms: r.get(9)?,
        updated_at_ms: r.get(10)?,
    })
}

impl SessionStore for SqliteStore {
    fn put(&self, rec: &SessionRecord) -> Result<(), Error> {
        let labels = serde_json::to_string(&rec.labels).expect("labels serialize");
        self.conn
            .lock()
            .unwrap()
            .execute(
                concat!(
                    "INSERT OR REPLACE INTO sessions (",
                    columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    rec.provider,
                    rec.sandbox_id,
                    rec.name,
                    rec.token,
                    labels,
                    rec.workdir,
                    rec.image,
                    rec.state,
                    rec.owner,
                    rec.created_at_ms,
                    rec.updated_at_ms
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn get(&self, provider: &str, sandbox_id: &str) -> Result<Option<SessionRecord>, Error> {
        // Every sandbox call reads its record: keep the statement prepared.
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE provider = ?1 AND sandbox_id = ?2"
            ))
            .map_err(db_err)?;
        stmt.query_row(params![provider, sandbox_id], row_to_record)
            .optional()
            .map_err(db_err)
    }

    fn token(&self, provider: &str, sandbox_id: &str) -> Result<Option<Option<String>>, Error> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare_cached("SELECT token FROM sessions WHERE provider = ?1 AND sandbox_id = ?2")
            .map_err(db_err)?;
        stmt.query_row(params![provider, sandbox_id], |r| r.get(0))
            .optional()
            .map_err(db_err)
    }

    fn find(&self, sandbox_id: &str) -> Result<Vec<SessionRecord>, Error> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE sandbox_id = ?1 ORDER BY provider"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![sandbox_id], row_to_record)
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    fn list(
        &self,
        provider: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<SessionRecord>, Error> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                columns!(),
                " FROM sessions WHERE (?1 IS NULL OR provider = ?1) ORDER BY created_at_ms, sandbox_id"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![provider], row_to_record)
            .map_err(db_err)?;
        let all: Vec<SessionRecord> = rows.collect::<Result<_, _>>().map_err(db_err)?;
        Ok(all
            .into_iter()
            .filter(|r| labels.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
            .collect())
    }

    fn set_token(&self, provider: &str, sandbox_id: &str, token: &str) -> Result<(), Error> {
        self.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE sessions SET token = ?3, updated_at_ms = ?4 WHERE provider = ?1 AND sandbox_id = ?2",
                params![provider, sandbox_id, token, now_ms()],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn set_state(
        &self,
        provider: &str,
        sandbox_id: &str,
        state: &str,
        detail: &str,
    ) -> Result<(), Error> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction().map_err(db_err)?;
        let now = now_ms();
        tx.execute("UPDATE sessions SET state = ?3, updated_at_ms = ?4 WHERE provider = ?1 AND sandbox_id = ?2", params![provider, sandbox_id, state, now])
            .map_err(db_err)?;
        tx.execute(
            "INSERT INTO state_history (provider, sandbox_id, state, detail, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![provider, sandbox_id, state, detail, now],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    fn history(&self, provider: &str, sandbox_id: &str) -> Result<Vec<StateChange>, Error> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn
            .prepare("SELECT state, detail, at_ms FROM state_history WHERE provider = ?1 AND sandbox_id = ?2 ORDER BY rowid")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![provider, sandbox_id], |r| {
                Ok(StateChange {
                    state: r.get(0)?,
                    detail: r.get(1)?,
                    at_ms: r.get(2)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    fn remove(&self, provider: &str, sandbox_id: &str) -> Result<(), Error> {
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "DELETE FROM sessions WHERE provider = ?1 AND sandbox_id = ?2",
            params![provider, sandbox_id],
        )
        .map_err(db_err)?;
        tx.execute(
            "DELETE FROM state_history WHERE provider = ?1 AND sandbox_id = ?2",
            params![provider, sandbox_id],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(provider: &str, id: &str, labels: &[(&str, &str)]) -> SessionRecord {
        SessionRecord {
            provider: provider.into(),
            sandbox_id: id.into(),
            name: None,
            token: Some("t0".into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workdir: "/w".into(),
            image: None,
            state: "running".into(),
            owner: None,
            created_at_ms: now_ms(),
            updated_at_ms: now_ms(),
        }
    }

    #[test]
    fn survives_reopen_with_token_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = SqliteStore::open(&path).unwrap();
            db.put(&rec("local", "a", &[("team", "x")])).unwrap();
            db.put(&rec("e2b", "a", &[])).unwrap();
            db.set_token("local", "a", "t1").unwrap();
            db.set_state("local", "a", "paused", "by test").unwrap();
        }
        let db = SqliteStore::open(&path).unwrap();
        let got = db.get("local", "a").unwrap().unwrap();
        assert_eq!(got.token.as_deref(), Some("t1"));
        assert_eq!(db.token("local", "a").unwrap(), Some(Some("t1".into())));
        assert_eq!(db.token("e2b", "a").unwrap(), Some(Some("t0".into())));
        assert_eq!(db.token("local", "missing").unwrap(), None);
        db.put(&SessionRecord {
            token: None,
            ..rec("local", "b", &[])
        })
        .unwrap();
        assert_eq!(db.token("local", "b").unwrap(), Some(None));
        assert_eq!(got.state, "paused");
        assert_eq!(db.history("local", "a").unwrap()[0].detail, "by test");
        assert_eq!(db.find("a").unwrap().len(), 2);
        let team = BTreeMap::from([("team".to_string(), "x".to_string())]);
        assert_eq!(db.list(None, &team).unwrap().len(), 1);
        assert_eq!(db.list(Some("e2b"), &BTreeMap::new()).unwrap().len(), 1);
        db.remove("local", "a").unwrap();
        assert!(db.get("local", "a").unwrap().is_none());
        assert!(db.history("local", "a").unwrap().is_empty());
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        SqliteStore::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(SqliteStore::open(&path).is_err());
    }
}
