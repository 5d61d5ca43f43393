//! Durations written as "500ms", "5s", "2m", "1h".
use std::time::Duration;

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number and a unit, e.g. \"5s\"")
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => {
            return Err(format!(
                "invalid duration unit {u:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An optional duration setting that must not be zero, or `default`.
pub(crate) fn positive_duration(
    v: &Option<toml::Spanned<String>>,
    name: &str,
    default: Duration,
) -> Result<Duration, crate::Invalid> {
    let d = duration(v, default)?;
    match v {
        Some(s) if d.is_zero() => Err(crate::Invalid::at(
            s.span(),
            format!("{name} must be longer than 0"),
        )),
        _ => Ok(d),
    }
}

/// An optional duration setting, or `default`.
pub(crate) fn duration(
    v: &Option<toml::Spanned<String>>,
    default: Duration,
) -> Result<Duration, crate::Invalid> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s.get_ref()).map_err(|m| crate::Invalid::at(s.span(), m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400s").is_err());
    }
}
