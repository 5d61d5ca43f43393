//! `pgwarden up`: a working PostgreSQL with the proxy in front, on this
//! machine, with no external service. Resumes when run again on the same
//! directory.
use std::path::Path;

use anyhow::Context;

use crate::cli::UpArgs;

fn free_port(from: u16) -> u16 {
    (from..from.saturating_add(1000))
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or(from)
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let user = pg::OsUser::for_postgres(&args.os_user)?;
    let port_file = dir.join("pg_port");
    let port = match std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => {
            let p = if args.pg_port == 0 {
                free_port(15432)
            } else {
                args.pg_port
            };
            std::fs::write(&port_file, p.to_string())?;
            p
        }
    };
    let inst = pg::Instance::new(pg::InstanceConfig {
        data_dir: dir.join("node0"),
        run_dir: dir.join("run0"),
        port,
        listen: "127.0.0.1".into(),
        user,
        superuser: "postgres".into(),
    })?;
    if !inst.is_initialized() {
        eprintln!("initializing PostgreSQL in {}", inst.cfg.data_dir.display());
        inst.initdb()?;
        inst.append_conf(&inst.base_conf())?;
        inst.write_hba("local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")?;
    }
    if !inst.is_running() {
        inst.start().context("cannot start PostgreSQL")?;
    }
    let cfg_path = dir.join("pgwarden.toml");
    if !cfg_path.exists() {
        std::fs::write(&cfg_path, proxy_config(args.port, port))?;
    }
    let cfg = config::load(&cfg_path)?;
    let listen = cfg.proxy.listen;
    print_banner(&dir, &cfg_path, listen.port(), port);
    let rt = crate::runtime::build(cfg.proxy.workers)?;
    let r = rt.block_on(async {
        let p = proxy::Proxy::bind(cfg, Some(cfg_path.clone()))
            .await
            .map_err(anyhow::Error::msg)?;
        crate::cmd_proxy::spawn_signal_handlers(p.state.clone())?;
        if args.detach_check {
            p.state.shutdown.send_replace(true);
        }
        p.run().await;
        anyhow::Ok(())
    });
    if !args.detach_check {
        eprintln!("stopping PostgreSQL");
        inst.stop("fast")?;
    }
    r
}

fn proxy_config(listen_port: u16, pg_port: u16) -> String {
    format!(
        "# pgwarden configuration written by `pgwarden up`\n\
         [proxy]\nlisten = \"127.0.0.1:{listen_port}\"\npool_mode = \"transaction\"\ndefault_pool_size = 20\n\
         admin_users = [\"postgres\"]\nhba = [\"host all all 127.0.0.1/32 trust\"]\n\n\
         [[backends]]\nname = \"node0\"\nhost = \"127.0.0.1\"\nport = {pg_port}\n"
    )
}

fn print_banner(dir: &Path, cfg: &Path, proxy_port: u16, pg_port: u16) {
    println!(
        "pgwarden is up (data in {})\n\
         \n  connect:  psql -h 127.0.0.1 -p {proxy_port} -U postgres postgres\n\
         \n  admin:    psql -h 127.0.0.1 -p {proxy_port} -U postgres pgwarden   (SHOW POOL_NODES; SHOW POOLS;)\n\
         \n  direct:   psql -h 127.0.0.1 -p {pg_port} -U postgres postgres\n\
         \n  config:   {}   (reload with SIGHUP or RELOAD in the admin console)\n\
         \nCtrl-C stops the proxy and PostgreSQL.",
        dir.display(),
        cfg.display()
    );
}
