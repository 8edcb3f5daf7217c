//! Pull bookkeeping and retention against the real binary, on the pass's backend
//! (embedded, or S3 + Redis): pulls are written by a periodic flush, not by the request,
//! and a clean shutdown loses none of them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The `/registry/v2/vm` row of template `id`.
async fn row(s: &Server, id: &str) -> Value {
    let list = get(&s.at("/registry/v2/vm")).await;
    list.ok_body()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {list:?}"))
}

async fn last_pull(s: &Server, id: &str) -> u64 {
    row(s, id).await["last_pull"].as_u64().unwrap()
}

/// Pulls a version's manifest as `vmreg registry pull` does.
async fn pull(s: &Server, id: &str, tag: &str) {
    get(&s.at(&format!(
        "/api/v1/templates/{id}/manifest?tag={}",
        encode_query(tag)
    )))
    .await
    .ok_body();
}

#[tokio::test]
async fn a_pull_is_recorded_by_the_next_flush() {
    let s = Server::start_with(&["--pull-flush-interval", "300ms"]);
    let id = new_id();
    let layer = unique_image(1000, 1);
    push(&s, &id, "flushed", "v1", &[&layer]).await;
    assert_eq!(last_pull(&s, &id).await, 0);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    pull(&s, &id, "v1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while last_pull(&s, &id).await == 0 {
        assert!(Instant::now() < deadline, "the pull was never written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_pull(&s, &id).await >= before);
}

#[tokio::test]
async fn a_pull_is_not_written_by_its_request_and_a_clean_shutdown_writes_it() {
    // No periodic flush within the test: whatever is written, the request or the shutdown wrote.
    let mut s = Server::start_with(&["--pull-flush-interval", "1h"]);
    let id = new_id();
    let layer = unique_image(1000, 2);
    push(&s, &id, "deferred", "v1", &[&layer]).await;
    pull(&s, &id, "v1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        last_pull(&s, &id).await,
        0,
        "the manifest GET wrote its pull on the request path"
    );
    s.terminate();
    s.restart();
    assert!(
        last_pull(&s, &id).await > 0,
        "the pull noted before SIGTERM was lost"
    );
}
