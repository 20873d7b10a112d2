//! One store mirror for everything this proxy keeps: routes and certificates today, whatever
//! comes next. Each kind of thing has a [`StoreMirror`], which owns where it is kept (a Consul
//! KV prefix, or beside the state file standalone), the numbering of this replica's own
//! writes, and, with Consul, the blocking query that follows the prefix so that every replica
//! with the same instance name serves what any of them stored. Its owner only says how to
//! apply a listing ([`Mirrored`]) and publishes what it builds from it.
//!
//! The guard against undoing one's own writes lives here, once: a listing is asked for
//! without the owner's lock and applied later under it, so a write made in between may be
//! missing from it (or only in a listing answered before the write). Every write through the
//! mirror is numbered ([`LocalWrites`]); the follower takes the number before it asks, and the
//! owner leaves alone the keys written since ([`StoreMirror::written_since`]), reading again.
//! A write that does not go through the mirror cannot be made, so no kind can forget it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dfp_consul::{ConsulClient, ConsulError, Indexed, KvEntry};
use serde::{Deserialize, Serialize};

use crate::follow::blocking_query_loop;
use crate::local_writes::LocalWrites;
use crate::store::StoreError;
use crate::AdminError;

/// Where one kind of thing is kept.
#[derive(Debug)]
pub(crate) enum Backend {
    /// `<prefix><key>` in Consul KV, followed with a blocking query.
    ConsulKv { consul: Arc<ConsulClient>, prefix: String },
    /// One JSON file holding every key (the routes' state file), changed per key.
    StateFile(PathBuf),
    /// A file `<key>.pem` per key in a directory only the proxy's user may read.
    PemDir(PathBuf),
    /// Nothing is kept (tests of an owner alone).
    Memory,
}

/// A kind of thing kept in a [`Backend`], with this replica's writes numbered.
#[derive(Debug)]
pub(crate) struct StoreMirror {
    backend: Backend,
    /// What one key holds, for messages: "route", "certificate".
    what: &'static str,
    /// How long the follower's blocking query waits.
    consul_wait: Duration,
    local_writes: LocalWrites,
}

/// The owner of a mirrored kind: what it does with a listing.
pub(crate) trait Mirrored: Send + Sync + 'static {
    fn mirror(&self) -> &StoreMirror;

    /// Makes what is served match `stored` (key -> value, everything under the prefix) in
    /// one publish, without writing back, leaving alone the keys
    /// [`StoreMirror::written_since`] `mark` says were written here meanwhile. Returns
    /// whether one was left (the store is then read again at once).
    fn apply(
        self: Arc<Self>,
        stored: BTreeMap<String, Vec<u8>>,
        mark: u64,
    ) -> impl Future<Output = bool> + Send;

    /// Hears whether Consul answered each listing.
    fn answered(&self, outcome: Result<(), &ConsulError>);
}

impl StoreMirror {
    pub(crate) fn new(backend: Backend, what: &'static str, consul_wait: Duration) -> Self {
        StoreMirror { backend, what, consul_wait, local_writes: LocalWrites::default() }
    }

    pub(crate) fn is_consul(&self) -> bool {
        matches!(self.backend, Backend::ConsulKv { .. })
    }

    /// Everything stored, by key, and the Consul index to follow from (0 standalone). A
    /// missing state file or directory holds nothing (a first start); one that cannot be
    /// read is an error naming it.
    pub(crate) async fn load(&self) -> Result<(BTreeMap<String, Vec<u8>>, u64), StoreError> {
        match &self.backend {
            Backend::ConsulKv { consul, prefix } => {
                let listed =
                    consul.kv_list(prefix, 0, Duration::ZERO).await.map_err(StoreError::Consul)?;
                Ok((children(&listed.value, prefix), listed.index))
            }
            Backend::StateFile(path) => {
                let state = read_off_runtime(path, read_state_file).await?;
                let values = state
                    .services
                    .into_iter()
                    .map(|(key, value)| (key, serde_json::to_vec(&value).unwrap_or_default()))
                    .collect();
                Ok((values, 0))
            }
            Backend::PemDir(dir) => Ok((read_off_runtime(dir, read_pem_dir).await?, 0)),
            Backend::Memory => Ok((BTreeMap::new(), 0)),
        }
    }

    /// Stores `value` at `key` and, once stored, records the write under `local` (the
    /// owner's name for what it touched). Call it under the owner's lock, so that no listing
    /// is applied between the write and its record.
    pub(crate) async fn put(&self, key: &str, value: &[u8], local: &str) -> Result<(), AdminError> {
        let what = self.what;
        match &self.backend {
            Backend::ConsulKv { consul, prefix } => {
                let stored = consul.kv_put(&format!("{prefix}{key}"), value.to_vec()).await;
                stored.map_err(|err| {
                    AdminError::consul(
                        Some(&format!("storing the {what} in Consul KV failed")),
                        &err,
                    )
                })?;
            }
            Backend::StateFile(path) => {
                let value: serde_json::Value = serde_json::from_slice(value)
                    .map_err(|e| AdminError::Internal(format!("{what} is not JSON: {e}")))?;
                let key = key.to_owned();
                change_state_file(path, move |all| {
                    all.insert(key, value);
                })
                .await?;
            }
            Backend::PemDir(dir) => {
                let (dir, path) = (dir.clone(), dir.join(format!("{key}.pem")));
                let (shown, value) = (path.display().to_string(), value.to_vec());
                blocking(
                    move || write_private_file(&dir, &path, &value),
                    || format!("writing the {what} file {shown} failed"),
                )
                .await?;
            }
            Backend::Memory => {}
        }
        self.local_writes.record(local);
        Ok(())
    }

    /// Stores every `(key, value, local)` of `writes` in the state file with one read, change
    /// and write (all or none: each outcome is the file's), so a commit of many calls costs
    /// one rewrite of the file, not one per call. Elsewhere, one [`Self::put`] after the
    /// other. The outcomes are in the order of `writes`.
    pub(crate) async fn put_all(
        &self,
        writes: &[(String, Vec<u8>, String)],
    ) -> Vec<Result<(), AdminError>> {
        let Backend::StateFile(path) = &self.backend else {
            let mut outcomes = Vec::with_capacity(writes.len());
            for (key, value, local) in writes {
                outcomes.push(self.put(key, value, local).await);
            }
            return outcomes;
        };
        let what = self.what;
        let parsed: Result<Vec<(String, serde_json::Value)>, AdminError> = writes
            .iter()
            .map(|(key, value, _)| {
                serde_json::from_slice(value)
                    .map(|value| (key.clone(), value))
                    .map_err(|e| AdminError::Internal(format!("{what} is not JSON: {e}")))
            })
            .collect();
        let changed = match parsed {
            Ok(values) => change_state_file(path, move |all| all.extend(values)).await,
            Err(err) => Err(err),
        };
        match changed {
            Ok(()) => {
                for (_, _, local) in writes {
                    self.local_writes.record(local);
                }
                writes.iter().map(|_| Ok(())).collect()
            }
            Err(err) => {
                let what = err.to_string();
                writes
                    .iter()
                    .map(|_| Err(AdminError::StoreUnavailable { what: what.clone() }))
                    .collect()
            }
        }
    }

    /// Deletes `key` and, once deleted, records the write under `local` (as [`Self::put`]).
    pub(crate) async fn delete(&self, key: &str, local: &str) -> Result<(), AdminError> {
        let what = self.what;
        match &self.backend {
            Backend::ConsulKv { consul, prefix } => {
                consul.kv_delete(&format!("{prefix}{key}")).await.map_err(|err| {
                    let doing = format!("deleting the {what} from Consul KV failed");
                    AdminError::consul(Some(&doing), &err)
                })?;
            }
            Backend::StateFile(path) => {
                let key = key.to_owned();
                change_state_file(path, move |all| {
                    all.remove(&key);
                })
                .await?;
            }
            Backend::PemDir(dir) => {
                let (dir, path) = (dir.clone(), dir.join(format!("{key}.pem")));
                let shown = path.display().to_string();
                blocking(
                    move || remove_file(&dir, &path),
                    || format!("deleting the {what} file {shown} failed"),
                )
                .await?;
            }
            Backend::Memory => {}
        }
        self.local_writes.record(local);
        Ok(())
    }

    /// The number of writes through this mirror so far: take it before asking for a listing.
    pub(crate) fn mark(&self) -> u64 {
        self.local_writes.mark()
    }

    /// Whether `local` was written here after `mark` was taken: a listing asked for at
    /// `mark` may predate that write and must not decide it.
    pub(crate) fn written_since(&self, local: &str, mark: u64) -> bool {
        self.local_writes.newer_than(local, mark)
    }

    /// With Consul, follows the prefix from `index` for as long as `owner` lives, handing
    /// every changed listing to [`Mirrored::apply`]. Standalone, nothing to follow.
    pub(crate) fn follow<O: Mirrored>(owner: &Arc<O>, index: u64) {
        let Backend::ConsulKv { consul, prefix } = &owner.mirror().backend else { return };
        let (consul, listed) = (consul.clone(), prefix.clone());
        tokio::spawn(follow_with(Arc::downgrade(owner), prefix.clone(), index, move |i, wait| {
            let (consul, prefix) = (consul.clone(), listed.clone());
            async move { consul.kv_list(&prefix, i, wait).await }
        }));
    }
}

/// The follower's loop, with `list` asking for the listing of `prefix` (Consul KV in the
/// proxy; a script in the tests that order a listing against a write).
pub(crate) async fn follow_with<O, L, F>(owner: Weak<O>, prefix: String, index: u64, list: L)
where
    O: Mirrored,
    L: FnMut(u64, Duration) -> F,
    F: Future<Output = Result<Indexed<Vec<KvEntry>>, ConsulError>>,
{
    blocking_query_loop(
        owner,
        index,
        // The write mark before the listing is asked for: the keys written here since are
        // not decided by it (and the store is read again).
        |o: &O| (o.mirror().consul_wait, o.mirror().mark()),
        list,
        |strong: Arc<O>, entries: Vec<KvEntry>, mark| {
            let (listed, gap) = (children(&entries, &prefix), listing_gap(entries.len()));
            async move {
                let read_again = strong.apply(listed, mark).await;
                tokio::time::sleep(gap).await;
                read_again
            }
        },
        |o: &O, outcome| o.answered(outcome),
    )
    .await;
}

/// How long the follower waits after applying a listing of `keys` keys before it asks for the
/// next: 20 µs a key, at most a second (a fifth of a second at 10,000 routes, nothing worth
/// noticing at a few hundred). Every write to the prefix answers the blocking query at once,
/// and each answer is the whole prefix: during a burst of writes (a cluster's listeners
/// reconfiguring every service, here or on another replica) an unpaced follower would list
/// the whole store after every write, and its cost and Consul's grow with the store. Paced, a
/// burst costs a few listings a second whatever its rate, and a change still reaches every
/// replica within the gap plus one listing.
fn listing_gap(keys: usize) -> Duration {
    const PER_KEY: Duration = Duration::from_micros(20);
    const MAX: Duration = Duration::from_secs(1);
    PER_KEY.saturating_mul(u32::try_from(keys).unwrap_or(u32::MAX)).min(MAX)
}

/// The keys directly under `prefix` (not in a folder below it) with their values.
fn children(entries: &[KvEntry], prefix: &str) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .filter_map(|entry| {
            let key = entry.key.strip_prefix(prefix)?;
            (!key.is_empty() && !key.contains('/')).then(|| (key.to_owned(), entry.value.clone()))
        })
        .collect()
}

/// Runs a read of `path` off the runtime.
async fn read_off_runtime<T: Send + 'static>(
    path: &Path,
    read: fn(&Path) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let path = path.to_owned();
    let done = tokio::task::spawn_blocking(move || read(&path)).await;
    done.map_err(|e| StoreError::StateFile { path: PathBuf::new(), reason: e.to_string() })?
}

/// Runs a file operation off the runtime; its failure is the store's (503).
async fn blocking(
    op: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    doing: impl FnOnce() -> String,
) -> Result<(), AdminError> {
    let done =
        tokio::task::spawn_blocking(op).await.map_err(|e| AdminError::Internal(e.to_string()))?;
    done.map_err(|err| AdminError::StoreUnavailable { what: format!("{}: {err}", doing()) })
}

/// The state file's format.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u32,
    services: BTreeMap<String, serde_json::Value>,
}

const STATE_FORMAT: u32 = 1;

fn read_state_file(path: &Path) -> Result<StateFile, StoreError> {
    let bad = |reason: String| StoreError::StateFile { path: path.to_owned(), reason };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StateFile { format: STATE_FORMAT, services: BTreeMap::new() })
        }
        Err(err) => return Err(bad(format!("it cannot be read ({err})"))),
    };
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("it is not valid JSON ({e})")))?;
    if state.format != STATE_FORMAT {
        return Err(bad(format!(
            "its format {} is not {STATE_FORMAT}, the one this version reads",
            state.format
        )));
    }
    Ok(state)
}

/// Reads the state file, applies `change` and writes it back atomically. It is never written
/// from what is served, so keys still being restored, or stored ones this proxy skipped, stay;
/// a file that cannot be read is never overwritten.
async fn change_state_file(
    path: &Path,
    change: impl FnOnce(&mut BTreeMap<String, serde_json::Value>) + Send + 'static,
) -> Result<(), AdminError> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        let mut state = read_state_file(&path).map_err(|err| err.to_string())?;
        change(&mut state.services);
        let mut bytes = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        write_atomically(&path, &bytes)
            .map_err(|err| format!("writing the state file {shown} failed: {err}"))
    });
    written
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?
        .map_err(|what| AdminError::StoreUnavailable { what })
}

/// Every `<key>.pem` of `dir`, by key. A missing directory holds nothing; one that cannot be
/// read is an error naming it.
fn read_pem_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let bad = |reason: String| StoreError::StateFile { path: dir.to_owned(), reason };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(bad(format!("the directory cannot be read ({err})"))),
    };
    let mut found = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| bad(format!("the directory cannot be read ({e})")))?.path();
        let Some(key) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pem"))
        else {
            continue;
        };
        if key.is_empty() || key.starts_with('.') {
            continue;
        }
        let value = std::fs::read(&path)
            .map_err(|e| bad(format!("{} cannot be read ({e})", path.display())))?;
        found.insert(key.to_owned(), value);
    }
    Ok(found)
}

/// Writes `path` atomically: a temporary file beside it, fsync, rename over the old file,
/// fsync the directory. A crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `path` (in `dir`, created if missing) atomically and readable by its owner only.
pub(crate) fn write_private_file(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn remove_file(dir: &Path, path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests;
