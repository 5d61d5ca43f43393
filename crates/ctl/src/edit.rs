//! `edit-config`: a patch from `--set key=value` or from the difference
//! between the configuration and what the operator saved in `$EDITOR`,
//! and the lines that show the change before it is applied.
use serde_json::{Map, Value};

use crate::client::CtlError;

/// `--set` values: `key=value` or `parameters.name=value`; the value is
/// read as JSON when it is (numbers, true/false, null), else as a string.
pub fn patch_from_sets(sets: &[String]) -> Result<Value, CtlError> {
    let mut top = Map::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| CtlError::Usage(format!("--set {s:?}: expected KEY=VALUE")))?;
        let value = serde_json::from_str::<Value>(v.trim())
            .ok()
            .filter(|v| !v.is_object() && !v.is_array())
            .unwrap_or_else(|| Value::String(v.to_owned()));
        match k.trim().split_once('.') {
            Some(("parameters", name)) if !name.is_empty() => {
                let p = top
                    .entry("parameters")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = p {
                    // PostgreSQL's values are strings (null removes)
                    let v = match value {
                        Value::Null => Value::Null,
                        Value::String(s) => Value::String(s),
                        other => Value::String(other.to_string()),
                    };
                    m.insert(name.to_owned(), v);
                }
            }
            Some((a, _)) => {
                return Err(CtlError::Usage(format!(
                    "--set {k}: only parameters.NAME may be nested, not {a}"
                )))
            }
            None => {
                top.insert(k.trim().to_owned(), value);
            }
        }
    }
    if top.is_empty() {
        return Err(CtlError::Usage("nothing to set".into()));
    }
    Ok(Value::Object(top))
}

/// The merge patch that turns `old` into `new` (top-level keys, and the
/// parameters one by one; a removed parameter becomes null).
pub fn patch_between(old: &Value, new: &Value) -> Result<Value, CtlError> {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        return Err(CtlError::Usage(
            "the edited configuration must be a JSON object".into(),
        ));
    };
    let mut patch = Map::new();
    for (k, v) in n {
        if k == "parameters" {
            let empty = Map::new();
            let op = o.get(k).and_then(Value::as_object).unwrap_or(&empty);
            let np = v
                .as_object()
                .ok_or_else(|| CtlError::Usage("parameters must be an object".into()))?;
            let mut pp = Map::new();
            for (name, val) in np {
                if op.get(name) != Some(val) {
                    pp.insert(name.clone(), val.clone());
                }
            }
            for name in op.keys().filter(|n| !np.contains_key(*n)) {
                pp.insert(name.clone(), Value::Null);
            }
            if !pp.is_empty() {
                patch.insert(k.clone(), Value::Object(pp));
            }
        } else if o.get(k) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        patch.insert(k.clone(), Value::Null);
    }
    Ok(Value::Object(patch))
}

/// `key: old -> new` lines for a patch against `old`.
pub fn describe(old: &Value, patch: &Value) -> Vec<String> {
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "(unset)".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut out = Vec::new();
    let Value::Object(p) = patch else {
        return out;
    };
    for (k, v) in p {
        match (k.as_str(), v) {
            ("parameters", Value::Object(pp)) => {
                for (name, nv) in pp {
                    let ov = old.get("parameters").and_then(|x| x.get(name));
                    out.push(format!(
                        "parameters.{name}: {} -> {}",
                        show(ov),
                        show(Some(nv))
                    ));
                }
            }
            _ => out.push(format!("{k}: {} -> {}", show(old.get(k)), show(Some(v)))),
        }
    }
    out
}

/// Opens `$EDITOR` (or `vi`) on `text`; returns what was saved.
pub fn in_editor(text: &str) -> Result<String, CtlError> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let path = std::env::temp_dir().join(format!("pgwarden-config-{}.json", std::process::id()));
    std::fs::write(&path, text)
        .map_err(|e| CtlError::Usage(format!("cannot write {}: {e}", path.display())))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let saved = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            return Err(CtlError::Usage(format!(
                "{editor} exited with {s}: nothing changed"
            )))
        }
        Err(e) => return Err(CtlError::Usage(format!("cannot run {editor}: {e}"))),
    }
    saved.map_err(|e| CtlError::Usage(format!("cannot read the edited file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sets_become_a_patch() {
        let p = patch_from_sets(&[
            "ttl_ms=8000".into(),
            "parameters.work_mem=64MB".into(),
            "parameters.max_connections=200".into(),
            "failsafe_mode=true".into(),
            "parameters.x=null".into(),
        ])
        .unwrap();
        assert_eq!(
            p,
            json!({"ttl_ms": 8000, "failsafe_mode": true,
                   "parameters": {"work_mem": "64MB", "max_connections": "200", "x": null}})
        );
        assert!(patch_from_sets(&["nokey".into()]).is_err());
        assert!(patch_from_sets(&["a.b=1".into()]).is_err());
    }

    #[test]
    fn an_edit_becomes_a_patch_and_lines() {
        let old = json!({"ttl_ms": 5000, "loop_wait_ms": 1000, "parameters": {"a": "1", "b": "2"}});
        let new = json!({"ttl_ms": 6000, "loop_wait_ms": 1000, "parameters": {"a": "1", "c": "3"}});
        let p = patch_between(&old, &new).unwrap();
        assert_eq!(
            p,
            json!({"ttl_ms": 6000, "parameters": {"c": "3", "b": null}})
        );
        let lines = describe(&old, &p);
        assert!(
            lines.contains(&"ttl_ms: 5000 -> 6000".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"parameters.b: 2 -> (unset)".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"parameters.c: (unset) -> 3".to_owned()),
            "{lines:?}"
        );
    }
}
