//! How a template's listing summary is stored: a small record under [`keys::summary`]
//! holding the template's totals and the listing rows (tag and size) of the versions in
//! its newest block of slots, and the rows of every older block in a record of its own
//! under [`keys::summary_block`]. A commit rewrites the summary and at most one block,
//! however many versions came before; a listing of templates with few versions reads the
//! summaries alone.
//!
//! Blocks follow the slots of `template_record`: block `k` holds the versions in slots
//! `k * BLOCK .. (k + 1) * BLOCK`. Summaries of the older layout (every row inline under
//! `version_list`, or none at all) are read as they are and rewritten by the template's
//! next write, which also splits its head.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use super::template_record::Loaded;
use super::RegistryResult;
use crate::meta::{decode, encode, keys, MetaStore, MetaTx};
use crate::model::{Template, TemplateSummary, VersionSummary};

/// The layout this code writes: the newest block's rows inline, older blocks apart.
const LAYOUT: u32 = 2;

/// Slots per block of listing rows.
pub(crate) const BLOCK: u64 = 8;

fn current_layout<S: Serializer>(_: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(LAYOUT)
}

/// A version's listing row as stored; its number is its position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Row {
    tag: String,
    size: u64,
}

/// The summary record.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(default, serialize_with = "current_layout")]
    layout: u32,
    id: Uuid,
    name: String,
    size: u64,
    arch: String,
    created: u64,
    last_push: u64,
    latest_tag: String,
    versions: u32,
    /// The blocks stored apart, in version order.
    #[serde(default)]
    blocks: Vec<u64>,
    /// The rows of the newest block.
    #[serde(default)]
    tail: Vec<Row>,
    /// The rows of a summary of the older layout, inline whole.
    #[serde(rename = "version_list", default, skip_serializing)]
    legacy_list: Option<Vec<VersionSummary>>,
}

/// A template's rows grouped by block, in version order.
fn blocks(template: &Template, slots: &[u64]) -> Vec<(u64, Vec<Row>)> {
    let mut out: Vec<(u64, Vec<Row>)> = Vec::new();
    for (slot, v) in slots.iter().zip(&template.versions) {
        let row = Row {
            tag: v.tag.clone(),
            size: v.size(),
        };
        match out.last_mut() {
            Some((block, rows)) if *block == slot / BLOCK => rows.push(row),
            _ => out.push((slot / BLOCK, vec![row])),
        }
    }
    out
}

/// The summary record of `template` and its blocks stored apart.
fn layout(template: &Template, slots: &[u64]) -> (Stored, Vec<(u64, Vec<Row>)>) {
    let mut apart = blocks(template, slots);
    let tail = apart.pop().map(|(_, rows)| rows).unwrap_or_default();
    let s = TemplateSummary::from(template);
    let stored = Stored {
        layout: LAYOUT,
        id: s.id,
        name: s.name,
        size: s.size,
        arch: s.arch,
        created: s.created,
        last_push: template.newest_push(),
        latest_tag: s.latest_tag,
        versions: s.versions,
        blocks: apart.iter().map(|(b, _)| *b).collect(),
        tail,
        legacy_list: None,
    };
    (stored, apart)
}

/// The blocks `before` (as read in this transaction) has stored apart; none for a
/// template of the older layout, whose summary held every row inline.
fn stored_apart(before: Option<&Loaded>) -> BTreeMap<u64, Vec<Row>> {
    match before.filter(|b| !b.is_legacy()) {
        None => BTreeMap::new(),
        Some(b) => layout(&b.template, b.slots()).1.into_iter().collect(),
    }
}

/// Buffers the summary of `after`, its versions in `slots`, writing only the blocks that
/// differ from those of `before`.
pub(crate) fn save(
    tx: &mut Box<dyn MetaTx>,
    before: Option<&Loaded>,
    after: &Template,
    slots: &[u64],
) {
    let mut old = stored_apart(before);
    let (stored, apart) = layout(after, slots);
    for (block, rows) in apart {
        if old.remove(&block).as_ref() != Some(&rows) {
            tx.put(&keys::summary_block(&after.id, block), encode(&rows));
        }
    }
    for block in old.into_keys() {
        tx.delete(&keys::summary_block(&after.id, block));
    }
    tx.put(&keys::summary(&after.id), encode(&stored));
}

/// Buffers the deletion of the summary of the template `before` as read.
pub(crate) fn delete(tx: &mut Box<dyn MetaTx>, before: &Loaded) {
    for block in stored_apart(Some(before)).into_keys() {
        tx.delete(&keys::summary_block(&before.template.id, block));
    }
    tx.delete(&keys::summary(&before.template.id));
}

/// The summary records of `template` as [`save`] writes them for a new template, its
/// versions in slots `0..`, for a bulk rebuild (`admin reindex`).
pub(crate) fn records(template: &Template) -> Vec<(String, Vec<u8>)> {
    let slots: Vec<u64> = (0..template.versions.len() as u64).collect();
    let (stored, apart) = layout(template, &slots);
    let mut out = vec![(keys::summary(&template.id), encode(&stored))];
    for (block, rows) in apart {
        out.push((keys::summary_block(&template.id, block), encode(&rows)));
    }
    out
}

/// Decodes summary records (key and bytes), reading the blocks they keep apart in one
/// batch. A block deleted between the two reads (a revert meanwhile) lists no rows.
pub(crate) async fn decode_many(
    meta: &dyn MetaStore,
    found: &[(String, Vec<u8>)],
) -> RegistryResult<Vec<TemplateSummary>> {
    let stored: Vec<Stored> = found
        .iter()
        .map(|(key, bytes)| decode(key, bytes))
        .collect::<Result<_, _>>()?;
    let wanted: Vec<String> = stored
        .iter()
        .flat_map(|s| s.blocks.iter().map(|b| keys::summary_block(&s.id, *b)))
        .collect();
    let mut values = Vec::with_capacity(wanted.len());
    for batch in wanted.chunks(512) {
        values.extend(meta.get_many(batch).await?);
    }
    let mut blocks = wanted.iter().zip(values);
    let mut out = Vec::with_capacity(stored.len());
    for s in stored {
        let mut rows: Vec<Row> = Vec::new();
        for (key, value) in blocks.by_ref().take(s.blocks.len()) {
            if let Some(bytes) = value {
                rows.extend(decode::<Vec<Row>>(key, &bytes)?);
            }
        }
        out.push(summary(s, rows));
    }
    Ok(out)
}

/// The in-memory summary of a stored one and the rows of its blocks stored apart.
fn summary(s: Stored, mut rows: Vec<Row>) -> TemplateSummary {
    let version_list = match s.layout < LAYOUT {
        true => s.legacy_list,
        false => {
            rows.extend(s.tail);
            Some(
                rows.into_iter()
                    .enumerate()
                    .map(|(i, r)| VersionSummary {
                        number: i as u32,
                        tag: r.tag,
                        size: r.size,
                    })
                    .collect(),
            )
        }
    };
    TemplateSummary {
        id: s.id,
        name: s.name,
        size: s.size,
        arch: s.arch,
        created: s.created,
        last_push: s.last_push,
        latest_tag: s.latest_tag,
        versions: s.versions,
        version_list,
    }
}

/// Reads template `id`'s summary within a transaction (every record watched); `None`
/// when the template is gone.
pub(crate) async fn load_tx(
    tx: &mut Box<dyn MetaTx>,
    id: &Uuid,
) -> RegistryResult<Option<TemplateSummary>> {
    let key = keys::summary(id);
    let Some(bytes) = tx.get(&key).await? else {
        return Ok(None);
    };
    let s: Stored = decode(&key, &bytes)?;
    let wanted: Vec<String> = s
        .blocks
        .iter()
        .map(|b| keys::summary_block(id, *b))
        .collect();
    let mut rows = Vec::new();
    for (key, value) in wanted.iter().zip(tx.get_many(&wanted).await?) {
        if let Some(bytes) = value {
            rows.extend(decode::<Vec<Row>>(key, &bytes)?);
        }
    }
    Ok(Some(summary(s, rows)))
}

/// Reads template `id`'s summary outside any transaction.
#[cfg(test)]
pub(crate) async fn get(
    meta: &dyn MetaStore,
    id: &Uuid,
) -> RegistryResult<Option<TemplateSummary>> {
    let key = keys::summary(id);
    let Some(bytes) = meta.get_many(std::slice::from_ref(&key)).await?.remove(0) else {
        return Ok(None);
    };
    Ok(decode_many(meta, &[(key, bytes)]).await?.pop())
}
