//! Label selectors: `k=v`, `k!=v`, `k` (present), `!k` (absent); comma means and.
//!
//! A key matches a server-set label first, then the agent's identifying and
//! non-identifying attributes (string values only). The empty selector matches
//! every agent.
//!
//! The key `component` is the agent's available components instead:
//! `component=receivers/otlp` matches an agent whose reported list has a
//! receiver of type `otlp`, `component!=…` one whose list lacks it (or that
//! never reported a list), `component` an agent that reported a list, and
//! `!component` one that never did.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// The selector key that names an available component (`kind/type`).
pub const COMPONENT_KEY: &str = "component";

/// What a selector is matched against: one agent.
pub trait Subject {
    /// The label, else the string attribute, named `key`.
    fn value(&self, key: &str) -> Option<&str>;
    /// Whether the agent's component list has `kind/type`; `None` when it
    /// never reported a list.
    fn has_component(&self, kind_type: &str) -> Option<bool>;
}

/// An agent's labels and attributes only, for code without component lists.
impl Subject for std::collections::BTreeMap<String, String> {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }

    fn has_component(&self, _: &str) -> Option<bool> {
        None
    }
}

/// One agent as selectors see it: labels over string attributes, and the
/// component list it reported.
#[derive(Debug, Clone, Default)]
pub struct AgentView {
    pub values: std::collections::BTreeMap<String, String>,
    pub components: Option<std::sync::Arc<crate::components::ComponentSet>>,
}

impl AgentView {
    /// The view of a stored agent, from its JSON columns: labels over the
    /// string attributes (identifying over non-identifying).
    pub fn stored(
        identifying: &str,
        non_identifying: &str,
        labels: &str,
        components: Option<std::sync::Arc<crate::components::ComponentSet>>,
    ) -> AgentView {
        use crate::store::json;
        let mut values = crate::opamp::session::attr_strings(
            &json::object(identifying),
            &json::object(non_identifying),
        );
        values.extend(json::labels(labels));
        AgentView { values, components }
    }
}

impl Subject for AgentView {
    fn value(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn has_component(&self, kind_type: &str) -> Option<bool> {
        self.components.as_ref().map(|set| set.has(kind_type))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub terms: Vec<Term>,
}

/// A selector that does not parse, with the 1-based character position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad selector at position {}: {}",
            self.position, self.message
        )
    }
}

impl std::error::Error for SelectorError {}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

fn value_char(c: char) -> bool {
    !matches!(c, ',' | '=' | '!') && !c.is_control()
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut terms = Vec::new();
        if input.trim().is_empty() {
            return Ok(Selector { terms });
        }
        let chars: Vec<char> = input.chars().collect();
        let mut i = 0;
        let err = |pos: usize, m: &str| SelectorError {
            position: pos + 1,
            message: m.to_string(),
        };
        loop {
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            let negate = i < chars.len() && chars[i] == '!';
            if negate {
                i += 1;
            }
            let start = i;
            while i < chars.len() && key_char(chars[i]) {
                i += 1;
            }
            if i == start {
                return Err(err(
                    i,
                    if i < chars.len() {
                        "expected a key (letters, digits, '.', '_', '-', '/')"
                    } else {
                        "expected a key after ','"
                    },
                ));
            }
            let key: String = chars[start..i].iter().collect();
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            let term = if negate {
                Term::Absent(key)
            } else if i < chars.len() && (chars[i] == '=' || chars[i] == '!') {
                let ne = chars[i] == '!';
                if ne {
                    if i + 1 >= chars.len() || chars[i + 1] != '=' {
                        return Err(err(i, "expected '!='"));
                    }
                    i += 1;
                }
                i += 1;
                if i < chars.len() && chars[i] == '=' {
                    i += 1; // accept '==' as '='
                }
                let vstart = i;
                while i < chars.len() && value_char(chars[i]) {
                    i += 1;
                }
                let value: String = chars[vstart..i]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_string();
                if value.is_empty() {
                    return Err(err(vstart, "expected a value"));
                }
                if key == COMPONENT_KEY && !crate::components::valid_selector_value(&value) {
                    return Err(err(
                        vstart,
                        &format!("component {value:?}: name it as kind/type, e.g. component=receivers/otlp"),
                    ));
                }
                if ne {
                    Term::Ne(key, value)
                } else {
                    Term::Eq(key, value)
                }
            } else {
                Term::Exists(key)
            };
            terms.push(term);
            if i >= chars.len() {
                break;
            }
            if chars[i] != ',' {
                return Err(err(
                    i,
                    &format!("unexpected {:?}: terms are separated by ','", chars[i]),
                ));
            }
            i += 1;
        }
        Ok(Selector { terms })
    }

    /// Whether `agent` matches.
    pub fn matches(&self, agent: &(impl Subject + ?Sized)) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) if k == COMPONENT_KEY => agent.has_component(v) == Some(true),
            Term::Ne(k, v) if k == COMPONENT_KEY => agent.has_component(v) != Some(true),
            Term::Exists(k) if k == COMPONENT_KEY => agent.has_component("").is_some(),
            Term::Absent(k) if k == COMPONENT_KEY => agent.has_component("").is_none(),
            Term::Eq(k, v) => agent.value(k) == Some(v.as_str()),
            Term::Ne(k, v) => agent.value(k) != Some(v.as_str()),
            Term::Exists(k) => agent.value(k).is_some(),
            Term::Absent(k) => agent.value(k).is_none(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| match t {
                Term::Eq(k, v) => format!("{k}={v}"),
                Term::Ne(k, v) => format!("{k}!={v}"),
                Term::Exists(k) => k.clone(),
                Term::Absent(k) => format!("!{k}"),
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        match Selector::parse(input) {
            Ok(s) => assert_eq!(s.to_string(), expected, "input {input:?}"),
            Err(e) => assert_eq!(e.to_string(), expected, "input {input:?}"),
        }
    }

    #[test]
    fn parses_every_term_kind() {
        check("env=prod", "env=prod");
        check("env!=prod", "env!=prod");
        check("gpu", "gpu");
        check("!gpu", "!gpu");
        check(
            " env = prod , service.name=svc-a ,gpu",
            "env=prod,service.name=svc-a,gpu",
        );
        check("env==prod", "env=prod");
        check("", "");
    }

    #[test]
    fn errors_name_the_position() {
        check("env=", "bad selector at position 5: expected a value");
        check(
            "=prod",
            "bad selector at position 1: expected a key (letters, digits, '.', '_', '-', '/')",
        );
        check(
            "env=prod,",
            "bad selector at position 10: expected a key after ','",
        );
        check(
            "env=a=b",
            "bad selector at position 6: unexpected '=': terms are separated by ','",
        );
        check("env!prod", "bad selector at position 4: expected '!='");
        check(
            "a b",
            "bad selector at position 3: unexpected 'b': terms are separated by ','",
        );
    }

    struct Agent(Option<&'static [&'static str]>);

    impl Subject for Agent {
        fn value(&self, k: &str) -> Option<&str> {
            match k {
                "env" => Some("prod"),
                "gpu" => Some("yes"),
                _ => None,
            }
        }

        fn has_component(&self, kind_type: &str) -> Option<bool> {
            self.0.map(|list| list.contains(&kind_type))
        }
    }

    #[test]
    fn matching_follows_terms() {
        let s = Selector::parse("env=prod,team!=b,gpu,!old").unwrap();
        let agent = Agent(None);
        assert!(s.matches(&agent));
        assert!(!Selector::parse("env=dev").unwrap().matches(&agent));
        assert!(Selector::parse("").unwrap().matches(&agent));
        assert!(!Selector::parse("!gpu").unwrap().matches(&agent));
    }

    #[test]
    fn component_terms_match_the_reported_list() {
        let with = Agent(Some(&["receivers/otlp"]));
        let unknown = Agent(None);
        let check = |sel: &str, agent: &Agent| Selector::parse(sel).unwrap().matches(agent);
        assert!(check("component=receivers/otlp", &with));
        assert!(!check("component=receivers/otlp", &unknown));
        assert!(!check("component=exporters/otlp", &with));
        assert!(check("component!=exporters/otlp", &with));
        assert!(check("component!=exporters/otlp", &unknown));
        assert!(check("component", &with) && !check("component", &unknown));
        assert!(check("!component", &unknown) && !check("!component", &with));
        check_error(
            "env=prod,component=otlp",
            "bad selector at position 20: component \"otlp\": name it as kind/type, e.g. component=receivers/otlp",
        );
    }

    fn check_error(input: &str, expected: &str) {
        assert_eq!(Selector::parse(input).unwrap_err().to_string(), expected);
    }
}
