//! Questions this agent asks other members' PostgreSQL directly, each
//! within a deadline: in quorum mode, how much WAL each voter has.
use std::time::Duration;

use ha::Member;
use tokio::task::JoinSet;

/// How long one voter may take to connect and answer.
const ASK_WITHIN: Duration = Duration::from_millis(1500);

/// The WAL each voter has flushed (received, for a standby; written, for
/// a primary), asked of every voter at once; a voter that does not answer
/// in time is left out.
pub async fn flushed_lsns(superuser: &str, voters: &[&Member]) -> Vec<(String, u64)> {
    let mut set = JoinSet::new();
    for m in voters {
        let mut c = tokio_postgres::Config::new();
        c.host(&m.host)
            .port(m.port)
            .user(superuser)
            .dbname("postgres")
            .application_name("pgwarden agent")
            .connect_timeout(ASK_WITHIN);
        let name = m.name.clone();
        set.spawn(async move {
            let ask = async {
                let (client, conn) = c.connect(tokio_postgres::NoTls).await.ok()?;
                let conn = tokio::spawn(conn);
                let q = "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                         THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                         ELSE pg_current_wal_flush_lsn() END, '0/0')::bigint";
                let lsn: Option<i64> = client.query_one(q, &[]).await.ok()?.get(0);
                conn.abort();
                lsn.map(|l| (name, l as u64))
            };
            tokio::time::timeout(ASK_WITHIN, ask).await.ok().flatten()
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(x)) = r {
            out.push(x);
        }
    }
    out
}
