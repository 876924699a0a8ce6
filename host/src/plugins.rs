//! The set of loaded plugins: loads a directory, and hot-reloads it.
//!
//! Reload is an atomic swap of an `Arc<LoadedPlugin>`: calls in flight keep the version they
//! started with; a file that fails to load leaves the previous version serving (and says why
//! in the log and in a [`PluginEvent::Failed`]); a removed file unloads its plugin.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::error::Error;
use crate::plugin::{LoadedPlugin, Loader};

/// What happened to a plugin file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginEvent {
    Loaded {
        name: String,
        path: PathBuf,
        version: String,
    },
    Reloaded {
        name: String,
        path: PathBuf,
        version: String,
    },
    Unloaded {
        name: String,
        path: PathBuf,
    },
    Failed {
        path: PathBuf,
        error: String,
    },
}

#[derive(Default)]
struct Loaded {
    by_name: HashMap<String, Arc<LoadedPlugin>>,
    name_of_path: HashMap<PathBuf, String>,
}

pub struct PluginSet {
    loader: Loader,
    loaded: RwLock<Loaded>,
    events: broadcast::Sender<PluginEvent>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// The sha256 of the last bytes that failed to load, per path, so a file the watcher
    /// reports again is not reported as failed again.
    failed_sha: Mutex<HashMap<PathBuf, String>>,
}

fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

impl PluginSet {
    pub fn new(loader: Loader) -> Self {
        PluginSet {
            loader,
            loaded: RwLock::default(),
            events: broadcast::channel(256).0,
            watcher: Mutex::new(None),
            failed_sha: Mutex::default(),
        }
    }

    pub fn loader(&self) -> &Loader {
        &self.loader
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PluginEvent> {
        self.events.subscribe()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded.read().unwrap().by_name.get(name).cloned()
    }

    /// All loaded plugins, sorted by name.
    pub fn all(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut v: Vec<_> = self
            .loaded
            .read()
            .unwrap()
            .by_name
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Loads every `*.wasm` in `dir`. A file that fails is reported and skipped.
    pub async fn load_dir(&self, dir: &Path) -> Vec<Error> {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_plugin_file(p))
                .collect(),
            Err(e) => {
                return vec![Error::Load {
                    path: dir.to_path_buf(),
                    reason: e.to_string(),
                }]
            }
        };
        paths.sort();
        let mut errors = vec![];
        for path in paths {
            if let Err(e) = self.load_path(&path).await {
                errors.push(e);
            }
        }
        errors
    }

    /// Loads or reloads one file and swaps it in.
    pub async fn load_path(&self, path: &Path) -> Result<Arc<LoadedPlugin>, Error> {
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) => {
                return Err(self.failed(
                    path,
                    Error::Load {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    },
                ))
            }
        };
        // The watcher reports a file several times per change: same bytes, nothing to do.
        let sha = crate::plugin::cache::sha256_hex(&bytes);
        if let Some(current) = self.current_for(path).filter(|p| p.sha256 == sha) {
            return Ok(current);
        }
        let result = self.loader.load_bytes(path, &bytes).await;
        let plugin = match result {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let repeated = self
                    .failed_sha
                    .lock()
                    .unwrap()
                    .insert(path.to_path_buf(), sha.clone())
                    == Some(sha);
                return Err(if repeated { e } else { self.failed(path, e) });
            }
        };
        self.failed_sha.lock().unwrap().remove(path);
        let name = plugin.name().to_string();
        let event = {
            let mut loaded = self.loaded.write().unwrap();
            if let Some(other) = loaded.by_name.get(&name).filter(|o| o.path != path) {
                let e = Error::Load {
                    path: path.to_path_buf(),
                    reason: format!(
                        "plugin name {name:?} is already provided by {}",
                        other.path.display()
                    ),
                };
                drop(loaded);
                return Err(self.failed(path, e));
            }
            // The file may have changed its plugin name: drop the old name.
            if let Some(old) = loaded.name_of_path.insert(path.to_path_buf(), name.clone()) {
                if old != name {
                    loaded.by_name.remove(&old);
                }
            }
            let previous = loaded.by_name.insert(name.clone(), plugin.clone());
            let version = plugin.info.version.clone();
            match previous {
                Some(_) => PluginEvent::Reloaded {
                    name,
                    path: path.to_path_buf(),
                    version,
                },
                None => PluginEvent::Loaded {
                    name,
                    path: path.to_path_buf(),
                    version,
                },
            }
        };
        tracing::info!(?event, sha256 = %plugin.sha256, origin = ?plugin.origin, "plugin ready");
        let _ = self.events.send(event);
        Ok(plugin)
    }

    fn current_for(&self, path: &Path) -> Option<Arc<LoadedPlugin>> {
        let loaded = self.loaded.read().unwrap();
        loaded.by_name.get(loaded.name_of_path.get(path)?).cloned()
    }

    /// Logs and broadcasts a load failure; returns the error.
    fn failed(&self, path: &Path, e: Error) -> Error {
        tracing::error!("{e}");
        let _ = self.events.send(PluginEvent::Failed {
            path: path.to_path_buf(),
            error: e.to_string(),
        });
        e
    }

    /// Unloads the plugin that came from `path`, if any.
    pub fn unload_path(&self, path: &Path) {
        let mut loaded = self.loaded.write().unwrap();
        if let Some(name) = loaded.name_of_path.remove(path) {
            loaded.by_name.remove(&name);
            drop(loaded);
            tracing::info!(plugin = %name, path = %path.display(), "plugin unloaded");
            let _ = self.events.send(PluginEvent::Unloaded {
                name,
                path: path.to_path_buf(),
            });
        }
    }

    /// Watches `dir` and reloads changed files until the set is dropped.
    pub fn watch(self: &Arc<Self>, dir: &Path) -> Result<(), Error> {
        use notify::Watcher;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                for p in event.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .map_err(|e| Error::Load {
            path: dir.to_path_buf(),
            reason: format!("cannot watch: {e}"),
        })?;
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| Error::Load {
                path: dir.to_path_buf(),
                reason: format!("cannot watch: {e}"),
            })?;
        *self.watcher.lock().unwrap() = Some(watcher);
        tokio::spawn(reload_loop(Arc::downgrade(self), rx));
        Ok(())
    }
}

/// Collects changed paths until the directory is quiet for a moment (a copy emits several
/// events), then reloads or unloads each.
async fn reload_loop(set: Weak<PluginSet>, mut rx: tokio::sync::mpsc::UnboundedReceiver<PathBuf>) {
    const QUIET: Duration = Duration::from_millis(150);
    while let Some(first) = rx.recv().await {
        let mut changed = BTreeSet::from([first]);
        while let Ok(Some(p)) = tokio::time::timeout(QUIET, rx.recv()).await {
            changed.insert(p);
        }
        let Some(set) = set.upgrade() else { return };
        for path in changed.into_iter().filter(|p| is_plugin_file(p)) {
            if path.exists() {
                let _ = set.load_path(&path).await;
            } else {
                set.unload_path(&path);
            }
        }
    }
}
