//! `filesystem.Filesystem` watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`,
//! and the `WatchDir` stream): a snapshot of the directory (names, kinds, sizes, times, modes,
//! read through localbox's confined calls) compared with the next one. Changes between two
//! looks coalesce (a file created and written reads as one `CREATE`), where envd's inotify
//! reports each; a rename reads as `REMOVE` + `CREATE`.

use std::collections::BTreeMap;

use localbox::{Engine, FileKind};
use serde_json::{json, Value};

/// What a snapshot keeps of an entry: enough to tell a write or a chmod.
#[derive(PartialEq)]
struct Seen {
    kind: FileKind,
    size: u64,
    modified_ms: u64,
    mode: u32,
}

/// A registered watcher: the E2B sandbox id it watches, and the watcher (one look at a time).
pub(crate) type Registered = (String, std::sync::Arc<tokio::sync::Mutex<Watcher>>);

/// One watched directory and what it held at the last look.
pub(crate) struct Watcher {
    /// The directory in localbox's view.
    root: String,
    recursive: bool,
    last: BTreeMap<String, Seen>,
}

impl Watcher {
    /// Watches `root` (localbox's view): not found, or not a directory, is an error.
    pub async fn new(
        engine: &Engine,
        local_id: &str,
        root: &str,
        recursive: bool,
    ) -> Result<Watcher, localbox::Error> {
        let st = engine.stat(local_id, root).await?;
        if st.kind != FileKind::Directory {
            return Err(localbox::Error::invalid(format!(
                "{root} is not a directory"
            )));
        }
        let mut w = Watcher {
            root: root.to_string(),
            recursive,
            last: BTreeMap::new(),
        };
        w.last = w.snapshot(engine, local_id).await?;
        Ok(w)
    }

    /// The changes since the last look, as envd's `FilesystemEvent`s (names relative to the
    /// watched directory).
    pub async fn events(
        &mut self,
        engine: &Engine,
        local_id: &str,
    ) -> Result<Vec<Value>, localbox::Error> {
        let now = self.snapshot(engine, local_id).await?;
        let mut events = Vec::new();
        let mut event = |name: &str, ty: &str| events.push(json!({ "name": name, "type": ty }));
        for (name, seen) in &now {
            match self.last.get(name) {
                None => event(name, "EVENT_TYPE_CREATE"),
                Some(old) if old.kind != seen.kind => {
                    event(name, "EVENT_TYPE_REMOVE");
                    event(name, "EVENT_TYPE_CREATE");
                }
                Some(old) if (old.size, old.modified_ms) != (seen.size, seen.modified_ms) => {
                    if seen.kind == FileKind::File {
                        event(name, "EVENT_TYPE_WRITE")
                    }
                }
                Some(old) if old.mode != seen.mode => event(name, "EVENT_TYPE_CHMOD"),
                Some(_) => {}
            }
        }
        for name in self.last.keys().filter(|n| !now.contains_key(*n)) {
            event(name, "EVENT_TYPE_REMOVE");
        }
        self.last = now;
        Ok(events)
    }

    async fn snapshot(
        &self,
        engine: &Engine,
        local_id: &str,
    ) -> Result<BTreeMap<String, Seen>, localbox::Error> {
        let entries = emulator_common::walk(engine, local_id, &self.root, self.recursive).await?;
        Ok(entries
            .into_iter()
            .map(|(name, st)| {
                let seen = Seen {
                    kind: st.kind,
                    size: st.size,
                    modified_ms: st.modified_ms,
                    mode: st.mode,
                };
                (name, seen)
            })
            .collect())
    }
}
