//! What every blob store must do, checked the same way for each.

use bytes::Bytes;
use futures_util::StreamExt;

use super::{BlobStore, StoreError, UploadHandle};

async fn collect(store: &dyn BlobStore, key: &str, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut stream = store.get(key, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// `len` bytes that differ from part to part and from `seed` to `seed`.
pub(crate) fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

async fn pending(store: &dyn BlobStore, upload: &UploadHandle) -> bool {
    let uploads = store.list_uploads().await.unwrap();
    uploads.iter().any(|u| u.upload_id == upload.upload_id)
}

/// Whole objects: put, read, streamed and ranged gets, listing, deletion.
pub(crate) async fn objects_round_trip(store: &dyn BlobStore) {
    store.ping().await.unwrap();
    let data = pattern(3000, 1);
    store.put("c/objects/a", data.clone()).await.unwrap();
    store
        .put("c/other/b", Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert_eq!(store.read("c/objects/a").await.unwrap(), data);
    assert_eq!(collect(store, "c/objects/a", None).await, data);
    assert_eq!(
        collect(store, "c/objects/a", Some((10, 2010))).await,
        &data[10..2010],
        "a range is the bytes start..end"
    );
    store
        .put("c/objects/a", Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(
        &store.read("c/objects/a").await.unwrap()[..],
        b"new",
        "a put replaces the object whole"
    );

    let listed = store.list_objects("c/objects/").await.unwrap();
    assert_eq!(listed.len(), 1, "only keys under the prefix: {listed:?}");
    assert_eq!((listed[0].key.as_str(), listed[0].size), ("c/objects/a", 3));
    let mut all = store.list("c/").await.unwrap();
    all.sort();
    assert_eq!(all, vec!["c/objects/a", "c/other/b"]);

    store.delete("c/objects/a").await.unwrap();
    store
        .delete("c/objects/a")
        .await
        .expect("deleting a missing object succeeds");
    assert!(matches!(
        store.read("c/objects/a").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get("c/objects/a", None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list("c/").await.unwrap(), vec!["c/other/b"]);
    store.delete("c/other/b").await.unwrap();
    assert!(store.list("c/").await.unwrap().is_empty());
}

/// Multipart uploads: invisible until complete, parts in any order, completing twice
/// (a replica retrying after a lost reply) succeeds and changes nothing, abort discards.
pub(crate) async fn multipart_uploads(store: &dyn BlobStore) {
    let first = pattern(store.min_part_size() as usize, 2);
    let last = pattern(1000, 3);
    let key = "c/blobs/x.ank/u1";
    let up = store.begin_upload(key).await.unwrap();
    assert!(pending(store, &up).await, "a begun upload is listed");
    let p2 = store
        .write_part(&up, 2, first.len() as u64, last.clone())
        .await
        .unwrap();
    let p1 = store.write_part(&up, 1, 0, first.clone()).await.unwrap();
    assert_eq!((p1.number, p1.size), (1, first.len() as u64));
    assert_eq!((p2.number, p2.size), (2, last.len() as u64));
    assert!(
        matches!(store.read(key).await, Err(StoreError::NotFound(_))),
        "nothing is visible before completion"
    );

    let parts = [p1, p2];
    store.complete_upload(&up, &parts).await.unwrap();
    let whole = [&first[..], &last[..]].concat();
    assert_eq!(store.read(key).await.unwrap(), whole);
    assert!(
        !pending(store, &up).await,
        "a completed upload is not pending"
    );
    store
        .complete_upload(&up, &parts)
        .await
        .expect("completing an upload twice succeeds");
    assert_eq!(store.read(key).await.unwrap(), whole, "and changes nothing");
    store
        .abort_upload(&up)
        .await
        .expect("aborting a completed upload succeeds");
    assert_eq!(
        store.read(key).await.unwrap(),
        whole,
        "and leaves the object"
    );
    let listed = store.list_objects("c/blobs/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, whole.len() as u64);

    let empty = store.begin_upload("c/blobs/e/u").await.unwrap();
    store.complete_upload(&empty, &[]).await.unwrap();
    store.complete_upload(&empty, &[]).await.unwrap();
    assert!(store.read("c/blobs/e/u").await.unwrap().is_empty());

    let dropped = store.begin_upload("c/blobs/y.ank/u2").await.unwrap();
    let part = store
        .write_part(&dropped, 1, 0, pattern(100, 4))
        .await
        .unwrap();
    store.abort_upload(&dropped).await.unwrap();
    store
        .abort_upload(&dropped)
        .await
        .expect("aborting twice succeeds");
    assert!(!pending(store, &dropped).await, "an aborted upload is gone");
    assert!(matches!(
        store.read("c/blobs/y.ank/u2").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store.complete_upload(&dropped, &[part]).await.is_err(),
        "an aborted upload cannot be completed"
    );
    assert!(matches!(
        store.read("c/blobs/y.ank/u2").await,
        Err(StoreError::NotFound(_))
    ));

    for key in store.list("c/").await.unwrap() {
        store.delete(&key).await.unwrap();
    }
}

/// Parts written in any order (a file pushed as several ranges), one of them written twice
/// with the same bytes (a range sent again after a lost reply): the object is the parts in
/// number order.
pub(crate) async fn parts_in_any_order(store: &dyn BlobStore) {
    let size = store.min_part_size() as usize;
    let parts = [
        pattern(size, 5),
        pattern(size, 6),
        pattern(size, 7),
        pattern(333, 8),
    ];
    let key = "c/blobs/z.ank/u3";
    let up = store.begin_upload(key).await.unwrap();
    let mut written = Vec::new();
    for i in [3usize, 1, 0, 2, 1] {
        let offset = (i * size) as u64;
        let info = store
            .write_part(&up, i as u32 + 1, offset, parts[i].clone())
            .await
            .unwrap();
        written.retain(|p: &super::PartInfo| p.number != info.number);
        written.push(info);
    }
    written.sort_by_key(|p| p.number);
    assert_eq!(
        written.iter().map(|p| p.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    store.complete_upload(&up, &written).await.unwrap();
    assert_eq!(store.read(key).await.unwrap(), parts.concat());
    store.delete(key).await.unwrap();
}
