//! What the agent checks once, before its loop starts: problems that no
//! number of passes would mend (a missing program, a directory the OS user
//! cannot reach, a port taken by another program) end the agent with the
//! cause and what to change, instead of one failure a second in its log.
use config::AgentConfig;

/// Every permanent problem of `cfg` on this machine, the first found.
pub fn check(cfg: &AgentConfig) -> Result<(), String> {
    let bindir = pg::bindir().map_err(|e| e.to_string())?;
    pg::preflight::check_programs(&bindir).map_err(|e| e.to_string())?;
    let user = pg::OsUser::for_postgres(&cfg.os_user).map_err(|e| {
        format!("{e}: os_user names the OS user PostgreSQL runs as when the agent runs as root")
    })?;
    if user.is_some_and(|u| u.uid == 0) {
        return Err(format!(
            "os_user {:?} is root: PostgreSQL refuses to run as root",
            cfg.os_user
        ));
    }
    for (dir, what) in [(&cfg.data_dir, "data_dir"), (&cfg.run_dir, "run_dir")] {
        let parent = dir.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("{what}: cannot create {}: {e}", parent.display()))?;
        pg::preflight::check_reachable(user, &cfg.os_user, dir)
            .map_err(|e| format!("{what}: {e}"))?;
    }
    pg::preflight::check_data_dir(&cfg.data_dir).map_err(|e| e.to_string())?;
    let ours_runs = pg::postmaster_pid(&cfg.data_dir).is_some_and(pg::pid_alive);
    if !ours_runs {
        pg::preflight::check_port(&cfg.host, cfg.pg_port).map_err(|e| e.to_string())?;
    }
    std::net::TcpListener::bind(cfg.api_listen).map_err(|e| {
        format!(
            "the REST API cannot listen on {} ({e}): choose another api_listen",
            cfg.api_listen
        )
    })?;
    Ok(())
}
