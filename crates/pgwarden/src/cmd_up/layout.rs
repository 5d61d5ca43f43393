//! What `pgwarden up` keeps in its directory, and where PostgreSQL's data
//! goes: a fresh directory gets its configuration files written; a resumed
//! one is read back, and options given again are applied or refused.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cli::UpArgs;

/// Defaults of a fresh directory.
const DEFAULT_NODES: usize = 3;
const DEFAULT_PORT: u16 = 6432;
const DEFAULT_OS_USER: &str = "postgres";
/// Where data goes when the OS user cannot reach `--dir` (as root).
const SHARED_DATA_ROOT: &str = "/var/lib/pgwarden";

pub struct Layout {
    pub dir: PathBuf,
    pub nodes: usize,
    /// Where the nodes' data and socket directories are.
    pub data_root: PathBuf,
}

impl Layout {
    pub fn node_conf(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}.toml"))
    }
    pub fn proxy_conf(&self) -> PathBuf {
        self.dir.join("proxy.toml")
    }
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.join("logs").join(format!("agent{i}.log"))
    }
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.data_root.join(format!("node{i}"))
    }
    /// The agents' REST API token (`pgwarden ctl` reads it from here).
    pub fn token_file(&self) -> PathBuf {
        self.dir.join(TOKEN_FILE)
    }
}

/// The file in an `up` directory holding the API token.
pub const TOKEN_FILE: &str = "api-token";

/// The directory's cluster, as recorded in its node files.
struct Recorded {
    nodes: usize,
    dcs: String,
    os_user: String,
    pg_port: u16,
    data_root: PathBuf,
    proxy_port: u16,
    /// Every node's PostgreSQL and REST API port.
    ports: Vec<u16>,
}

/// Prepares `args.dir`: writes the configuration of a fresh cluster, or
/// reads a resumed one and reconciles the options given again. Returns the
/// layout and lines to tell the user (where the data went, what changed).
pub fn prepare(args: &UpArgs) -> anyhow::Result<(Layout, Vec<String>)> {
    anyhow::ensure!(
        args.nodes.is_none_or(|n| (1..=9).contains(&n)),
        "--nodes must be between 1 and 9"
    );
    let created = !args.dir.exists();
    std::fs::create_dir_all(args.dir.join("logs"))
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    if created {
        // Ours: it may be entered by the OS user (umask 077 made it 0700).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut notes = Vec::new();
    ensure_token(&dir.join(TOKEN_FILE))?;
    let layout = match recorded(&dir)? {
        None => fresh(&dir, args, &mut notes)?,
        Some(rec) => resumed(&dir, args, rec, &mut notes)?,
    };
    // directories made before agents had a token get it
    for i in 0..layout.nodes {
        add_token_file(&layout.node_conf(i), &layout.token_file())?;
    }
    Ok((layout, notes))
}

fn recorded(dir: &Path) -> anyhow::Result<Option<Recorded>> {
    let first = dir.join("node0.toml");
    if !first.exists() {
        return Ok(None);
    }
    let nodes = (0..)
        .take_while(|i| dir.join(format!("node{i}.toml")).exists())
        .count();
    let agent = config::load(&first)?
        .agent
        .with_context(|| format!("{}: no [agent] section", first.display()))?;
    let proxy = config::load(&dir.join("proxy.toml"))?;
    let mut ports = Vec::new();
    for i in 0..nodes {
        if let Some(a) = config::load(&dir.join(format!("node{i}.toml")))?.agent {
            ports.extend([a.pg_port, a.api_listen.port()]);
        }
    }
    Ok(Some(Recorded {
        ports,
        nodes,
        dcs: agent.dcs,
        os_user: agent.os_user,
        pg_port: agent.pg_port,
        data_root: agent
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.to_path_buf()),
        proxy_port: proxy.proxy.listen.port(),
    }))
}

/// Where a fresh cluster in `dir` keeps its data: in `dir`, unless the OS
/// user that runs PostgreSQL cannot enter it (a checkout in root's 0700
/// home); then under /var/lib/pgwarden, named after `dir`. Nobody's
/// permissions are changed.
fn data_root(dir: &Path, os_user: &str, notes: &mut Vec<String>) -> anyhow::Result<PathBuf> {
    let user = pg::OsUser::for_postgres(os_user)?;
    anyhow::ensure!(
        user.is_none_or(|u| u.uid != 0),
        "--os-user {os_user:?} is root: PostgreSQL refuses to run as root"
    );
    let Some(blocked) = pg::preflight::unreachable_dir(user, dir)? else {
        return Ok(dir.to_path_buf());
    };
    let name = dir
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "-");
    let root = Path::new(SHARED_DATA_ROOT).join(name);
    notes.push(format!(
        "PostgreSQL's data is in {}: the OS user {os_user:?} cannot enter {}",
        root.display(),
        pg::preflight::describe_dir(&blocked)
    ));
    Ok(root)
}

fn fresh(dir: &Path, args: &UpArgs, notes: &mut Vec<String>) -> anyhow::Result<Layout> {
    let os_user = args.os_user.as_deref().unwrap_or(DEFAULT_OS_USER);
    let l = Layout {
        dir: dir.to_path_buf(),
        nodes: args.nodes.unwrap_or(DEFAULT_NODES),
        data_root: data_root(dir, os_user, notes)?,
    };
    let dcs = args
        .dcs
        .clone()
        .unwrap_or_else(|| format!("local://{}", dir.join("dcs").display()));
    let port = args.port.unwrap_or(DEFAULT_PORT);
    write_nodes(&l, 0, &dcs, os_user, args.pg_port, &[port])?;
    std::fs::write(
        l.proxy_conf(),
        format!(
            "# the proxy, written by `pgwarden up`: it follows the DCS leader\n[proxy]\nlisten = \"127.0.0.1:{port}\"\n\
             pool_mode = \"transaction\"\ndefault_pool_size = 20\nadmin_users = [\"postgres\"]\n\
             hba = [\"host all all 127.0.0.1/32 trust\"]\ndcs = \"{dcs}\"\ncluster = \"pgwarden\"\n\
             # read balancing: read-only transactions go to the streaming standbys, and a\n\
             # read sees every write committed through this proxy before it began\n\
             load_balance = true\nread_your_writes_scope = \"cluster\"\n"
        ),
    )?;
    Ok(l)
}

fn resumed(
    dir: &Path,
    args: &UpArgs,
    rec: Recorded,
    notes: &mut Vec<String>,
) -> anyhow::Result<Layout> {
    let refuse =
        |what: &str, given: &dyn std::fmt::Display, had: &dyn std::fmt::Display, why: &str| {
            anyhow::anyhow!(
            "{} holds a cluster created with {what} {had}; {what} {given} cannot be applied to it \
             ({why}). Run without {what} to resume it, or choose a new --dir",
            dir.display(),
        )
        };
    if let Some(d) = args.dcs.as_deref().filter(|d| *d != rec.dcs) {
        return Err(refuse("--dcs", &d, &rec.dcs, "its state lives in that DCS"));
    }
    if let Some(u) = args.os_user.as_deref().filter(|u| *u != rec.os_user) {
        let why = "its data directories belong to that user";
        return Err(refuse("--os-user", &u, &rec.os_user, why));
    }
    if let Some(p) = args.pg_port.filter(|p| *p != rec.pg_port) {
        let why = "its nodes' ports are in their node*.toml files";
        return Err(refuse("--pg-port", &p, &rec.pg_port, why));
    }
    if let Some(n) = args.nodes.filter(|n| *n < rec.nodes) {
        let why = "removing nodes is not supported";
        return Err(refuse("--nodes", &n, &rec.nodes, why));
    }
    let l = Layout {
        dir: dir.to_path_buf(),
        nodes: args.nodes.unwrap_or(rec.nodes),
        data_root: rec.data_root,
    };
    let port = match args.port.filter(|p| *p != rec.proxy_port) {
        Some(p) => {
            set_proxy_port(&l.proxy_conf(), p)?;
            notes.push(format!(
                "the proxy now listens on port {p} (was {}; proxy.toml updated)",
                rec.proxy_port
            ));
            p
        }
        None => rec.proxy_port,
    };
    if l.nodes > rec.nodes {
        let taken: Vec<u16> = rec.ports.iter().copied().chain([port]).collect();
        write_nodes(&l, rec.nodes, &rec.dcs, &rec.os_user, None, &taken)?;
        notes.push(format!(
            "added {} node(s): they clone from the primary",
            l.nodes - rec.nodes
        ));
    }
    Ok(l)
}

/// Free TCP ports from `from` on, not in `taken`.
fn free_ports(from: u16, n: usize, taken: &[u16]) -> Vec<u16> {
    (from..from.saturating_add(2000))
        .filter(|p| !taken.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(n)
        .collect()
}

/// Writes node files `first..l.nodes`, on ports not in `taken`; their data directories must not
/// hold anything yet (a leftover of a deleted `up` directory is not
/// adopted as if it were this cluster's).
fn write_nodes(
    l: &Layout,
    first: usize,
    dcs: &str,
    os_user: &str,
    pg_port: Option<u16>,
    taken: &[u16],
) -> anyhow::Result<()> {
    let n = l.nodes - first;
    for i in first..l.nodes {
        let data = l.data_dir(i);
        if std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{} already holds files (left by an earlier `pgwarden up` whose directory is gone?); \
                 remove it or choose another --dir",
                data.display()
            );
        }
    }
    let mut taken = taken.to_vec();
    let pg_ports = match pg_port {
        Some(p) => (0..n).map(|i| p.saturating_add(i as u16)).collect(),
        None => free_ports(15432, n, &taken),
    };
    taken.extend(&pg_ports);
    let api_ports = free_ports(18008, n, &taken);
    anyhow::ensure!(
        pg_ports.len() == n && api_ports.len() == n,
        "not enough free ports"
    );
    for (k, i) in (first..l.nodes).enumerate() {
        std::fs::write(
            l.node_conf(i),
            format!(
                "# agent for node{i}, written by `pgwarden up`\n[agent]\nname = \"node{i}\"\ncluster = \"pgwarden\"\ndcs = \"{dcs}\"\n\
                 data_dir = \"{}\"\nrun_dir = \"{}\"\nhost = \"127.0.0.1\"\npg_port = {}\napi_listen = \"127.0.0.1:{}\"\nos_user = \"{os_user}\"\n",
                l.data_dir(i).display(),
                l.data_root.join(format!("node{i}.run")).display(),
                pg_ports[k],
                api_ports[k],
            ),
        )?;
    }
    Ok(())
}

/// Writes a fresh random API token (readable by its owner only) unless
/// the file exists.
fn ensure_token(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read /dev/urandom for the API token")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(())
}

/// Sets `api_token_file` in a node file's `[agent]` when it has none.
fn add_token_file(conf: &Path, token: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(conf)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", conf.display()))?;
    let agent = &doc["agent"];
    if agent.get("api_token_file").is_some() || agent.get("api_token").is_some() {
        return Ok(());
    }
    doc["agent"]["api_token_file"] = toml_edit::value(token.display().to_string());
    std::fs::write(conf, doc.to_string())?;
    Ok(())
}

/// Changes `listen` in `[proxy]` of proxy.toml, keeping the rest of the
/// file (comments, the user's own edits) as it is.
fn set_proxy_port(path: &Path, port: u16) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", path.display()))?;
    let host = doc["proxy"]["listen"]
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .map(|(h, _)| h.to_owned())
        .unwrap_or_else(|| "127.0.0.1".into());
    doc["proxy"]["listen"] = toml_edit::value(format!("{host}:{port}"));
    std::fs::write(path, doc.to_string())?;
    config::load(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_port_changes_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("pgw-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("proxy.toml");
        std::fs::write(
            &p,
            "# mine\n[proxy]\nlisten = \"127.0.0.1:6432\" # here\npool_mode = \"session\"\n",
        )
        .unwrap();
        set_proxy_port(&p, 7000).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.contains("listen = \"127.0.0.1:7000\""), "{text}");
        assert!(text.starts_with("# mine\n"), "{text}");
        assert!(text.contains("pool_mode = \"session\""), "{text}");
    }
}
