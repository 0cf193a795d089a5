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
use crate::packages::hosted::ReceiveError;
use crate::store::packages::{refusal, FileRow, PackageAdd};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use opamp_proto::api::Package;
use serde::Deserialize;
use std::collections::HashSet;
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
            // Read and drop the body: a client still sending would miss
            // the answer if the connection closed under it.
            let mut stream = body.into_data_stream();
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut stream).await {}
            return Err(refused);
        }
    };
    let received = app
        .hosted
        .receive(body, declared.as_deref())
        .await
        .map_err(|e| match e {
            ReceiveError::TooLarge { limit } => too_large(limit),
            ReceiveError::ShaDiffers { declared, computed } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "sha256_mismatch",
                format!(
                    "the uploaded file's SHA-256 is {computed}, not the declared {declared}: the file is damaged or not the one meant; nothing was kept"
                ),
            ),
            ReceiveError::Body(reason) => {
                ApiError::bad_request(format!("the upload broke off ({reason}); nothing was kept"))
            }
            ReceiveError::Io(e) => ApiError::internal(format!("{e:#}")),
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
    added(&app, outcome?, &name, &version)
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
    let referenced: HashSet<String> = app
        .store
        .packages(None)
        .await?
        .into_iter()
        .flat_map(|p| p.files)
        .filter(|f| f.hosted)
        .map(|f| f.sha256)
        .collect();
    for sha256 in app
        .hosted
        .remove_unreferenced(candidates, &referenced)
        .await
    {
        tracing::info!(sha256 = %sha256, "removed a hosted package file no version lists any more");
    }
    Ok(())
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
