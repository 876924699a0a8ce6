//! Compiled-component cache: `<dir>/<sha256 of the .wasm>-<engine fingerprint>.cwasm`.
//!
//! Compiling a plugin takes hundreds of milliseconds; loading the cached artifact takes about
//! a tenth of one. The key covers the exact bytes and the engine's compatibility hash, so a
//! new host version or engine setting never loads a stale artifact.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub struct CompileCache {
    dir: Option<PathBuf>,
    fingerprint: String,
}

/// How a component was obtained, for logs and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

impl CompileCache {
    /// `dir: None` disables caching.
    pub fn new(dir: Option<PathBuf>, fingerprint: String) -> Self {
        CompileCache { dir, fingerprint }
    }

    fn path(&self, sha: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{sha}-{}.cwasm", self.fingerprint)))
    }

    /// Loads the component for these bytes, compiling and storing it on a miss. Blocking:
    /// call from `spawn_blocking`.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha: &str,
    ) -> wasmtime::Result<(Component, Origin)> {
        if let Some(path) = self.path(sha) {
            if path.exists() {
                // SAFETY: the file was written by `Component::serialize` of an engine with the
                // same compatibility hash (it is in the name), into a directory only the host writes.
                match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(c) => return Ok((c, Origin::Cached)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "ignoring unreadable cache entry: {e:#}")
                    }
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = self.path(sha) {
            if let Err(e) = store(&component, &path) {
                tracing::warn!(path = %path.display(), "could not write compile cache: {e:#}");
            }
        }
        Ok((component, Origin::Compiled))
    }
}

fn store(component: &Component, path: &Path) -> wasmtime::Result<()> {
    let dir = path.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    std::fs::write(&tmp, component.serialize()?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
