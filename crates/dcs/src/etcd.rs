//! The etcd backend (v3 API): the leader key is bound to a lease with the
//! TTL and taken in a transaction that requires it absent; renewal is a
//! lease keep-alive plus a check that the key is still ours; the epoch is
//! the key's create revision (it grows with every acquisition); members are
//! keys bound to their own leases; watches are etcd watches.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;

use crate::{Dcs, DcsError, Key, Leader, Snapshot};

pub struct EtcdDcs {
    client: Client,
    prefix: String,
    /// Lease keys we hold (the leader's, named ones) -> the etcd lease
    /// behind each.
    held: Mutex<BTreeMap<String, i64>>,
    /// Expiring keys we publish (members, proxies) -> their etcd lease.
    value_leases: Mutex<BTreeMap<String, (i64, Duration)>>,
    leader_tx: Arc<std::sync::OnceLock<watch::Sender<Option<Leader>>>>,
}

fn err(e: etcd_client::Error) -> DcsError {
    DcsError::Unavailable(e.to_string())
}

fn ttl_secs(ttl: Duration) -> i64 {
    // etcd leases have whole seconds; round up, at least 1
    (ttl.as_millis().div_ceil(1000) as i64).max(1)
}

impl EtcdDcs {
    pub async fn connect(endpoints: &[String], cluster: &str) -> Result<Self, DcsError> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2));
        let client = Client::connect(endpoints, Some(opts)).await.map_err(err)?;
        Ok(EtcdDcs {
            client,
            prefix: format!("/pgwarden/{cluster}/"),
            held: Mutex::new(BTreeMap::new()),
            value_leases: Mutex::new(BTreeMap::new()),
            leader_tx: Arc::new(std::sync::OnceLock::new()),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn read_leader(client: &mut Client, key: &str) -> Result<Option<Leader>, DcsError> {
        let r = client.get(key, None).await.map_err(err)?;
        Ok(r.kvs().first().map(|kv| Leader {
            name: String::from_utf8_lossy(kv.value()).into_owned(),
            epoch: kv.create_revision() as u64,
        }))
    }

    fn lease_key(&self, lease: &str) -> Result<String, DcsError> {
        if lease.is_empty() || lease.contains('/') {
            return Err(DcsError::Corrupt(format!("invalid lease name {lease:?}")));
        }
        Ok(self.key(&format!("leases/{lease}")))
    }

    fn held_lease(&self, key: &str) -> Option<i64> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn set_held(&self, key: &str, lease: Option<i64>) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match lease {
            Some(l) => h.insert(key.to_owned(), l),
            None => h.remove(key),
        };
    }

    /// Takes the lease key `key` for `name` (see [`Dcs::take_leader`]).
    async fn take_at(
        &self,
        key: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Leader>, DcsError> {
        let mut c = self.client.clone();
        if let Some(l) = Self::read_leader(&mut c, key).await? {
            if l.name == name && self.renew_at(key, name).await? {
                return Ok(Some(l));
            }
            if l.name != name {
                return Ok(None);
            }
        }
        let lease = c.lease_grant(ttl_secs(ttl), None).await.map_err(err)?.id();
        // noted before the transaction: a call cancelled after it went
        // through still renews the lease the key is bound to
        self.set_held(key, Some(lease));
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                name,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = c.txn(txn).await.map_err(err)?;
        if !r.succeeded() {
            self.set_held(key, None);
            let _ = c.lease_revoke(lease).await;
            return Ok(None);
        }
        Ok(Self::read_leader(&mut c, key)
            .await?
            .filter(|l| l.name == name))
    }

    /// Keeps the lease behind `key` alive and checks the key is still
    /// `name`'s.
    async fn renew_at(&self, key: &str, name: &str) -> Result<bool, DcsError> {
        let mut c = self.client.clone();
        let lease = match self.held_lease(key) {
            Some(l) => l,
            None => {
                // After a restart: the key may still be ours.
                let r = c.get(key, None).await.map_err(err)?;
                match r.kvs().first() {
                    Some(kv) if kv.value() == name.as_bytes() && kv.lease() != 0 => {
                        self.set_held(key, Some(kv.lease()));
                        kv.lease()
                    }
                    _ => return Ok(false),
                }
            }
        };
        let alive = async {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
        }
        .await;
        let alive = match alive {
            Ok(a) => a,
            // the lease expired: not ours any more
            Err(e) if e.to_string().contains("not found") => false,
            Err(e) => return Err(err(e)),
        };
        if !alive {
            self.set_held(key, None);
            return Ok(false);
        }
        // ours only if the key is bound to the lease just kept alive
        let r = c.get(key, None).await.map_err(err)?;
        let ours = r
            .kvs()
            .first()
            .is_some_and(|kv| kv.value() == name.as_bytes() && kv.lease() == lease);
        if !ours {
            self.set_held(key, None);
        }
        Ok(ours)
    }

    /// Deletes `key` if it is `name`'s and revokes its lease.
    async fn release_at(&self, key: &str, name: &str) -> Result<(), DcsError> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, name)])
            .and_then([TxnOp::delete(key, None)]);
        if !self.client.clone().txn(txn).await.map_err(err)?.succeeded() {
            return Ok(());
        }
        let lease = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(l) = lease {
            let _ = self.client.clone().lease_revoke(l).await;
        }
        Ok(())
    }

    /// Puts `value` at `key`, bound to a lease of `ttl` kept alive by
    /// each call (a lost lease gets a new one).
    async fn put_expiring(&self, key: String, value: &str, ttl: Duration) -> Result<(), DcsError> {
        let mut c = self.client.clone();
        let existing = self
            .value_leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let lease = match existing {
            Some((l, t)) if t == ttl => match c.lease_keep_alive(l).await {
                Ok((mut k, mut s)) => match k.keep_alive().await {
                    Ok(()) => match s.message().await {
                        Ok(Some(r)) if r.ttl() > 0 => Some(l),
                        _ => None,
                    },
                    Err(_) => None,
                },
                Err(_) => None,
            },
            _ => None,
        };
        let lease = match lease {
            Some(l) => l,
            None => {
                let l = c.lease_grant(ttl_secs(ttl), None).await.map_err(err)?.id();
                self.value_leases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), (l, ttl));
                l
            }
        };
        c.put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(err)?;
        Ok(())
    }
}

impl Dcs for EtcdDcs {
    async fn snapshot(&self) -> Result<Snapshot, DcsError> {
        let mut c = self.client.clone();
        let r = c
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(err)?;
        let mut s = Snapshot::default();
        let members_prefix = self.key("members/");
        let proxies_prefix = self.key("proxies/");
        let leases_prefix = self.key("leases/");
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            if let Some(m) = key.strip_prefix(&members_prefix) {
                s.members.insert(m.to_owned(), value);
            } else if let Some(p) = key.strip_prefix(&proxies_prefix) {
                s.proxies.insert(p.to_owned(), value);
            } else if let Some(l) = key.strip_prefix(&leases_prefix) {
                let epoch = kv.create_revision() as u64;
                s.leases.insert(l.to_owned(), Leader { name: value, epoch });
            } else if key == self.key("leader") {
                s.leader = Some(Leader {
                    name: value,
                    epoch: kv.create_revision() as u64,
                });
            } else if key == self.key("initialize") {
                s.initialize = Some(value);
            } else if let Some(k) = Key::ALL.iter().find(|k| key == self.key(k.name())) {
                s.values.insert(k.name(), value);
            }
        }
        Ok(s)
    }

    async fn initialize(&self, value: &str) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        Ok(self.client.clone().txn(txn).await.map_err(err)?.succeeded())
    }

    async fn cancel_initialize(&self, value: &str) -> Result<(), DcsError> {
        let key = self.key("initialize");
        let txn = Txn::new()
            .when([Compare::value(key.as_str(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.client.clone().txn(txn).await.map_err(err)?;
        Ok(())
    }

    async fn take_leader(&self, name: &str, ttl: Duration) -> Result<Option<Leader>, DcsError> {
        self.take_at(&self.key("leader"), name, ttl).await
    }

    async fn renew_leader(&self, name: &str, _ttl: Duration) -> Result<bool, DcsError> {
        self.renew_at(&self.key("leader"), name).await
    }

    async fn release_leader(&self, name: &str) -> Result<(), DcsError> {
        self.release_at(&self.key("leader"), name).await
    }

    async fn take_lease(
        &self,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Leader>, DcsError> {
        self.take_at(&self.lease_key(lease)?, holder, ttl).await
    }

    async fn renew_lease(
        &self,
        lease: &str,
        holder: &str,
        _ttl: Duration,
    ) -> Result<bool, DcsError> {
        self.renew_at(&self.lease_key(lease)?, holder).await
    }

    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), DcsError> {
        self.release_at(&self.lease_key(lease)?, holder).await
    }

    async fn put_member(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        self.put_expiring(self.key(&format!("members/{name}")), value, ttl)
            .await
    }

    async fn put_proxy(&self, name: &str, value: &str, ttl: Duration) -> Result<(), DcsError> {
        self.put_expiring(self.key(&format!("proxies/{name}")), value, ttl)
            .await
    }

    async fn delete_proxy(&self, name: &str) -> Result<(), DcsError> {
        self.client
            .clone()
            .delete(self.key(&format!("proxies/{name}")), None)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        self.client
            .clone()
            .delete(self.key(&format!("members/{name}")), None)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn put(&self, key: Key, value: Option<&str>) -> Result<(), DcsError> {
        let mut c = self.client.clone();
        match value {
            Some(v) => c
                .put(self.key(key.name()), v, None)
                .await
                .map(|_| ())
                .map_err(err),
            None => c
                .delete(self.key(key.name()), None)
                .await
                .map(|_| ())
                .map_err(err),
        }
    }

    async fn compare_and_set(
        &self,
        key: Key,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, DcsError> {
        let k = self.key(key.name());
        let cmp = match expected {
            Some(v) => Compare::value(k.as_str(), CompareOp::Equal, v),
            None => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(k.as_str(), value, None)]);
        Ok(self.client.clone().txn(txn).await.map_err(err)?.succeeded())
    }

    fn watch_leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader_tx
            .get_or_init(|| {
                let (tx, _) = watch::channel(None);
                let tx2 = tx.clone();
                let client = self.client.clone();
                let key = self.key("leader");
                tokio::spawn(async move {
                    loop {
                        let mut c = client.clone();
                        // current value, then changes from the next revision on
                        let start = match c.get(key.as_str(), None).await {
                            Ok(r) => {
                                let l = r.kvs().first().map(|kv| Leader {
                                    name: String::from_utf8_lossy(kv.value()).into_owned(),
                                    epoch: kv.create_revision() as u64,
                                });
                                tx2.send_if_modified(|cur| std::mem::replace(cur, l.clone()) != l);
                                r.header().map(|h| h.revision() + 1).unwrap_or(0)
                            }
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        };
                        let Ok((_w, mut stream)) = c
                            .watch(
                                key.as_str(),
                                Some(WatchOptions::new().with_start_revision(start)),
                            )
                            .await
                        else {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        };
                        while let Ok(Some(resp)) = stream.message().await {
                            for ev in resp.events() {
                                let l = match (ev.event_type(), ev.kv()) {
                                    (etcd_client::EventType::Put, Some(kv)) => Some(Leader {
                                        name: String::from_utf8_lossy(kv.value()).into_owned(),
                                        epoch: kv.create_revision() as u64,
                                    }),
                                    _ => None,
                                };
                                tx2.send_if_modified(|cur| std::mem::replace(cur, l.clone()) != l);
                            }
                            if tx2.is_closed() {
                                return;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                tx
            })
            .subscribe()
    }
}
