//! `opampctl login` and `opampctl logout`: a password login whose session
//! token is kept in a context of the config file, and its end.

use crate::cli::{Global, LoginArgs};
use crate::client::Client;
use crate::context::{self, save_config_file, SessionContext, Settings};
use crate::error::{CtlError, Result};
use crate::{output, prompt};
use opamp_proto::api::{LoginRequest, LoginResponse};
use reqwest::{Method, StatusCode};
use serde_json::json;

pub async fn login(g: &Global, args: &LoginArgs) -> Result<()> {
    let mut session = context::session_context(g)?;
    let mut entry = session.entry().cloned().unwrap_or_default();
    let settings = context::settings_with(g, &entry, None)?;
    let client = Client::new(&settings)?;
    let username = match &args.username {
        Some(name) => name.clone(),
        None => prompt::ask("Username", "--username")?,
    };
    let password = if args.password_stdin {
        prompt::stdin_line("password", "--password-stdin")?
    } else {
        prompt::ask_secret(
            &format!("Password of {username} at {}", settings.server),
            "--password-stdin",
        )?
    };
    let request = client
        .request(Method::POST, "/api/v1/auth/login")
        .json(&LoginRequest {
            username: username.clone(),
            password,
        });
    let response = client.send_any(request).await?;
    if response.status() == StatusCode::UNAUTHORIZED {
        return Err(CtlError::failed(format!(
            "login to {} failed: wrong user name or password for {username:?}; nothing was stored",
            settings.server
        )));
    }
    if !response.status().is_success() {
        return Err(client.error_reply(response).await);
    }
    let session_token: LoginResponse = response.json().await.map_err(|e| {
        CtlError::failed(format!(
            "opampd's reply to the login is not what this opampctl expects ({e})"
        ))
    })?;
    // The token belongs to this server: the context keeps them together.
    entry.server = Some(settings.server.clone());
    if let Some(ca) = &g.ca_file {
        entry.ca_file = Some(std::path::absolute(ca).unwrap_or_else(|_| ca.clone()));
    }
    entry.token = Some(session_token.token.clone());
    session.file.contexts.insert(session.name.clone(), entry);
    if session.file.current_context.is_none() {
        session.file.current_context = Some(session.name.clone());
    }
    save_config_file(&session.path, &session.file)?;
    if settings.human() {
        output::info(
            &settings,
            format!(
                "logged in to {} as {username} ({}) until {}; the session token is stored in context {} of {} (owner-only)",
                settings.server,
                session_token.role,
                session_token.expires_at,
                session.name,
                session.path.display()
            ),
        );
        Ok(())
    } else {
        output::machine(
            &settings,
            &json!({
                "context": session.name,
                "config_file": session.path,
                "server": settings.server,
                "username": username,
                "role": session_token.role,
                "expires_at": session_token.expires_at,
            }),
        )
    }
}

pub async fn logout(g: &Global) -> Result<()> {
    let mut session = context::session_context(g)?;
    let Some(mut entry) = session.entry().cloned() else {
        return not_logged_in(g, &session);
    };
    let Some(token) = entry.token.take() else {
        return not_logged_in(g, &session);
    };
    // The session ends on the server it was opened on, whatever --server says.
    let mut global = g.clone();
    if entry.server.is_some() {
        global.server.clear();
    }
    let settings = context::settings_with(&global, &entry, Some(token))?;
    let client = Client::new(&settings)?;
    let kept = |e: CtlError| CtlError {
        message: format!(
            "{}; the session token stays in context {}",
            e.message, session.name
        ),
        exit: e.exit,
    };
    let response = client
        .send_any(client.request(Method::POST, "/api/v1/auth/logout"))
        .await
        .map_err(kept)?;
    let ended = if response.status().is_success() {
        "ended"
    } else if response.status() == StatusCode::UNAUTHORIZED {
        // Expired, revoked, or the server's key changed: nothing left to end.
        "had already ended"
    } else {
        return Err(kept(client.error_reply(response).await));
    };
    session.file.contexts.insert(session.name.clone(), entry);
    save_config_file(&session.path, &session.file)?;
    report(
        &settings,
        &session,
        ended,
        format!(
            "logged out of {}: the session {ended}; its token is removed from context {} of {}",
            settings.server,
            session.name,
            session.path.display()
        ),
    )
}

fn not_logged_in(g: &Global, session: &SessionContext) -> Result<()> {
    let settings = context::settings_with(g, &Default::default(), None)?;
    report(
        &settings,
        session,
        "none",
        format!(
            "context {} of {} holds no login session: nothing to end",
            session.name,
            session.path.display()
        ),
    )
}

fn report(
    settings: &Settings,
    session: &SessionContext,
    ended: &str,
    sentence: String,
) -> Result<()> {
    if settings.human() {
        output::info(settings, sentence);
        Ok(())
    } else {
        output::machine(
            settings,
            &json!({
                "context": session.name,
                "config_file": session.path,
                "session": ended,
            }),
        )
    }
}
