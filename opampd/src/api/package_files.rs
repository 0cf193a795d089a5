//! `PUT /api/v1/packages/{name}/{version}/files/{os}/{arch}`: a hosted
//! package file, the request body streamed to `packages.dir` (never whole in
//! memory), hashed as it arrives and refused past `packages.max_file_bytes`
//! (413) or when it is not the declared SHA-256; then listed in the
//! catalogue like a file by reference, with opampd's download URL. Admin
//! role, audited. Deleting versions removes the files no version names.
//!
//! Query: `sha256` (the expected SHA-256, hex), `unsigned`, `type`
//! (`top_level` or `addon`), `allow_downgrade`. Header `Package-Signature`:
//! the signature (e.g. the `.sigstore.json` bundle), base64.

use super::packages::{added, parse_signature, top_level};
use super::{Admin, ApiError, ApiResult};
use crate::app::App;
use crate::packages as rules;
use crate::packages::hosted::{OpenError, ReceiveError};
use crate::store::packages::{refusal, FileRow, PackageAdd};
use crate::store::users::AuditEntry;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Json;
use opamp_proto::api::{HostedFile, Package};
use serde::Deserialize;
use std::sync::Arc;

/// The request header carrying an uploaded file's signature (base64).
pub const SIGNATURE_HEADER: &str = "package-signature";

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadParams {
    sha256: Option<String>,
    unsigned: bool,
    r#type: Option<String>,
    allow_downgrade: bool,
}

/// Path of a hosted file: name, version, os, arch.
type FilePath = Path<(String, String, String, String)>;

/// What an upload will add, once its bytes are received.
struct Planned {
    add: PackageAdd,
    declared: Option<String>,
    signature: Option<Vec<u8>>,
}

pub async fn upload(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    Path((name, version, os, arch)): FilePath,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Package>)> {
    let planned = plan(
        &app, &who.name, addr, &name, &version, &os, &arch, &params, &headers,
    )
    .await;
    let Planned {
        mut add,
        declared,
        signature,
    } = match planned {
        Ok(planned) => planned,
        Err(refused) => {
            discard(body).await;
            return Err(refused);
        }
    };
    let received = app
        .hosted
        .receive(body, declared.as_deref())
        .await
        .map_err(|e| {
            receive_refusal(e, |declared, computed| format!(
                "the uploaded file's SHA-256 is {computed}, not the declared {declared}: the file is damaged or not the one meant; nothing was kept"
            ))
        })?;
    add.files.push(FileRow {
        os,
        arch,
        url: None,
        sha256: received.sha256.clone(),
        signature,
        size: Some(received.size),
        hosted: true,
        created_at: 0,
    });
    let sha256 = received.sha256.clone();
    let _changes = app.hosted.changes.lock().await;
    app.hosted.keep(received).await?;
    let outcome = app.store.add_package(add).await;
    let stored = matches!(
        outcome,
        Ok(crate::store::packages::AddOutcome::Added { .. })
    );
    if !stored {
        remove_unreferenced(&app, &[sha256]).await?;
    }
    drop(_changes);
    let answer = added(&app, outcome?, &name, &version)?;
    super::packages::retarget_if_offered(&app, &name, &version).await?;
    Ok(answer)
}

/// Checks an upload's path, query and headers, and refuses a version of
/// the other type or a downgrade, before its bytes are read.
#[allow(clippy::too_many_arguments)]
async fn plan(
    app: &App,
    actor: &str,
    remote_addr: Option<String>,
    name: &str,
    version: &str,
    os: &str,
    arch: &str,
    params: &UploadParams,
    headers: &HeaderMap,
) -> ApiResult<Planned> {
    let bad = ApiError::bad_request;
    rules::check_name(name).map_err(bad)?;
    rules::check_version(version).map_err(bad)?;
    super::packages::check_not_shadowed(name, version)?;
    rules::check_platform("os", os).map_err(bad)?;
    rules::check_platform("arch", arch).map_err(bad)?;
    let top_level = top_level(params.r#type.as_deref())?;
    let declared = params
        .sha256
        .as_deref()
        .map(rules::parse_sha256)
        .transpose()
        .map_err(bad)?;
    let signature = match headers.get(SIGNATURE_HEADER) {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| bad("the Package-Signature header is not base64 text".to_string()))?;
            parse_signature(text).map_err(bad)?
        }
        None => None,
    };
    if signature.is_none() && !params.unsigned {
        return Err(bad(format!(
            "no signature for {os}/{arch}: send the release's signature (e.g. the .sigstore.json bundle) base64 in the Package-Signature header (opampctl --signature-file FILE), or pass unsigned=true (opampctl --unsigned) to accept an unsigned file"
        )));
    }
    let add = PackageAdd {
        name: name.to_string(),
        version: version.to_string(),
        top_level,
        files: Vec::new(),
        allow_downgrade: params.allow_downgrade,
        actor: actor.to_string(),
        remote_addr,
    };
    let existing = app.store.package(name, version).await?;
    let versions: Vec<String> = match &existing {
        Some(_) => Vec::new(),
        None => app
            .store
            .packages(Some(name.to_string()))
            .await?
            .into_iter()
            .map(|row| row.version)
            .collect(),
    };
    if let Some(refused) = refusal(existing.as_ref(), &versions, &add) {
        let _refused_answer = added(app, refused, name, version)?;
    }
    Ok(Planned {
        add,
        declared,
        signature,
    })
}

/// Removes the hosted files of `candidates` (SHA-256s) that no listed
/// version names; call with [`crate::packages::hosted::Hosted::changes`] held.
pub async fn remove_unreferenced(app: &App, candidates: &[String]) -> ApiResult<()> {
    if candidates.is_empty() {
        return Ok(());
    }
    let referenced = crate::packages::hosted::referenced(app).await?;
    for sha256 in app
        .hosted
        .remove_unreferenced(candidates, &referenced)
        .await
    {
        tracing::info!(sha256 = %sha256, "removed a hosted package file no version lists any more");
    }
    Ok(())
}

/// Reads and drops a refused request's body: a client still sending would
/// miss the answer if the connection closed under it.
async fn discard(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut stream).await {}
}

/// The answer to an upload [`crate::packages::hosted::Hosted::receive`]
/// refused; `mismatch` words a SHA-256 that differs (declared, computed).
fn receive_refusal(error: ReceiveError, mismatch: impl FnOnce(&str, &str) -> String) -> ApiError {
    match error {
        ReceiveError::TooLarge { limit } => too_large(limit),
        ReceiveError::ShaDiffers { declared, computed } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "sha256_mismatch",
            mismatch(&declared, &computed),
        ),
        ReceiveError::Body(reason) => {
            ApiError::bad_request(format!("the upload broke off ({reason}); nothing was kept"))
        }
        ReceiveError::Io(e) => ApiError::internal(format!("{e:#}")),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the file is larger than packages.max_file_bytes ({limit} bytes): nothing was kept; raise the setting on the server, or list the file by reference (opampctl packages add --url)"
        ),
    )
}

/// The hosted files the catalogue names, each once, by SHA-256.
pub async fn referenced_files(app: &App) -> ApiResult<Vec<HostedFile>> {
    let mut files: Vec<HostedFile> = app
        .store
        .packages(None)
        .await?
        .into_iter()
        .flat_map(|p| p.files)
        .filter(|f| f.hosted)
        .map(|f| HostedFile {
            sha256: f.sha256,
            size: f.size.unwrap_or(0),
        })
        .collect();
    files.sort();
    files.dedup_by(|a, b| a.sha256 == b.sha256);
    Ok(files)
}

/// `GET /api/v1/admin/packages/files`: every hosted file the catalogue
/// names (what `opampctl backup --with-packages` copies).
pub async fn list_stored(
    State(app): State<Arc<App>>,
    _admin: Admin,
) -> ApiResult<Json<Vec<HostedFile>>> {
    Ok(Json(referenced_files(&app).await?))
}

/// `GET /api/v1/admin/packages/files/{sha256}`: the bytes of a stored
/// file, checked against its SHA-256 first.
pub async fn fetch_stored(
    State(app): State<Arc<App>>,
    _admin: Admin,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    let sha256 = rules::parse_sha256(&sha256).map_err(ApiError::bad_request)?;
    let opened = match app.hosted.open_checked(&sha256).await {
        Ok(opened) => opened,
        Err(OpenError::Missing(path)) => {
            return Err(ApiError::not_found(format!(
                "no stored package file {sha256} (looked for {}): it was deleted, or packages.dir is not the directory it was uploaded to",
                path.display()
            )))
        }
        Err(OpenError::Tampered { path, computed }) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "tampered",
                format!(
                    "the stored package file {} has SHA-256 {computed}, not {sha256}: it was altered on disk; upload it again (opampctl packages upload)",
                    path.display()
                ),
            ))
        }
        Err(OpenError::Io(e)) => return Err(ApiError::internal(format!("{e:#}"))),
    };
    let stream = futures_util::stream::unfold(opened.file, |mut file| async move {
        let mut buffer = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(buffer), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(opened.size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// `PUT /api/v1/admin/packages/files/{sha256}`: puts a stored file back
/// (`opampctl restore` of a backup with its package files). The bytes must
/// have that SHA-256; a file no catalogue entry names is swept after
/// `packages.orphan_grace_seconds` (restore the database too).
pub async fn put_stored(
    State(app): State<Arc<App>>,
    Admin(who, addr): Admin,
    Path(sha256): Path<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<HostedFile>)> {
    let sha256 = match rules::parse_sha256(&sha256) {
        Ok(sha256) => sha256,
        Err(e) => {
            discard(body).await;
            return Err(ApiError::bad_request(e));
        }
    };
    let received = app
        .hosted
        .receive(body, Some(&sha256))
        .await
        .map_err(|e| {
            receive_refusal(e, |declared, computed| format!(
                "the file sent has SHA-256 {computed}, not {declared}: the backup's copy is damaged; nothing was kept"
            ))
        })?;
    let size = received.size;
    {
        let _changes = app.hosted.changes.lock().await;
        app.hosted.keep(received).await?;
    }
    app.store
        .audit(AuditEntry::ok(
            &who.name,
            "package.file.restore",
            Some(&sha256),
            addr.as_deref(),
            serde_json::json!({"size": size}),
        ))
        .await?;
    tracing::info!(sha256 = %sha256, bytes = size, by = %who.name, "a hosted package file was put back");
    Ok((StatusCode::OK, Json(HostedFile { sha256, size })))
}
