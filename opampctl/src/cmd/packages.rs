//! `opampctl packages add|list|show|delete`: the package catalogue
//! (`upload`: `package_upload`); `opampctl packages rollout …` is [`rollout`].

use crate::cli::{PackagesAddArgs, PackagesCmd};
use crate::client::{enc, Client};
use crate::context::Settings;
use crate::error::{CtlError, Result};
use crate::output;
use base64::Engine;
use comfy_table::Cell;
use opamp_proto::api::{Package, PackageFileInput, PackageInput};
use reqwest::Method;

pub mod rollout;

pub async fn run(settings: &Settings, client: &Client, cmd: PackagesCmd) -> Result<()> {
    match cmd {
        PackagesCmd::Add(args) => add(settings, client, &args).await,
        PackagesCmd::Upload(args) => super::package_upload::run(settings, client, &args).await,
        PackagesCmd::List { name } => list(settings, client, name.as_deref()).await,
        PackagesCmd::Show { name, version } => show(settings, client, &name, &version).await,
        PackagesCmd::Delete { name, version } => delete(settings, client, &name, &version).await,
        PackagesCmd::Rollout(cmd) => rollout::run(settings, client, cmd).await,
    }
}

pub(super) fn path(name: &str, version: &str) -> Result<String> {
    if name.trim().is_empty() || version.trim().is_empty() {
        return Err(CtlError::usage(
            "the package name and version must not be empty",
        ));
    }
    Ok(format!("/api/v1/packages/{}/{}", enc(name), enc(version)))
}

/// `OS/ARCH` → (os, arch).
pub(super) fn platform(text: &str) -> Result<(String, String)> {
    match text.split_once('/') {
        Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => {
            Ok((os.to_string(), arch.to_string()))
        }
        _ => Err(CtlError::usage(format!(
            "--platform {text:?} is not OS/ARCH: give e.g. linux/amd64, windows/arm64 or any/any"
        ))),
    }
}

async fn add(settings: &Settings, client: &Client, args: &PackagesAddArgs) -> Result<()> {
    let (os, arch) = platform(&args.platform)?;
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
    let input = PackageInput {
        name: args.name.clone(),
        version: args.version.clone(),
        r#type: Some(if args.addon { "addon" } else { "top_level" }.into()),
        files: vec![PackageFileInput {
            os,
            arch,
            url: args.url.clone(),
            sha256: args.sha256.clone(),
            signature,
        }],
        unsigned: args.unsigned,
        allow_insecure_url: args.allow_http,
        allow_downgrade: args.allow_downgrade,
    };
    let (_, package): (_, Package) = client
        .send_json(Method::POST, "/api/v1/packages", &input)
        .await?;
    if settings.human() {
        if !settings.quiet {
            output::out(&format!(
                "package/{} {} {} ({} file{})",
                package.name,
                package.version,
                package.result.as_deref().unwrap_or("updated"),
                package.files.len(),
                if package.files.len() == 1 { "" } else { "s" }
            ));
        }
        Ok(())
    } else {
        output::machine(settings, &package)
    }
}

fn platforms(package: &Package) -> String {
    package
        .files
        .iter()
        .map(|f| format!("{}/{}", f.os, f.arch))
        .collect::<Vec<_>>()
        .join(",")
}

async fn list(settings: &Settings, client: &Client, name: Option<&str>) -> Result<()> {
    let path = match name {
        Some(name) => format!("/api/v1/packages/{}", enc(name)),
        None => "/api/v1/packages".to_string(),
    };
    let items: Vec<Package> = client.get(&path).await?;
    output::show(settings, &items, |wide| {
        if items.is_empty() {
            return String::new();
        }
        let mut header = vec!["NAME", "VERSION", "TYPE", "PLATFORMS", "CREATED"];
        if wide {
            header.push("BY");
        }
        let mut t = output::table(settings, &header);
        for p in &items {
            let mut row = vec![
                Cell::new(&p.name),
                Cell::new(&p.version),
                Cell::new(&p.r#type),
                Cell::new(platforms(p)),
                Cell::new(output::age(&p.created_at)),
            ];
            if wide {
                row.push(Cell::new(&p.created_by));
            }
            t.add_row(row);
        }
        output::render(&t)
    })
}

async fn show(settings: &Settings, client: &Client, name: &str, version: &str) -> Result<()> {
    let package: Package = client.get(&path(name, version)?).await?;
    output::show(settings, &package, |_| {
        let mut lines = vec![
            format!("name: {}", package.name),
            format!("version: {}", package.version),
            format!("type: {}", package.r#type),
            format!("created: {} by {}", package.created_at, package.created_by),
            "files:".to_string(),
        ];
        let mut t = output::table(settings, &["PLATFORM", "SHA256", "SIGNED", "SOURCE"]);
        for f in &package.files {
            t.add_row(vec![
                Cell::new(format!("{}/{}", f.os, f.arch)),
                Cell::new(&f.sha256),
                Cell::new(if f.signed { "yes" } else { "no" }),
                Cell::new(if f.hosted {
                    "hosted".to_string()
                } else {
                    f.url.clone().unwrap_or_default()
                }),
            ]);
        }
        lines.push(output::render(&t));
        lines.join("\n")
    })
}

async fn delete(settings: &Settings, client: &Client, name: &str, version: &str) -> Result<()> {
    client.call(Method::DELETE, &path(name, version)?).await?;
    if settings.human() {
        output::info(settings, format!("package/{name} {version} deleted"));
        Ok(())
    } else {
        output::machine(
            settings,
            &serde_json::json!({"name": name, "version": version, "deleted": true}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_are_os_slash_arch() {
        assert_eq!(
            platform("linux/amd64").unwrap(),
            ("linux".to_string(), "amd64".to_string())
        );
        for bad in ["linux", "/amd64", "linux/", "a/b/c"] {
            assert!(platform(bad).is_err(), "{bad}");
        }
    }
}
