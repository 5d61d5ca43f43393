//! The DCS contract, against both backends: a local directory, and a real
//! etcd server.
use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_fulfils_the_contract() {
    let dir = testkit::TempDir::new("dcs");
    let root = dir.path().to_owned();
    dcs::conformance::run(|| {
        let p = root.join(format!("c{}", N.fetch_add(1, Ordering::Relaxed)));
        async move { dcs::local::LocalDcs::open(p).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_fulfils_the_contract() {
    let etcd = testkit::Etcd::start();
    let endpoints = vec![format!("http://127.0.0.1:{}", etcd.port)];
    dcs::conformance::run(|| {
        let e = endpoints.clone();
        let cluster = format!("c{}", N.fetch_add(1, Ordering::Relaxed));
        async move { dcs::etcd::EtcdDcs::connect(&e, &cluster).await.unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_an_error_not_a_hang() {
    let port = testkit::free_port();
    let start = std::time::Instant::now();
    let r = async {
        let d = dcs::etcd::EtcdDcs::connect(&[format!("http://127.0.0.1:{port}")], "x").await?;
        dcs::Dcs::snapshot(&d).await
    }
    .await;
    assert!(r.is_err());
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
}
