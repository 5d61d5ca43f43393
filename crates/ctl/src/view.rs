//! The tables `list`, `history` and `topology` print.
use ha::history::Entry;
use ha::status::{ClusterStatus, MemberRole};

use crate::table::Table;

fn mb(bytes: u64) -> String {
    let v = bytes as f64 / (1024.0 * 1024.0);
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.1}")
    }
}

pub fn list(c: &ClusterStatus) -> String {
    let title = format!(
        "Cluster (leader {}, epoch {})",
        c.leader.as_deref().unwrap_or("none"),
        c.epoch.map(|e| e.to_string()).unwrap_or_else(|| "-".into())
    );
    let mut t = Table::new(
        title,
        &[
            "Member",
            "Host",
            "Role",
            "State",
            "TL",
            "Lag in MB",
            "Pending restart",
            "Tags",
        ],
    );
    let mut members = c.members.clone();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    for m in &members {
        let lag = match (m.role, m.lag) {
            (MemberRole::Leader, _) => String::new(),
            (_, Some(l)) => mb(l),
            (_, None) => "unknown".into(),
        };
        let mut tags = Vec::new();
        if m.tags.nofailover {
            tags.push("nofailover: true".to_owned());
        }
        if m.tags.priority != 0 {
            tags.push(format!("priority: {}", m.tags.priority));
        }
        t.row(vec![
            m.name.clone(),
            format!("{}:{}", m.host, m.port),
            m.role.to_string(),
            m.state.to_string(),
            m.timeline.to_string(),
            lag,
            if m.pending_restart { "*" } else { "" }.into(),
            tags.join(", "),
        ]);
    }
    let mut out = t.render();
    if !c.proxies.proxies.is_empty() {
        out.push('\n');
        out.push_str(&proxies(&c.proxies));
    }
    if c.paused {
        out.push_str("\n Maintenance mode: on (no automatic failover)");
    }
    if let Some(p) = &c.pending {
        out.push_str(&format!(
            "\n Pending {}: {} -> {}{}",
            p.kind(),
            p.leader.as_deref().unwrap_or("(any leader)"),
            p.target().unwrap_or("(the best standby)"),
            p.scheduled_at_ms
                .map(|t| format!(" at {}", ha::time::format_rfc3339(t)))
                .unwrap_or_default()
        ));
    }
    out
}

/// The proxies registered in the DCS, and who holds the virtual IP.
fn proxies(p: &ha::proxy::Proxies) -> String {
    let vip = p.proxies.iter().find_map(|r| r.vip.clone());
    let title = match (&vip, &p.vip_holder) {
        (Some(v), Some(h)) => format!("Proxies (virtual IP {v} on {h})"),
        (Some(v), None) => format!("Proxies (virtual IP {v} held by none)"),
        _ => "Proxies".to_owned(),
    };
    let mut t = Table::new(
        title,
        &[
            "Proxy",
            "Listen",
            "State",
            "Clients",
            "Primary",
            "Reaches primary",
        ],
    );
    for r in &p.proxies {
        t.row(vec![
            r.name.clone(),
            r.listen.clone(),
            r.state.to_string(),
            r.clients.to_string(),
            r.primary.clone().unwrap_or_default(),
            if r.primary_reachable { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

pub fn history(entries: &[Entry]) -> String {
    let mut t = Table::new(
        "History",
        &["Time (UTC)", "Event", "From", "To / member", "TL", "Reason"],
    );
    for e in entries {
        t.row(vec![
            ha::time::format_rfc3339(e.at_ms),
            e.kind.to_string(),
            e.from.clone().unwrap_or_default(),
            e.new_leader
                .clone()
                .or_else(|| e.member.clone())
                .unwrap_or_default(),
            e.timeline.map(|t| t.to_string()).unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

pub fn topology(c: &ClusterStatus) -> String {
    let mut t = Table::new(
        "Topology",
        &["Member", "Host", "Role", "State", "TL", "Lag in MB"],
    );
    let row = |m: &ha::status::MemberStatus, indent: &str| {
        vec![
            format!("{indent}{}", m.name),
            format!("{}:{}", m.host, m.port),
            m.role.to_string(),
            m.state.to_string(),
            m.timeline.to_string(),
            m.lag.map(mb).unwrap_or_default(),
        ]
    };
    let leader = c
        .members
        .iter()
        .find(|m| Some(&m.name) == c.leader.as_ref());
    let mut rest: Vec<_> = c
        .members
        .iter()
        .filter(|m| Some(&m.name) != c.leader.as_ref())
        .collect();
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    match leader {
        Some(l) => {
            t.row(row(l, ""));
            for m in rest {
                t.row(row(m, "+ "));
            }
        }
        None => rest.into_iter().for_each(|m| t.row(row(m, "? "))),
    }
    t.render()
}
