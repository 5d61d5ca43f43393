//! Checks that tell a permanent problem (a missing program, a directory
//! the OS user cannot reach, a port in use) before anything is started,
//! with the cause and what to change, instead of a command failing over
//! and over.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{OsUser, PgError};

/// The PostgreSQL programs the agent runs.
pub const PROGRAMS: [&str; 7] = [
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
    "psql",
];

/// Every program of [`PROGRAMS`] is in `bindir` and executable.
pub fn check_programs(bindir: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::PermissionsExt;
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| {
            std::fs::metadata(bindir.join(p))
                .map(|m| !m.is_file() || m.permissions().mode() & 0o111 == 0)
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PgError::NoBinaries(format!(
        "{} not found in {} (install the PostgreSQL server package, or set PGWARDEN_PG_BINDIR)",
        missing.join(", "),
        bindir.display()
    )))
}

/// The directories from `/` down to `path` that exist.
fn existing_ancestors(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty() && p.is_dir())
        .map(Path::to_path_buf)
        .collect();
    dirs.reverse();
    dirs
}

/// The first directory on the way to `path` (from `/`, `path` included
/// when it exists) that `user` cannot enter, or `None` when it reaches it.
/// Asked of the kernel by a process that runs as `user` exactly as
/// PostgreSQL will (no supplementary groups), so modes, ACLs and mount
/// options all count. With no user to switch to, the current one reaches
/// whatever it can stat.
pub fn unreachable_dir(user: Option<OsUser>, path: &Path) -> Result<Option<PathBuf>, PgError> {
    let Some(u) = user else {
        return Ok(None);
    };
    let dirs = existing_ancestors(path);
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(r#"for d do [ -x "$d" ] || { printf '%s' "$d"; exit 1; }; done"#)
        .arg("sh")
        .args(&dirs)
        .current_dir("/")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    u.apply(&mut c);
    let out = c.output().map_err(|source| PgError::Spawn {
        program: "/bin/sh".into(),
        source,
    })?;
    if out.status.success() {
        return Ok(None);
    }
    let blocked = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(Some(if blocked.is_empty() {
        path.to_path_buf()
    } else {
        PathBuf::from(blocked)
    }))
}

/// "DIR (mode 0700, owner root)": what an operator needs to see why a
/// directory cannot be entered.
pub fn describe_dir(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Ok(m) => format!(
            "{} (mode {:04o}, owner {})",
            dir.display(),
            m.mode() & 0o7777,
            name_of_uid(m.uid())
        ),
        Err(_) => dir.display().to_string(),
    }
}

/// The name of `uid` from /etc/passwd, or the number.
fn name_of_uid(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// `user` (named `user_name` in messages) can reach `path`, the place of a
/// data or socket directory: every directory above it can be entered.
pub fn check_reachable(user: Option<OsUser>, user_name: &str, path: &Path) -> Result<(), PgError> {
    match unreachable_dir(user, path)? {
        None => Ok(()),
        Some(blocked) => Err(PgError::Other(format!(
            "the OS user {user_name:?} that runs PostgreSQL cannot enter {}, so it cannot use {}; \
             choose a directory it can reach (e.g. under /var/lib) or let it enter that one",
            describe_dir(&blocked),
            path.display()
        ))),
    }
}

/// A data directory that exists, is not empty and holds no PostgreSQL
/// cluster is somebody's files: initdb and pg_basebackup would refuse it,
/// and it must never be wiped.
pub fn check_data_dir(data_dir: &Path) -> Result<(), PgError> {
    if data_dir.join("PG_VERSION").exists() {
        return Ok(());
    }
    match std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()) {
        Ok(true) => Err(PgError::Other(format!(
            "data directory {} is not empty and holds no PostgreSQL cluster (no PG_VERSION); \
             pgwarden will not overwrite it: empty it or choose another data_dir",
            data_dir.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(PgError::Other(format!(
            "data directory {} is a file, not a directory",
            data_dir.display()
        ))),
        Err(e) => Err(PgError::Other(format!(
            "data directory {}: {e}",
            data_dir.display()
        ))),
    }
}

/// PostgreSQL could listen on `host:port`: nothing else listens there and
/// `host` is an address of this machine.
pub fn check_port(host: &str, port: u16) -> Result<(), PgError> {
    match std::net::TcpListener::bind((host, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(PgError::Other(format!(
            "port {port} on {host} is already in use by another program; \
             stop it or choose another pg_port"
        ))),
        Err(e) => Err(PgError::Other(format!(
            "PostgreSQL could not listen on {host}:{port}: {e} \
             (host must be an address of this machine)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_programs_are_named() {
        let dir = std::env::temp_dir().join(format!("pgw-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = check_programs(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("initdb, pg_ctl, postgres"), "{e}");
        assert!(e.contains(&dir.display().to_string()), "{e}");
    }

    #[test]
    fn a_non_empty_directory_without_a_cluster_is_refused() {
        let dir = std::env::temp_dir().join(format!("pgw-datadir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check_data_dir(&dir).is_ok(), "empty is fine");
        assert!(
            check_data_dir(&dir.join("absent")).is_ok(),
            "absent is fine"
        );
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let e = check_data_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        std::fs::write(dir.join("PG_VERSION"), "15").unwrap();
        assert!(check_data_dir(&dir).is_ok(), "a cluster is fine");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = check_port("127.0.0.1", port).unwrap_err().to_string();
        assert!(
            e.contains(&format!("port {port}")) && e.contains("in use"),
            "{e}"
        );
        drop(l);
        assert!(check_port("127.0.0.1", port).is_ok());
    }

    /// Run as root (as the tests are here): a 0700 directory of root's
    /// stops the OS user `postgres`, and is named.
    #[test]
    fn a_directory_the_user_cannot_enter_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let Ok(Some(user)) = OsUser::for_postgres("postgres") else {
            return; // not root: nobody to switch to
        };
        let top = std::env::temp_dir().join(format!("pgw-reach-{}", std::process::id()));
        let inner = top.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            unreachable_dir(Some(user), &inner.join("data")).unwrap(),
            None
        );
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700)).unwrap();
        let blocked = unreachable_dir(Some(user), &inner.join("data")).unwrap();
        let e = check_reachable(Some(user), "postgres", &inner.join("data"))
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&top).unwrap();
        assert_eq!(blocked, Some(top.clone()));
        assert!(e.contains("mode 0700, owner root"), "{e}");
    }

    #[test]
    fn ancestors_run_from_the_root() {
        let a = existing_ancestors(Path::new("/usr/bin/does-not-exist"));
        assert_eq!(
            a,
            vec![PathBuf::from("/"), "/usr".into(), "/usr/bin".into()]
        );
    }
}
