//! The package catalogue's rules: names, versions, platforms, file hashes,
//! download URLs and signatures of package versions, checked before
//! anything is stored. The records and the rules of adding are
//! `store::packages` (the SQL is in each backend); the REST handlers
//! `api::packages`; what agents are offered `opamp::packages`; package
//! rollouts [`rollout`].

pub mod hosted;

use std::cmp::Ordering;

pub mod rollout;

/// Longest package name, version, or platform word.
pub const MAX_WORD: usize = 128;
/// Largest signature (a Sigstore bundle is a few KiB).
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;

/// A package name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    check_word("package name", name, &['.', '_', '-'])
}

/// A version such as `0.120.0` or `1.2.3-rc.1+build`.
pub fn check_version(version: &str) -> Result<(), String> {
    check_word("version", version, &['.', '_', '-', '+'])
}

/// An `os` or `arch` word (`linux`, `amd64`, or `any`).
pub fn check_platform(what: &str, word: &str) -> Result<(), String> {
    check_word(what, word, &['_', '-'])?;
    if word.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{what} {word:?} must be lowercase, as agents report it (e.g. linux, amd64)"
        ));
    }
    Ok(())
}

fn check_word(what: &str, word: &str, extra: &[char]) -> Result<(), String> {
    if word.is_empty() || word.len() > MAX_WORD {
        return Err(format!("{what} must be 1 to {MAX_WORD} characters"));
    }
    if !word
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!("{what} {word:?} must start with a letter or digit"));
    }
    if let Some(bad) = word
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(c))
    {
        return Err(format!(
            "{what} {word:?} has {bad:?}; use letters, digits and {}",
            extra
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(())
}

/// A SHA-256 in hex (64 digits, either case) → lowercase hex.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() != 64 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "sha256 {text:?} is not a SHA-256: give 64 hex digits (e.g. from the release's checksums.txt or `sha256sum FILE`)"
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// A download URL: `https://`, or `http://` when `allow_http`.
pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    match parsed.scheme_str().unwrap_or("") {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "url {url:?} is plain http: agents would download a program without TLS; use https, or pass allow_insecure_url (opampctl --allow-http) to accept it"
            ))
        }
        other => {
            return Err(format!(
                "url {url:?} has scheme {other:?}: agents download over https (or http when allowed)"
            ))
        }
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(format!("url {url:?} has no host"));
    }
    Ok(())
}

/// Orders versions as releases do: numeric parts numerically, a release
/// after its pre-releases (`1.0.0-rc.1` < `1.0.0`), build metadata ignored.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &str| {
        let v = v.strip_prefix('v').unwrap_or(v);
        let v = v.split('+').next().unwrap_or(v);
        match v.split_once('-') {
            Some((release, pre)) => (release.to_string(), Some(pre.to_string())),
            None => (v.to_string(), None),
        }
    };
    let (ra, pa) = split(a);
    let (rb, pb) = split(b);
    compare_dotted(&ra, &rb).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => compare_dotted(&x, &y),
    })
}

fn compare_dotted(a: &str, b: &str) -> Ordering {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_as_releases_do() {
        let check = |a, b, want| assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        check("0.120.0", "0.119.0", Ordering::Greater);
        check("0.9.0", "0.10.0", Ordering::Less);
        check("1.0.0-rc.1", "1.0.0", Ordering::Less);
        check("1.0.0-rc.2", "1.0.0-rc.10", Ordering::Less);
        check("v1.2.3", "1.2.3+build.5", Ordering::Equal);
        check("1.2", "1.2.0", Ordering::Less);
    }

    #[test]
    fn bad_input_is_named() {
        assert!(check_name("otelcol-contrib").is_ok());
        assert!(check_name("-x").unwrap_err().contains("start"));
        assert!(check_name("a/b").unwrap_err().contains("'/'"));
        assert!(check_version("0.120.0-rc.1+b").is_ok());
        assert!(check_platform("os", "Linux")
            .unwrap_err()
            .contains("lowercase"));
        assert!(parse_sha256("abc").unwrap_err().contains("64 hex digits"));
        assert_eq!(parse_sha256(&"AB".repeat(32)).unwrap(), "ab".repeat(32));
        assert!(check_url("http://example.com/a", false)
            .unwrap_err()
            .contains("--allow-http"));
        assert!(check_url("http://example.com/a", true).is_ok());
        assert!(check_url("ftp://example.com/a", true).is_err());
        assert!(check_url("https://example.com/a.tar.gz", false).is_ok());
    }
}
