//! The local backend: a directory on one machine, shared by the agents of
//! a cluster there. Every change happens under an exclusive file lock and
//! lands by an atomic rename; leases expire by the clock, which all agents
//! on the machine share. Watches poll the leader file every 50 ms.
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Dcs, DcsError, Key, Leader, Snapshot};

const WATCH_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Serialize, Deserialize)]
struct LeaseFile {
    name: String,
    epoch: u64,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct MemberFile {
    value: String,
    expires_ms: u64,
}

pub struct LocalDcs {
    dir: Arc<PathBuf>,
    leader_tx: OnceLock<watch::Sender<Option<Leader>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn io(e: std::io::Error) -> DcsError {
    DcsError::Unavailable(e.to_string())
}

fn read_opt(p: &Path) -> Result<Option<String>, DcsError> {
    match fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Writes through a temporary file and a rename, so readers never see a
/// half-written file.
fn write_atomic(p: &Path, data: &str) -> Result<(), DcsError> {
    let tmp = p.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, data).map_err(io)?;
    fs::rename(&tmp, p).map_err(io)
}

fn remove(p: &Path) -> Result<(), DcsError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

fn valid_name(name: &str) -> Result<(), DcsError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || name.starts_with('.')
    {
        return Err(DcsError::Corrupt(format!("invalid member name {name:?}")));
    }
    Ok(())
}

/// Where a lease lives: the leader's, or a named one under `leases/`.
/// Each has its own epoch counter next to it.
struct LeasePaths {
    file: PathBuf,
    epoch: PathBuf,
}

impl LeasePaths {
    fn leader(dir: &Path) -> Self {
        LeasePaths {
            file: dir.join("leader"),
            epoch: dir.join("epoch"),
        }
    }
    fn named(dir: &Path, lease: &str) -> Result<Self, DcsError> {
        valid_name(lease)?;
        if lease.contains('.') {
            return Err(DcsError::Corrupt(format!("invalid lease name {lease:?}")));
        }
        Ok(LeasePaths {
            file: dir.join("leases").join(lease),
            epoch: dir.join("leases").join(format!("{lease}.epoch")),
        })
    }
}

fn read_lease(file: &Path) -> Result<Option<LeaseFile>, DcsError> {
    match read_opt(file)? {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| DcsError::Corrupt(format!("{}: {e}", file.display()))),
    }
}

fn live_lease(file: &Path) -> Result<Option<Leader>, DcsError> {
    Ok(read_lease(file)?
        .filter(|l| l.expires_ms > now_ms())
        .map(|l| Leader {
            name: l.name,
            epoch: l.epoch,
        }))
}

fn live_leader(dir: &Path) -> Result<Option<Leader>, DcsError> {
    live_lease(&dir.join("leader"))
}

fn take_lease_at(p: &LeasePaths, name: &str, ttl: Duration) -> Result<Option<Leader>, DcsError> {
    let now = now_ms();
    let cur = read_lease(&p.file)?;
    let epoch = match &cur {
        Some(l) if l.expires_ms > now && l.name != name => return Ok(None),
        Some(l) if l.expires_ms > now => l.epoch,
        _ => {
            // a new holder: a new epoch, higher than any before
            let last: u64 = read_opt(&p.epoch)?
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let last = last.max(cur.as_ref().map(|l| l.epoch).unwrap_or(0));
            write_atomic(&p.epoch, &(last + 1).to_string())?;
            last + 1
        }
    };
    let lease = LeaseFile {
        name: name.to_owned(),
        epoch,
        expires_ms: now + ttl.as_millis() as u64,
    };
    write_atomic(
        &p.file,
        &serde_json::to_string(&lease).expect("serializable"),
    )?;
    Ok(Some(Leader {
        name: name.to_owned(),
        epoch,
    }))
}

fn renew_lease_at(p: &LeasePaths, name: &str, ttl: Duration) -> Result<bool, DcsError> {
    let now = now_ms();
    match read_lease(&p.file)? {
        Some(mut l) if l.name == name && l.expires_ms > now => {
            l.expires_ms = now + ttl.as_millis() as u64;
            write_atomic(&p.file, &serde_json::to_string(&l).expect("serializable"))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn release_lease_at(p: &LeasePaths, name: &str) -> Result<(), DcsError> {
    match read_lease(&p.file)? {
        Some(l) if l.name == name => {
            // keep the epoch counter so the next holder gets a higher one
            let last: u64 = read_opt(&p.epoch)?
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            write_atomic(&p.epoch, &last.max(l.epoch).to_string())?;
            remove(&p.file)
        }
        _ => Ok(()),
    }
}

/// The unexpired values of a directory of expiring keys (members,
/// proxies): name -> value.
fn live_values(dir: &Path, now: u64) -> Result<BTreeMap<String, String>, DcsError> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(name) = name.strip_suffix(".json") else {
            continue;
        };
        if let Some(s) = read_opt(&e.path())? {
            let m: MemberFile =
                serde_json::from_str(&s).map_err(|e| DcsError::Corrupt(format!("{name}: {e}")))?;
            if m.expires_ms > now {
                out.insert(name.to_owned(), m.value);
            }
        }
    }
    Ok(out)
}

/// The unexpired named leases.
fn live_leases(dir: &Path) -> Result<BTreeMap<String, Leader>, DcsError> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains('.') {
            continue; // epoch counters, temporary files
        }
        if let Some(l) = live_lease(&e.path())? {
            out.insert(name, l);
        }
    }
    Ok(out)
}

fn put_expiring(file: &Path, value: &str, ttl: Duration) -> Result<(), DcsError> {
    let m = MemberFile {
        value: value.to_owned(),
        expires_ms: now_ms() + ttl.as_millis() as u64,
    };
    write_atomic(file, &serde_json::to_string(&m).expect("serializable"))
}

impl LocalDcs {
    pub fn open(dir: PathBuf) -> Result<Self, DcsError> {
        for sub in ["members", "proxies", "leases"] {
            fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        Ok(LocalDcs {
            dir: Arc::new(dir),
            leader_tx: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` holding the directory's exclusive lock.
    fn locked<T>(&self, f: impl FnOnce(&Path) -> Result<T, DcsError>) -> Result<T, DcsError> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(io)?;
        File::lock(&lock).map_err(io)?;
        let r = f(&self.dir);
        let _ = File::unlock(&lock);
        r
    }

    fn key_path(&self, k: Key) -> PathBuf {
        self.dir.join(k.name())
    }
}

impl Dcs for LocalDcs {
    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        self.locked(|dir| {
            let now = now_ms();
            let members = live_values(&dir.join("members"), now)?;
            let proxies = live_values(&dir.join("proxies"), now)?;
            let mut values = BTreeMap::new();
            for k in Key::ALL {
                if let Some(v) = read_opt(&dir.join(k.name()))? {
                    values.insert(k.name(), v);
                }
            }
            Ok(Snapshot {
                initialize: read_opt(&dir.join("initialize"))?,
                leader: live_leader(dir)?,
                members,
                values,
                proxies,
                leases: live_leases(&dir.join("leases"))?,
            })
        })
    }

    async fn initialize(&self, value: &str) -> Result<bool, DcsError> {
        self.locked(|dir| {
            let p = dir.join("initialize");
            if read_opt(&p)?.is_some() {
                return Ok(false);
            }
            write_atomic(&p, value)?;
            Ok(true)
        })
    }

    async fn cancel_initialize(&self, value: &str) -> Result<(), DcsError> {
        self.locked(|dir| {
            let p = dir.join("initialize");
            if read_opt(&p)?.as_deref() == Some(value) {
                remove(&p)?;
            }
            Ok(())
        })
    }

    async fn take_leader(&self, name: &str, ttl: Duration) -> Result<Option<Leader>, DcsError> {
        valid_name(name)?;
        self.locked(|dir| take_lease_at(&LeasePaths::leader(dir), name, ttl))
    }

    async fn renew_leader(&self, name: &str, ttl: Duration) -> Result<bool, DcsError> {
        self.locked(|dir| renew_lease_at(&LeasePaths::leader(dir), name, ttl))
    }

    async fn release_leader(&self, name: &str) -> Result<(), DcsError> {
        self.locked(|dir| release_lease_at(&LeasePaths::leader(dir), name))
    }

    async fn take_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Leader>, DcsError> {
        valid_name(holder)?;
        self.locked(|dir| take_lease_at(&LeasePaths::named(dir, lease)?, holder, ttl))
    }

    async fn renew_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, DcsError> {
        self.locked(|dir| renew_lease_at(&LeasePaths::named(dir, lease)?, holder, ttl))
    }

    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), DcsError> {
        self.locked(|dir| release_lease_at(&LeasePaths::named(dir, lease)?, holder))
    }

    async fn put_proxy(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        valid_name(name)?;
        put_expiring(
            &self.dir.join("proxies").join(format!("{name}.json")),
            value,
            ttl,
        )
    }

    async fn delete_proxy(&self, name: &str) -> Result<(), DcsError> {
        valid_name(name)?;
        remove(&self.dir.join("proxies").join(format!("{name}.json")))
    }

    async fn put_member(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        valid_name(name)?;
        put_expiring(
            &self.dir.join("members").join(format!("{name}.json")),
            value,
            ttl,
        )
    }

    async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        valid_name(name)?;
        remove(&self.dir.join("members").join(format!("{name}.json")))
    }

    async fn put(&self, key: Key, value: Option<&str>) -> Result<(), DcsError> {
        let p = self.key_path(key);
        self.locked(|_| match value {
            Some(v) => write_atomic(&p, v),
            None => remove(&p),
        })
    }

    async fn compare_and_set(
        &self,
        key: Key,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, DcsError> {
        let p = self.key_path(key);
        self.locked(|_| {
            if read_opt(&p)?.as_deref() != expected {
                return Ok(false);
            }
            write_atomic(&p, value)?;
            Ok(true)
        })
    }

    fn watch_leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader_tx
            .get_or_init(|| {
                let (tx, _) = watch::channel(live_leader(&self.dir).ok().flatten());
                let dir = self.dir.clone();
                let tx2 = tx.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(WATCH_INTERVAL);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        if tx2.is_closed() {
                            return;
                        }
                        if let Ok(l) = live_leader(&dir) {
                            tx2.send_if_modified(|cur| {
                                let changed = *cur != l;
                                *cur = l.clone();
                                changed
                            });
                        }
                    }
                });
                tx
            })
            .subscribe()
    }
}
