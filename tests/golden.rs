//! The seed's examples as a test: every request example of the vendor's API page
//! (`tests/golden/*.json`, transcribed from it) is replayed against a registry holding the
//! same templates (same ids, names, tags and layer names, small files), and each reply is
//! compared with the page's example reply key by key and type by type.
//!
//! A data file holds the templates to push and the examples in the page's order. An
//! example's `formats` names the values that depend on the data (sizes, dates, versions),
//! compared by format instead of value; `vmreg_adds` names each key vmreg adds to the
//! vendor's reply, with its shape and the reason. Any other key missing or extra, any type
//! or value changed, fails; so does a `formats` or `vmreg_adds` entry that no longer
//! matches anything, so the data files cannot drift from the replies either.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Scenario {
    section: String,
    /// Flags of `vmreg serve` (the page's key-management examples need auth on).
    #[serde(default)]
    server_args: Vec<String>,
    templates: Vec<TemplateSpec>,
    /// Requests that make the state an example shows (keys, say); each must succeed.
    #[serde(default)]
    setup: Vec<Request>,
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct TemplateSpec {
    id: String,
    name: String,
    versions: Vec<VersionSpec>,
}

#[derive(Deserialize)]
struct VersionSpec {
    tag: String,
    #[serde(default)]
    description: String,
    images: Vec<String>,
    #[serde(default)]
    state_files: Vec<String>,
    /// The VM configuration; a generated Intel one when absent.
    config: Option<Value>,
}

#[derive(Deserialize)]
struct Example {
    /// The page's command, verbatim, for the reader.
    curl: String,
    request: Request,
    reply: Value,
    #[serde(default)]
    formats: BTreeMap<String, String>,
    #[serde(default)]
    vmreg_adds: BTreeMap<String, Addition>,
    /// Arrays compared as sets (vmreg's listing order differs from the page's example).
    #[serde(default)]
    unordered: Vec<String>,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    path: String,
    body: Option<String>,
    /// `[user, password]` for HTTP Basic authentication, as the page's `root:<token>`.
    basic_auth: Option<(String, String)>,
}

#[derive(Deserialize)]
struct Addition {
    /// An example value: the reply's value must have its type, recursively.
    shape: Value,
    why: String,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn scenarios() -> Vec<(String, Scenario)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let scenario = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not a golden scenario: {e}"));
            (name, scenario)
        })
        .collect()
}

/// A small layer whose bytes follow from its name, so a layer shared by tags (and
/// deduplicated by name) is the same file every time.
fn layer(name: &str, kind: &'static str) -> TestFile {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    TestFile::new(name, kind, 2048 + (seed % 2048) as usize, seed)
}

async fn push_template(server: &Server, t: &TemplateSpec) {
    for v in &t.versions {
        let mut files: Vec<TestFile> = v.images.iter().map(|n| layer(n, "image")).collect();
        files.extend(v.state_files.iter().map(|n| layer(n, "state")));
        files.push(layer(&format!("{}/{}", t.id, v.tag), "nvram"));
        files.last_mut().unwrap().name = "nvram".into();
        let images: Vec<&TestFile> = files.iter().filter(|f| f.kind == "image").collect();
        let config = v
            .config
            .clone()
            .unwrap_or_else(|| config(&t.id, &t.name, &images));
        let refs: Vec<&TestFile> = files.iter().collect();
        let request = serde_json::json!({
            "id": t.id, "name": t.name, "tag": v.tag, "description": v.description,
            "config": config,
            "files": refs.iter().map(|f| serde_json::json!({
                "name": f.name, "kind": f.kind, "size": f.data.len(), "sha256": f.sha256()
            })).collect::<Vec<_>>(),
        });
        try_push_request(server, &request, &refs).await.ok_body();
    }
}

async fn send(server: &Server, r: &Request) -> Reply {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("an HTTP method");
    let mut req = reqwest::Client::new().request(method, server.at(&r.path));
    if let Some(body) = &r.body {
        req = req.body(body.clone());
    }
    if let Some((user, password)) = &r.basic_auth {
        req = req.basic_auth(user, Some(password));
    }
    send_request(req).await
}

/// Compares a reply with the page's, collecting every difference.
struct Comparison<'a> {
    example: &'a Example,
    used: BTreeSet<String>,
    errors: Vec<String>,
}

impl Comparison<'_> {
    fn compare(&mut self, path: &str, seed: &Value, actual: &Value) {
        if let Some(format) = self.example.formats.get(path) {
            self.used.insert(path.to_string());
            if let Err(e) = check_format(format, actual) {
                self.errors.push(format!("{path}: {e}"));
            }
            return;
        }
        match (seed, actual) {
            (Value::Object(s), Value::Object(a)) => {
                let adds: BTreeMap<&str, &Addition> = self
                    .example
                    .vmreg_adds
                    .iter()
                    .filter_map(|(p, add)| child_key(path, p).map(|k| (k, add)))
                    .collect();
                for key in s.keys() {
                    if !a.contains_key(key) {
                        self.errors.push(format!("{path}: key {key:?} missing"));
                    }
                }
                for (key, value) in a {
                    let child = join(path, key);
                    match (s.get(key), adds.get(key.as_str())) {
                        (Some(seed_value), _) => self.compare(&child, seed_value, value),
                        (None, Some(add)) => {
                            self.used.insert(child.clone());
                            if let Err(e) = same_shape(&add.shape, value) {
                                self.errors.push(format!("{child} (added by vmreg): {e}"));
                            }
                        }
                        (None, None) => self
                            .errors
                            .push(format!("{path}: key {key:?} is not in the seed")),
                    }
                }
                for key in adds.keys().filter(|k| !a.contains_key(**k)) {
                    self.errors
                        .push(format!("{path}: key {key:?} (added by vmreg) missing"));
                }
            }
            (Value::Array(s), Value::Array(a)) => {
                if s.len() != a.len() {
                    self.errors.push(format!(
                        "{path}: {} elements, the seed has {}",
                        a.len(),
                        s.len()
                    ));
                    return;
                }
                let (s, a) = if self.example.unordered.iter().any(|p| p == path) {
                    (sorted(s), sorted(a))
                } else {
                    (s.clone(), a.clone())
                };
                let child = format!("{path}[]");
                for (sv, av) in s.iter().zip(&a) {
                    self.compare(&child, sv, av);
                }
            }
            _ if seed == actual => {}
            _ => self.errors.push(format!(
                "{path}: {actual} ({}), the seed has {seed} ({})",
                type_name(actual),
                type_name(seed)
            )),
        }
    }
}

/// `key` when `full` is a direct child of `parent` (`body[].arch` of `body[]`).
fn child_key<'a>(parent: &str, full: &'a str) -> Option<&'a str> {
    let rest = if parent.is_empty() {
        full
    } else {
        full.strip_prefix(parent)?.strip_prefix('.')?
    };
    (!rest.contains('.') && !rest.contains("[]")).then_some(rest)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn sorted(values: &[Value]) -> Vec<Value> {
    let mut v = values.to_vec();
    v.sort_by_key(|x| x.to_string());
    v
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The reply's value has the example's type, recursively: the same keys of objects, and
/// every array element the shape of the example's first.
fn same_shape(shape: &Value, actual: &Value) -> Result<(), String> {
    match (shape, actual) {
        (Value::Object(s), Value::Object(a)) => {
            let sk: BTreeSet<&String> = s.keys().collect();
            let ak: BTreeSet<&String> = a.keys().collect();
            if sk != ak {
                return Err(format!("keys {ak:?}, expected {sk:?}"));
            }
            s.iter().try_for_each(|(k, v)| same_shape(v, &a[k]))
        }
        (Value::Array(s), Value::Array(a)) => match s.first() {
            Some(first) => a.iter().try_for_each(|v| same_shape(first, v)),
            None => Ok(()),
        },
        _ if type_name(shape) == type_name(actual) => Ok(()),
        _ => Err(format!(
            "{actual} is {}, expected {}",
            type_name(actual),
            type_name(shape)
        )),
    }
}

/// Values that depend on the data: compared by format.
fn check_format(format: &str, v: &Value) -> Result<(), String> {
    let ok = match format {
        "bytes" => v.as_u64().is_some_and(|n| n > 0),
        "rfc3339" => v.as_str().is_some_and(is_rfc3339),
        "base64" => v.as_str().is_some_and(|s| {
            s.len() >= 16
                && s.len() % 4 == 0
                && s.trim_end_matches('=')
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
        }),
        // `1.13.0-24e848a5`: a release at least 1.7.0 (the v2 API), a build suffix.
        "vendor-version" => v.as_str().is_some_and(|s| {
            let Some((release, build)) = s.split_once('-') else {
                return false;
            };
            let parts: Vec<u64> = release.split('.').filter_map(|n| n.parse().ok()).collect();
            parts.len() == 3 && parts >= vec![1, 7, 0] && !build.is_empty()
        }),
        other => return Err(format!("unknown format {other:?} in the data file")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{v} is not {format}"))
    }
}

fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    s.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || s[19..].contains(['+', '-']))
}

#[tokio::test]
async fn every_example_of_the_seed_gets_the_seeds_reply() {
    let mut covered = 0;
    let mut failures = Vec::new();
    for (file, scenario) in scenarios() {
        let args: Vec<&str> = scenario.server_args.iter().map(String::as_str).collect();
        let server = Server::start_with(&args);
        for t in &scenario.templates {
            push_template(&server, t).await;
        }
        for r in &scenario.setup {
            send(&server, r).await.ok_body();
        }
        for (i, example) in scenario.examples.iter().enumerate() {
            let reply = send(&server, &example.request).await;
            let mut cmp = Comparison {
                example,
                used: BTreeSet::new(),
                errors: Vec::new(),
            };
            if reply.status != 200 {
                cmp.errors.push(format!("HTTP {}", reply.status));
            }
            cmp.compare("", &example.reply, &reply.json);
            let declared = example.formats.keys().chain(example.vmreg_adds.keys());
            for path in declared.filter(|p| !cmp.used.contains(*p)) {
                cmp.errors.push(format!(
                    "{path}: declared in the data file but not in the reply"
                ));
            }
            for add in example.vmreg_adds.values() {
                assert!(!add.why.is_empty(), "{file}: every addition says why");
            }
            if !cmp.errors.is_empty() {
                failures.push(format!(
                    "{file} #{i} ({}): {}\n  reply: {}\n  - {}",
                    scenario.section,
                    example.curl,
                    reply.json,
                    cmp.errors.join("\n  - ")
                ));
            }
            covered += 1;
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
    eprintln!("golden: {covered} examples of the seed matched");
    assert_eq!(
        covered, SEED_EXAMPLES,
        "every example reply of the seed has its data file"
    );
}

/// The example replies of the seed's REST API section held here: status 1, list v1 2,
/// list v2 2, delete 1, vm/info 1, revert 3, arch 3, key management 4.
const SEED_EXAMPLES: usize = 17;

#[test]
fn the_comparison_catches_drift_either_way() {
    let example: Example = serde_json::from_value(serde_json::json!({
        "curl": "-", "request": {"method": "GET", "path": "/", "basic_auth": null},
        "reply": {"status": "OK", "body": {"a": 1, "b": [{"c": ""}], "size": 5}, "message": ""},
        "formats": {"body.size": "bytes"},
        "vmreg_adds": {"body.x": {"shape": 0, "why": "test"}}
    }))
    .unwrap();
    let check = |actual: Value| {
        let mut cmp = Comparison {
            example: &example,
            used: BTreeSet::new(),
            errors: Vec::new(),
        };
        cmp.compare("", &example.reply, &actual);
        cmp.errors
    };
    let good = serde_json::json!({"status": "OK", "body": {"a": 1, "b": [{"c": ""}], "size": 9, "x": 2}, "message": ""});
    assert_eq!(check(good.clone()), Vec::<String>::new());
    let mut missing = good.clone();
    missing["body"].as_object_mut().unwrap().remove("a");
    assert_eq!(check(missing).len(), 1);
    let mut extra = good.clone();
    extra["body"]["b"][0]["d"] = Value::Null;
    assert_eq!(check(extra).len(), 1);
    let mut retyped = good.clone();
    retyped["body"]["b"][0]["c"] = Value::Null;
    assert_eq!(check(retyped).len(), 1);
    let mut add_retyped = good.clone();
    add_retyped["body"]["x"] = Value::String("2".into());
    assert_eq!(check(add_retyped).len(), 1);
    let mut add_missing = good.clone();
    add_missing["body"].as_object_mut().unwrap().remove("x");
    assert_eq!(check(add_missing).len(), 1);
    let mut bad_size = good;
    bad_size["body"]["size"] = Value::String("9".into());
    assert_eq!(check(bad_size).len(), 1);
    assert!(check_format("vendor-version", &Value::String("1.13.0-24e848a5".into())).is_ok());
    assert!(check_format("vendor-version", &Value::String("0.1.0".into())).is_err());
    assert!(check_format("vendor-version", &Value::String("1.6.9-x".into())).is_err());
    assert!(check_format(
        "rfc3339",
        &Value::String("2021-09-21T14:35:08.823236-04:00".into())
    )
    .is_ok());
}
