//! The commands: each asks an agent (the first that answers) or a given
//! member's agent, waits where the operator expects the result, and prints
//! a table or sentence (JSON with `--json`).
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use ha::status::{ClusterStatus, MemberRole, MemberStatus};
use serde_json::{json, Value};

use crate::client::{Client, CtlError};
use crate::{edit, view, CtlCommand, Ctx};

/// How long `switchover` and `failover` wait for the new leader.
const HANDOVER_WAIT: Duration = Duration::from_secs(90);

impl Ctx {
    /// The first agent that answers `GET path`, and its answer.
    async fn get_any(&self, path: &str) -> Result<(Client, Value), CtlError> {
        let mut last = None;
        for a in &self.apis {
            let c = self.client.at(a);
            match c.get(path).await {
                Ok(v) => return Ok((c, v)),
                Err(e @ CtlError::Api { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| CtlError::Usage("no agent address".into())))
    }

    pub(crate) async fn cluster(&self) -> Result<(Client, ClusterStatus), CtlError> {
        let (c, v) = self.get_any("/cluster").await?;
        let st = serde_json::from_value(v).map_err(|e| CtlError::Http {
            addr: c.addr.clone(),
            message: format!("unexpected /cluster answer: {e}"),
        })?;
        Ok((c, st))
    }

    pub(crate) fn print(&self, text: &str, json: &Value) {
        if self.json {
            println!("{json}");
        } else {
            println!("{text}");
        }
    }
}

pub(crate) fn member<'a>(c: &'a ClusterStatus, name: &str) -> Result<&'a MemberStatus, CtlError> {
    c.members.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = c.members.iter().map(|m| m.name.as_str()).collect();
        CtlError::Usage(format!(
            "{name} is not a member; the members are: {}",
            names.join(", ")
        ))
    })
}

/// Asks before a change, unless `--force`; without a terminal to ask on,
/// `--force` is required.
pub(crate) fn confirm(question: &str, force: bool) -> Result<(), CtlError> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::Usage(format!(
            "{question}: no terminal to confirm on; add --force"
        )));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CtlError::Usage("aborted: nothing changed".into()))
    }
}

pub async fn run(ctx: &Ctx, cmd: CtlCommand) -> Result<(), CtlError> {
    match cmd {
        CtlCommand::List { watch } => list(ctx, watch).await,
        CtlCommand::Switchover {
            from,
            to,
            at,
            force,
        } => switchover(ctx, from, to, at, force).await,
        CtlCommand::Failover { to, force } => failover(ctx, to, force).await,
        CtlCommand::Reinit { member, force } => crate::reinit::reinit(ctx, member, force).await,
        CtlCommand::Restart {
            member,
            pending,
            rolling,
            force,
        } => restart(ctx, member, pending, rolling, force).await,
        CtlCommand::Reload { member } => reload(ctx, member).await,
        CtlCommand::ShowConfig => {
            let (_, v) = ctx.get_any("/config").await?;
            let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
            ctx.print(&pretty, &v);
            Ok(())
        }
        CtlCommand::EditConfig { set, force } => edit_config(ctx, set, force).await,
        CtlCommand::Pause => simple(ctx, "/pause").await,
        CtlCommand::Resume => simple(ctx, "/resume").await,
        CtlCommand::History => {
            let (_, v) = ctx.get_any("/history").await?;
            let entries: Vec<ha::history::Entry> =
                serde_json::from_value(v.clone()).unwrap_or_default();
            ctx.print(&view::history(&entries), &v);
            Ok(())
        }
        CtlCommand::Topology => {
            let (_, c) = ctx.cluster().await?;
            ctx.print(&view::topology(&c), &json!(c));
            Ok(())
        }
    }
}

async fn list(ctx: &Ctx, watch: bool) -> Result<(), CtlError> {
    loop {
        let (_, c) = ctx.cluster().await?;
        if ctx.json {
            println!("{}", json!(c));
        } else {
            if watch {
                // in place: home, clear
                print!("\x1b[H\x1b[2J");
            }
            println!("{}", view::list(&c));
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn switchover(
    ctx: &Ctx,
    from: Option<String>,
    to: Option<String>,
    at: Option<String>,
    force: bool,
) -> Result<(), CtlError> {
    let (client, c) = ctx.cluster().await?;
    let leader = match from.or(c.leader.clone()) {
        Some(l) => l,
        None => {
            return Err(CtlError::Usage(
                "the cluster has no leader: use failover --to MEMBER".into(),
            ))
        }
    };
    if let Some(t) = &to {
        member(&c, t)?;
    }
    let target = to.clone().unwrap_or_else(|| "the best standby".into());
    let when = at
        .as_deref()
        .map(|t| format!(" at {t}"))
        .unwrap_or_default();
    confirm(
        &format!("Switch over from {leader} to {target}{when}?"),
        force,
    )?;
    let mut body = json!({ "leader": leader });
    if let Some(t) = &to {
        body["candidate"] = json!(t);
    }
    if let Some(a) = &at {
        body["scheduled_at"] = json!(a);
    }
    let r = client.call("POST", "/switchover", Some(&body)).await?;
    if at.is_some() {
        ctx.print(r.body["message"].as_str().unwrap_or(""), &r.body);
        return Ok(());
    }
    handover(ctx, &leader, to.as_deref(), "switchover").await
}

async fn failover(ctx: &Ctx, to: String, force: bool) -> Result<(), CtlError> {
    let (client, c) = ctx.cluster().await?;
    member(&c, &to)?;
    let from = c.leader.clone();
    confirm(
        &format!(
            "Fail over to {to}{}?",
            from.as_deref()
                .map(|l| format!(" (the leader {l} steps down)"))
                .unwrap_or_default()
        ),
        force,
    )?;
    client
        .call("POST", "/failover", Some(&json!({ "candidate": to })))
        .await?;
    handover(ctx, from.as_deref().unwrap_or(""), Some(&to), "failover").await
}

/// Waits until another member (`to`, if named) leads, the request gone.
async fn handover(ctx: &Ctx, from: &str, to: Option<&str>, kind: &str) -> Result<(), CtlError> {
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok((_, c)) = ctx.cluster().await {
            let done = c.pending.is_none()
                && c.leader
                    .as_deref()
                    .is_some_and(|l| l != from && to.is_none_or(|t| t == l))
                && c.members
                    .iter()
                    .any(|m| Some(&m.name) == c.leader.as_ref() && m.role == MemberRole::Leader);
            if done {
                let l = c.leader.clone().unwrap_or_default();
                let text = format!(
                    "{kind} done in {:.1}s: {l} is the leader",
                    start.elapsed().as_secs_f64()
                );
                ctx.print(&text, &json!({"leader": l, "message": text}));
                return Ok(());
            }
            if c.pending.is_none()
                && c.leader.as_deref() == Some(from)
                && start.elapsed() > Duration::from_secs(3)
            {
                return Err(CtlError::NotDone(format!(
                    "the {kind} request is gone and {from} still leads: see `pgwarden ctl list` for the members' last actions"
                )));
            }
        }
        if start.elapsed() > HANDOVER_WAIT {
            return Err(CtlError::NotDone(format!(
                "the {kind} did not complete within {HANDOVER_WAIT:?}: see `pgwarden ctl list`"
            )));
        }
    }
}

async fn restart(
    ctx: &Ctx,
    name: Option<String>,
    pending: bool,
    rolling: bool,
    force: bool,
) -> Result<(), CtlError> {
    let (_, c) = ctx.cluster().await?;
    let mut targets: Vec<MemberStatus> = match &name {
        Some(n) => vec![member(&c, n)?.clone()],
        None => c.members.clone(),
    };
    if pending {
        targets.retain(|m| m.pending_restart);
    }
    if targets.is_empty() {
        ctx.print("no member to restart", &json!({"restarted": []}));
        return Ok(());
    }
    // standbys first, the leader last
    targets.sort_by_key(|m| (m.role == MemberRole::Leader, m.name.clone()));
    let names: Vec<&str> = targets.iter().map(|m| m.name.as_str()).collect();
    let how = if rolling {
        " one at a time (the leader after a switchover)"
    } else {
        ""
    };
    confirm(
        &format!("Restart PostgreSQL on {}{how}?", names.join(", ")),
        force,
    )?;
    let mut results = Vec::new();
    for m in targets {
        if rolling && m.role == MemberRole::Leader {
            let r = ctx
                .client
                .at(&m.api_url)
                .call("POST", "/switchover", Some(&json!({ "leader": m.name })))
                .await?;
            if !ctx.json {
                println!("{}: {}", m.name, r.body["message"].as_str().unwrap_or(""));
            }
            handover(ctx, &m.name, None, "switchover").await?;
        }
        let body = json!({ "restart_pending": pending });
        let r = ctx
            .client
            .at(&m.api_url)
            .call("POST", "/restart", Some(&body))
            .await?;
        let msg = r.body["message"].as_str().unwrap_or("").to_owned();
        if !ctx.json {
            println!("{}: {msg}", m.name);
        }
        results.push(json!({"member": m.name, "message": msg}));
        if rolling {
            streaming_again(ctx, &m.name).await?;
        }
    }
    if ctx.json {
        println!("{}", json!({ "restarted": results }));
    }
    Ok(())
}

/// Waits until `name` streams from the leader (or leads) again.
async fn streaming_again(ctx: &Ctx, name: &str) -> Result<(), CtlError> {
    let start = Instant::now();
    loop {
        if let Ok((_, c)) = ctx.cluster().await {
            if c.members.iter().any(|m| {
                m.name == name
                    && (m.state == ha::status::State::Streaming || m.role == MemberRole::Leader)
            }) {
                return Ok(());
            }
        }
        if start.elapsed() > HANDOVER_WAIT {
            return Err(CtlError::NotDone(format!(
                "{name} does not stream again {HANDOVER_WAIT:?} after its restart: see `pgwarden ctl list`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn reload(ctx: &Ctx, name: Option<String>) -> Result<(), CtlError> {
    let (_, c) = ctx.cluster().await?;
    let targets: Vec<&MemberStatus> = match &name {
        Some(n) => vec![member(&c, n)?],
        None => c
            .members
            .iter()
            .filter(|m| m.state != ha::status::State::Stopped)
            .collect(),
    };
    let mut results = Vec::new();
    for m in targets {
        let r = ctx
            .client
            .at(&m.api_url)
            .call("POST", "/reload", None)
            .await?;
        let msg = r.body["message"].as_str().unwrap_or("").to_owned();
        if !ctx.json {
            println!("{}: {msg}", m.name);
        }
        results.push(json!({"member": m.name, "message": msg}));
    }
    if ctx.json {
        println!("{}", json!({ "reloaded": results }));
    }
    Ok(())
}

async fn edit_config(ctx: &Ctx, set: Vec<String>, force: bool) -> Result<(), CtlError> {
    let (client, old) = ctx.get_any("/config").await?;
    let patch = if set.is_empty() {
        let text = serde_json::to_string_pretty(&old).unwrap_or_default();
        let saved = edit::in_editor(&text)?;
        let new: Value = serde_json::from_str(&saved).map_err(|e| {
            CtlError::Usage(format!("the edited configuration is not valid JSON: {e}"))
        })?;
        edit::patch_between(&old, &new)?
    } else {
        edit::patch_from_sets(&set)?
    };
    let lines = edit::describe(&old, &patch);
    if lines.is_empty() {
        ctx.print("nothing changed", &json!({"changed": false}));
        return Ok(());
    }
    if !ctx.json {
        for l in &lines {
            println!("  {l}");
        }
    }
    confirm("Apply these changes?", force)?;
    let r = client.call("PATCH", "/config", Some(&patch)).await?;
    let text = format!(
        "configuration changed ({} line{}); members whose PostgreSQL needs a restart show it in `pgwarden ctl list`",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    ctx.print(&text, &r.body);
    Ok(())
}

async fn simple(ctx: &Ctx, path: &str) -> Result<(), CtlError> {
    let mut last = None;
    for a in &ctx.apis {
        match ctx.client.at(a).call("POST", path, None).await {
            Ok(r) => {
                ctx.print(r.body["message"].as_str().unwrap_or(""), &r.body);
                return Ok(());
            }
            Err(e @ CtlError::Api { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| CtlError::Usage("no agent address".into())))
}
