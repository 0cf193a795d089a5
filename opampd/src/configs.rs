//! Rules for configurations: names, content types, bodies, and diffs between
//! versions. Free of I/O; the API applies them before anything is stored.

/// Largest configuration body.
pub const MAX_BODY_BYTES: usize = 4 << 20;
pub const DEFAULT_CONTENT_TYPE: &str = "text/yaml";
const MAX_NAME: usize = 63;
const MAX_DESCRIPTION: usize = 1024;

/// A configuration name becomes a file name in the agent's AgentConfigMap:
/// 1-63 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "configuration name {name:?} is not valid: use 1-{MAX_NAME} characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit (it becomes a file name on the agent)"
        ))
    }
}

/// The content type to store: the given one trimmed, or the default.
pub fn content_type(given: Option<&str>) -> Result<String, String> {
    let ct = given.map(str::trim).unwrap_or("");
    if ct.is_empty() {
        return Ok(DEFAULT_CONTENT_TYPE.to_string());
    }
    let (base, _) = ct.split_once(';').unwrap_or((ct, ""));
    let valid_base = base.trim().split_once('/').is_some_and(|(t, s)| {
        let token = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        };
        token(t) && token(s)
    });
    if ct.len() > 127 || !valid_base || ct.chars().any(|c| c.is_control()) {
        return Err(format!(
            "content_type {ct:?} is not a media type: use e.g. \"text/yaml\" or \"application/json\""
        ));
    }
    Ok(ct.to_string())
}

fn base_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    let b = base_type(content_type);
    b == "application/json" || b == "text/json" || b.ends_with("+json")
}

fn is_yaml(content_type: &str) -> bool {
    matches!(
        base_type(content_type).as_str(),
        "text/yaml" | "application/yaml" | "application/x-yaml" | "text/x-yaml"
    )
}

/// Why a body is refused.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    TooLarge(usize),
    Invalid(String),
}

/// Size limit, and JSON / YAML bodies must parse as what their content type says.
pub fn check_body(content_type: &str, body: &str) -> Result<(), BodyError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(BodyError::TooLarge(body.len()));
    }
    if is_json(content_type) {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(body) {
            return Err(BodyError::Invalid(format!(
                "body is not valid JSON ({e}), but content_type is {content_type:?}: fix the body or set the content_type it has"
            )));
        }
    } else if is_yaml(content_type) {
        for doc in serde_yaml::Deserializer::from_str(body) {
            if let Err(e) = <serde::de::IgnoredAny as serde::Deserialize>::deserialize(doc) {
                return Err(BodyError::Invalid(format!(
                    "body is not valid YAML ({e}), but content_type is {content_type:?}: fix the body or set the content_type it has"
                )));
            }
        }
    }
    Ok(())
}

pub fn check_description(d: &str) -> Result<(), String> {
    if d.len() > MAX_DESCRIPTION || d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(format!(
            "description must be at most {MAX_DESCRIPTION} bytes of text without control characters"
        ));
    }
    Ok(())
}

/// A unified diff (3 lines of context) from one version's body to another's.
pub fn unified_diff(name: &str, from: (u64, &str), to: (u64, &str)) -> String {
    similar::TextDiff::from_lines(from.1, to.1)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{name}@v{}", from.0), &format!("{name}@v{}", to.0))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_file_name_rules() {
        for ok in ["otel", "a", "base.yaml", "team-a_1", "0x", &"a".repeat(63)] {
            assert_eq!(check_name(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "-a",
            ".hidden",
            "_x",
            "Upper",
            "a/b",
            "a b",
            "ü",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_type_defaults_and_must_look_like_a_media_type() {
        assert_eq!(content_type(None).unwrap(), "text/yaml");
        assert_eq!(content_type(Some(" ")).unwrap(), "text/yaml");
        assert_eq!(
            content_type(Some("application/json")).unwrap(),
            "application/json"
        );
        assert_eq!(
            content_type(Some("text/plain; charset=utf-8")).unwrap(),
            "text/plain; charset=utf-8"
        );
        assert!(content_type(Some("yaml")).is_err());
        assert!(content_type(Some("text/")).is_err());
    }

    #[test]
    fn bodies_parse_as_their_content_type() {
        assert_eq!(check_body("application/json", r#"{"a": 1}"#), Ok(()));
        let Err(BodyError::Invalid(m)) = check_body("application/json", "{a: 1}") else {
            panic!("bad JSON accepted")
        };
        assert!(m.contains("line 1 column 2"), "{m}");
        assert_eq!(check_body("text/yaml", "a: 1\nb: [1, 2]\n"), Ok(()));
        assert!(matches!(
            check_body("text/yaml", "a: [1, 2\n"),
            Err(BodyError::Invalid(_))
        ));
        assert_eq!(check_body("text/plain", "{not json"), Ok(()));
        assert_eq!(
            check_body("text/plain", &"x".repeat(MAX_BODY_BYTES + 1)),
            Err(BodyError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }

    #[test]
    fn diff_is_unified_with_version_headers() {
        let d = unified_diff("otel", (1, "a: 1\nb: 2\n"), (2, "a: 1\nb: 3\n"));
        assert_eq!(
            d,
            "--- otel@v1\n+++ otel@v2\n@@ -1,2 +1,2 @@\n a: 1\n-b: 2\n+b: 3\n"
        );
        assert_eq!(unified_diff("otel", (1, "same\n"), (2, "same\n")), "");
    }
}
