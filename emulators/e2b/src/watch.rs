//! `filesystem.Filesystem` watchers (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`,
//! and the `WatchDir` stream): a snapshot of the directory (names, kinds, sizes, times, modes,
//! read through localbox's confined calls) compared with the next one. Changes between two
//! looks coalesce (a file created and written reads as one `CREATE`), where envd's inotify
//! reports each; a rename reads as `REMOVE` + `CREATE`.

use std::collections::BTreeMap;

use localbox::{Engine, FileKind, FileStat};
use serde_json::{json, Value};

/// Most entries a watcher snapshots (a runaway tree must not stall the emulator).
const MAX_ENTRIES: usize = 100_000;

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
        let mut all = BTreeMap::new();
        let mut dirs = vec![(String::new(), self.root.clone())];
        while let Some((prefix, dir)) = dirs.pop() {
            // A directory removed meanwhile is simply gone from this look.
            let entries: Vec<FileStat> = match engine.list_dir(local_id, &dir).await {
                Ok(e) => e,
                Err(e) if prefix.is_empty() => return Err(e),
                Err(_) => continue,
            };
            for st in entries {
                if all.len() >= MAX_ENTRIES {
                    return Err(localbox::Error::invalid("too many entries to watch"));
                }
                let name = format!("{prefix}{}", st.name);
                if self.recursive && st.kind == FileKind::Directory {
                    dirs.push((format!("{name}/"), st.path.clone()));
                }
                let seen = Seen {
                    kind: st.kind,
                    size: st.size,
                    modified_ms: st.modified_ms,
                    mode: st.mode,
                };
                all.insert(name, seen);
            }
        }
        Ok(all)
    }
}
