//! `opampctl __complete agents|configs`: the candidates the completion
//! scripts offer for arguments that name an agent or a configuration, one
//! per line. Quiet by design: when the server cannot be asked (down, no
//! token, bad settings) it prints nothing and succeeds, so a Tab press never
//! prints an error into the command line.

use crate::cli::{CompleteKind, Global};
use crate::client::Client;
use crate::context;
use crate::error::Result;
use opamp_proto::api::{Agent, Configuration, Page};
use std::time::Duration;

/// How long a Tab press may wait for the server.
const PATIENCE: Duration = Duration::from_secs(2);
/// The most agent uids listed.
const MOST: usize = 1000;

pub async fn run(g: &Global, kind: CompleteKind) -> Result<()> {
    let mut global = g.clone();
    global.request_timeout = global.request_timeout.min(PATIENCE);
    let Ok(settings) = context::resolve(&global) else {
        return Ok(());
    };
    let Ok(client) = Client::new(&settings) else {
        return Ok(());
    };
    let names: Vec<String> = match kind {
        CompleteKind::Agents => client
            .get::<Page<Agent>>(&format!("/api/v1/agents?limit={MOST}"))
            .await
            .map(|page| page.items.into_iter().map(|a| a.instance_uid).collect()),
        CompleteKind::Configs => {
            super::configs::list_all::<Configuration>(&client, "/api/v1/configurations")
                .await
                .map(|items| items.into_iter().map(|c| c.name).collect())
        }
    }
    .unwrap_or_default();
    if !names.is_empty() {
        crate::output::out(&names.join("\n"));
    }
    Ok(())
}
