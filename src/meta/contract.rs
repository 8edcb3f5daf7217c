//! What every metadata backend must do, checked the same way for each.

use super::MetaStore;

/// Reads its own writes, commits all or nothing, keeps sets.
pub(crate) async fn transactions_are_atomic(meta: &dyn MetaStore) {
    let mut tx = meta.begin().await.unwrap();
    assert_eq!(tx.get("a").await.unwrap(), None);
    tx.put("a", b"1".to_vec());
    tx.set_add("s", "x");
    tx.set_add("s", "y");
    assert_eq!(
        tx.get("a").await.unwrap(),
        Some(b"1".to_vec()),
        "a transaction reads its own writes"
    );
    drop(tx);
    assert_eq!(
        meta.get_many(&["a".into()]).await.unwrap(),
        vec![None],
        "a dropped transaction changes nothing"
    );
    assert!(meta.members("s").await.unwrap().is_empty());

    let mut tx = meta.begin().await.unwrap();
    tx.put("a", b"1".to_vec());
    tx.set_add("s", "x");
    tx.set_add("s", "y");
    tx.set_add("t", "z");
    assert!(tx.commit().await.unwrap());
    assert_eq!(
        meta.get_many(&["a".into(), "b".into()]).await.unwrap(),
        vec![Some(b"1".to_vec()), None]
    );
    let mut members = meta.members("s").await.unwrap();
    members.sort();
    assert_eq!(members, vec!["x", "y"]);
    assert_eq!(meta.count("s").await.unwrap(), 2);
    assert_eq!(meta.count("none").await.unwrap(), 0);
    let mut many = meta
        .members_many(&["t".into(), "none".into(), "s".into()])
        .await
        .unwrap();
    many[2].sort();
    assert_eq!(
        many,
        vec![vec!["z"], vec![], vec!["x", "y"]],
        "in the order asked"
    );

    let mut tx = meta.begin().await.unwrap();
    tx.delete("a");
    tx.set_remove("s", "x");
    assert!(tx.commit().await.unwrap());
    assert_eq!(meta.get_many(&["a".into()]).await.unwrap(), vec![None]);
    assert_eq!(meta.members("s").await.unwrap(), vec!["y"]);
    assert_eq!(meta.count("s").await.unwrap(), 1);
    meta.ping().await.unwrap();
}

/// Reads many keys in one call, in the order asked, its own writes included.
pub(crate) async fn a_transaction_reads_many_keys_in_order(meta: &dyn MetaStore) {
    let mut tx = meta.begin().await.unwrap();
    tx.put("m:a", b"1".to_vec());
    tx.put("m:b", b"2".to_vec());
    assert!(tx.commit().await.unwrap());
    let mut tx = meta.begin().await.unwrap();
    tx.put("m:c", b"3".to_vec());
    tx.delete("m:a");
    let keys: Vec<String> = ["m:c", "m:none", "m:b", "m:a", "m:b"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        tx.get_many(&keys).await.unwrap(),
        vec![
            Some(b"3".to_vec()),
            None,
            Some(b"2".to_vec()),
            None,
            Some(b"2".to_vec())
        ]
    );
    assert!(tx.commit().await.unwrap());
    assert_eq!(
        meta.get_many(&keys[..3]).await.unwrap(),
        vec![Some(b"3".to_vec()), None, Some(b"2".to_vec())]
    );
}

/// Finds the keys under a prefix, and only those, glob characters included.
pub(crate) async fn keys_are_found_by_prefix(meta: &dyn MetaStore) {
    let mut tx = meta.begin().await.unwrap();
    for key in ["p:a", "p:b*", "p:[c]", "pq", "q:p:a", "p"] {
        tx.put(key, b"1".to_vec());
    }
    tx.set_add("q:set", "x");
    assert!(tx.commit().await.unwrap());
    let mut found = meta.keys_with_prefix("p:").await.unwrap();
    found.sort();
    assert_eq!(found, vec!["p:[c]", "p:a", "p:b*"]);
    let mut found = meta.keys_with_prefix("p:[").await.unwrap();
    found.sort();
    assert_eq!(found, vec!["p:[c]"], "a glob character is taken as itself");
    assert!(meta.keys_with_prefix("none:").await.unwrap().is_empty());
}

/// Counts a set's committed members inside a transaction, and a cap checked with that
/// count holds exactly however many transactions race for the last places.
pub(crate) async fn a_cap_counted_in_a_transaction_holds_under_racing_writers(
    meta: &dyn MetaStore,
) {
    let mut tx = meta.begin().await.unwrap();
    tx.set_add("c:set", "a");
    tx.set_add("c:set", "b");
    assert!(tx.commit().await.unwrap());
    let mut tx = meta.begin().await.unwrap();
    assert_eq!(tx.count("c:set").await.unwrap(), 2);
    assert_eq!(tx.count("c:none").await.unwrap(), 0);
    tx.set_add("c:set", "c");
    assert_eq!(
        tx.count("c:set").await.unwrap(),
        2,
        "the committed count, without the transaction's own add"
    );
    assert!(tx.commit().await.unwrap());
    assert_eq!(meta.count("c:set").await.unwrap(), 3);

    // Twenty writers race for five places.
    const CAP: u64 = 5;
    let writer = |i: usize| async move {
        loop {
            let mut tx = meta.begin().await.unwrap();
            if tx.count("c:capped").await.unwrap() >= CAP {
                return false;
            }
            tx.set_add("c:capped", &format!("w{i}"));
            if tx.commit().await.unwrap() {
                return true;
            }
        }
    };
    let won = futures_util::future::join_all((0..20).map(writer)).await;
    assert_eq!(won.iter().filter(|w| **w).count() as u64, CAP);
    assert_eq!(meta.count("c:capped").await.unwrap(), CAP);
}
