//! What a parsed label selector ([`Selector`]) becomes in PostgreSQL over
//! the `agents` columns (the JSON columns are TEXT, cast to `jsonb` here).

use crate::selector::{Selector, Term, COMPONENT_KEY};

/// A SQL condition over the `agents` columns and its text parameters,
/// numbered from `first_param` (`$N`). Empty for the empty selector.
pub fn condition(selector: &Selector, first_param: usize) -> (String, Vec<String>) {
    let mut conds = Vec::new();
    let mut params: Vec<String> = Vec::new();
    for t in &selector.terms {
        let (Term::Eq(k, _) | Term::Ne(k, _) | Term::Exists(k) | Term::Absent(k)) = t;
        if k == COMPONENT_KEY {
            conds.push(match t {
                Term::Eq(_, v) | Term::Ne(_, v) => {
                    params.push(v.clone());
                    let p = first_param + params.len() - 1;
                    let has = format!(
                        "EXISTS (SELECT 1 FROM component_sets cs \
                         WHERE cs.hash = agents.components_hash AND cs.types::jsonb ? (${p}::text))"
                    );
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
        params.push(k.clone());
        let p = first_param + params.len() - 1;
        let value = format!(
            "COALESCE(labels::jsonb ->> (${p}::text), \
             CASE jsonb_typeof(identifying::jsonb -> (${p}::text)) WHEN 'string' THEN identifying::jsonb ->> (${p}::text) END, \
             CASE jsonb_typeof(non_identifying::jsonb -> (${p}::text)) WHEN 'string' THEN non_identifying::jsonb ->> (${p}::text) END)"
        );
        conds.push(match t {
            Term::Eq(_, v) => {
                params.push(v.clone());
                format!("{value} = (${}::text)", p + 1)
            }
            Term::Ne(_, v) => {
                params.push(v.clone());
                format!("{value} IS DISTINCT FROM (${}::text)", p + 1)
            }
            Term::Exists(_) => format!("{value} IS NOT NULL"),
            Term::Absent(_) => format!("{value} IS NULL"),
        });
    }
    (conds.join(" AND "), params)
}
