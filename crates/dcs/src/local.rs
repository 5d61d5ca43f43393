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

fn read_leader(dir: &Path) -> Result<Option<LeaseFile>, DcsError> {
    match read_opt(&dir.join("leader"))? {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| DcsError::Corrupt(format!("leader: {e}"))),
    }
}

fn live_leader(dir: &Path) -> Result<Option<Leader>, DcsError> {
    Ok(read_leader(dir)?
        .filter(|l| l.expires_ms > now_ms())
        .map(|l| Leader {
            name: l.name,
            epoch: l.epoch,
        }))
}

impl LocalDcs {
    pub fn open(dir: PathBuf) -> Result<Self, DcsError> {
        fs::create_dir_all(dir.join("members")).map_err(io)?;
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
            let mut members = BTreeMap::new();
            for e in fs::read_dir(dir.join("members")).map_err(io)? {
                let e = e.map_err(io)?;
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(name) = name.strip_suffix(".json") else {
                    continue;
                };
                if let Some(s) = read_opt(&e.path())? {
                    let m: MemberFile = serde_json::from_str(&s)
                        .map_err(|e| DcsError::Corrupt(format!("member {name}: {e}")))?;
                    if m.expires_ms > now {
                        members.insert(name.to_owned(), m.value);
                    }
                }
            }
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
        self.locked(|dir| {
            let now = now_ms();
            let cur = read_leader(dir)?;
            let epoch = match &cur {
                Some(l) if l.expires_ms > now && l.name != name => return Ok(None),
                Some(l) if l.expires_ms > now => l.epoch,
                _ => {
                    // a new holder: a new epoch, higher than any before
                    let p = dir.join("epoch");
                    let last: u64 = read_opt(&p)?
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    let last = last.max(cur.as_ref().map(|l| l.epoch).unwrap_or(0));
                    write_atomic(&p, &(last + 1).to_string())?;
                    last + 1
                }
            };
            let lease = LeaseFile {
                name: name.to_owned(),
                epoch,
                expires_ms: now + ttl.as_millis() as u64,
            };
            write_atomic(
                &dir.join("leader"),
                &serde_json::to_string(&lease).expect("serializable"),
            )?;
            Ok(Some(Leader {
                name: name.to_owned(),
                epoch,
            }))
        })
    }

    async fn renew_leader(&self, name: &str, ttl: Duration) -> Result<bool, DcsError> {
        self.locked(|dir| {
            let now = now_ms();
            match read_leader(dir)? {
                Some(mut l) if l.name == name && l.expires_ms > now => {
                    l.expires_ms = now + ttl.as_millis() as u64;
                    write_atomic(
                        &dir.join("leader"),
                        &serde_json::to_string(&l).expect("serializable"),
                    )?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    async fn release_leader(&self, name: &str) -> Result<(), DcsError> {
        self.locked(|dir| match read_leader(dir)? {
            Some(l) if l.name == name => {
                // keep the epoch counter so the next holder gets a higher one
                let p = dir.join("epoch");
                let last: u64 = read_opt(&p)?
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                write_atomic(&p, &last.max(l.epoch).to_string())?;
                remove(&dir.join("leader"))
            }
            _ => Ok(()),
        })
    }

    async fn put_member(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        valid_name(name)?;
        let m = MemberFile {
            value: value.to_owned(),
            expires_ms: now_ms() + ttl.as_millis() as u64,
        };
        let p = self.dir.join("members").join(format!("{name}.json"));
        write_atomic(&p, &serde_json::to_string(&m).expect("serializable"))
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
