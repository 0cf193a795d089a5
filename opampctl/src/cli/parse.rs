//! Parsers of flag values: durations, rates, ages and token lifetimes.

use std::time::Duration;

/// Parses a rate: `2000/s`, `600/m` or a plain number per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, per) = match t.split_once('/') {
        Some((n, u)) => (n.trim(), u.trim()),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate: use e.g. 2000/s or 600/m"))?;
    let per_s = match per {
        "s" => n,
        "m" => n / 60.0,
        _ => return Err(format!("{s:?} has an unknown unit {per:?}: use /s or /m")),
    };
    if !per_s.is_finite() || per_s <= 0.0 {
        return Err(format!("{s:?} is not a rate above 0"));
    }
    Ok(per_s)
}

/// Parses `30s`, `5m`, `1h`, `500ms` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30s, 5m, 1h or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit {unit:?}: use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--since`: an RFC 3339 time as it is, or an age (`30m`, `2h`, `7d`) as the time that long ago.
pub fn parse_since(text: &str) -> std::result::Result<String, String> {
    if chrono::DateTime::parse_from_rfc3339(text).is_ok() {
        return Ok(text.to_string());
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds = match (number.parse::<i64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n * 60,
        (Ok(n), "h") => n * 3600,
        (Ok(n), "d") => n * 86400,
        _ => {
            return Err(format!(
            "{text:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor an age (30m, 2h, 7d)"
        ))
        }
    };
    let at = chrono::Utc::now() - chrono::Duration::seconds(seconds);
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `--expires-in-days`: 1-3650 days, or `never`.
pub fn parse_lifetime(text: &str) -> std::result::Result<opamp_proto::api::TokenLifetime, String> {
    use opamp_proto::api::{NeverExpires, TokenLifetime};
    if text == "never" {
        return Ok(TokenLifetime::Never(NeverExpires::Never));
    }
    match text.parse::<u64>() {
        Ok(days) if (1..=3650).contains(&days) => Ok(TokenLifetime::Days(days)),
        _ => Err(format!(
            "{text:?} is neither a number of days from 1 to 3650 nor `never`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("600/m"), Ok(10.0));
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/h").unwrap_err().contains("unknown unit"));
    }
}
