//! Where the agents are and the API token: `--api host:port[,host:port]`,
//! else `PGWARDEN_API`, else a `pgwarden up` directory (`--dir`, or the
//! current directory or its `.pgwarden/`), whose node files name every
//! agent's address and the token file. The token: `--token-file`, else
//! `PGWARDEN_API_TOKEN`, else the `up` directory's.
use std::path::{Path, PathBuf};

use crate::client::CtlError;

#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Agents to ask, in order (host:port, or https://host:port).
    pub apis: Vec<String>,
    pub token: Option<String>,
    /// The CA of https agents, from the `up` directory's node files.
    pub cacert: Option<String>,
}

/// The `up` directory to read: `dir`, or the current directory when it
/// holds node files, or `./.pgwarden`.
fn up_dir(dir: Option<&Path>) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match dir {
        Some(d) => vec![d.to_path_buf()],
        None => vec![PathBuf::from("."), PathBuf::from(".pgwarden")],
    };
    candidates
        .into_iter()
        .find(|d| d.join("node0.toml").exists())
}

/// The agents and token of an `up` directory.
fn read_up(dir: &Path) -> Result<Target, CtlError> {
    let mut t = Target::default();
    for i in 0.. {
        let p = dir.join(format!("node{i}.toml"));
        if !p.exists() {
            break;
        }
        let cfg = config::load(&p).map_err(|e| CtlError::Usage(e.to_string()))?;
        if let Some(a) = cfg.agent {
            let scheme = if a.api_tls.is_some() { "https://" } else { "" };
            t.apis.push(format!("{scheme}{}", a.api_listen));
            if t.cacert.is_none() {
                t.cacert = a.api_tls.and_then(|t| t.ca);
            }
            if t.token.is_none() {
                t.token = a.api_token;
            }
        }
    }
    Ok(t)
}

pub fn find(
    api: Option<&str>,
    dir: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Target, CtlError> {
    let env_api = std::env::var("PGWARDEN_API").ok().filter(|s| !s.is_empty());
    let from_up = match up_dir(dir) {
        Some(d) => Some(read_up(&d)?),
        None if dir.is_some() => {
            return Err(CtlError::Usage(format!(
                "{} holds no pgwarden up cluster (no node0.toml)",
                dir.map(|d| d.display().to_string()).unwrap_or_default()
            )))
        }
        None => None,
    };
    let mut t = match api.map(str::to_owned).or(env_api) {
        Some(list) => Target {
            apis: list
                .split(',')
                .map(|s| s.trim().trim_start_matches("http://").to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            token: None,
            cacert: from_up.as_ref().and_then(|u| u.cacert.clone()),
        },
        None => from_up.clone().ok_or_else(|| {
            CtlError::Usage(
                "no agent to ask: give --api host:port, set PGWARDEN_API, or run inside a \
                 pgwarden up directory (or give --dir)"
                    .into(),
            )
        })?,
    };
    t.token = match token_file {
        Some(f) => Some(read_token(f)?),
        None => std::env::var("PGWARDEN_API_TOKEN")
            .ok()
            .filter(|s| !s.is_empty())
            .or(t.token)
            .or(from_up.and_then(|u| u.token)),
    };
    if t.apis.is_empty() {
        return Err(CtlError::Usage("no agent address given".into()));
    }
    Ok(t)
}

fn read_token(f: &Path) -> Result<String, CtlError> {
    let s = std::fs::read_to_string(f)
        .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", f.display())))?;
    Ok(s.lines().next().unwrap_or("").trim().to_owned())
}
