//! `opampctl packages upload NAME VERSION FILE --os OS --arch ARCH`: a
//! hosted package file. The file is streamed (never read whole), hashed as
//! it goes so the server's SHA-256 can be checked against the bytes sent,
//! with a progress bar on a terminal.

use super::packages::{path, platform};
use crate::cli::PackagesUploadArgs;
use crate::client::{decode, enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use base64::Engine;
use opamp_proto::api::Package;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The request header carrying the signature (base64).
const SIGNATURE_HEADER: &str = "Package-Signature";

pub async fn run(settings: &Settings, client: &Client, args: &PackagesUploadArgs) -> Result<()> {
    let (os, arch) = match (&args.platform, &args.os, &args.arch) {
        (Some(text), _, _) => platform(text)?,
        (None, Some(os), Some(arch)) => (os.clone(), arch.clone()),
        _ => {
            return Err(CtlError::usage(
                "give the file's platform: --os OS --arch ARCH (or --platform OS/ARCH)",
            ))
        }
    };
    let signature = match &args.signature_file {
        Some(file) => {
            let bytes = std::fs::read(file).map_err(|e| {
                CtlError::usage(format!(
                    "cannot read the signature file {}: {e}",
                    file.display()
                ))
            })?;
            Some(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        None => None,
    };
    let file = tokio::fs::File::open(&args.file).await.map_err(|e| {
        CtlError::usage(format!(
            "cannot read the package file {}: {e}",
            args.file.display()
        ))
    })?;
    let size = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            return Err(CtlError::usage(format!(
                "{} is not a regular file: give the package file to upload",
                args.file.display()
            )))
        }
        Err(e) => {
            return Err(CtlError::usage(format!(
                "cannot read the package file {}: {e}",
                args.file.display()
            )))
        }
    };
    let mut query = vec![format!(
        "type={}",
        if args.addon { "addon" } else { "top_level" }
    )];
    if let Some(sha256) = &args.sha256 {
        query.push(format!("sha256={}", enc(sha256.trim())));
    }
    if args.unsigned {
        query.push("unsigned=true".into());
    }
    if args.allow_downgrade {
        query.push("allow_downgrade=true".into());
    }
    let target = format!(
        "{}/files/{}/{}?{}",
        path(&args.name, &args.version)?,
        enc(&os),
        enc(&arch),
        query.join("&")
    );

    let bar = settings.progress().then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{} {} {os}/{arch}", args.name, args.version));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let sent_sha256 = Arc::new(Mutex::new(None::<String>));
    let body = {
        let bar = bar.clone();
        let sent_sha256 = sent_sha256.clone();
        let state = (file, Sha256::new(), bar, sent_sha256);
        futures_util::stream::unfold(Some(state), |state| async move {
            let (mut file, mut hash, bar, sent) = state?;
            let mut buffer = vec![0u8; 256 * 1024];
            match file.read(&mut buffer).await {
                Ok(0) => {
                    *sent.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(hex::encode(hash.finalize()));
                    None
                }
                Ok(n) => {
                    buffer.truncate(n);
                    hash.update(&buffer);
                    if let Some(bar) = &bar {
                        bar.inc(n as u64);
                    }
                    Some((Ok(buffer), Some((file, hash, bar, sent))))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
    };
    let mut request = client
        .stream_request(Method::PUT, &target)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body));
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    let outcome = client.send(request).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let package: Package = decode(outcome?, &target).await?;
    let stored = package
        .files
        .iter()
        .find(|f| f.os == os && f.arch == arch)
        .ok_or_else(|| {
            CtlError::failed(format!(
                "opampd's reply lists no {os}/{arch} file for {} {}",
                package.name, package.version
            ))
        })?;
    let sent = sent_sha256
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(sent) = sent.filter(|sent| *sent != stored.sha256) {
        return Err(CtlError::failed(format!(
            "opampd stored {os}/{arch} with SHA-256 {} but the bytes sent have {sent}: the file changed during the upload or was altered on the way; upload it again",
            stored.sha256
        )));
    }
    if settings.human() {
        if !settings.quiet {
            output::out(&format!(
                "package/{} {} {}: {os}/{arch} hosted, {} bytes, sha256 {}\nagents download it from {}",
                package.name,
                package.version,
                package.result.as_deref().unwrap_or("updated"),
                stored.size.unwrap_or(size),
                stored.sha256,
                stored.url.as_deref().unwrap_or("?")
            ));
        }
        Ok(())
    } else {
        output::machine(settings, &package)
    }
}
