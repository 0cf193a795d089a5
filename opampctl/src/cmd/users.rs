//! `opampctl users list|create|set-role|set-password|delete` over `/api/v1/users`.

use crate::cli::UsersCmd;
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{Page, User, UserInput, UserPatch};
use reqwest::Method;

pub async fn run(settings: &Settings, client: &Client, command: UsersCmd) -> Result<()> {
    match command {
        UsersCmd::List => {
            let page: Page<User> = client.get("/api/v1/users?limit=1000").await?;
            output::show(settings, &page, |_| table(settings, &page.items))
        }
        UsersCmd::Create {
            name,
            role,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let input = UserInput {
                username: name,
                password,
                role,
            };
            let (_, user): (_, User) = client
                .send_json(Method::POST, "/api/v1/users", &input)
                .await?;
            done(
                settings,
                &user,
                format!("user {} created ({})", user.username, user.role),
            )
        }
        UsersCmd::SetRole { name, role } => {
            let patch = UserPatch {
                role: Some(role),
                password: None,
            };
            let user = update(client, &name, &patch).await?;
            done(
                settings,
                &user,
                format!("user {} has the {} role", user.username, user.role),
            )
        }
        UsersCmd::SetPassword {
            name,
            password_stdin,
        } => {
            let patch = UserPatch {
                role: None,
                password: Some(read_password(password_stdin)?),
            };
            let user = update(client, &name, &patch).await?;
            done(
                settings,
                &user,
                format!("password of {} changed", user.username),
            )
        }
        UsersCmd::Delete { name } => {
            client
                .call(Method::DELETE, &format!("/api/v1/users/{}", enc(&name)))
                .await?;
            output::info(
                settings,
                format!("user {name} deleted, their tokens revoked"),
            );
            Ok(())
        }
    }
}

/// The first line of stdin: passwords never go on the command line, where
/// `ps` and the shell history would show them.
pub fn read_password(password_stdin: bool) -> Result<String> {
    if !password_stdin {
        return Err(CtlError::usage(
            "give the password on stdin with --password-stdin (for example from a secret manager: `pass show opampd/alice | opampctl users create alice --role viewer --password-stdin`)",
        ));
    }
    crate::prompt::stdin_line("password", "--password-stdin")
}

async fn update(client: &Client, name: &str, patch: &UserPatch) -> Result<User> {
    let path = format!("/api/v1/users/{}", enc(name));
    let (_, user) = client.send_json(Method::PATCH, &path, patch).await?;
    Ok(user)
}

/// The changed user as JSON/YAML, or a sentence on stderr for people.
fn done(settings: &Settings, user: &User, sentence: String) -> Result<()> {
    if settings.human() {
        output::info(settings, sentence);
        Ok(())
    } else {
        output::machine(settings, user)
    }
}

fn table(settings: &Settings, users: &[User]) -> String {
    let mut rows = output::table(settings, &["USERNAME", "ROLE", "CREATED"]);
    for user in users {
        rows.add_row(vec![
            Cell::new(&user.username),
            Cell::new(&user.role),
            Cell::new(&user.created_at),
        ]);
    }
    output::render(&rows)
}
