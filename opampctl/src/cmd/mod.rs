//! One file per subcommand; [`dispatch`] picks it.

pub mod agents;
pub mod alerts;
pub mod backup;
pub mod bench;
pub mod configs;
pub mod db;
pub mod doctor;
pub mod health;
pub mod logs;
pub mod restart;
pub mod restore;
pub mod rollout;
pub mod supervisor;

use crate::cli::{AlertsCmd, Cli, Command};
use crate::client::Client;
use crate::context;
use crate::error::Result;

pub async fn dispatch(cli: Cli) -> Result<()> {
    // These need neither a server nor the config file.
    match &cli.command {
        Command::Completions(a) => return crate::docs::completions(a.shell),
        Command::Man(a) => return crate::docs::man(a.dir.as_deref()),
        Command::Alerts(AlertsCmd::Rules) => return alerts::rules(),
        _ => {}
    }
    let s = context::resolve(&cli.global)?;
    let c = Client::new(&s)?;
    match cli.command {
        Command::Health(a) => health::run(&s, &c, &a).await,
        Command::Agents(a) => agents::run(&s, &c, a).await,
        Command::Configs(a) => configs::run(&s, &c, a).await,
        Command::Rollout(a) => rollout::run(&s, &c, a).await,
        Command::Backup(a) => backup::run(&s, &c, &a).await,
        Command::Restore(a) => restore::run(&s, &c, &a).await,
        Command::Logs(a) => logs::run(&s, &c, &a).await,
        Command::Restart(a) => restart::run(&s, &c, &a).await,
        Command::Doctor(a) => doctor::doctor(&s, &c, &a).await,
        Command::Troubleshoot(t) => doctor::troubleshoot(&s, &c, t).await,
        Command::Db(d) => db::run(&s, &c, d).await,
        Command::Bench(a) => bench::run(&s, &c, &a).await,
        Command::Completions(_) | Command::Man(_) | Command::Alerts(_) => Ok(()),
    }
}
