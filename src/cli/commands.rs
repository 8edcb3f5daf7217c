//! One function per command: resolve the registry and library, call the client, print.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::credentials;
use super::output::{self, size};
use super::progress::{took, Bars, Lines, Observed};
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
            remote_edit(g, &name, |r| r.add(&name, &url, keep))?;
            warn_if_silent(g, &url).await;
            Ok(())
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
        Command::DeleteTemplate { yes, vm } => delete_template(g, &vm, yes).await,
        Command::Revert {
            yes,
            tag,
            number,
            vm,
        } => revert(g, &vm, VersionSelector { tag, number }, yes).await,
        Command::SampleVm { size, layers, name } => sample_vm(g, &name, size, layers),
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

/// After `add`: says on stderr when the registry does not answer now (kept all the same:
/// it may not be up yet), and how to try it again.
async fn warn_if_silent(g: &GlobalArgs, url: &str) {
    let Ok(reg) = registry(g) else { return };
    let asked = tokio::time::timeout(std::time::Duration::from_secs(5), reg.instance_id()).await;
    let why = match asked {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    };
    if !g.quiet {
        eprintln!(
            "warning: {url} did not answer ({why}); it is kept as the current registry: check the address, then try `vmreg registry list`"
        );
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
    transfer_with(g, Arc::new(Silent))
}

/// A transfer that shows its progress: bars for a person at a terminal, else a line on
/// stderr every few seconds (a pipe, a CI log), else nothing with `--quiet`; the
/// [`Observed`] tells afterwards whether it resumed.
fn shown_transfer(g: &GlobalArgs, verb: &'static str) -> ClientResult<(Transfer, Arc<Observed>)> {
    let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let shown: Arc<dyn Reporter> = match (g.quiet, terminal && !g.json) {
        (true, _) => Arc::new(Silent),
        (false, true) => Arc::new(Bars::new()),
        (false, false) => Arc::new(Lines::new(verb)),
    };
    let observed = Arc::new(Observed::new(shown));
    Ok((transfer_with(g, observed.clone())?, observed))
}

fn transfer_with(g: &GlobalArgs, reporter: Arc<dyn Reporter>) -> ClientResult<Transfer> {
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
                date(t.last_push),
                date(t.last_pull),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "ID",
            "LATEST TAG",
            "SIZE",
            "ARCH",
            "LAST PUSH",
            "LAST PULL",
        ],
        &rows,
    );
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
    // The listing has the dates; the template's own record does not.
    if let Some(listed) = reg
        .list()
        .await
        .ok()
        .and_then(|all| all.into_iter().find(|t| t.id == detail.id))
    {
        println!(
            "created: {}  last push: {}  last pull: {}",
            date(listed.creation_date),
            date(listed.last_push),
            date(listed.last_pull)
        );
    }
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

/// A listing's date (UTC), or "-" when the registry gave none or it never happened.
fn date(secs: Option<u64>) -> String {
    match secs {
        Some(secs) if secs > 0 => crate::units::utc_minute(secs),
        _ => "-".to_string(),
    }
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
    let sel = VersionSelector {
        tag: tag.clone(),
        number: None,
    };
    let report = match download_size(&t, vm, &sel).await {
        Ok(report) => report,
        Err(e) => return Err(t.registry.explain_missing(vm, tag.as_deref(), e).await),
    };
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

/// A report as JSON with the fields every transfer's has: `elapsed_s` and `resumed`.
fn transfer_json<T: serde::Serialize>(report: &T, elapsed: f64, resumed: bool) -> ClientResult<()> {
    let mut value = serde_json::to_value(report)
        .map_err(|e| ClientError::Invalid(format!("cannot print JSON: {e}")))?;
    if let Some(fields) = value.as_object_mut() {
        fields.insert(
            "elapsed_s".into(),
            json!((elapsed * 1000.0).round() / 1000.0),
        );
        fields.insert("resumed".into(), json!(resumed));
    }
    output::json(&value)
}

async fn push_cmd(g: &GlobalArgs, vm: &str, opts: &PushOptions) -> ClientResult<()> {
    let (t, observed) = shown_transfer(g, "push")?;
    let started = std::time::Instant::now();
    let report = push(&t, vm, opts).await.map_err(resume_hint)?;
    let elapsed = started.elapsed().as_secs_f64();
    // The push's own record of its session says it; its ranges report bytes of this run.
    let resumed = report.resumed;
    drop(observed);
    if g.json {
        return transfer_json(&report, elapsed, resumed);
    }
    println!(
        "pushed {} tag {} (version {}): {} of {} files uploaded, {} sent{}{}",
        report.name,
        report.tag,
        report.number,
        report.uploaded.len(),
        report.files,
        size(report.bytes_sent),
        took(report.bytes_sent, elapsed),
        if resumed { ", resumed" } else { "" }
    );
    Ok(())
}

/// A transfer that failed on the way says that running it again goes on from there.
fn resume_hint(e: ClientError) -> ClientError {
    match e {
        ClientError::Network(m) => ClientError::Network(format!(
            "{m}; run the same command again to resume where it stopped"
        )),
        ClientError::Registry { status, message } if status >= 500 => ClientError::Registry {
            status,
            message: format!("{message}; run the same command again to resume where it stopped"),
        },
        e => e,
    }
}

async fn pull_cmd(g: &GlobalArgs, vm: &str, tag: Option<String>, shrink: bool) -> ClientResult<()> {
    let (t, observed) = shown_transfer(g, "pull")?;
    let started = std::time::Instant::now();
    let selector = VersionSelector {
        tag: tag.clone(),
        number: None,
    };
    let report = match pull(&t, vm, &selector, shrink).await {
        Ok(report) => report,
        Err(e) => {
            let e = t.registry.explain_missing(vm, tag.as_deref(), e).await;
            return Err(resume_hint(e));
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    if g.json {
        return transfer_json(&report, elapsed, observed.resumed());
    }
    println!(
        "pulled {} tag {} (version {}) into {}: {} of {} files downloaded, {} received{}{}",
        report.name,
        report.tag,
        report.number,
        t.library.root().display(),
        report.downloaded.len(),
        report.files,
        size(report.bytes_received),
        took(report.bytes_received, elapsed),
        if observed.resumed() { ", resumed" } else { "" }
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

async fn delete_template(g: &GlobalArgs, vm: &str, yes: bool) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    let tags: Vec<String> = reg
        .template(entry.id)
        .await?
        .versions
        .into_iter()
        .map(|v| v.tag)
        .collect();
    let what = format!(
        "delete template {} ({}) and its {}",
        entry.name,
        entry.id,
        tag_list(&tags)
    );
    confirm(&what, yes)?;
    reg.delete_template(entry.id).await?;
    if g.json {
        return output::json(&json!({
            "id": entry.id, "name": entry.name, "deleted": true, "removed_tags": tags,
        }));
    }
    if !g.quiet {
        println!(
            "deleted template {} ({}) and its {}",
            entry.name,
            entry.id,
            tag_list(&tags)
        );
    }
    Ok(())
}

async fn revert(g: &GlobalArgs, vm: &str, sel: VersionSelector, yes: bool) -> ClientResult<()> {
    let reg = registry(g)?;
    let entry = reg.resolve(vm).await?;
    let before = reg.template(entry.id).await?;
    // The first version removed: the one after the version named, or the latest.
    let first_removed = match (&sel.tag, sel.number) {
        (Some(tag), _) => before
            .versions
            .iter()
            .position(|v| &v.tag == tag)
            .map(|i| i + 1),
        (None, Some(n)) => before
            .versions
            .iter()
            .position(|v| v.number == n)
            .map(|i| i + 1),
        (None, None) => Some(before.versions.len().saturating_sub(1)),
    };
    let Some(first_removed) = first_removed else {
        let which = sel
            .tag
            .clone()
            .map(|t| format!("tag {t:?}"))
            .unwrap_or_else(|| format!("version {:?}", sel.number));
        let tags: Vec<String> = before.versions.iter().map(|v| v.tag.clone()).collect();
        return Err(ClientError::NotFound(format!(
            "template {:?} has no {which}; it has {}",
            entry.name,
            tag_list(&tags)
        )));
    };
    let removed: Vec<String> = before.versions[first_removed..]
        .iter()
        .map(|v| v.tag.clone())
        .collect();
    let last = removed.len() == before.versions.len();
    let what = match last {
        // The vendor's revert of the only tag removes the template with it.
        true => format!(
            "remove the {} of {}: that is every tag, so the template goes too",
            tag_list(&removed),
            entry.name
        ),
        false => format!("remove the {} of {}", tag_list(&removed), entry.name),
    };
    if !removed.is_empty() {
        confirm(&what, yes)?;
    }
    reg.revert(entry.id, &sel).await?;
    let after = reg.template(entry.id).await.ok();
    let remaining: Vec<String> = after
        .map(|t| t.versions.into_iter().map(|v| v.tag).collect())
        .unwrap_or_default();
    if g.json {
        return output::json(&json!({
            "id": entry.id, "name": entry.name, "tags": remaining, "removed_tags": removed,
        }));
    }
    if !g.quiet {
        match remaining.last() {
            Some(latest) => println!(
                "reverted {}: removed {}; latest tag is now {latest}",
                entry.name,
                tag_list(&removed)
            ),
            None => println!(
                "reverted {}: removed {}; no tags left, the template is gone",
                entry.name,
                tag_list(&removed)
            ),
        }
    }
    Ok(())
}

/// "tag v1" or "2 tags: v1, v2" (or "no tags").
fn tag_list(tags: &[String]) -> String {
    match tags {
        [] => "no tags".to_string(),
        [one] => format!("tag {one}"),
        many => format!("{} tags: {}", many.len(), many.join(", ")),
    }
}

/// Asks on the terminal before `what` is done, unless `yes`; without a terminal to ask on
/// refuses, so a script never removes what it did not say it would.
fn confirm(what: &str, yes: bool) -> ClientResult<()> {
    if yes {
        return Ok(());
    }
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal {
        return Err(ClientError::Invalid(format!(
            "this would {what}: rerun with --yes to confirm (there is no terminal to ask on)"
        )));
    }
    eprint!("This will {what}. Go on? [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| ClientError::Invalid(format!("cannot read the answer: {e}")))?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(ClientError::Invalid("nothing was removed".into())),
    }
}

fn sample_vm(g: &GlobalArgs, name: &str, size_bytes: u64, layers: u32) -> ClientResult<()> {
    let lib = library(g)?;
    let made = crate::client::sample::make_sample_vm(&lib, name, size_bytes, layers)?;
    if g.json {
        return output::json(&made);
    }
    if !g.quiet {
        let lib_flag = match &g.lib {
            Some(dir) => format!("--lib {} ", dir.display()),
            None => String::new(),
        };
        println!(
            "made sample VM {} ({}) in {}: {} layer(s), {}; push it with: vmreg registry {lib_flag}push -t v1 {}",
            made.name,
            made.uuid,
            lib.root().display(),
            made.layers.len(),
            size(made.size),
            made.name
        );
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
    let selector = VersionSelector {
        tag: tag.clone(),
        number: None,
    };
    let config = match reg.vm_info(entry.id, &selector).await {
        Ok(config) => config,
        Err(e) => return Err(reg.explain_missing(vm, tag.as_deref(), e).await),
    };
    if g.json {
        return output::json(&config);
    }
    let text = serde_yaml::to_string(&config)
        .map_err(|e| ClientError::Invalid(format!("cannot print the configuration: {e}")))?;
    print!("{text}");
    // The layers the VM stands on, as a comment so the output stays YAML.
    if let Ok(mapping) = serde_yaml::from_str::<serde_yaml::Mapping>(&text) {
        let layers = crate::client::library::referenced(&mapping, crate::model::FileKind::Image);
        if !layers.is_empty() {
            println!("# layer chain, top first: {}", layers.join(" <- "));
        }
    }
    Ok(())
}
