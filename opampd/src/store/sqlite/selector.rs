//! What a parsed label selector ([`Selector`]) becomes in SQL over the
//! `agents` columns.

use crate::selector::{Selector, Term, COMPONENT_KEY};

/// A SQL condition over the `agents` columns and its parameters, which are
/// numbered from `first_param` (1-based, as `?N`). Empty for the empty
/// selector.
pub fn condition(selector: &Selector, first_param: usize) -> (String, Vec<String>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    for t in &selector.terms {
        let (Term::Eq(k, _) | Term::Ne(k, _) | Term::Exists(k) | Term::Absent(k)) = t;
        if k == COMPONENT_KEY {
            conds.push(match t {
                Term::Eq(_, v) | Term::Ne(_, v) => {
                    params.push(v.clone());
                    let has = super::components::has_component_sql(first_param + params.len() - 1);
                    if matches!(t, Term::Eq(..)) {
                        has
                    } else {
                        format!("NOT {has}")
                    }
                }
                Term::Exists(_) => "components_hash IS NOT NULL".to_string(),
                Term::Absent(_) => "components_hash IS NULL".to_string(),
            });
            continue;
        }
        params.push(json_path(k));
        let p = first_param + params.len() - 1;
        let value = format!(
            "COALESCE(json_extract(labels, ?{p}), \
             CASE json_type(identifying, ?{p}) WHEN 'text' THEN json_extract(identifying, ?{p}) END, \
             CASE json_type(non_identifying, ?{p}) WHEN 'text' THEN json_extract(non_identifying, ?{p}) END)"
        );
        conds.push(match t {
            Term::Eq(_, v) => {
                params.push(v.clone());
                format!("{value} = ?{}", p + 1)
            }
            Term::Ne(_, v) => {
                params.push(v.clone());
                format!("{value} IS NOT ?{}", p + 1)
            }
            Term::Exists(_) => format!("{value} IS NOT NULL"),
            Term::Absent(_) => format!("{value} IS NULL"),
        });
    }
    (conds.join(" AND "), params)
}

fn json_path(key: &str) -> String {
    format!("$.\"{key}\"")
}
