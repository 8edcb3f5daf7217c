//! One function per command: resolve the registry and library, call the client, print.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::credentials;
use super::output::{self, size};
use super::progress::Bars;
use super::remotes::{config_path, Remotes};
use super::{Command, GlobalArgs, RegistryArgs};
use crate::client::pull::{download_size, pull};
use crate::client::push::{push, PushOptions};
use crate::client::{
    ClientError, ClientResult, Endpoint, Library, RegistryClient, Reporter, Silent, Throttle,
    Transfer, VersionSelector,
};

/// Runs one command.
pub async fn dispatch(args: RegistryArgs) -> ClientResult<()> {
    let g = &args.global;
    match args.command {
        Command::Add { name, url } => {
            let keep = credentials::to_keep(g)?;
            remote_edit(g, &name, |r| r.add(&name, &url, keep))
        }
        Command::Set { name } => remote_edit(g, &name, |r| r.set(&name)),
        Command::Delete { name } => remote_delete(g, &name),
        Command::ListRepos => list_repos(g),
        Command::List => list(g).await,
        Command::Describe { vm } => describe(g, &vm).await,
        Command::CheckDownloadSize { tag, vm } => check_download_size(g, &vm, tag).await,
        Command::Push {
            description,
            tag,
            existing,
            ranges,
            vm,
        } => {
            let opts = PushOptions {
                tag,
                description: description.unwrap_or_default(),
                existing,
                ranges: usize::from(ranges),
            };
            push_cmd(g, &vm, &opts).await
        }
        Command::Pull { tag, shrink, vm } => pull_cmd(g, &vm, tag, shrink).await,
        Command::DeleteTemplate { vm } => delete_template(g, &vm).await,
        Command::Revert { tag, number, vm } => {
            revert(g, &vm, VersionSelector { tag, number }).await
        }
        Command::Info { tag, vm } => info(g, &vm, tag).await,
        Command::SetArch { vm, arch } => set_arch(g, &vm, &arch).await,
    }
}

fn remote_edit(
    g: &GlobalArgs,
    name: &str,
    edit: impl FnOnce(&mut Remotes) -> ClientResult<()>,
) -> ClientResult<()> {
    let path = config_path()?;
    let mut remotes = Remotes::load(&path)?;
    edit(&mut remotes)?;
    remotes.save(&path)?;
    let remote = remotes.get(name)?;
    let (url, auth) = (&remote.url, remote.auth_summary());
    if g.json {
        output::json(&json!({ "name": name, "url": url, "current": true, "auth": auth }))
    } else {
        if !g.quiet {
            println!("current registry: {name} ({url}, credentials: {auth})");
        }
        Ok(())
    }
}

fn remote_delete(g: &GlobalArgs, name: &str) -> ClientResult<()> {
    let path = config_path()?;
    let mut remotes = Remotes::load(&path)?;
    remotes.delete(name)?;
    remotes.save(&path)?;
    if g.json {
        output::json(&json!({ "name": name, "deleted": true }))
    } else {
        if !g.quiet {
            println!("removed registry {name}");
        }
        Ok(())
    }
}

fn list_repos(g: &GlobalArgs) -> ClientResult<()> {
    let remotes = Remotes::load(&config_path()?)?;
    let current = remotes.current.as_deref();
    if g.json {
        let list: Vec<_> = remotes
            .remotes
            .iter()
            .map(|(name, r)| json!({ "name": name, "url": r.url, "current": Some(name.as_str()) == current, "auth": r.auth_summary() }))
            .collect();
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = remotes
        .remotes
        .iter()
        .map(|(name, r)| {
            let mark = if Some(name.as_str()) == current {
                "*"
            } else {
                ""
            };
            vec![
                mark.to_string(),
                name.clone(),
                r.url.clone(),
                r.auth_summary(),
            ]
        })
        .collect();
    output::table(&["", "NAME", "URL", "CREDENTIALS"], &rows);
    Ok(())
}

fn registry(g: &GlobalArgs) -> ClientResult<RegistryClient> {
    let remotes = Remotes::load(&config_path()?)?;
    let (url, remote) = remotes.resolve(g.remote.as_deref(), g.registry_path.as_deref())?;
    let env = |name: &str| std::env::var(name).ok();
    RegistryClient::connect(&Endpoint {
        url,
        cert: g.cert.clone(),
        key: g.key.clone(),
        cacert: g.cacert.clone(),
        insecure: g.insecure,
        credentials: credentials::resolve(g, remote, &env)?,
    })
}

fn library(g: &GlobalArgs) -> ClientResult<Library> {
    if let Some(lib) = &g.lib {
        return Ok(Library::new(lib));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).ok_or_else(|| {
        ClientError::Invalid("no VM library: pass --lib DIR or set VMREG_LIB".into())
    })?;
    let default = if cfg!(target_os = "macos") {
        home.join("Library/Application Support/Veertu/Anka")
    } else {
        home.join(".local/share/vmreg/lib")
    };
    Ok(Library::new(default))
}

fn transfer(g: &GlobalArgs) -> ClientResult<Transfer> {
    // Bars only for a person watching: results stay clean for scripts and pipes.
    let bars =
        !g.quiet && !g.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let reporter: Arc<dyn Reporter> = if bars {
        Arc::new(Bars::new())
    } else {
        Arc::new(Silent)
    };
    Ok(Transfer {
        registry: registry(g)?,
        library: library(g)?,
        concurrency: usize::from(g.concurrency),
        reporter,
        throttle: g.limit_rate.map(|rate| Arc::new(Throttle::new(rate))),
    })
}

async fn list(g: &GlobalArgs) -> ClientResult<()> {
    let reg = registry(g)?;
    let mut templates = reg.list().await?;
    // An older registry's listing lacks the latest tag: ask per template.
    for t in templates.iter_mut().filter(|t| t.latest_tag.is_none()) {
        t.latest_tag = reg
            .template(t.id)
            .await
            .ok()
            .and_then(|d| d.versions.last().map(|v| v.tag.clone()));
    }
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    if g.json {
        return output::json(&templates);
    }
    let rows: Vec<Vec<String>> = templates
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.id.to_string(),
                t.latest_tag.clone().unwrap_or_default(),
                size(t.size),
                t.arch.clone(),
            ]
        })
        .collect();
    output::table(&["NAME", "ID", "LATEST TAG", "SIZE", "ARCH"], &rows);
    Ok(())
}

async fn describe(g: &GlobalArgs, vm: &str) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    let detail = reg.template(entry.id).await?;
    if g.json {
        let versions: Vec<_> = detail
            .versions
            .iter()
            .map(|v| json!({ "number": v.number, "tag": v.tag, "description": v.description, "size": v.size }))
            .collect();
        return output::json(&json!({
            "id": detail.id, "name": detail.name, "arch": detail.arch, "size": detail.size,
            "description": detail.versions.last().map(|v| v.description.clone()).unwrap_or_default(),
            "versions": versions,
        }));
    }
    println!(
        "{} ({})  arch: {}  size: {}",
        detail.name,
        detail.id,
        or_dash(&detail.arch),
        size(detail.size)
    );
    if let Some(latest) = detail.versions.last().filter(|v| !v.description.is_empty()) {
        println!("{}", latest.description);
    }
    let rows: Vec<Vec<String>> = detail
        .versions
        .iter()
        .map(|v| {
            vec![
                v.number.to_string(),
                v.tag.clone(),
                size(v.size),
                v.description.clone(),
            ]
        })
        .collect();
    output::table(&["NUMBER", "TAG", "SIZE", "DESCRIPTION"], &rows);
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

async fn check_download_size(g: &GlobalArgs, vm: &str, tag: Option<String>) -> ClientResult<()> {
    let t = transfer(g)?;
    let sel = VersionSelector { tag, number: None };
    let report = download_size(&t, vm, &sel).await?;
    if g.json {
        return output::json(&report);
    }
    println!(
        "{} tag {}: {} to download ({} bytes) of {} ({} bytes)",
        report.name,
        report.tag,
        size(report.download_size),
        report.download_size,
        size(report.total_size),
        report.total_size
    );
    Ok(())
}

async fn push_cmd(g: &GlobalArgs, vm: &str, opts: &PushOptions) -> ClientResult<()> {
    let t = transfer(g)?;
    let report = push(&t, vm, opts).await?;
    if g.json {
        return output::json(&report);
    }
    println!(
        "pushed {} tag {} (version {}): {} of {} files uploaded, {} sent{}",
        report.name,
        report.tag,
        report.number,
        report.uploaded.len(),
        report.files,
        size(report.bytes_sent),
        if report.resumed { " (resumed)" } else { "" }
    );
    Ok(())
}

async fn pull_cmd(g: &GlobalArgs, vm: &str, tag: Option<String>, shrink: bool) -> ClientResult<()> {
    let t = transfer(g)?;
    let report = pull(&t, vm, &VersionSelector { tag, number: None }, shrink).await?;
    if g.json {
        return output::json(&report);
    }
    println!(
        "pulled {} tag {} (version {}) into {}: {} of {} files downloaded, {} received",
        report.name,
        report.tag,
        report.number,
        t.library.root().display(),
        report.downloaded.len(),
        report.files,
        size(report.bytes_received)
    );
    if !report.removed.is_empty() {
        println!(
            "removed {} file(s) of other tags: {}",
            report.removed.len(),
            report.removed.join(", ")
        );
    }
    Ok(())
}

async fn delete_template(g: &GlobalArgs, vm: &str) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    reg.delete_template(entry.id).await?;
    if g.json {
        return output::json(&json!({ "id": entry.id, "name": entry.name, "deleted": true }));
    }
    if !g.quiet {
        println!("deleted template {} ({})", entry.name, entry.id);
    }
    Ok(())
}

async fn revert(g: &GlobalArgs, vm: &str, sel: VersionSelector) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    let before = reg.template(entry.id).await?;
    let known = match (&sel.tag, sel.number) {
        (Some(tag), _) => before.versions.iter().any(|v| &v.tag == tag),
        (None, Some(n)) => before.versions.iter().any(|v| v.number == n),
        (None, None) => true,
    };
    if !known {
        let which = sel
            .tag
            .clone()
            .map(|t| format!("tag {t:?}"))
            .unwrap_or_else(|| format!("version {:?}", sel.number));
        return Err(ClientError::NotFound(format!(
            "template {:?} has no {which}",
            entry.name
        )));
    }
    reg.revert(entry.id, &sel).await?;
    let after = reg.template(entry.id).await.ok();
    let remaining: Vec<String> = after
        .map(|t| t.versions.into_iter().map(|v| v.tag).collect())
        .unwrap_or_default();
    if g.json {
        return output::json(&json!({ "id": entry.id, "name": entry.name, "tags": remaining }));
    }
    if !g.quiet {
        match remaining.last() {
            Some(latest) => println!("reverted {}: latest tag is now {latest}", entry.name),
            None => println!("reverted {}: no tags left", entry.name),
        }
    }
    Ok(())
}

async fn set_arch(g: &GlobalArgs, vm: &str, arch: &str) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    reg.set_arch(entry.id, arch).await?;
    if g.json {
        return output::json(&json!({ "id": entry.id, "name": entry.name, "arch": arch }));
    }
    if !g.quiet {
        println!("set arch of {} to {arch}", entry.name);
    }
    Ok(())
}

async fn info(g: &GlobalArgs, vm: &str, tag: Option<String>) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    let config = reg
        .vm_info(entry.id, &VersionSelector { tag, number: None })
        .await?;
    if g.json {
        return output::json(&config);
    }
    let text = serde_yaml::to_string(&config)
        .map_err(|e| ClientError::Invalid(format!("cannot print the configuration: {e}")))?;
    print!("{text}");
    Ok(())
}
