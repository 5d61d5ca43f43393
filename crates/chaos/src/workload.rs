//! The two workloads, through the proxy: an append-only log whose
//! acknowledged ids are recorded (with when each was sent and
//! acknowledged), and bank transfers whose total must never change. Each
//! runs in its own task with its own connection, reconnecting after any
//! error; every call has a deadline.
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};

use crate::conn::{Conn, Target};

/// Every client call's deadline (connect, statement).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two writes of the log, and after an error.
const LOG_EVERY: Duration = Duration::from_millis(10);
const BANK_EVERY: Duration = Duration::from_millis(20);
const AFTER_ERROR: Duration = Duration::from_millis(100);

pub const ACCOUNTS: i64 = 10;
pub const BALANCE: i64 = 1000;

#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: i64,
    pub sent: Instant,
    pub acked: Instant,
}

#[derive(Default)]
pub struct Stats {
    pub acks: Mutex<Vec<Ack>>,
    pub log_errors: AtomicU64,
    pub transfers: AtomicU64,
    pub bank_errors: AtomicU64,
    pub stop: AtomicBool,
}

impl Stats {
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// Creates the log and the bank's accounts through the proxy.
pub async fn setup(proxy_port: u16) -> anyhow::Result<()> {
    let c = Conn::connect(&Target::local(proxy_port), CALL_TIMEOUT)
        .await
        .context("the proxy")?;
    c.query(&format!(
        "CREATE TABLE chaos_log (id bigint PRIMARY KEY); \
         CREATE TABLE chaos_bank (id int PRIMARY KEY, balance bigint NOT NULL); \
         INSERT INTO chaos_bank SELECT g, {BALANCE} FROM generate_series(1, {ACCOUNTS}) g"
    ))
    .await
    .context("creating chaos_log and chaos_bank through the proxy")?;
    Ok(())
}

/// Inserts increasing ids until told to stop; records each acknowledged one.
pub async fn log_writer(proxy_port: u16, stats: Arc<Stats>) {
    let mut id: i64 = 0;
    let mut conn: Option<Conn> = None;
    while !stats.stop.load(Ordering::Relaxed) {
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(&Target::local(proxy_port), CALL_TIMEOUT).await {
                Ok(c) => c,
                Err(_) => {
                    stats.log_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(AFTER_ERROR).await;
                    continue;
                }
            },
        };
        id += 1;
        let sent = Instant::now();
        match c
            .query(&format!("INSERT INTO chaos_log (id) VALUES ({id})"))
            .await
        {
            Ok(_) => {
                let ack = Ack {
                    id,
                    sent,
                    acked: Instant::now(),
                };
                if let Ok(mut a) = stats.acks.lock() {
                    a.push(ack);
                }
                conn = Some(c);
                tokio::time::sleep(LOG_EVERY).await;
            }
            Err(_) => {
                stats.log_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(AFTER_ERROR).await;
            }
        }
    }
}

/// Moves random amounts between random accounts, one transaction each.
pub async fn bank(proxy_port: u16, stats: Arc<Stats>) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut conn: Option<Conn> = None;
    while !stats.stop.load(Ordering::Relaxed) {
        let c = match conn.take() {
            Some(c) => c,
            None => match Conn::connect(&Target::local(proxy_port), CALL_TIMEOUT).await {
                Ok(c) => c,
                Err(_) => {
                    stats.bank_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(AFTER_ERROR).await;
                    continue;
                }
            },
        };
        let a = rng.gen_range(1..=ACCOUNTS);
        let b = (a + rng.gen_range(1..ACCOUNTS) - 1) % ACCOUNTS + 1;
        let x = rng.gen_range(1..=100);
        let sql = format!(
            "BEGIN; UPDATE chaos_bank SET balance = balance - {x} WHERE id = {a}; \
             UPDATE chaos_bank SET balance = balance + {x} WHERE id = {b}; COMMIT"
        );
        match c.query(&sql).await {
            Ok(_) => {
                stats.transfers.fetch_add(1, Ordering::Relaxed);
                conn = Some(c);
                tokio::time::sleep(BANK_EVERY).await;
            }
            Err(_) => {
                stats.bank_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(AFTER_ERROR).await;
            }
        }
    }
}

/// The bank's accounts and total as read on `primary`;
/// Err(text) when they are not ACCOUNTS accounts holding ACCOUNTS*BALANCE.
pub async fn check_bank(primary: &Target) -> anyhow::Result<Result<(), String>> {
    let c = Conn::connect(primary, CALL_TIMEOUT).await?;
    let row = c
        .query("SELECT count(*), coalesce(sum(balance), 0) FROM chaos_bank")
        .await?
        .into_iter()
        .next()
        .context("no row")?;
    let n: i64 = row
        .first()
        .cloned()
        .flatten()
        .context("no count")?
        .parse()?;
    let sum: i64 = row.get(1).cloned().flatten().context("no sum")?.parse()?;
    Ok(if n == ACCOUNTS && sum == ACCOUNTS * BALANCE {
        Ok(())
    } else {
        Err(format!(
            "{n} accounts holding {sum} (expected {ACCOUNTS} holding {})",
            ACCOUNTS * BALANCE
        ))
    })
}

/// Every id in the log as read on the primary at `primary`.
pub async fn logged_ids(primary: &Target) -> anyhow::Result<HashSet<i64>> {
    let c = Conn::connect(primary, Duration::from_secs(30)).await?;
    c.query("SELECT id FROM chaos_log")
        .await?
        .into_iter()
        .map(|r| {
            r.into_iter()
                .next()
                .flatten()
                .context("a NULL id")?
                .parse::<i64>()
                .context("an id that is not a number")
        })
        .collect()
}
