//! `/api/v1/packages…`: the package catalogue. Package versions by
//! reference (URL, SHA-256, signature), checked by `crate::packages` before
//! they are stored (hosted files: `api::package_files`); every change
//! audited in the same transaction. Adding and deleting take the admin
//! role: a package is a program agents run.

use super::configs::parse_body;
use super::{Admin, ApiError, ApiResult, Viewer};
use crate::app::App;
use crate::packages as rules;
use crate::packages::hosted::Hosted;
use crate::store::packages::{AddOutcome, DeleteOutcome, FileRow, PackageAdd, PackageRow};
use crate::store::rfc3339;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use opamp_proto::api::{Package, PackageFile, PackageInput};
use std::sync::Arc;

/// The most files one request may add.
pub const MAX_FILES: usize = 64;

/// A stored version as the API shows it; a hosted file's URL is the one
/// agents download it from.
pub fn to_api(hosted: &Hosted, row: PackageRow, result: Option<&str>) -> Package {
    let name = row.name.clone();
    let version = row.version.clone();
    Package {
        name: row.name,
        version: row.version,
        r#type: if row.top_level { "top_level" } else { "addon" }.into(),
        created_at: rfc3339(row.created_at),
        created_by: row.created_by,
        files: row
            .files
            .into_iter()
            .map(|f| PackageFile {
                url: match f.hosted {
                    true => Some(hosted.url(&name, &version, &f.os, &f.arch)),
                    false => f.url,
                },
                os: f.os,
                arch: f.arch,
                sha256: f.sha256,
                signed: f.signature.as_ref().is_some_and(|s| !s.is_empty()),
                size: f.size,
                hosted: f.hosted,
                created_at: rfc3339(f.created_at),
            })
            .collect(),
        result: result.map(str::to_string),
    }
}

/// Whether `type` names a top-level package (`top_level`, the default) or an addon.
pub(super) fn top_level(kind: Option<&str>) -> ApiResult<bool> {
    match kind.unwrap_or("top_level") {
        "top_level" => Ok(true),
        "addon" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "type {other:?} is not a package type: use top_level (the agent itself) or addon"
        ))),
    }
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

pub async fn create(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Package>)> {
    let input: PackageInput = parse_body(&body, "package", false)?;
    rules::check_name(&input.name).map_err(bad)?;
    rules::check_version(&input.version).map_err(bad)?;
    check_not_shadowed(&input.name, &input.version)?;
    let top_level = top_level(input.r#type.as_deref())?;
    if input.files.is_empty() {
        return Err(bad(
            "files is empty: give at least one {os, arch, url, sha256, signature}".into(),
        ));
    }
    if input.files.len() > MAX_FILES {
        return Err(bad(format!("at most {MAX_FILES} files per request")));
    }
    let mut files = Vec::with_capacity(input.files.len());
    for (index, file) in input.files.iter().enumerate() {
        let at = |e: String| bad(format!("files[{index}]: {e}"));
        rules::check_platform("os", &file.os).map_err(at)?;
        rules::check_platform("arch", &file.arch).map_err(at)?;
        rules::check_url(&file.url, input.allow_insecure_url).map_err(at)?;
        let sha256 = rules::parse_sha256(&file.sha256).map_err(at)?;
        let signature = match parse_signature(file.signature.as_deref().unwrap_or("")).map_err(at)? {
            Some(bytes) => Some(bytes),
            None if input.unsigned => None,
            None => {
                return Err(at(format!(
                    "no signature for {}/{}: give the release's signature (e.g. the .sigstore.json bundle, base64), or pass unsigned (opampctl --unsigned) to accept an unsigned file",
                    file.os, file.arch
                )))
            }
        };
        if files
            .iter()
            .any(|f: &FileRow| f.os == file.os && f.arch == file.arch)
        {
            return Err(at(format!("{}/{} is given twice", file.os, file.arch)));
        }
        files.push(FileRow {
            os: file.os.clone(),
            arch: file.arch.clone(),
            url: Some(file.url.clone()),
            sha256,
            signature,
            size: None,
            hosted: false,
            created_at: 0,
        });
    }
    let outcome = app
        .store
        .add_package(PackageAdd {
            name: input.name.clone(),
            version: input.version.clone(),
            top_level,
            files,
            allow_downgrade: input.allow_downgrade,
            actor: who.name.clone(),
            remote_addr: addr,
        })
        .await?;
    let answer = added(&app, outcome, &input.name, &input.version)?;
    retarget_if_offered(&app, &input.name, &input.version).await?;
    Ok(answer)
}

/// Files added to a version that a package rollout offers (rolled out, or
/// kept by agents not yet released) reach the offers at once, here and on
/// the other replicas: an agent skipped for want of a file for its
/// platform gets the new one.
pub(super) async fn retarget_if_offered(app: &App, name: &str, version: &str) -> ApiResult<()> {
    let offered = app
        .store
        .latest_package_rollout(name)
        .await?
        .is_some_and(|r| {
            r.state != "superseded"
                && (r.version == version || r.previous_version.as_deref() == Some(version))
        });
    if offered {
        crate::rollouts::retarget(app).await?;
    }
    Ok(())
}

/// A signature given as base64 (empty: none) → its bytes, within the limit.
pub(super) fn parse_signature(text: &str) -> Result<Option<Vec<u8>>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("signature is not base64: {e}"))?;
    if bytes.len() > rules::MAX_SIGNATURE_BYTES {
        return Err(format!(
            "signature is {} bytes; the limit is {}",
            bytes.len(),
            rules::MAX_SIGNATURE_BYTES
        ));
    }
    Ok(Some(bytes))
}

/// The answer to adding `name` `version`: the version as stored, or why not.
pub(super) fn added(
    app: &App,
    outcome: AddOutcome,
    name: &str,
    version: &str,
) -> ApiResult<(StatusCode, Json<Package>)> {
    let label = format!("{name} {version}");
    match outcome {
        AddOutcome::Added { package, created } => Ok((
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            Json(to_api(
                &app.hosted,
                package,
                Some(if created { "created" } else { "updated" }),
            )),
        )),
        AddOutcome::TypeDiffers { top_level } => Err(ApiError::conflict(format!(
            "{label} is listed as {}; a version keeps its type",
            if top_level { "top_level" } else { "addon" }
        ))),
        AddOutcome::FileDiffers { os, arch } => Err(ApiError::conflict(format!(
            "{label} already has another file for {os}/{arch}; files of a listed version never change: publish a new version, or delete this one first"
        ))),
        AddOutcome::Downgrade { newest } => Err(ApiError::conflict(format!(
            "{label} is older than {newest}, the newest version listed: pass allow_downgrade (opampctl --allow-downgrade) to list it anyway"
        ))),
    }
}

pub async fn list(State(app): State<Arc<App>>, _viewer: Viewer) -> ApiResult<Json<Vec<Package>>> {
    let rows = app.store.packages(None).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| to_api(&app.hosted, r, None))
            .collect(),
    ))
}

pub async fn versions(
    State(app): State<Arc<App>>,
    _viewer: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Package>>> {
    let rows = app.store.packages(Some(name.clone())).await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("no package {name:?}")));
    }
    Ok(Json(
        rows.into_iter()
            .map(|r| to_api(&app.hosted, r, None))
            .collect(),
    ))
}

pub async fn show(
    State(app): State<Arc<App>>,
    _viewer: Viewer,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Package>> {
    match app.store.package(&name, &version).await? {
        Some(row) => Ok(Json(to_api(&app.hosted, row, None))),
        None => Err(ApiError::not_found(format!(
            "no package {name:?} version {version:?}"
        ))),
    }
}

pub async fn remove(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    // The version's hosted files go with it unless another version names them.
    let _changes = app.hosted.changes.lock().await;
    let hosted: Vec<String> = app
        .store
        .package(&name, &version)
        .await?
        .into_iter()
        .flat_map(|p| p.files)
        .filter(|f| f.hosted)
        .map(|f| f.sha256)
        .collect();
    match app
        .store
        .delete_package(&name, &version, &who.name, addr)
        .await?
    {
        DeleteOutcome::Deleted => {
            super::package_files::remove_unreferenced(&app, &hosted).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::Missing => Err(ApiError::not_found(format!(
            "no package {name:?} version {version:?}"
        ))),
        DeleteOutcome::InRollout(rollout) => {
            let role = if rollout.version == version {
                "rolls it out"
            } else {
                "keeps it on the agents it has not released yet"
            };
            Err(ApiError::conflict(format!(
                "{name} {version} cannot be deleted: rollout {} of {name} {} ({}, selector {:?}) {role}; \
                 let it complete (`opampctl packages rollout resume {name}` if paused), or replace it \
                 with a rollout of another version (`opampctl packages rollout start {name} --version V`), \
                 then delete this version",
                rollout.id, rollout.version, rollout.state, rollout.selector
            )))
        }
    }
}

/// Refuses a name or version that a fixed segment of the route table takes
/// at its place (version `rollout`: `/api/v1/packages/{name}/rollout`), as
/// the version could then never be shown or deleted.
pub(super) fn check_not_shadowed(name: &str, version: &str) -> ApiResult<()> {
    for (what, param, value) in [("name", "{name}", name), ("version", "{version}", version)] {
        if let Some(path) = shadowing(param, value) {
            return Err(ApiError::bad_request(format!(
                "package {what} {value:?} cannot be used: the API has {path} at that place, so the {what} could never be shown or deleted; choose another {what}"
            )));
        }
    }
    Ok(())
}

/// The route whose fixed segment `value` is where the package routes put `param`.
fn shadowing(param: &str, value: &str) -> Option<&'static str> {
    let paths: Vec<&'static str> = super::routes()
        .iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/api/v1/packages/"))
        .collect();
    let split = |p: &'static str| p.split('/').collect::<Vec<_>>();
    let is_param = |segment: &str| segment.starts_with('{');
    for with_param in paths.iter().map(|p| split(p)) {
        let Some(at) = with_param.iter().position(|s| *s == param) else {
            continue;
        };
        for other in &paths {
            let segments = split(other);
            let same_prefix = segments.len() > at
                && segments[..at]
                    .iter()
                    .zip(&with_param[..at])
                    .all(|(a, b)| a == b || (is_param(a) && is_param(b)));
            if same_prefix && segments[at] == value {
                return Some(other);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::check_not_shadowed;

    #[test]
    fn names_and_versions_the_routes_take_are_refused() {
        assert!(check_not_shadowed("otelcol", "rollout").is_err());
        assert!(check_not_shadowed("otelcol", "1.0.0").is_ok());
        assert!(check_not_shadowed("rollout", "1.0.0").is_ok());
        assert!(check_not_shadowed("otelcol", "files").is_ok());
    }
}
