//! `opampctl tokens list|create|revoke` over `/api/v1/tokens`.

use crate::cli::TokensCmd;
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::Result;
use crate::output;
use comfy_table::Cell;
use opamp_proto::api::{ApiToken, Page, TokenInput};
use reqwest::Method;

pub async fn run(settings: &Settings, client: &Client, command: TokensCmd) -> Result<()> {
    match command {
        TokensCmd::List => {
            let page: Page<ApiToken> = client.get("/api/v1/tokens?limit=1000").await?;
            output::show(settings, &page, |_| table(settings, &page.items))
        }
        TokensCmd::Create {
            name,
            role,
            expires_in_days,
        } => {
            let input = TokenInput {
                name,
                role,
                expires_in_days,
            };
            let (_, token): (_, ApiToken) = client
                .send_json(Method::POST, "/api/v1/tokens", &input)
                .await?;
            if !settings.human() {
                return output::machine(settings, &token);
            }
            // The secret is the answer, shown once: printed also with -q.
            output::out(token.token.as_deref().unwrap_or_default());
            output::info(
                settings,
                format!(
                    "token {} created (id {}, role {}, expires {}): store it now, it is not shown again",
                    token.name,
                    token.id,
                    token.role,
                    token.expires_at.as_deref().unwrap_or("never")
                ),
            );
            Ok(())
        }
        TokensCmd::Revoke { id } => {
            client
                .call(Method::DELETE, &format!("/api/v1/tokens/{}", enc(&id)))
                .await?;
            output::info(settings, format!("token {id} revoked"));
            Ok(())
        }
    }
}

fn table(settings: &Settings, tokens: &[ApiToken]) -> String {
    let mut rows = output::table(
        settings,
        &[
            "ID", "NAME", "ROLE", "OWNER", "CREATED", "EXPIRES", "STATUS",
        ],
    );
    for token in tokens {
        let status = if token.revoked { "revoked" } else { "active" };
        rows.add_row(vec![
            Cell::new(&token.id),
            Cell::new(&token.name),
            Cell::new(&token.role),
            Cell::new(&token.owner),
            Cell::new(&token.created_at),
            Cell::new(token.expires_at.as_deref().unwrap_or("never")),
            output::status_cell(settings, status),
        ]);
    }
    output::render(&rows)
}
