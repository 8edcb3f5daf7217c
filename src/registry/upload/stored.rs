//! How an upload state is stored: a small record under the state key, and each durable
//! part under a key of its own, so that recording a part writes one part and the small
//! record, however many parts came before. Records of the older layout (the whole part
//! list inline) are read as they are and moved to the new layout by their first write.

use std::collections::BTreeMap;

use serde::Serializer;

use super::{UploadState, LAYOUT};
use crate::meta::{keys, MetaStore, MetaStoreExt, MetaTx, MetaTxExt};
use crate::registry::{transact, Registry, RegistryError, RegistryResult};
use crate::store::PartInfo;

/// Writes [`LAYOUT`] as the layout of every record this code writes.
pub(super) fn current_layout<S: Serializer>(_: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(LAYOUT)
}

/// Buffers `state` under `key`, with `part` (its part number `state.count`) when one was
/// added. `current` is the record as the transaction read it: an older-layout one has its
/// inline parts moved to records of their own, once.
pub(crate) fn write_state(
    tx: &mut Box<dyn MetaTx>,
    key: &str,
    current: Option<&UploadState>,
    state: &UploadState,
    part: Option<&PartInfo>,
) {
    for (i, old) in current
        .map_or(&[][..], |c| &c.legacy_parts)
        .iter()
        .enumerate()
    {
        tx.put_json(&keys::upload_part(key, i as u32 + 1), old);
    }
    if let Some(part) = part {
        tx.put_json(&keys::upload_part(key, state.count), part);
    }
    tx.put_json(key, state);
}

/// Buffers the deletion of the upload state under `key` and of all its parts.
pub(crate) async fn delete_state(tx: &mut Box<dyn MetaTx>, key: &str) -> RegistryResult<()> {
    if let Some(state) = tx.get_json::<UploadState>(key).await? {
        for number in (1..=state.count).chain(state.ahead_parts()) {
            tx.delete(&keys::upload_part(key, number));
        }
    }
    tx.delete(key);
    Ok(())
}

impl Registry {
    /// The durable parts of the upload whose state, read under `key`, is `state`, in order.
    pub(crate) async fn upload_parts(
        &self,
        key: &str,
        state: &UploadState,
    ) -> RegistryResult<Vec<PartInfo>> {
        if state.count as usize <= state.legacy_parts.len() {
            return Ok(state.legacy_parts.clone());
        }
        let wanted: Vec<String> = (1..=state.count)
            .map(|n| keys::upload_part(key, n))
            .collect();
        let found = self.meta().get_many_json::<PartInfo>(&wanted).await?;
        wanted
            .into_iter()
            .zip(found)
            .map(|(k, part)| {
                part.ok_or_else(|| {
                    RegistryError::Meta(crate::meta::MetaError::Corrupt {
                        key: k,
                        reason: "a recorded part has no record".into(),
                    })
                })
            })
            .collect()
    }
}

/// Part records whose upload state is gone (or does not hold them): left by a replica of
/// an older version that deleted only the state, or by a crash between two writes of
/// code that wrote them apart. By state key, the part numbers.
pub(crate) struct StrayParts(pub BTreeMap<String, Vec<u32>>);

impl StrayParts {
    /// Finds them: walks every part key (maintenance only, see
    /// [`MetaStore::keys_with_prefix`]), then reads the states they name.
    pub(crate) async fn find(meta: &dyn MetaStore) -> RegistryResult<Self> {
        let mut by_state: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for key in meta.keys_with_prefix(keys::UPLOAD_PARTS).await? {
            if let Some((state, number)) = keys::parse_upload_part(&key) {
                by_state.entry(state.to_string()).or_default().push(number);
            }
        }
        let states: Vec<String> = by_state.keys().cloned().collect();
        let found = meta.get_many_json::<UploadState>(&states).await?;
        let stray = by_state
            .into_iter()
            .zip(found)
            .filter_map(|((key, numbers), state)| {
                let state = state.unwrap_or_default();
                let numbers: Vec<u32> = numbers.into_iter().filter(|n| !state.holds(*n)).collect();
                (!numbers.is_empty()).then_some((key, numbers))
            })
            .collect();
        Ok(Self(stray))
    }

    /// How many part records are stray.
    pub(crate) fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Deletes them, each state's parts in one transaction that reads the state again,
    /// so that a part recorded meanwhile under a state written anew is kept.
    pub(crate) async fn remove(&self, meta: &dyn MetaStore) -> RegistryResult<()> {
        for (key, numbers) in &self.0 {
            transact(meta, async |tx| {
                let state = tx.get_json::<UploadState>(key).await?.unwrap_or_default();
                for n in numbers.iter().filter(|n| !state.holds(**n)) {
                    tx.delete(&keys::upload_part(key, *n));
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::digest::ResumableSha256;
    use crate::meta::embedded::EmbeddedMeta;
    use crate::registry::test_support::ByteCountingMeta;
    use crate::store::fs::FsStore;
    use crate::store::UploadHandle;

    fn part(number: u32) -> PartInfo {
        PartInfo {
            number,
            size: 5 << 20,
            etag: format!("\"{:032x}\"", u128::from(number) * 0x9e37_79b9_7f4a_7c15),
        }
    }

    /// The record the code before this layout wrote, with `parts` parts inline.
    fn legacy_record(parts: u32, writer: &str) -> serde_json::Value {
        serde_json::json!({
            "handle": {"key": "blobs/a.ank/s", "upload_id": "u-1"},
            "parts": (1..=parts).map(part).collect::<Vec<_>>(),
            "received": u64::from(parts) * (5 << 20),
            "hasher": ResumableSha256::default(),
            "sha256": null,
            "writer": writer,
        })
    }

    fn registry(dir: &std::path::Path) -> (Registry, Arc<ByteCountingMeta>) {
        let meta = Arc::new(ByteCountingMeta::new(
            EmbeddedMeta::open(&dir.join("meta.redb")).unwrap(),
        ));
        let blobs = Arc::new(FsStore::open(dir, 5 << 20).unwrap());
        (Registry::new(meta.clone(), blobs, 5 << 20, 1), meta)
    }

    /// Records the next part of `state` as a blob upload does; answers the bytes written.
    async fn record(
        r: &Registry,
        meta: &ByteCountingMeta,
        key: &str,
        state: &mut UploadState,
    ) -> u64 {
        let before = meta.written();
        let expected = Some(state.received);
        let next = part(state.recorded() + 1);
        state.count = state.recorded() + 1;
        state.received += next.size;
        r.save_state(key, expected, state, Some(&next))
            .await
            .unwrap();
        meta.written() - before
    }

    #[tokio::test]
    async fn recording_a_part_writes_as_much_at_part_5000_as_at_part_1() {
        let dir = tempfile::tempdir().unwrap();
        let (r, meta) = registry(dir.path());
        let mut fresh = UploadState {
            handle: Some(UploadHandle {
                key: "blobs/b.ank/s".into(),
                upload_id: "u-2".into(),
            }),
            writer: Some("w".into()),
            ..UploadState::default()
        };
        r.save_state("upl:s:b.ank", None, &fresh, None)
            .await
            .unwrap();
        let first = record(&r, &meta, "upl:s:b.ank", &mut fresh).await;

        // An upload 4,999 parts in, from the older layout: its first write moves them.
        let key = "upl:s:a.ank";
        r.meta()
            .begin()
            .await
            .map(|mut tx| {
                tx.put_json(key, &legacy_record(4_999, "w"));
                tx
            })
            .unwrap()
            .commit()
            .await
            .unwrap();
        let mut state = r.upload_state(key).await.unwrap().unwrap();
        assert_eq!(state.recorded(), 4_999);
        let moving = record(&r, &meta, key, &mut state).await;
        let at_5001 = record(&r, &meta, key, &mut state).await;
        eprintln!("bytes written: part 1 {first}, part 5,000 (moving 4,999 parts) {moving}, part 5,001 {at_5001}");
        assert!(
            moving > 100 * first,
            "the first write moves the inline parts"
        );
        assert!(
            at_5001 <= first + 32,
            "part 5,001 wrote {at_5001} bytes, part 1 {first}"
        );

        let stored = r.upload_state(key).await.unwrap().unwrap();
        assert_eq!((stored.layout, stored.count), (LAYOUT, 5_001));
        assert!(stored.legacy_parts.is_empty());
        let parts = r.upload_parts(key, &stored).await.unwrap();
        assert_eq!(parts, (1..=5_001).map(part).collect::<Vec<_>>());
        let raw = r.meta().get_many(&[key.to_string()]).await.unwrap();
        let raw: serde_json::Value = serde_json::from_slice(raw[0].as_ref().unwrap()).unwrap();
        assert!(
            raw.get("parts").is_none(),
            "a record older code would take for partless: {raw}"
        );
    }

    #[tokio::test]
    async fn an_upload_state_of_the_older_layout_reads_its_inline_parts() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = registry(dir.path());
        let key = "upl:s:c.ank";
        let mut tx = r.meta().begin().await.unwrap();
        tx.put_json(key, &legacy_record(3, "old"));
        assert!(tx.commit().await.unwrap());
        let state = r.upload_state(key).await.unwrap().unwrap();
        assert_eq!((state.recorded(), state.received), (3, 3 * (5 << 20)));
        assert_eq!(
            r.upload_parts(key, &state).await.unwrap(),
            (1..=3).map(part).collect::<Vec<_>>()
        );
        // A newer request takes it over: the parts move, and deleting removes them all.
        let claimed = r
            .claim_upload(
                "blobs/c.ank/s",
                key,
                crate::registry::upload::Claim {
                    writer: "new".into(),
                    first: 4,
                    last: 4,
                },
                Some(&state),
            )
            .await
            .unwrap();
        assert_eq!(claimed.recorded(), 3);
        let moved = r.upload_state(key).await.unwrap().unwrap();
        assert_eq!((moved.layout, moved.count), (LAYOUT, 3));
        assert_eq!(r.upload_parts(key, &moved).await.unwrap().len(), 3);
        transact(r.meta(), async |tx| delete_state(tx, key).await)
            .await
            .unwrap();
        assert!(r
            .meta()
            .keys_with_prefix(keys::UPLOAD_PARTS)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn parts_whose_state_is_gone_are_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = registry(dir.path());
        let mut tx = r.meta().begin().await.unwrap();
        tx.put_json(
            "upl:s:kept",
            &UploadState {
                count: 1,
                ..UploadState::default()
            },
        );
        for key in [
            keys::upload_part("upl:s:kept", 1),
            keys::upload_part("upl:s:kept", 2),
            keys::upload_part("upl:s:gone", 1),
            keys::upload_part("upl:s:gone", 2),
        ] {
            tx.put_json(&key, &part(1));
        }
        assert!(tx.commit().await.unwrap());
        let stray = StrayParts::find(r.meta()).await.unwrap();
        assert_eq!(stray.len(), 3);
        stray.remove(r.meta()).await.unwrap();
        assert_eq!(
            r.meta().keys_with_prefix(keys::UPLOAD_PARTS).await.unwrap(),
            vec![keys::upload_part("upl:s:kept", 1)]
        );
        assert_eq!(StrayParts::find(r.meta()).await.unwrap().len(), 0);
    }
}
