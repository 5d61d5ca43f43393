//! The REST API over TLS: certificates made by openssl, the agent's real
//! server, `pgwarden ctl`'s client and the failsafe question between
//! agents. (No PostgreSQL: the API serves what the loop last published.)
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agent::driver::Shared;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA in `dir` (`{name}-ca.crt`), and a certificate for 127.0.0.1 it
/// signed: (CA file, certificate file, key file).
fn certificates(dir: &Path, name: &str) -> (String, String, String) {
    let p = |f: &str| dir.join(format!("{name}-{f}")).display().to_string();
    let (ca, ca_key, cert, key, csr, ext) = (
        p("ca.crt"),
        p("ca.key"),
        p("crt"),
        p("key"),
        p("csr"),
        p("ext"),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=pgwarden test CA",
    ];
    a.extend(ec);
    a.extend(["-keyout", &ca_key, "-out", &ca]);
    openssl(&a);
    let mut a = vec!["req", "-subj", "/CN=127.0.0.1"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr]);
    openssl(&a);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_api_serves_over_tls_and_clients_verify_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "agent");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let port = free_port();
    let toml = format!(
        "[agent]\nname = \"n1\"\ndata_dir = \"{d}/data\"\npg_port = 25999\n\
         api_listen = \"127.0.0.1:{port}\"\napi_tls_cert = \"{cert}\"\napi_tls_key = \"{key}\"\n\
         api_tls_ca = \"{ca}\"\n",
        d = dir.path().display()
    );
    let path = dir.path().join("node.toml");
    std::fs::write(&path, &toml).unwrap();
    let cfg = config::load(&path).unwrap().agent.unwrap();
    let shared = Arc::new(Shared::default());
    // a running standby that last saw n0 lead: it confirms n0
    *shared.member.lock().unwrap() = ha::Member::from_json(&format!(
        r#"{{"name":"n1","host":"127.0.0.1","port":25999,"api_url":"https://127.0.0.1:{port}",
            "role":"replica","running":true,"timeline":1,"lsn":0,"replayed_lsn":0,"streaming":true}}"#
    ));
    assert!(shared.member.lock().unwrap().is_some());
    *shared.leader.lock().unwrap() = Some("n0".into());
    let server = agent::api::serve(&cfg, shared).await.unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let limit = Duration::from_secs(5);

    // verified against the right CA
    let good =
        ctl::Client::new(&url, None, limit).with_tls(Some(tls::client_config_ca(&ca).unwrap()));
    // (the agent's own answer: no loop runs here, so not alive)
    let r = good.send("GET", "/liveness", None).await.unwrap();
    assert_eq!(
        (r.status, &r.body["loop_alive"]),
        (503, &serde_json::json!(false))
    );

    // another CA: the handshake fails, nothing is answered
    let bad = ctl::Client::new(&url, None, limit)
        .with_tls(Some(tls::client_config_ca(&other_ca).unwrap()));
    let e = bad.send("GET", "/liveness", None).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    assert_eq!(e.exit_code(), 3);

    // https without a CA or --insecure is the operator's mistake
    let none = ctl::Client::new(&url, None, limit);
    let e = none.send("GET", "/liveness", None).await.unwrap_err();
    assert!(e.to_string().contains("--cacert"), "{e}");
    assert_eq!(e.exit_code(), 2);

    // plain HTTP to the TLS port gets no answer
    let plain = ctl::Client::new(&format!("127.0.0.1:{port}"), None, limit);
    assert!(plain.send("GET", "/liveness", None).await.is_err());

    // a mutating endpoint still wants the token (none is configured: 403 or 401)
    let r = good.send("POST", "/pause", None).await.unwrap();
    assert!(matches!(r.status, 401 | 403), "{} {:?}", r.status, r.body);

    // another agent's failsafe question, verified with api_tls_ca
    assert!(agent::api::failsafe_confirm(&cfg, &url, "n0").await);
    assert!(!agent::api::failsafe_confirm(&cfg, &url, "n2").await);
    server.abort();
}
