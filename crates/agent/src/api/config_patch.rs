//! `PATCH /config`: a JSON merge patch (RFC 7386) of the cluster's dynamic
//! configuration, validated before anything is written: unknown keys,
//! values of the wrong type, and PostgreSQL parameters the agent manages
//! itself are refused with the key named. (Parameter values are checked
//! by PostgreSQL itself, in `ops.rs`.)
use std::collections::BTreeMap;

use ha::ClusterConfig;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Parameters the agent writes itself: a cluster-wide value would break
/// replication or the agent's own connection.
const MANAGED: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "recovery_target_timeline",
    "hot_standby",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "logging_collector",
];

fn defaults() -> Map<String, Value> {
    match serde_json::to_value(ClusterConfig::default()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The merged configuration, and the parameters whose value changed
/// (name, new value; removals are not listed).
pub fn merge(
    current: &str,
    patch: &Value,
) -> Result<(ClusterConfig, Vec<(String, String)>), ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad(
            "the body must be a JSON object of configuration keys, e.g. {\"ttl_ms\": 10000}",
        ));
    };
    let defaults = defaults();
    let mut merged = match serde_json::from_str::<Value>(current) {
        Ok(Value::Object(m)) => m,
        _ => defaults.clone(),
    };
    let old_params = params_of(&merged);
    for (k, v) in patch {
        if !defaults.contains_key(k) {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            return Err(ApiError::bad(format!(
                "unknown configuration key {k:?}; the keys are: {}",
                known.join(", ")
            ))
            .field(k));
        }
        match (k.as_str(), v) {
            (_, Value::Null) => {
                merged.insert(k.clone(), defaults[k].clone());
            }
            ("parameters", v) => {
                let p = merge_parameters(merged.get("parameters"), v)?;
                merged.insert(k.clone(), Value::Object(p));
            }
            _ => {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    let cc: ClusterConfig = match serde_json::from_value(Value::Object(merged.clone())) {
        Ok(cc) => cc,
        Err(e) => return Err(which_key(patch, &defaults, e)),
    };
    check(&cc)?;
    let changed = cc
        .parameters
        .iter()
        .filter(|(k, v)| old_params.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok((cc, changed))
}

fn params_of(m: &Map<String, Value>) -> BTreeMap<String, String> {
    m.get("parameters")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default()
}

fn merge_parameters(old: Option<&Value>, patch: &Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::bad(
            "parameters must be an object of PostgreSQL parameters, e.g. {\"work_mem\": \"64MB\"}",
        )
        .field("parameters"));
    };
    let mut out = match old {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for (name, v) in patch {
        let field = format!("parameters.{name}");
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !valid_name {
            return Err(ApiError::bad(format!("{name:?} is not a parameter name")).field(field));
        }
        if MANAGED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(ApiError::bad(format!(
                "{name} is set by the agent itself on every node; it cannot be set cluster-wide"
            ))
            .field(field));
        }
        let value = match v {
            Value::Null => {
                out.remove(name);
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
            _ => {
                return Err(ApiError::bad(format!(
                    "{name}: a value must be a string, a number or a boolean (null removes it)"
                ))
                .field(field))
            }
        };
        out.insert(name.clone(), Value::String(value));
    }
    Ok(out)
}

/// The key whose value does not fit, found by applying the patch's keys
/// one at a time to the defaults.
fn which_key(
    patch: &Map<String, Value>,
    defaults: &Map<String, Value>,
    e: serde_json::Error,
) -> ApiError {
    for (k, v) in patch {
        if k == "parameters" || v.is_null() {
            continue;
        }
        let mut one = defaults.clone();
        one.insert(k.clone(), v.clone());
        if let Err(e) = serde_json::from_value::<ClusterConfig>(Value::Object(one)) {
            return ApiError::bad(format!("{k}: {}", strip_position(&e.to_string()))).field(k);
        }
    }
    ApiError::bad(format!("the configuration does not fit: {e}"))
}

fn strip_position(s: &str) -> &str {
    s.split(" at line ").next().unwrap_or(s)
}

fn check(cc: &ClusterConfig) -> Result<(), ApiError> {
    if !(100..=60_000).contains(&cc.loop_wait_ms) {
        return Err(
            ApiError::bad("loop_wait_ms must be between 100 and 60000").field("loop_wait_ms")
        );
    }
    if cc.ttl_ms < cc.loop_wait_ms * 2 || cc.ttl_ms > 3_600_000 {
        return Err(ApiError::bad(format!(
            "ttl_ms must be at least twice loop_wait_ms ({}) and at most 3600000",
            cc.loop_wait_ms
        ))
        .field("ttl_ms"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn current() -> String {
        serde_json::to_string(&ClusterConfig::default()).unwrap()
    }

    #[test]
    fn a_patch_merges_and_lists_changed_parameters() {
        let (cc, changed) = merge(
            &current(),
            &json!({"ttl_ms": 8000, "parameters": {"work_mem": "64MB", "max_connections": 200}}),
        )
        .unwrap();
        assert_eq!(cc.ttl_ms, 8000);
        assert_eq!(cc.parameters["max_connections"], "200");
        assert_eq!(changed.len(), 2);
        let now = serde_json::to_string(&cc).unwrap();
        // the same value again changes nothing; null removes
        let (cc2, changed) = merge(
            &now,
            &json!({"parameters": {"work_mem": "64MB", "max_connections": null}}),
        )
        .unwrap();
        assert!(changed.is_empty());
        assert!(!cc2.parameters.contains_key("max_connections"));
        // null resets a key to its default
        let (cc3, _) = merge(&now, &json!({"ttl_ms": null})).unwrap();
        assert_eq!(cc3.ttl_ms, ClusterConfig::default().ttl_ms);
    }

    #[test]
    fn mistakes_name_their_key() {
        let e = merge(&current(), &json!({"tll_ms": 5})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tll_ms"));
        assert!(
            e.message.contains("unknown configuration key"),
            "{}",
            e.message
        );
        let e = merge(&current(), &json!({"ttl_ms": "ten"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ttl_ms"));
        assert!(
            e.message.starts_with("ttl_ms: invalid type"),
            "{}",
            e.message
        );
        let e = merge(&current(), &json!({"ttl_ms": 1500})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ttl_ms"));
        let e = merge(&current(), &json!({"parameters": {"port": 5}})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("parameters.port"));
        let e = merge(&current(), &json!({"parameters": {"work_mem": [1]}})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("parameters.work_mem"));
        let e = merge(&current(), &json!({"parameters": {"a b": "1"}})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("parameters.a b"));
        assert!(merge(&current(), &json!([1])).is_err());
        assert!(merge(&current(), &json!({"parameters": 3})).is_err());
    }
}
