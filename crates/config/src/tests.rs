use super::*;
use std::path::Path;

fn err(text: &str) -> String {
    parse(text, Path::new("pgwarden.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn minimal_config_has_defaults() {
    let c = parse(
        "[[backends]]\nhost = \"127.0.0.1\"\nport = 5432\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(c.proxy.listen.port(), 6432);
    assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
    assert_eq!(c.backends[0].addr(), "127.0.0.1:5432");
    assert_eq!(c.backends[0].name, "node0");
    // PgBouncer's safety timeouts are off unless set
    assert!(c.proxy.idle_transaction_timeout.is_zero());
    assert!(c.proxy.query_timeout.is_zero());
    assert!(c.proxy.client_idle_timeout.is_zero());
    assert!(!c.proxy.session_server_reuse);
}

#[test]
fn full_config() {
    let text = r#"
[proxy]
listen = "0.0.0.0:7000"
pool_mode = "session"
default_pool_size = 5
min_pool_size = 1
query_wait_timeout = "2s"
idle_transaction_timeout = "1m"
query_timeout = "30s"
client_idle_timeout = "1h"
session_server_reuse = true
admin_users = ["admin"]
hba = ["host all all 127.0.0.1/32 md5", "host all all all reject"]

[[backends]]
name = "a"
host = "db1"
port = 5433

[[users]]
name = "app"
password = "secret"
pool_size = 3

[auth_query]
user = "pgwarden_auth"
"#;
    let c = parse(text, Path::new("x.toml")).unwrap();
    assert_eq!(c.proxy.pool_mode, PoolMode::Session);
    assert_eq!(
        c.proxy.query_wait_timeout,
        std::time::Duration::from_secs(2)
    );
    assert_eq!(c.proxy.hba.0.len(), 2);
    assert_eq!(
        c.proxy.idle_transaction_timeout,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(c.proxy.query_timeout, std::time::Duration::from_secs(30));
    assert_eq!(
        c.proxy.client_idle_timeout,
        std::time::Duration::from_secs(3600)
    );
    assert!(c.proxy.session_server_reuse);
    assert_eq!(c.user("app").unwrap().pool_size, Some(3));
    assert_eq!(c.auth_query.unwrap().database, "postgres");
}

#[test]
fn errors_name_file_and_line() {
    assert_eq!(
        err("[proxy]\nlisten = \"nope\"\n"),
        "pgwarden.toml:2:10: listen address \"nope\" must be IP:port"
    );
    assert!(err("[proxy]\npool_mode = \"statement\"\n").starts_with("pgwarden.toml:2:"));
    assert!(err("[proxy]\nlisen = \"x\"\n").starts_with("pgwarden.toml:2:1: unknown field `lisen`"));
    assert!(err("[[backends]]\nhost = \"h\"\nport = 70000\n")
        .starts_with("pgwarden.toml:3:8: port 70000"));
    assert!(
        err("[proxy]\nhba = [\"host all all\"]\n").starts_with("pgwarden.toml:2:8: access rule")
    );
    assert!(err("[proxy]\nquery_wait_timeout = \"soon\"\n")
        .starts_with("pgwarden.toml:2:22: invalid duration"));
    assert!(err("[proxy]\nquery_timeout = \"later\"\n")
        .starts_with("pgwarden.toml:2:17: invalid duration"));
    assert!(err("[proxy]\nidle_transaction_timeout = \"x\"\n")
        .starts_with("pgwarden.toml:2:28: invalid duration"));
    assert!(err("[proxy]\nclient_idle_timeout = \"-1s\"\n")
        .starts_with("pgwarden.toml:2:23: invalid duration"));
    assert!(err("[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n")
        .starts_with("pgwarden.toml:4:8: user \"a\" is defined twice"));
    assert!(err("this is not toml").starts_with("pgwarden.toml:1:"));
    assert!(err("[proxy]\ntls_cert_file = \"x\"\n").contains("together"));
    assert!(err("[proxy]\ndefault_pool_size = 100000000000\n")
        .starts_with("pgwarden.toml:2:21: default_pool_size must be between 1 and"));
    assert!(err("[proxy]\nserver_connect_timeout = \"0s\"\n")
        .starts_with("pgwarden.toml:2:26: server_connect_timeout must be longer than 0"));
    assert!(err("[proxy]\nhealth_check_period = \"0ms\"\n").contains("longer than 0"));
    assert!(err("[[users]]\nname = \"a\"\npool_size = 0\n")
        .starts_with("pgwarden.toml:2:8: user \"a\": pool_size 0 must be between 1"));
    assert!(
        err("[[users]]\nname = \"a\"\npassword = \"SCRAM-SHA-256$4096:c2FsdA==\"\n")
            .starts_with("pgwarden.toml:2:8: user \"a\": password looks like a SCRAM verifier")
    );
    // a real verifier is accepted
    parse(
        "[[users]]\nname = \"a\"\npassword = \"SCRAM-SHA-256$4096:c2FsdHNhbHQ=$dGVzdA==:dGVzdA==\"\n",
        Path::new("pgwarden.toml"),
    )
    .unwrap();
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("ab", 99), (1, 3));
}

#[test]
fn agent_section() {
    let c = parse(
        "[agent]\nname = \"n1\"\ndata_dir = \"/d/n1\"\npg_port = 5433\ndcs = \"etcd://127.0.0.1:2379\"\n[agent.parameters]\nshared_buffers = \"64MB\"\nmax_connections = 50\n",
        Path::new("a.toml"),
    )
    .unwrap();
    let a = c.agent.unwrap();
    assert_eq!(a.ttl, std::time::Duration::from_secs(5));
    assert_eq!(
        a.parameters.get("max_connections").map(String::as_str),
        Some("50")
    );
    assert_eq!(a.run_dir, std::path::PathBuf::from("/d/n1.run"));
    assert!(
        err("[agent]\nname = \"bad name\"\ndata_dir = \"/d\"\npg_port = 1\n")
            .starts_with("pgwarden.toml:2:8:")
    );
    assert!(
        err("[agent]\nname = \"n\"\ndata_dir = \"/d\"\npg_port = 1\nttl = \"1s\"\n")
            .contains("twice loop_wait")
    );
}

#[test]
fn synchronous_mode_takes_a_bool_or_a_word() {
    let agent = |line: &str| {
        format!("[agent]\nname = \"n1\"\ndata_dir = \"/tmp/x\"\npg_port = 5500\n{line}\n")
    };
    let mode = |line: &str| {
        parse(&agent(line), Path::new("x.toml"))
            .unwrap()
            .agent
            .unwrap()
    };
    assert_eq!(mode("").synchronous_mode, SyncMode::Off);
    assert_eq!(
        mode("synchronous_mode = true").synchronous_mode,
        SyncMode::On
    );
    let q = mode("synchronous_mode = \"quorum\"\nsynchronous_node_count = 2");
    assert_eq!(q.synchronous_mode, SyncMode::Quorum);
    assert_eq!(q.synchronous_node_count, 2);
    let e = err(&agent("synchronous_mode = \"any\""));
    assert!(e.contains("\"quorum\""), "{e}");
    assert!(e.contains("pgwarden.toml:5:"), "the line is named: {e}");
    let e = err(&agent("synchronous_node_count = 0"));
    assert!(e.contains("at least 1"), "{e}");
}

#[test]
fn agent_api_token() {
    let base = "[agent]\nname = \"n\"\ndata_dir = \"/d\"\npg_port = 1\n";
    let c = parse(
        &format!("{base}api_token = \"0123456789abcdef0123\"\n"),
        Path::new("a.toml"),
    )
    .unwrap();
    assert_eq!(
        c.agent.unwrap().api_token.as_deref(),
        Some("0123456789abcdef0123")
    );
    assert!(err(&format!("{base}api_token = \"short\"\n")).starts_with("pgwarden.toml:5:13:"));
    let e = err(&format!("{base}api_token_file = \"/nonexistent/token\"\n"));
    assert!(e.contains("cannot be read"), "{e}");
    let file = std::env::temp_dir().join(format!("pgw-token-{}", std::process::id()));
    std::fs::write(&file, "fedcba9876543210fedcba\n").unwrap();
    let c = parse(
        &format!("{base}api_token_file = \"{}\"\n", file.display()),
        Path::new("a.toml"),
    )
    .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        c.agent.unwrap().api_token.as_deref(),
        Some("fedcba9876543210fedcba")
    );
}
