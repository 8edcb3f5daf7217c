//! Integrity and lifecycle: `vmreg admin fsck` reports every kind of damage and nothing on
//! a healthy registry; `vmreg admin gc` removes what nothing holds and never what a version
//! or a push in flight holds. Damage is made through the library's own store clients on
//! the same backend the server runs on (the embedded store, or S3 + Redis).

mod common;

use std::process::Command;

use common::stores::stores;
use common::*;
use reqwest::Method;
use serde_json::Value;
use vmreg::meta::{keys, MetaStore, MetaStoreExt};
use vmreg::model::FileRecord;
use vmreg::store::BlobStore;

/// Runs `vmreg admin <args>` on the namespace's stores; exit code and stdout.
fn admin(ns: &Namespace, args: &[&str]) -> (i32, String) {
    admin_with_env(ns, &[], args)
}

/// Runs `vmreg admin <args>` with these environment variables too.
fn admin_with_env(ns: &Namespace, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let out = Command::new(vmreg_bin())
        .arg("admin")
        .args(args)
        .args(ns.store_args())
        .envs(env.iter().copied())
        .output()
        .expect("run vmreg admin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().count() <= 1, "errors are one line: {stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `vmreg admin fsck --json`: exit code and report.
fn fsck(ns: &Namespace, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["fsck", "--json"];
    args.extend_from_slice(extra);
    let (code, out) = admin(ns, &args);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, report)
}

/// The (kind, subject) pairs of a report.
fn problems(report: &Value) -> Vec<(String, String)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn record(meta: &dyn MetaStore, file_key: &str) -> FileRecord {
    meta.get_json::<FileRecord>(&keys::file(file_key))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record of {file_key}"))
}

async fn put_record(meta: &dyn MetaStore, record: &FileRecord) {
    let mut tx = meta.begin().await.unwrap();
    tx.put(&keys::file(&record.key), vmreg::meta::encode(record));
    assert!(tx.commit().await.unwrap());
}

fn image(size: usize, seed: u64) -> TestFile {
    unique_image(size, seed)
}

/// Opens a push and returns its session id, uploading nothing.
async fn negotiate(s: &Server, id: &str, name: &str, tag: &str, files: &[&TestFile]) -> String {
    let plan = send_json(
        Method::POST,
        &s.at("/api/v1/push"),
        &push_request(id, name, tag, files),
    )
    .await;
    plan.ok_body()["session"].as_str().unwrap().to_string()
}

/// Sets a file's modification time, as if written `when` (`touch -d` syntax).
fn backdate(path: &std::path::Path, when: &str) {
    let done = Command::new("touch")
        .args(["-m", "-d", when])
        .arg(path)
        .status()
        .unwrap();
    assert!(done.success(), "touch {}", path.display());
}

/// Starts a multipart upload whose session never existed. The local store's temporary
/// files name no session, so only old ones are stale: that one is made eight days old.
async fn abandon_upload(
    ns: &Namespace,
    blobs: &dyn BlobStore,
    file: &str,
) -> vmreg::store::UploadHandle {
    let handle = blobs
        .begin_upload(&format!("blobs/{file}/fedcba9876543210fedcba9876543210"))
        .await
        .unwrap();
    if !s3_backend() {
        backdate(
            &ns.dir.join("data/uploads").join(&handle.upload_id),
            "8 days ago",
        );
    }
    handle
}

/// Stores a whole blob through the OCI front door.
async fn push_oci_blob(s: &Server, data: &[u8]) {
    let digest = format!("sha256:{}", sha256_hex(data));
    let reply = reqwest::Client::new()
        .post(s.at(&format!("/v2/lifecycle/blobs/uploads/?digest={digest}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_is_clean_on_a_healthy_registry_and_names_every_kind_of_damage() {
    let mut s = Server::start();
    let (base, top, other) = (image(300_000, 1), image(120_000, 2), image(90_000, 3));
    let nvram = TestFile::new("nvram", "nvram", 4096, 4);
    let nvram_b = TestFile::new("nvram", "nvram", 4096, 5);
    let (a, b) = (new_id(), new_id());
    let (a_name, b_name) = (format!("a-{}", &a[..8]), format!("b-{}", &b[..8]));
    push(&s, &a, &a_name, "v1", &[&base, &nvram]).await;
    push(&s, &a, &a_name, "v2", &[&top, &base, &nvram]).await;
    push(&s, &b, &b_name, "only", &[&other, &nvram_b]).await;
    // A push in flight that pinned base and has not sent its new layer: not a problem.
    let fresh = image(50_000, 6);
    let c = new_id();
    negotiate(&s, &c, &format!("c-{}", &c[..8]), "wip", &[&fresh, &base]).await;
    let stale = negotiate(&s, &c, &format!("c-{}", &c[..8]), "old", &[&fresh]).await;
    // An OCI blob is held by the OCI front door's records, never taken for an orphan.
    push_oci_blob(&s, b"an oci layer").await;
    s.kill();

    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 0, "a healthy registry is clean: {report:#}");
    assert_eq!(report["clean"], true);
    assert_eq!(report["oci_objects"], 1);
    assert_eq!(
        (
            &report["templates"],
            &report["versions"],
            &report["sessions"]
        ),
        (&Value::from(2), &Value::from(3), &Value::from(2))
    );
    let (code, report) = fsck(&s.ns, &["--digests"]);
    assert_eq!((code, &report["digests_checked"]), (0, &Value::Bool(true)));

    let (meta, blobs) = stores(&s.ns).await;
    let nvram_key = format!("nvram.{}", nvram.sha256());
    let nvram_b_key = format!("nvram.{}", nvram_b.sha256());
    // missing_object: a layer's bytes are gone.
    blobs
        .delete(&record(&*meta, &top.name).await.object)
        .await
        .unwrap();
    // size_mismatch: a layer's object was cut short.
    let base_object = record(&*meta, &base.name).await.object;
    blobs
        .put(&base_object, base.data[..1000].to_vec().into())
        .await
        .unwrap();
    // digest mismatch, found only when asked to read everything: same size, other bytes.
    let other_object = record(&*meta, &other.name).await.object;
    let mut flipped = other.data.clone();
    flipped[17] ^= 0xff;
    blobs.put(&other_object, flipped.into()).await.unwrap();
    // orphan_object: bytes nothing holds (the session in the key never existed).
    let orphan = format!("blobs/{}/0123456789abcdef0123456789abcdef", fresh.name);
    blobs.put(&orphan, vec![1u8; 10].into()).await.unwrap();
    // missing_file_record: a version names a file the registry forgot; its bytes are then
    // held by nothing.
    let forgotten = record(&*meta, &nvram_b_key).await.object;
    let mut tx = meta.begin().await.unwrap();
    tx.delete(&keys::file(&nvram_b_key));
    assert!(tx.commit().await.unwrap());
    // ref_count_mismatch: two versions name the nvram; the record counts seven.
    let mut shared = record(&*meta, &nvram_key).await;
    shared.refs = 7;
    put_record(&*meta, &shared).await;
    // stray_upload_part: a part record whose upload state is gone.
    let gone_upload = keys::upload("0123456789abcdef0123456789abcdef", &fresh.name);
    let mut tx = meta.begin().await.unwrap();
    tx.put(&keys::upload_part(&gone_upload, 1), b"{}".to_vec());
    assert!(tx.commit().await.unwrap());
    // stale_session: a session opened long ago.
    let key = keys::session(&stale);
    let mut session: Value = meta.get_json(&key).await.unwrap().unwrap();
    session["created"] = Value::from(1_000_000u64);
    let mut tx = meta.begin().await.unwrap();
    tx.put(&key, serde_json::to_vec(&session).unwrap());
    assert!(tx.commit().await.unwrap());
    // incomplete_upload: a multipart upload no session holds.
    let abandoned = abandon_upload(&s.ns, &*blobs, &fresh.name).await;
    // missing_manifest and stray_manifest.
    let a_id: uuid::Uuid = a.parse().unwrap();
    let template = vmreg::registry::template_record::get(&*meta, &a_id)
        .await
        .unwrap()
        .unwrap();
    let v1_manifest = template.versions[0].manifest_key(&a_id);
    assert!(blobs
        .list(&v1_manifest)
        .await
        .unwrap()
        .contains(&v1_manifest));
    blobs.delete(&v1_manifest).await.unwrap();
    let stray = format!("manifests/{}/v0000000000-gone.json", uuid::Uuid::new_v4());
    blobs.put(&stray, b"{}".to_vec().into()).await.unwrap();
    let objects_before = blobs.list("").await.unwrap();
    drop((meta, blobs));

    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 1, "damage makes the exit code non-zero: {report:#}");
    assert_eq!(report["clean"], false);
    let found = problems(&report);
    let incomplete_subject = match s3_backend() {
        true => abandoned.key.clone(),
        false => abandoned.upload_id.clone(),
    };
    let expected: Vec<(&str, String)> = vec![
        ("missing_file_record", nvram_b_key.clone()),
        ("missing_object", top.name.clone()),
        ("size_mismatch", base.name.clone()),
        ("ref_count_mismatch", nvram_key.clone()),
        ("orphan_object", orphan.clone()),
        ("orphan_object", forgotten.clone()),
        ("stale_session", stale.clone()),
        ("incomplete_upload", incomplete_subject),
        ("stray_upload_part", gone_upload.clone()),
        ("missing_manifest", v1_manifest.clone()),
        ("stray_manifest", stray.clone()),
    ];
    for (kind, subject) in &expected {
        assert!(
            found.iter().any(|(k, s)| k == kind && s == subject),
            "{kind} {subject} not reported: {report:#}"
        );
    }
    assert_eq!(found.len(), expected.len(), "nothing else: {report:#}");
    assert!(
        !found.iter().any(|(k, _)| k == "digest_mismatch"),
        "bytes are read only with --digests"
    );
    let (code, report) = fsck(&s.ns, &["--digests"]);
    assert_eq!(code, 1);
    assert!(
        problems(&report).contains(&("digest_mismatch".into(), other.name.clone())),
        "{report:#}"
    );

    // The text form names each problem on a line and ends with the verdict.
    let (code, text) = admin(&s.ns, &["fsck"]);
    assert_eq!(code, 1);
    assert!(text.contains(&format!("orphan_object {orphan}")), "{text}");
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("NOT CLEAN: 11 problems"),
        "{text}"
    );

    // fsck changed nothing.
    let (_, blobs) = stores(&s.ns).await;
    assert_eq!(blobs.list("").await.unwrap(), objects_before);
}

#[test]
fn fsck_on_an_unreachable_store_fails_in_one_line() {
    let ns = Namespace::embedded();
    let blocker = ns.dir.join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = Command::new(vmreg_bin())
        .args(["admin", "fsck", "--data-dir"])
        .arg(blocker.join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("vmreg admin fsck: "), "{stderr}");
}

/// `vmreg admin <args>` on whatever `--data-dir` the args give: exit code and stderr.
fn admin_raw(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(vmreg_bin())
        .arg("admin")
        .args(args)
        .output()
        .expect("run vmreg admin");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_commands_refuse_a_data_dir_that_holds_no_store_and_create_nothing() {
    let ns = Namespace::embedded();
    let absent = ns.dir.join("absent");
    let empty = ns.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let commands: [&[&str]; 4] = [
        &["fsck"],
        &["gc", "--dry-run"],
        &["retention", "--keep-last", "1"],
        &["reindex"],
    ];
    for dir in [&absent, &empty] {
        let dir_arg = dir.display().to_string();
        for command in commands {
            let mut args = command.to_vec();
            args.extend(["--data-dir", &dir_arg]);
            let (code, stderr) = admin_raw(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(
                stderr.starts_with(&format!("vmreg admin {}: no vmreg store at", command[0])),
                "{args:?}: {stderr}"
            );
            assert!(stderr.contains("--data-dir"), "{stderr}");
        }
    }
    assert!(!absent.exists(), "nothing was created at the absent path");
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "the empty dir stays empty"
    );
}

#[test]
fn admin_commands_on_an_embedded_store_a_server_holds_say_so_and_what_to_do() {
    let s = Server::start_in(Namespace::embedded(), &[]);
    let data = s.ns.dir.join("data").display().to_string();
    for command in ["fsck", "gc"] {
        let (code, stderr) = admin_raw(&[command, "--data-dir", &data]);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("is in use by another process"), "{stderr}");
        assert!(stderr.contains("stop the server first"), "{stderr}");
        assert!(!stderr.contains("Cannot acquire lock"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_nothing_from_a_bucket_whose_index_was_lost_until_reindex() {
    let mut s = Server::start();
    let (layer, nvram) = (
        image(300_000, 41),
        TestFile::new("nvram", "nvram", 4096, 42),
    );
    let id = new_id();
    push(&s, &id, "kept", "v1", &[&layer, &nvram]).await;
    s.terminate();
    let (_, blobs) = stores(&s.ns).await;
    let before = blobs.list("").await.unwrap();
    // The index goes, as with a lost Redis (or meta.redb); the bucket stays.
    match s3_backend() {
        true => assert!(flush_redis_prefix(&format!("{}:", s.ns.prefix)).await > 0),
        false => std::fs::remove_file(s.ns.dir.join("data").join("meta.redb")).unwrap(),
    }
    // A server started on the empty index does not vouch for it either.
    s.restart();
    s.terminate();
    let (code, stderr) = admin_err(&s.ns, &["gc", "--grace", "0s"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("reindex"), "{stderr}");
    assert_eq!(blobs.list("").await.unwrap(), before, "gc removed nothing");
    let (code, _) = admin(&s.ns, &["reindex"]);
    assert_eq!(code, 0);
    let report = gc(&s.ns, &["--grace", "0s"]);
    assert_eq!(report["objects"], serde_json::json!([]), "{report:#}");
    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 0, "{report:#}");
    s.restart();
    assert_eq!(download(&s, &layer.name).await, layer.data);
}

/// `vmreg admin <args>` on the namespace's stores, expected to fail: exit code and stderr.
fn admin_err(ns: &Namespace, args: &[&str]) -> (i32, String) {
    let out = Command::new(vmreg_bin())
        .arg("admin")
        .args(args)
        .args(ns.store_args())
        .output()
        .expect("run vmreg admin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vmreg admin gc --json`: exit code 0 and the report.
fn gc(ns: &Namespace, extra: &[&str]) -> Value {
    let mut args = vec!["gc", "--json"];
    args.extend_from_slice(extra);
    let (code, out) = admin(ns, &args);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Uploads one file of an open push whole.
async fn upload(s: &Server, session: &str, file: &TestFile) {
    let url = s.at(&format!(
        "/api/v1/push/{session}/files/{}?offset=0",
        encode_path(&file.name)
    ));
    call(Method::PUT, &url, Some(file.data.clone()))
        .await
        .ok_body();
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_what_nothing_holds_and_never_a_version_or_a_push_in_flight() {
    let mut s = Server::start();
    let (base, fresh) = (image(200_000, 21), image(70_000, 22));
    let nvram = TestFile::new("nvram", "nvram", 4096, 23);
    let (a, b) = (new_id(), new_id());
    push(&s, &a, &format!("a-{}", &a[..8]), "v1", &[&base, &nvram]).await;
    // A push in flight: it pinned base and sent its new layer whole, but has not committed.
    let b_name = format!("b-{}", &b[..8]);
    let in_flight = negotiate(&s, &b, &b_name, "wip", &[&fresh, &base, &nvram]).await;
    upload(&s, &in_flight, &fresh).await;
    push_oci_blob(&s, b"an oci layer kept by gc").await;
    let stale = negotiate(&s, &b, &b_name, "old", &[&image(1000, 24)]).await;
    s.kill();

    let (meta, blobs) = stores(&s.ns).await;
    let orphan = format!("blobs/{}/0123456789abcdef0123456789abcdef", base.name);
    blobs.put(&orphan, vec![7u8; 321].into()).await.unwrap();
    abandon_upload(&s.ns, &*blobs, &fresh.name).await;
    let key = keys::session(&stale);
    let mut session: Value = meta.get_json(&key).await.unwrap().unwrap();
    session["created"] = Value::from(1_000_000u64);
    let mut tx = meta.begin().await.unwrap();
    tx.put(&key, serde_json::to_vec(&session).unwrap());
    // A commit record a week old, beside the fresh one of v1.
    tx.put(&keys::pushed("oldpush"), serde_json::to_vec(&a).unwrap());
    tx.set_add(keys::PUSHED, &keys::pushed_member(1_000_000, "oldpush"));
    // Two part records an upload left behind when its state went without them.
    let gone_upload = keys::upload("0123456789abcdef0123456789abcdef", &fresh.name);
    for n in [1, 2] {
        tx.put(&keys::upload_part(&gone_upload, n), b"{}".to_vec());
    }
    assert!(tx.commit().await.unwrap());
    let objects_before = blobs.list("").await.unwrap();
    drop((meta, blobs));

    // A dry run lists everything and changes nothing.
    let dry = gc(&s.ns, &["--dry-run", "--grace", "0s"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["objects"], serde_json::json!([orphan]));
    assert_eq!(dry["bytes"], 321);
    assert_eq!(dry["upload_parts"], 2, "{dry:#}");
    assert_eq!(
        (&dry["uploads"], &dry["sessions"], &dry["commit_records"]),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{dry:#}"
    );
    let (meta, blobs) = stores(&s.ns).await;
    assert_eq!(blobs.list("").await.unwrap(), objects_before);
    assert_eq!(meta.members(keys::PUSHED).await.unwrap().len(), 2);
    drop((meta, blobs));
    let (code, _) = fsck(&s.ns, &[]);
    assert_eq!(code, 1, "the dry run left the damage in place");

    // The default grace keeps the young orphan (and S3's young upload); the week-old
    // session and commit record go.
    let report = gc(&s.ns, &[]);
    assert_eq!(report["objects"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["uploads"], if s3_backend() { 0 } else { 1 });
    assert_eq!(report["upload_parts"], 2, "{report:#}");
    assert_eq!(
        (&report["sessions"], &report["commit_records"]),
        (&Value::from(1), &Value::from(1))
    );

    let report = gc(&s.ns, &["--grace", "0s"]);
    assert_eq!(report["objects"], serde_json::json!([orphan]), "{report:#}");
    assert_eq!(report["uploads"], if s3_backend() { 1 } else { 0 });
    assert_eq!(report["upload_parts"], 0, "{report:#}");
    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 0, "one pass leaves the registry clean: {report:#}");
    assert_eq!(report["oci_objects"], 1, "the OCI blob is kept");
    let (meta, _) = stores(&s.ns).await;
    assert_eq!(
        meta.members(keys::PUSHED).await.unwrap().len(),
        1,
        "the fresh commit record is kept"
    );
    drop(meta);

    // The push in flight commits, and every file pulls byte-identical.
    s.restart();
    let commit = s.at(&format!("/api/v1/push/{in_flight}/commit"));
    let done = call(Method::POST, &commit, None).await;
    assert_eq!(done.ok_body()["tag"], "wip");
    assert_eq!(
        call(Method::POST, &commit, None).await.ok_body()["tag"],
        "wip"
    );
    assert!(download(&s, &fresh.name).await == fresh.data);
    assert!(download(&s, &base.name).await == base.data);
}

/// Stores bytes no file and no session holds, beside a running server.
async fn plant_orphan(ns: &Namespace, key: &str) {
    if s3_backend() {
        let (_, blobs) = stores(ns).await;
        blobs.put(key, vec![9u8; 100].into()).await.unwrap();
    } else {
        let path = ns.dir.join("data/objects").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, [9u8; 100]).unwrap();
    }
}

async fn object_exists(ns: &Namespace, key: &str) -> bool {
    if s3_backend() {
        let (_, blobs) = stores(ns).await;
        blobs.list(key).await.unwrap().iter().any(|k| k == key)
    } else {
        ns.dir.join("data/objects").join(key).exists()
    }
}

fn gc_runs(s: &Server) -> usize {
    s.log().matches("garbage collection ran").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_gc_collects_online_and_spares_a_push_in_flight() {
    let s = Server::start_with(&["--gc-interval", "300ms", "--gc-grace", "0s"]);
    let fresh = image(80_000, 31);
    let b = new_id();
    let session = negotiate(&s, &b, &format!("b-{}", &b[..8]), "wip", &[&fresh]).await;
    upload(&s, &session, &fresh).await;
    let orphan = format!("blobs/{}/00112233445566778899aabbccddeeff", fresh.name);
    plant_orphan(&s.ns, &orphan).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while object_exists(&s.ns, &orphan).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was not collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Several more runs pass over the push in flight, with no grace at all.
    let runs = gc_runs(&s);
    while gc_runs(&s) < runs + 3 {
        assert!(std::time::Instant::now() < deadline, "gc stopped running");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let done = call(
        Method::POST,
        &s.at(&format!("/api/v1/push/{session}/commit")),
        None,
    )
    .await;
    assert_eq!(done.ok_body()["tag"], "wip");
    assert!(download(&s, &fresh.name).await == fresh.data);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "S3 + Redis only: VMREG_TEST_BACKEND=s3, --include-ignored (scripts/test.sh)"]
async fn periodic_gc_runs_on_one_replica_at_a_time_and_moves_when_it_dies() {
    require_s3_services();
    let mut a = Server::start_with(&["--gc-interval", "300ms", "--gc-grace", "0s"]);
    let mut b = a.replica();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (ra, rb) = (gc_runs(&a), gc_runs(&b));
    assert!(ra + rb >= 3, "gc runs: {ra} + {rb}");
    assert!(
        ra == 0 || rb == 0,
        "one replica holds the lease and runs every collection: {ra} and {rb}"
    );
    let (holder, other) = match ra > 0 {
        true => (&mut a, &mut b),
        false => (&mut b, &mut a),
    };
    holder.kill();
    // The lease runs out after two intervals; then the other replica takes over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gc_runs(other) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took the lease over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let orphan = format!("blobs/{}/00112233445566778899aabbccddeeff", new_id());
    plant_orphan(&other.ns, &orphan).await;
    while object_exists(&other.ns, &orphan).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was not collected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A stopped server whose registry holds one template of one version; with its id.
async fn one_template_stopped(seed: u64) -> (Server, String) {
    let mut s = Server::start();
    let a = new_id();
    push(
        &s,
        &a,
        &format!("a-{}", &a[..8]),
        "v1",
        &[&image(10_000, seed)],
    )
    .await;
    s.kill();
    (s, a)
}

#[tokio::test(flavor = "multi_thread")]
async fn reindex_refuses_a_live_index_unless_forced() {
    let (s, _) = one_template_stopped(41).await;
    let out = Command::new(vmreg_bin())
        .args(["admin", "reindex"])
        .args(s.ns.store_args())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the index is live (1 templates)") && stderr.contains("--force"));
    let (code, stdout) = admin(&s.ns, &["reindex", "--force"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("reindexed 1 templates, 1 versions"),
        "{stdout}"
    );
    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 0, "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_uploads_past_the_session_lifetime_are_purged_by_gc() {
    let mut s = Server::start();
    let c = reqwest::Client::new();
    let open = async |repo: &str| {
        let reply = c
            .post(s.at(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 202);
        reply.headers()["location"].to_str().unwrap().to_string()
    };
    let (stale, fresh) = (open("old/vm").await, open("new/vm").await);
    for loc in [&stale, &fresh] {
        let reply = c
            .patch(s.at(loc))
            .header("content-range", "0-99")
            .body(vec![5u8; 100])
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 202);
    }
    s.kill();

    // The first upload was started a week and a day ago.
    let (meta, blobs) = stores(&s.ns).await;
    let id = stale.rsplit('/').next().unwrap();
    assert_eq!(
        blobs
            .list(&format!("uploads/oci/{id}/"))
            .await
            .unwrap()
            .len(),
        1
    );
    let key = keys::oci_upload(id);
    let raw = meta.get_many(std::slice::from_ref(&key)).await.unwrap()[0].clone();
    let mut upload: Value = serde_json::from_slice(&raw.unwrap()).unwrap();
    upload["created"] = Value::from(vmreg::model::now() - 8 * 24 * 3600);
    let mut tx = meta.begin().await.unwrap();
    tx.put(&key, serde_json::to_vec(&upload).unwrap());
    assert!(tx.commit().await.unwrap());
    drop((meta, blobs));

    let dry = gc(&s.ns, &["--dry-run"]);
    assert_eq!(dry["sessions"], 1, "{dry:#}");
    let report = gc(&s.ns, &[]);
    assert_eq!(report["sessions"], 1, "{report:#}");
    let (meta, blobs) = stores(&s.ns).await;
    assert_eq!(meta.members(keys::OCI_UPLOADS).await.unwrap().len(), 1);
    assert!(
        blobs
            .list(&format!("uploads/oci/{id}/"))
            .await
            .unwrap()
            .is_empty(),
        "the expired upload's bytes are gone"
    );
    drop((meta, blobs));

    s.restart();
    let gone = c.get(s.at(&stale)).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let kept = c.get(s.at(&fresh)).send().await.unwrap();
    assert_eq!(kept.status().as_u16(), 204);
    assert_eq!(kept.headers()["range"], "0-99");
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_uploads_opened_before_their_set_are_adopted_by_gc_and_then_expire() {
    let mut s = Server::start();
    let c = reqwest::Client::new();
    let mut ids = Vec::new();
    for repo in ["legacy/old", "legacy/new"] {
        let reply = c
            .post(s.at(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status().as_u16(), 202);
        let loc = reply.headers()["location"].to_str().unwrap().to_string();
        ids.push((loc.rsplit('/').next().unwrap().to_string(), loc));
    }
    s.kill();

    // As opened before the set existed: records without members; the first one old.
    let (meta, _) = stores(&s.ns).await;
    let key = keys::oci_upload(&ids[0].0);
    let raw = meta.get_many(std::slice::from_ref(&key)).await.unwrap()[0].clone();
    let mut upload: Value = serde_json::from_slice(&raw.unwrap()).unwrap();
    upload["created"] = Value::from(vmreg::model::now() - 8 * 24 * 3600);
    let mut tx = meta.begin().await.unwrap();
    tx.put(&key, serde_json::to_vec(&upload).unwrap());
    for (id, _) in &ids {
        tx.set_remove(keys::OCI_UPLOADS, id);
    }
    assert!(tx.commit().await.unwrap());
    drop(meta);

    let dry = gc(&s.ns, &["--dry-run"]);
    assert_eq!(dry["oci_uploads_adopted"], 2, "{dry:#}");
    let (meta, _) = stores(&s.ns).await;
    assert!(
        meta.members(keys::OCI_UPLOADS).await.unwrap().is_empty(),
        "a dry run adopts nothing"
    );
    drop(meta);
    let report = gc(&s.ns, &[]);
    assert_eq!(report["oci_uploads_adopted"], 2, "{report:#}");
    assert_eq!(
        report["sessions"], 1,
        "the old one expired in the same run: {report:#}"
    );
    let (meta, _) = stores(&s.ns).await;
    assert_eq!(
        meta.members(keys::OCI_UPLOADS).await.unwrap(),
        vec![ids[1].0.clone()]
    );
    drop(meta);
    assert_eq!(gc(&s.ns, &[])["oci_uploads_adopted"], 0);

    s.restart();
    let gone = c.get(s.at(&ids[0].1)).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let kept = c.get(s.at(&ids[1].1)).send().await.unwrap();
    assert_eq!(kept.status().as_u16(), 204);
}

/// An image manifest with no layers.
const EMPTY_MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;

/// The content record of OCI bytes.
async fn oci_record(meta: &dyn MetaStore, data: &[u8]) -> FileRecord {
    record(meta, &format!("oci-sha256-{}", sha256_hex(data))).await
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_collects_oci_blobs_nothing_holds_and_fsck_judges_them() {
    let mut s = Server::start();
    let c = reqwest::Client::new();
    let (kept, dropped) = (b"an oci layer a repository holds", b"an oci layer deleted");
    push_oci_blob(&s, kept).await;
    push_oci_blob(&s, dropped).await;
    let reply = c
        .put(s.at("/v2/lifecycle/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(EMPTY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 201);
    let dropped_digest = format!("sha256:{}", sha256_hex(dropped));
    let reply = c
        .delete(s.at(&format!("/v2/lifecycle/blobs/{dropped_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    // An upload in flight: the bytes its first whole part made are held by its session.
    let reply = c
        .post(s.at("/v2/lifecycle/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    let location = reply.headers()["location"].to_str().unwrap().to_string();
    let upload = location
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    s.kill();

    let (meta, blobs) = stores(&s.ns).await;
    let in_flight = format!("blobs/oci/{upload}");
    blobs.put(&in_flight, vec![5u8; 64].into()).await.unwrap();
    // Bytes a crash left between writing an object and recording it (a manifest PUT, or an
    // upload completed but not recorded): nothing holds them.
    let orphan = format!("blobs/oci/{}", uuid::Uuid::new_v4().simple());
    blobs.put(&orphan, vec![6u8; 77].into()).await.unwrap();
    let kept_object = oci_record(&*meta, kept).await.object;
    let manifest_object = oci_record(&*meta, EMPTY_MANIFEST).await.object;
    drop((meta, blobs));

    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        problems(&report),
        vec![("orphan_object".to_string(), orphan.clone())],
        "{report:#}"
    );
    assert_eq!(report["oci_objects"], 4, "{report:#}");

    let dry = gc(&s.ns, &["--dry-run", "--grace", "0s"]);
    assert_eq!(dry["objects"], serde_json::json!([orphan]), "{dry:#}");
    let young = gc(&s.ns, &[]);
    assert_eq!(
        young["objects"],
        serde_json::json!([]),
        "the grace keeps it"
    );
    let report = gc(&s.ns, &["--grace", "0s"]);
    assert_eq!(report["objects"], serde_json::json!([orphan]), "{report:#}");
    assert_eq!(report["bytes"], 77);
    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 0, "{report:#}");
    for held in [&kept_object, &manifest_object, &in_flight] {
        assert!(object_exists(&s.ns, held).await, "{held} is kept");
    }
    assert!(!object_exists(&s.ns, &orphan).await);

    // A content record counting other holders than there are is reported.
    let (meta, _) = stores(&s.ns).await;
    let mut miscounted = oci_record(&*meta, kept).await;
    miscounted.refs = 3;
    put_record(&*meta, &miscounted).await;
    drop(meta);
    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        vec![("ref_count_mismatch".to_string(), miscounted.key.clone())],
        "{report:#}"
    );

    // What gc kept still serves.
    s.restart();
    let kept_digest = format!("sha256:{}", sha256_hex(kept));
    for (path, want) in [
        (format!("blobs/{kept_digest}"), &kept[..]),
        ("manifests/v1".to_string(), EMPTY_MANIFEST),
    ] {
        let reply = c.get(s.at(&format!("/v2/lifecycle/{path}"))).send().await;
        let body = reply.unwrap().bytes().await.unwrap();
        assert_eq!(&body[..], want, "{path}");
    }
}

/// Runs gc; the commit records it adopted and expired.
fn commit_record_counts(ns: &Namespace) -> (u64, u64) {
    let report = gc(ns, &[]);
    let count = |name: &str| {
        report[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{report:#}"))
    };
    (count("commit_records_adopted"), count("commit_records"))
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_adopts_commit_records_older_than_their_set_and_expires_them() {
    let (s, a) = one_template_stopped(51).await;
    let (meta, _) = stores(&s.ns).await;
    // A commit record as written before commit records were listed in a set.
    let mut tx = meta.begin().await.unwrap();
    tx.put(&keys::pushed("legacy"), serde_json::to_vec(&a).unwrap());
    assert!(tx.commit().await.unwrap());
    drop(meta);

    let dry = gc(&s.ns, &["--dry-run"]);
    assert_eq!(dry["commit_records_adopted"], 1, "{dry:#}");
    // Found now, it lives one more session lifetime.
    assert_eq!(commit_record_counts(&s.ns), (1, 0));
    let (meta, _) = stores(&s.ns).await;
    let members = meta.members(keys::PUSHED).await.unwrap();
    let adopted = members
        .iter()
        .find(|m| m.ends_with("/legacy"))
        .unwrap_or_else(|| panic!("{members:?}"))
        .clone();
    let at: u64 = adopted.split('/').next().unwrap().parse().unwrap();
    assert!(at + 60 > vmreg::model::now(), "dated when found: {adopted}");
    // A week later it expires as the others do.
    let mut tx = meta.begin().await.unwrap();
    tx.set_remove(keys::PUSHED, &adopted);
    tx.set_add(keys::PUSHED, &keys::pushed_member(1_000_000, "legacy"));
    assert!(tx.commit().await.unwrap());
    drop(meta);
    assert_eq!(commit_record_counts(&s.ns), (0, 1));
    let (meta, _) = stores(&s.ns).await;
    assert!(
        meta.get_json::<String>(&keys::pushed("legacy"))
            .await
            .unwrap()
            .is_none(),
        "the legacy record is gone"
    );
    assert_eq!(meta.members(keys::PUSHED).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_aborts_uploads_older_than_the_vendors_days_even_when_a_push_holds_them() {
    let mut s = Server::start();
    let file = image(40_000, 61);
    let b = new_id();
    let open = negotiate(&s, &b, &format!("b-{}", &b[..8]), "wip", &[&file]).await;
    s.kill();
    let (_, blobs) = stores(&s.ns).await;
    let handle = blobs
        .begin_upload(&format!("blobs/{}/{open}", file.name))
        .await
        .unwrap();
    if !s3_backend() {
        backdate(
            &s.ns.dir.join("data/uploads").join(&handle.upload_id),
            "2 days ago",
        );
    }
    drop(blobs);
    let vendor = "ANKA_BACKEND_S3_ABORT_INCOMPLETE_MULTIPART_UPLOAD_DAYS";

    // Held by an open push (S3), or younger than a push's lifetime (local store): kept.
    assert_eq!(gc(&s.ns, &["--grace", "0s"])["uploads"], 0);
    let (code, out) = admin_with_env(&s.ns, &[(vendor, "3")], &["gc", "--json", "--grace", "0s"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["uploads"], 0);
    let (code, out) = admin_with_env(&s.ns, &[(vendor, "1")], &["gc", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    if s3_backend() {
        // An S3 upload cannot be made older than now: it is young, and kept.
        assert_eq!(report["uploads"], 0, "{report:#}");
        let (meta, blobs) = stores(&s.ns).await;
        let registry = vmreg::registry::Registry::new(meta, blobs, 5 << 20, 1);
        let options = vmreg::registry::sweep::GcOptions {
            grace: std::time::Duration::from_secs(3600),
            session_ttl: vmreg::registry::UPLOAD_SESSION_TTL,
            dry_run: false,
            abort_uploads_after: Some(std::time::Duration::ZERO),
        };
        assert_eq!(registry.collect(options).await.unwrap().uploads, 1);
    } else {
        assert_eq!(report["uploads"], 1, "two days old, past one: {report:#}");
    }
    let (_, blobs) = stores(&s.ns).await;
    assert!(
        blobs.list_uploads().await.unwrap().is_empty(),
        "the upload is aborted"
    );
}

/// One step of a push, asked again while the registry answers 503 (busy under contention).
async fn call_until_served(method: Method, url: &str, body: Option<Vec<u8>>) -> Reply {
    for _ in 0..40 {
        let reply = call(method.clone(), url, body.clone()).await;
        if reply.status != 503 {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{method} {url}: still busy");
}

/// Pushes a version through negotiation, uploads and commit; panics on any refusal.
async fn push_through(s: &Server, id: &str, name: &str, tag: &str, files: &[&TestFile]) {
    let request = serde_json::to_vec(&push_request(id, name, tag, files)).unwrap();
    let plan = call_until_served(Method::POST, &s.at("/api/v1/push"), Some(request)).await;
    let plan = plan.ok_body().clone();
    let session = plan["session"].as_str().unwrap();
    for planned in plan["files"].as_array().unwrap() {
        if planned["upload"] == true {
            let file = files.iter().find(|f| f.name == planned["name"]).unwrap();
            let key = encode_path(planned["key"].as_str().unwrap());
            let url = s.at(&format!("/api/v1/push/{session}/files/{key}?offset=0"));
            call_until_served(Method::PUT, &url, Some(file.data.clone()))
                .await
                .ok_body();
        }
    }
    let commit = s.at(&format!("/api/v1/push/{session}/commit"));
    let done = call_until_served(Method::POST, &commit, None).await;
    assert_eq!(done.ok_body()["tag"], tag, "{name} {tag}");
}

/// Invariant 3 under load: gc with no grace at all, run over and over (by the server's
/// periodic task, and on S3 + Redis also by `vmreg admin gc` processes beside it), races
/// 200 pushes of templates that share layers by name and content, while throwaway
/// templates holding a layer of their own are deleted as soon as they are pushed, so that
/// layer's records and objects come and go. Every version pulls byte-identical after, and
/// fsck is clean after one more pass.
#[tokio::test(flavor = "multi_thread")]
async fn gc_racing_200_pushes_that_reuse_layers_never_removes_a_referenced_file() {
    use futures_util::stream::{self, StreamExt};
    const PUSHES: usize = 200;
    const TEMPLATES: usize = 8;
    let mut s = Server::start_with(&["--gc-interval", "100ms", "--gc-grace", "0s"]);
    let run = &new_id()[..8];
    let shared: Vec<TestFile> = (0..4)
        .map(|i| {
            TestFile::new(
                &format!("shared-{run}-{i}.ank"),
                "image",
                20_000 + i * 7_000,
                40 + i as u64,
            )
        })
        .collect();
    let churn = TestFile::new(&format!("churn-{run}.ank"), "image", 30_000, 49);
    let nvram = TestFile::new("nvram", "nvram", 2048, 50);
    let templates: Vec<String> = (0..TEMPLATES).map(|_| new_id()).collect();
    // Push k: its own top layer, two shared layers, the shared nvram; every tenth goes to a
    // throwaway template (with the churn layer) that is deleted once committed.
    let tops: Vec<TestFile> = (0..PUSHES)
        .map(|k| image(5_000 + k * 37, 1000 + k as u64))
        .collect();
    let doomed = |k: usize| k % 10 == 9;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin_gc = (s3_backend()).then(|| {
        let (ns, stop) = (s.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                gc(&ns, &["--grace", "0s"]);
                runs += 1;
            }
            runs
        })
    });
    let started = std::time::Instant::now();
    let gc_before = gc_runs(&s);
    stream::iter(0..PUSHES)
        .for_each_concurrent(8, |k| {
            let (s, shared, churn, nvram, tops, templates) =
                (&s, &shared, &churn, &nvram, &tops, &templates);
            async move {
                let (a, b) = (&shared[k % 4], &shared[(k + 1) % 4]);
                let tag = format!("v{k}");
                if doomed(k) {
                    let id = new_id();
                    let name = format!("doomed-{run}-{k}");
                    push_through(s, &id, &name, &tag, &[&tops[k], churn, a, nvram]).await;
                    let url = s.at(&format!("/registry/vm?id={id}"));
                    call_until_served(Method::DELETE, &url, None)
                        .await
                        .ok_body();
                } else {
                    let id = &templates[k % TEMPLATES];
                    let name = format!("t{}-{run}", k % TEMPLATES);
                    push_through(s, id, &name, &tag, &[&tops[k], a, b, nvram]).await;
                }
            }
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let admin_runs = admin_gc.map(|t| t.join().unwrap()).unwrap_or(0);
    let periodic_runs = gc_runs(&s) - gc_before;
    println!(
        "{PUSHES} pushes in {:.1} s beside {periodic_runs} periodic and {admin_runs} admin gc runs",
        started.elapsed().as_secs_f64()
    );
    assert!(
        periodic_runs + admin_runs >= 5,
        "gc ran along: {periodic_runs} + {admin_runs}"
    );

    // Every version of the kept templates pulls byte-identical.
    let mut fetched: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for k in (0..PUSHES).filter(|k| !doomed(*k)) {
        let id = &templates[k % TEMPLATES];
        let url = s.at(&format!("/api/v1/templates/{id}/manifest?tag=v{k}"));
        let manifest = get(&url).await.ok_body().clone();
        let expected = [&tops[k], &shared[k % 4], &shared[(k + 1) % 4], &nvram];
        let files = manifest["files"].as_array().unwrap();
        assert_eq!(files.len(), expected.len(), "v{k}: {manifest}");
        for (file, want) in files.iter().zip(expected) {
            assert_eq!(file["sha256"], want.sha256(), "v{k}: {}", file["name"]);
            let key = file["key"].as_str().unwrap().to_string();
            if !fetched.contains_key(&key) {
                let bytes = download(&s, &key).await;
                fetched.insert(key.clone(), bytes);
            }
            assert!(fetched[&key] == want.data, "v{k}: {key} differs");
        }
    }
    for k in (0..PUSHES).filter(|k| doomed(*k)) {
        assert!(!fetched.keys().any(|key| key == &tops[k].name));
    }

    s.kill();
    gc(&s.ns, &["--grace", "0s"]);
    let (code, report) = fsck(&s.ns, &[]);
    assert_eq!(code, 0, "clean after one more pass: {report:#}");
}
