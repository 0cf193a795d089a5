//! One file per subcommand; [`dispatch`] picks it.

pub mod agents;
pub mod alerts;
pub mod audit;
pub mod backup;
pub mod bench;
pub mod complete;
pub mod configs;
pub mod db;
pub mod doctor;
pub mod health;
pub mod login;
pub mod logs;
pub mod migrate;
pub mod package_upload;
pub mod packages;
pub mod restart;
pub mod restore;
pub mod rollout;
pub mod staged;
pub mod supervisor;
pub mod tokens;
pub mod users;

use crate::cli::{AlertsCmd, Cli, Command};
use crate::client::Client;
use crate::context;
use crate::error::Result;

pub async fn dispatch(cli: Cli) -> Result<()> {
    // These need neither a server nor the config file.
    match &cli.command {
        Command::Completions(args) => return crate::docs::completions(args.shell),
        Command::Man(args) => return crate::docs::man(args.dir.as_deref()),
        Command::Alerts(AlertsCmd::Rules) => return alerts::rules(cli.global.quiet),
        // These choose their context themselves: login may create it.
        Command::Login(args) => return login::login(&cli.global, args).await,
        Command::Logout => return login::logout(&cli.global).await,
        Command::Complete(args) => return complete::run(&cli.global, args.kind).await,
        _ => {}
    }
    let settings = context::resolve(&cli.global)?;
    if settings.servers.len() > 1 && !matches!(cli.command, Command::Bench(_)) {
        return Err(context::several_servers(settings.servers.len()));
    }
    let client = Client::new(&settings)?;
    match cli.command {
        Command::Health(args) => health::run(&settings, &client, &args).await,
        Command::Audit(args) => audit::run(&settings, &client, &args).await,
        Command::Users(command) => users::run(&settings, &client, command).await,
        Command::Tokens(command) => tokens::run(&settings, &client, command).await,
        Command::Agents(args) => agents::run(&settings, &client, args).await,
        Command::Configs(args) => configs::run(&settings, &client, args).await,
        Command::Rollout(args) => rollout::run(&settings, &client, args).await,
        Command::Packages(args) => packages::run(&settings, &client, args).await,
        Command::Backup(args) => backup::run(&settings, &client, &args).await,
        Command::Restore(args) => restore::run(&settings, &client, &args).await,
        Command::Logs(args) => logs::run(&settings, &client, &args).await,
        Command::Restart(args) => restart::run(&settings, &client, &args).await,
        Command::Doctor(args) => doctor::doctor(&settings, &client, &args).await,
        Command::Troubleshoot(t) => doctor::troubleshoot(&settings, &client, t).await,
        Command::Db(d) => db::run(&settings, &client, d).await,
        Command::Bench(args) => bench::run(&settings, &client, &args).await,
        Command::Completions(_)
        | Command::Man(_)
        | Command::Alerts(_)
        | Command::Login(_)
        | Command::Logout
        | Command::Complete(_) => Ok(()),
    }
}
