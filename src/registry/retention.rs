//! Retention: removing the tags a policy no longer wants, registry-wide or per template.
//!
//! A policy keeps a template's last N tags, and the tags pulled or pushed within a window;
//! given both, a tag goes only when neither keeps it. The template's latest tag is always
//! kept unless the policy includes it. Tags are removed as [`Registry::remove_versions`]
//! does (the path a revert's removal takes: files released by reference count, manifests
//! before files), the rest renumbered densely.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::pulls::TagPulls;
use super::{Registry, RegistryError, RegistryResult};
use crate::meta::keys;
use crate::model::{self, Template, Version};

/// What a template keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest this many tags.
    pub keep_last: Option<u32>,
    /// Keep the tags pulled or pushed within this long.
    pub unused_for: Option<Duration>,
    /// The latest tag may go too.
    pub include_latest: bool,
}

impl RetentionPolicy {
    /// A policy that keeps everything (no rule given).
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none() && self.unused_for.is_none()
    }

    /// The versions of `template` this policy removes, oldest first, given each tag's
    /// latest pull and the time `now` (epoch seconds).
    pub fn choose<'a>(
        &self,
        template: &'a Template,
        pulls: &TagPulls,
        now: u64,
    ) -> Vec<&'a Version> {
        if self.is_empty() {
            return Vec::new();
        }
        let count = template.versions.len();
        let recent_from = self.keep_last.map(|n| count.saturating_sub(n as usize));
        template
            .versions
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                let latest = i + 1 == count;
                let kept_by_count = recent_from.is_some_and(|from| *i >= from);
                let kept_by_use = self.unused_for.is_some_and(|window| {
                    now.saturating_sub(last_used(v, pulls)) < window.as_secs()
                });
                !(kept_by_count || kept_by_use || (latest && !self.include_latest))
            })
            .map(|(_, v)| v)
            .collect()
    }
}

/// Epoch seconds of a version's latest pull or its push, whichever is later.
fn last_used(version: &Version, pulls: &TagPulls) -> u64 {
    pulls
        .get(&version.tag)
        .copied()
        .unwrap_or(0)
        .max(version.created)
}

/// The configured policies: one registry-wide, and overrides by template name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    /// For templates without an override.
    pub default: RetentionPolicy,
    /// By template name; an override replaces the registry-wide policy whole (an empty
    /// one exempts its template).
    pub templates: BTreeMap<String, RetentionPolicy>,
}

impl RetentionConfig {
    /// Nothing configured: the periodic task has nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.default.is_empty() && self.templates.values().all(RetentionPolicy::is_empty)
    }

    fn policy_for(&self, name: &str) -> &RetentionPolicy {
        self.templates.get(name).unwrap_or(&self.default)
    }
}

impl std::fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rules = Vec::new();
        if let Some(n) = self.keep_last {
            rules.push(format!("keep last {n}"));
        }
        if let Some(d) = self.unused_for {
            rules.push(format!("keep used within {}s", d.as_secs()));
        }
        if self.include_latest {
            rules.push("latest included".into());
        }
        match rules.is_empty() {
            true => write!(f, "keep all"),
            false => write!(f, "{}", rules.join(", ")),
        }
    }
}

impl std::fmt::Display for RetentionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.default)?;
        for (name, policy) in &self.templates {
            write!(f, "; {name:?}: {policy}")?;
        }
        Ok(())
    }
}

/// One retention run.
#[derive(Clone, Debug, Default)]
pub struct RetentionRun {
    /// Apply this policy to every template considered; the configured ones when `None`.
    pub policy: Option<RetentionPolicy>,
    /// Only this template (name or id).
    pub template: Option<String>,
    /// List what would go; remove nothing.
    pub dry_run: bool,
}

/// A tag a run removed (or, dry, would remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemovedTag {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub template: String,
    /// The tag.
    pub tag: String,
    /// Its number before the run.
    pub number: u32,
    /// Bytes of its files (shared files included).
    pub size: u64,
    /// Epoch seconds of its latest pull or its push.
    pub last_used: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetentionReport {
    /// Nothing was removed: this is what would be.
    pub dry_run: bool,
    /// Templates looked at.
    pub templates: usize,
    /// The tags removed, by template, oldest first.
    pub removed: Vec<RemovedTag>,
    /// Stored files deleted because no tag held them any more (none on a dry run).
    pub objects: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

impl std::fmt::Display for RetentionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.removed {
            writeln!(
                f,
                "tag {} {} (version {}, {} bytes, last used {})",
                r.template, r.tag, r.number, r.size, r.last_used
            )?;
        }
        write!(
            f,
            "{} {} tags of {} templates",
            if self.dry_run {
                "would remove"
            } else {
                "removed"
            },
            self.removed.len(),
            self.templates
        )?;
        match self.dry_run {
            true => Ok(()),
            false => write!(f, ", {} files ({} bytes)", self.objects, self.bytes),
        }
    }
}

/// How long a run may hold the retention lease before another may take it; renewed at
/// every template.
const LEASE_TTL: Duration = Duration::from_secs(600);

impl Registry {
    /// The configured retention policies.
    pub fn retention(&self) -> &RetentionConfig {
        &self.retention
    }

    /// The same registry with these retention policies.
    pub fn with_retention(mut self, retention: RetentionConfig) -> Self {
        self.retention = Arc::new(retention);
        self
    }

    /// Applies retention: the given policy, or the configured ones, to one template or all.
    /// Pulls this replica noted are written first, so they count. Two runs never overlap:
    /// a run while another holds the lease is refused (409).
    pub async fn retain(&self, run: RetentionRun) -> RegistryResult<RetentionReport> {
        let holder = Uuid::new_v4().simple().to_string();
        if !self
            .take_lease(keys::RETENTION_LEASE, &holder, LEASE_TTL)
            .await?
        {
            return Err(RegistryError::Conflict(
                "another retention run is in progress; retry when it is done".into(),
            ));
        }
        let result = self.retain_held(&run, &holder).await;
        if let Ok(report) = &result {
            if !report.dry_run {
                crate::telemetry::metrics::gc_run("retention", report.objects, report.bytes);
            }
        }
        if let Err(e) = self.drop_lease(keys::RETENTION_LEASE, &holder).await {
            tracing::warn!(error = %e, "could not give up the retention lease");
        }
        result
    }

    async fn retain_held(
        &self,
        run: &RetentionRun,
        holder: &str,
    ) -> RegistryResult<RetentionReport> {
        if let Err(e) = self.flush_pulls().await {
            tracing::warn!(error = %e, "could not record pulls before retention");
        }
        let ids: Vec<Uuid> = match &run.template {
            Some(t) => vec![self.resolve(t).await?.id],
            None => {
                let mut listed: Vec<Uuid> =
                    self.list().await?.iter().map(|t| t.summary.id).collect();
                listed.sort();
                listed
            }
        };
        let mut report = RetentionReport {
            dry_run: run.dry_run,
            ..RetentionReport::default()
        };
        for id in ids {
            self.take_lease(keys::RETENTION_LEASE, holder, LEASE_TTL)
                .await?;
            let Some(template) = super::template_record::get(self.meta(), &id).await? else {
                continue;
            };
            report.templates += 1;
            let policy = run
                .policy
                .as_ref()
                .unwrap_or_else(|| self.retention.policy_for(&template.name));
            let pulls = self.tag_pulls(&id).await?;
            let chosen = policy.choose(&template, &pulls, model::now());
            if chosen.is_empty() {
                continue;
            }
            let entry = |v: &Version| RemovedTag {
                id,
                template: template.name.clone(),
                tag: v.tag.clone(),
                number: v.number,
                size: v.size(),
                last_used: last_used(v, &pulls),
            };
            if run.dry_run {
                report.removed.extend(chosen.into_iter().map(entry));
                continue;
            }
            let push_ids: BTreeSet<String> = chosen.iter().map(|v| v.push_id.clone()).collect();
            let removed = self.remove_versions(&id, &push_ids).await?;
            report.objects += removed.objects;
            report.bytes += removed.bytes;
            let gone: BTreeSet<&str> = removed
                .versions
                .iter()
                .map(|v| v.push_id.as_str())
                .collect();
            report.removed.extend(
                chosen
                    .into_iter()
                    .filter(|v| gone.contains(v.push_id.as_str()))
                    .map(entry),
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(tags: &[(&str, u64)]) -> Template {
        Template {
            id: Uuid::nil(),
            name: "t".into(),
            arch: String::new(),
            created: 0,
            last_push: 0,
            versions: tags
                .iter()
                .enumerate()
                .map(|(i, (tag, created))| Version {
                    number: i as u32,
                    tag: tag.to_string(),
                    description: String::new(),
                    files: Vec::new(),
                    config: serde_json::Value::Null,
                    created: *created,
                    push_id: format!("p{i}"),
                    seq: i as u64 + 1,
                })
                .collect(),
        }
    }

    fn chosen(p: &RetentionPolicy, t: &Template, pulls: &TagPulls, now: u64) -> Vec<String> {
        p.choose(t, pulls, now)
            .iter()
            .map(|v| v.tag.clone())
            .collect()
    }

    #[test]
    fn each_rule_keeps_what_it_names_and_the_latest_stays_unless_included() {
        let t = template(&[("a", 100), ("b", 200), ("c", 300), ("d", 400)]);
        let pulls = TagPulls::from([("a".into(), 950)]);
        let last = |n| RetentionPolicy {
            keep_last: Some(n),
            ..Default::default()
        };
        assert_eq!(chosen(&last(2), &t, &pulls, 1000), ["a", "b"]);
        assert_eq!(chosen(&last(0), &t, &pulls, 1000), ["a", "b", "c"]);
        let all = RetentionPolicy {
            include_latest: true,
            ..last(0)
        };
        assert_eq!(chosen(&all, &t, &pulls, 1000), ["a", "b", "c", "d"]);
        let unused = RetentionPolicy {
            unused_for: Some(Duration::from_secs(650)),
            ..Default::default()
        };
        // a was pulled 50 s ago; b pushed 800 s ago, c 700 s ago, d (latest) 600 s ago.
        assert_eq!(chosen(&unused, &t, &pulls, 1000), ["b", "c"]);
        let both = RetentionPolicy {
            keep_last: Some(3),
            ..unused.clone()
        };
        assert_eq!(chosen(&both, &t, &pulls, 1000), Vec::<String>::new());
        let both = RetentionPolicy {
            keep_last: Some(1),
            ..unused
        };
        assert_eq!(chosen(&both, &t, &pulls, 1000), ["b", "c"]);
        assert!(chosen(&RetentionPolicy::default(), &t, &pulls, 1000).is_empty());
    }
}
