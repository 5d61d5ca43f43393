//! `pgwarden ctl reinit M`: rebuilds a standby from the leader, with a
//! progress bar fed by the member's `GET /reinitialize` (pg_basebackup's
//! own `--progress` figures) while its `POST /reinitialize` runs.
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::commands::{confirm, member};
use crate::Ctx;

/// How long a reinitialization may take before ctl stops waiting for it
/// (the member goes on; `ctl list` shows it).
const REINIT_WAIT: Duration = Duration::from_secs(3600);

pub(crate) async fn reinit(ctx: &Ctx, name: String, force: bool) -> Result<(), CtlError> {
    let (_, c) = ctx.cluster().await?;
    let m = member(&c, &name)?;
    if c.leader.as_deref() == Some(name.as_str()) {
        return Err(CtlError::Usage(format!(
            "{name} is the leader: a primary cannot be reinitialized; switch over first"
        )));
    }
    confirm(
        &format!("Rebuild {name} from the leader? Its data is replaced."),
        force,
    )?;
    let agent = ctx.client.at(&m.api_url);
    let post = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.call("POST", "/reinitialize", None).await })
    };
    let bar = (!ctx.json).then(|| {
        let b = ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(200));
        b.set_message(format!("{name}: waiting for the copy to start"));
        b
    });
    let result = follow(&agent, post, bar.as_ref()).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let (message, body) = result?;
    ctx.print(&format!("{name}: {message}"), &body);
    Ok(())
}

/// Polls the member's progress until the POST answers (or, answered 202,
/// until the member reports the outcome).
async fn follow(
    agent: &Client,
    mut post: tokio::task::JoinHandle<Result<crate::Reply, CtlError>>,
    bar: Option<&ProgressBar>,
) -> Result<(String, Value), CtlError> {
    let start = Instant::now();
    let mut answered_202 = false;
    let mut started = false;
    loop {
        if !answered_202 {
            tokio::select! {
                r = &mut post => {
                    let r = r.map_err(|e| CtlError::NotDone(e.to_string()))??;
                    if r.status != 202 {
                        let m = r.body["message"].as_str().unwrap_or("").to_owned();
                        return Ok((m, r.body));
                    }
                    answered_202 = true;
                }
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let Ok(p) = agent.get("/reinitialize").await else {
            continue;
        };
        let copying = p["copying"].as_bool().unwrap_or(false);
        let queued = p["queued"].as_bool().unwrap_or(false);
        started |= copying || queued;
        if let Some(b) = bar {
            let total = p["total_kb"].as_u64().unwrap_or(0) * 1024;
            if total > 0 {
                if b.length().is_none() {
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    b.set_message("copying from the leader");
                }
                b.set_length(total);
                b.set_position(p["done_kb"].as_u64().unwrap_or(0) * 1024);
            }
            if !copying && started {
                b.set_message("starting as a standby");
            }
        }
        if answered_202 && started && !copying && !queued {
            if let Some(ok) = p["last_ok"].as_bool() {
                let m = p["last_message"].as_str().unwrap_or("").to_owned();
                return match ok {
                    true => Ok((m, p)),
                    false => Err(CtlError::NotDone(m)),
                };
            }
        }
        if start.elapsed() > REINIT_WAIT {
            return Err(CtlError::NotDone(format!(
                "the reinitialization did not complete within {REINIT_WAIT:?}: see `pgwarden ctl list`"
            )));
        }
    }
}
