//! Manifests and indexes: stored byte for byte as pushed (clients hash what they
//! receive), held under their digest, pointed at by tags, and listed as referrers of the
//! manifest their `subject` names.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    blob_key, hold, linked_content, parse_digest, sha256_of_digest, validate_oci_tag,
    validate_repo, Algorithm, OciError, OciResult,
};
use crate::digest::sha256_hex;
use crate::meta::{keys, MetaStoreExt, MetaTxExt};
use crate::model::FileRecord;
use crate::registry::gc::{delete_objects, release, Release};
use crate::registry::{transact, Registry, RegistryError, RegistryResult};
use crate::store::keys as object_keys;

/// Largest manifest accepted, as distribution does (4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// An OCI image manifest: also what an artifact is pushed as since OCI 1.1 (with its
/// `artifactType`), and the type a manifest sent without one is taken for.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The media types a manifest is stored and served with: OCI image manifests and
/// indexes, Docker's schema 2 manifests and manifest lists (what docker and skopeo push
/// by default), and the OCI 1.1 release candidates' artifact manifest, which oras pushed
/// and which must name its `artifactType`. Anything else, `text/html` say, would be served
/// back under that type from this origin, so it is refused; so is Docker's schema 1,
/// unsupported by distribution since 2.8 and by every client the tests run.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    OCI_ARTIFACT_MANIFEST,
];

/// The OCI 1.1 release candidates' artifact manifest.
const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// The media type a pushed manifest is kept under: the `Content-Type` sent (its type
/// without parameters, lower case), or without one the body's own `mediaType`, or else
/// an OCI image manifest; refused unless it is one of [`MANIFEST_MEDIA_TYPES`].
fn media_type_of(
    content_type: Option<&str>,
    doc: &serde_json::Map<String, Value>,
) -> OciResult<String> {
    let essence = |t: &str| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let given = match content_type.map(essence).filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => match doc.get("mediaType") {
            Some(Value::String(t)) => essence(t.as_str()),
            Some(_) => {
                return Err(OciError::ManifestInvalid(
                    "mediaType must be a string".into(),
                ))
            }
            None => OCI_MANIFEST.to_string(),
        },
    };
    if !MANIFEST_MEDIA_TYPES.contains(&given.as_str()) {
        let shown: String = given.chars().take(100).collect();
        return Err(OciError::ManifestInvalid(format!(
            "media type {shown:?} is not a manifest type; this registry stores {}",
            MANIFEST_MEDIA_TYPES.join(", ")
        )));
    }
    let artifact_type = doc.get("artifactType").and_then(Value::as_str);
    if given == OCI_ARTIFACT_MANIFEST && artifact_type.map_or(true, str::is_empty) {
        return Err(OciError::ManifestInvalid(format!(
            "an {OCI_ARTIFACT_MANIFEST} needs its artifactType"
        )));
    }
    Ok(given)
}

/// The type a stored manifest is served with: its own, or for a record stored before
/// types were checked with one that is not a manifest type, an OCI image manifest's.
fn served_media_type(stored: String) -> String {
    match MANIFEST_MEDIA_TYPES.contains(&stored.as_str()) {
        true => stored,
        false => OCI_MANIFEST.to_string(),
    }
}

/// A stored manifest's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct ManifestRecord {
    media_type: String,
    size: u64,
    /// The object holding the bytes.
    pub(super) object: String,
    /// The digest its `subject` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    /// Its `artifactType`, or for an image its config's media type, as referrers show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<Value>,
    /// The SHA-256 hex of the bytes, which the content is stored under, when the digest
    /// naming the manifest is in another algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) content: Option<String>,
    /// Bytes of what it lists as the store holds them (see [`Registry::oci_held_size`]);
    /// `None` in records made before it was kept. (Records made before that kept a
    /// `listed_size`, the sizes the manifest claimed, which nothing reads.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) held_size: Option<u64>,
}

/// A manifest as served.
#[derive(Clone, Debug)]
pub struct OciManifest {
    /// The digest of the bytes (`sha256:` or `sha512:`, as the manifest was named).
    pub digest: String,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The bytes exactly as pushed.
    pub bytes: Bytes,
}

/// A stored manifest as the referrers list describes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// The manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its artifact type, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations, when it has some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
}

/// What a manifest says about itself that the registry keeps.
struct Parsed {
    media_type: String,
    listed: Listed,
    subject: Option<String>,
    artifact_type: Option<String>,
    annotations: Option<Value>,
}

/// What a manifest lists, by digest, each once: the `layers` of an image (a VM's disk
/// pieces), or the `manifests` of an index. The sizes its descriptors claim are not read:
/// a listing shows what the store holds.
#[derive(Debug, Default, PartialEq)]
pub(super) enum Listed {
    /// Blobs of the repository.
    Blobs(Vec<String>),
    /// Manifests of the repository.
    Manifests(Vec<String>),
    /// Nothing.
    #[default]
    Nothing,
}

/// What `doc` lists (see [`Listed`]); descriptors without a valid digest list nothing.
pub(super) fn listed_in(doc: &serde_json::Map<String, Value>) -> Listed {
    let digests = |items: &Value| {
        let mut out: Vec<String> = items
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("digest").and_then(Value::as_str))
            .filter(|d| parse_digest(d).is_ok())
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    };
    match (doc.get("layers"), doc.get("manifests")) {
        (Some(layers), _) => Listed::Blobs(digests(layers)),
        (None, Some(manifests)) => Listed::Manifests(digests(manifests)),
        (None, None) => Listed::Nothing,
    }
}

/// Reads the fields the registry indexes, and the media type it is kept under (see
/// [`media_type_of`]); anything else in the manifest is the client's.
fn parse(bytes: &[u8], content_type: Option<&str>) -> OciResult<Parsed> {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(OciError::ManifestInvalid("not a JSON object".into()));
    };
    let media_type = media_type_of(content_type, &doc)?;
    let subject = match doc.get("subject") {
        None | Some(Value::Null) => None,
        Some(s) => match s.get("digest").and_then(Value::as_str) {
            Some(d) if parse_digest(d).is_ok() => Some(d.to_string()),
            _ => {
                return Err(OciError::ManifestInvalid(
                    "subject must be a descriptor with a sha256 or sha512 digest".into(),
                ))
            }
        },
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let artifact_type = text(doc.get("artifactType"))
        .or_else(|| text(doc.get("config").and_then(|c| c.get("mediaType"))));
    let annotations = doc.get("annotations").filter(|a| a.is_object()).cloned();
    Ok(Parsed {
        media_type,
        listed: listed_in(&doc),
        subject,
        artifact_type,
        annotations,
    })
}

/// The digest a reference names (with its algorithm), or the tag it is.
enum Reference<'a> {
    Digest(&'a str, Algorithm),
    Tag(&'a str),
}

fn reference(reference: &str) -> OciResult<Reference<'_>> {
    match reference.contains(':') {
        true => parse_digest(reference).map(|(a, _)| Reference::Digest(reference, a)),
        false => validate_oci_tag(reference).map(|()| Reference::Tag(reference)),
    }
}

/// Maps the "nothing there" of a transaction to `unknown`.
fn or_unknown(unknown: OciError) -> impl FnOnce(RegistryError) -> OciError {
    move |e| match e {
        RegistryError::NotFound(_) => unknown,
        e => OciError::Registry(e),
    }
}

impl Registry {
    /// The bytes of what a manifest lists as the store holds them: each distinct blob of
    /// an image, or manifest of an index, that `repo` holds, at the size of its stored
    /// content. A digest the repository does not hold counts nothing, and no size a
    /// manifest claims is believed, so a listing never shows more than is stored.
    pub(super) async fn oci_held_size(&self, repo: &str, listed: &Listed) -> RegistryResult<u64> {
        let sizes: Vec<u64> = match listed {
            Listed::Nothing => Vec::new(),
            Listed::Blobs(digests) => {
                let links: Vec<String> = digests.iter().map(|d| keys::oci_blob(repo, d)).collect();
                let values = self.meta().get_many_json::<Value>(&links).await?;
                let contents: Vec<String> = digests
                    .iter()
                    .zip(values)
                    .filter_map(|(digest, value)| linked_content(digest, &value?))
                    .map(|hex| keys::file(&blob_key(&hex)))
                    .collect();
                let records = self.meta().get_many_json::<FileRecord>(&contents).await?;
                records.into_iter().flatten().map(|r| r.size).collect()
            }
            Listed::Manifests(digests) => {
                let records = self.oci_manifest_records(repo, digests).await?;
                records.into_iter().flatten().map(|r| r.size).collect()
            }
        };
        Ok(sizes.into_iter().fold(0u64, u64::saturating_add))
    }

    /// Stores a manifest byte for byte and points `reference` at it when it is a tag;
    /// answers its digest and the digest its `subject` names. `content_type` is the
    /// `Content-Type` it was sent with, which must be a manifest type (see
    /// [`MANIFEST_MEDIA_TYPES`]).
    pub async fn oci_put_manifest(
        &self,
        repo: &str,
        reference_: &str,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> OciResult<(String, Option<String>)> {
        validate_repo(repo)?;
        if bytes.len() > MAX_MANIFEST {
            return Err(OciError::ManifestInvalid(format!(
                "larger than {MAX_MANIFEST} bytes"
            )));
        }
        let parsed = parse(&bytes, content_type)?;
        let hex = sha256_hex(&bytes);
        // Named by a digest, the manifest is known by that digest's algorithm; by a tag,
        // by its SHA-256. Its bytes are stored once, under their SHA-256, either way.
        let named = reference(reference_)?;
        let (algorithm, tag) = match named {
            Reference::Digest(_, algorithm) => (algorithm, None),
            Reference::Tag(t) => (Algorithm::Sha256, Some(t.to_string())),
        };
        let digest = match algorithm {
            Algorithm::Sha256 => format!("sha256:{hex}"),
            other => other.digest(&other.hex(&bytes)),
        };
        let mismatched = match named {
            Reference::Digest(d, _) => d != digest,
            Reference::Tag(_) => false,
        };
        if mismatched {
            return Err(OciError::DigestInvalid(format!(
                "the manifest's digest is {digest}, not {reference_}"
            )));
        }
        self.oci_check_repo_room(repo).await?;
        self.oci_check_manifest_room(repo, &digest, tag.as_deref())
            .await?;
        // Clients push what a manifest lists before the manifest, as the spec asks.
        let held_size = self.oci_held_size(repo, &parsed.listed).await?;
        let object = object_keys::blob("oci", &uuid::Uuid::new_v4().simple().to_string());
        let fresh = FileRecord {
            key: blob_key(&hex),
            size: bytes.len() as u64,
            sha256: hex.clone(),
            object: object.clone(),
            refs: 0,
            pins: Vec::new(),
        };
        // The bytes are durable before any record points at them.
        self.blobs().put(&object, bytes).await?;
        let record_key = keys::oci_manifest(repo, &digest);
        let held = transact(self.meta(), async |tx| {
            let held = match tx.get_json::<ManifestRecord>(&record_key).await? {
                Some(existing) => existing.object,
                None => hold(tx, &fresh).await?.object,
            };
            let record = ManifestRecord {
                media_type: parsed.media_type.clone(),
                size: fresh.size,
                object: held.clone(),
                subject: parsed.subject.clone(),
                artifact_type: parsed.artifact_type.clone(),
                annotations: parsed.annotations.clone(),
                content: (algorithm != Algorithm::Sha256).then(|| hex.clone()),
                held_size: Some(held_size),
            };
            tx.put_json(&record_key, &record);
            tx.set_add(&keys::oci_manifests(repo), &digest);
            if let Some(subject) = &parsed.subject {
                tx.set_add(&keys::oci_referrers(repo, subject), &digest);
            }
            if let Some(tag) = &tag {
                tx.put_json(&keys::oci_tag(repo, tag), &digest);
                tx.set_add(&keys::oci_tags(repo), tag);
            }
            tx.set_add(keys::OCI_REPOS, repo);
            Ok(held)
        })
        .await;
        if held.as_ref().map_or(true, |h| *h != object) {
            // Stored already (or not recorded at all): keep one copy.
            let _ = self.blobs().delete(&object).await;
        }
        held?;
        Ok((digest, parsed.subject))
    }

    /// The records of `digests`' manifests in `repo`, in their order; `None` for one the
    /// repository does not hold.
    async fn oci_manifest_records(
        &self,
        repo: &str,
        digests: &[String],
    ) -> RegistryResult<Vec<Option<ManifestRecord>>> {
        let record_keys: Vec<String> = digests
            .iter()
            .map(|d| keys::oci_manifest(repo, d))
            .collect();
        Ok(self.meta().get_many_json(&record_keys).await?)
    }

    async fn oci_manifest_record(&self, key: &str) -> OciResult<ManifestRecord> {
        match self.meta().get_json(key).await? {
            Some(record) => Ok(record),
            None => Err(OciError::ManifestUnknown),
        }
    }

    /// A manifest by tag or digest, with its bytes.
    pub async fn oci_manifest(&self, repo: &str, reference_: &str) -> OciResult<OciManifest> {
        validate_repo(repo)?;
        // A reference that cannot name a manifest names none: 404, as docker
        // distribution's router and the clients written against it expect; only a PUT
        // tells that a tag is malformed.
        let named = reference(reference_).map_err(|_| OciError::ManifestUnknown)?;
        let digest = match named {
            Reference::Digest(d, _) => d.to_string(),
            Reference::Tag(tag) => {
                match self
                    .meta()
                    .get_json::<String>(&keys::oci_tag(repo, tag))
                    .await?
                {
                    Some(digest) => digest,
                    None => return Err(OciError::ManifestUnknown),
                }
            }
        };
        let record = self
            .oci_manifest_record(&keys::oci_manifest(repo, &digest))
            .await?;
        let bytes = self.blobs().read(&record.object).await?;
        Ok(OciManifest {
            digest,
            media_type: served_media_type(record.media_type),
            bytes,
        })
    }

    /// Deletes a manifest by digest (with the tags pointing at it), or by tag only the
    /// tag, leaving the manifest reachable by its digest.
    pub async fn oci_delete_manifest(&self, repo: &str, reference_: &str) -> OciResult<()> {
        validate_repo(repo)?;
        let digest = match reference(reference_)? {
            Reference::Tag(tag) => {
                let key = keys::oci_tag(repo, tag);
                return transact(self.meta(), async |tx| {
                    if tx.get(&key).await?.is_none() {
                        return Err(RegistryError::NotFound("tag".into()));
                    }
                    tx.delete(&key);
                    tx.set_remove(&keys::oci_tags(repo), tag);
                    Ok(())
                })
                .await
                .map_err(or_unknown(OciError::ManifestUnknown));
            }
            Reference::Digest(d, _) => d,
        };
        let named = sha256_of_digest(digest)?.map(str::to_string);
        let tags = self.meta().members(&keys::oci_tags(repo)).await?;
        let record_key = keys::oci_manifest(repo, digest);
        let released = transact(self.meta(), async |tx| {
            let Some(record) = tx.get_json::<ManifestRecord>(&record_key).await? else {
                return Err(RegistryError::NotFound("manifest".into()));
            };
            tx.delete(&record_key);
            tx.set_remove(&keys::oci_manifests(repo), digest);
            if let Some(subject) = &record.subject {
                tx.set_remove(&keys::oci_referrers(repo, subject), digest);
            }
            for tag in &tags {
                let key = keys::oci_tag(repo, tag);
                if tx.get_json::<String>(&key).await?.as_deref() == Some(digest) {
                    tx.delete(&key);
                    tx.set_remove(&keys::oci_tags(repo), tag);
                }
            }
            let Some(content) = record.content.as_ref().or(named.as_ref()) else {
                return Err(RegistryError::Meta(crate::meta::MetaError::Corrupt {
                    key: record_key.clone(),
                    reason: "a manifest named by sha512 without its content's sha256".into(),
                }));
            };
            release(tx, &blob_key(content), Release::Unref).await
        })
        .await
        .map_err(or_unknown(OciError::ManifestUnknown))?;
        delete_objects(self.blobs(), released.as_slice()).await;
        Ok(())
    }

    /// The manifests of `repo` whose `subject` is `digest`, sorted by digest; with
    /// `artifact_type`, only those of that type.
    pub async fn oci_referrers(
        &self,
        repo: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> OciResult<Vec<Referrer>> {
        validate_repo(repo)?;
        parse_digest(digest)?;
        let mut digests = self
            .meta()
            .members(&keys::oci_referrers(repo, digest))
            .await?;
        digests.sort();
        let found = self.oci_manifest_records(repo, &digests).await?;
        let mut out = Vec::new();
        for (digest, record) in digests.into_iter().zip(found) {
            // A manifest deleted since the set was read is no referrer.
            let Some(record) = record else { continue };
            if artifact_type.is_some_and(|t| record.artifact_type.as_deref() != Some(t)) {
                continue;
            }
            out.push(Referrer {
                media_type: served_media_type(record.media_type),
                digest,
                size: record.size,
                artifact_type: record.artifact_type,
                annotations: record.annotations,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_artifact_type_are_read_from_the_manifest() {
        let d = format!("sha256:{}", "b".repeat(64));
        let m = format!(
            r#"{{"config":{{"mediaType":"application/x.c"}},"subject":{{"digest":"{d}"}},"annotations":{{"a":"1"}}}}"#
        );
        let p = parse(m.as_bytes(), None).unwrap();
        assert_eq!(p.subject.as_deref(), Some(d.as_str()));
        assert_eq!(p.artifact_type.as_deref(), Some("application/x.c"));
        assert_eq!(p.annotations, Some(serde_json::json!({"a":"1"})));
        let typed = r#"{"artifactType":"application/x.sig","config":{"mediaType":"x"}}"#;
        assert_eq!(
            parse(typed.as_bytes(), None)
                .unwrap()
                .artifact_type
                .as_deref(),
            Some("application/x.sig")
        );
        assert!(parse(br#"{"subject":{"digest":"md5:1"}}"#, None).is_err());
        assert!(parse(b"[1]", None).is_err());
    }

    #[test]
    fn what_a_manifest_lists_is_its_digests_never_its_sizes() {
        let (a, b) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let doc = |json: String| match serde_json::from_str(&json).unwrap() {
            Value::Object(doc) => doc,
            _ => unreachable!(),
        };
        let image = doc(format!(
            r#"{{"config":{{"digest":"{a}","size":2}},"layers":[
                {{"digest":"{b}","size":9223372036854775807}},{{"digest":"{a}","size":1}},
                {{"digest":"{b}","size":5}},{{"digest":"md5:x","size":7}},{{"size":3}}]}}"#
        ));
        assert_eq!(listed_in(&image), Listed::Blobs(vec![a.clone(), b.clone()]));
        let index = doc(format!(r#"{{"manifests":[{{"digest":"{b}","size":1}}]}}"#));
        assert_eq!(listed_in(&index), Listed::Manifests(vec![b]));
        assert_eq!(listed_in(&doc("{}".into())), Listed::Nothing);
        assert_eq!(
            listed_in(&doc(r#"{"layers":7}"#.into())),
            Listed::Blobs(vec![])
        );
    }

    #[test]
    fn only_manifest_media_types_are_kept() {
        let kept = |content_type: Option<&str>, body: &str| {
            parse(body.as_bytes(), content_type).map(|p| p.media_type)
        };
        for t in MANIFEST_MEDIA_TYPES.iter().copied() {
            if t != OCI_ARTIFACT_MANIFEST {
                assert_eq!(kept(Some(t), "{}").unwrap(), t);
            }
        }
        // Parameters and case are not part of the type.
        assert_eq!(
            kept(
                Some("Application/VND.oci.image.index.v1+json; charset=utf-8"),
                "{}"
            )
            .unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        // Without a Content-Type: the body's own mediaType, else an image manifest.
        let index = r#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert_eq!(
            kept(None, index).unwrap(),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(kept(None, "{}").unwrap(), OCI_MANIFEST);
        assert_eq!(kept(Some(""), "{}").unwrap(), OCI_MANIFEST);
        for refused in [
            "text/html",
            "text/html; charset=utf-8",
            "application/json",
            "image/svg+xml",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.oci.image.manifest.v1+json+html",
        ] {
            assert!(
                matches!(kept(Some(refused), "{}"), Err(OciError::ManifestInvalid(_))),
                "{refused}"
            );
        }
        assert!(kept(None, r#"{"mediaType":"text/html"}"#).is_err());
        assert!(kept(None, r#"{"mediaType":1}"#).is_err());
        // An artifact manifest only with its artifactType.
        let artifact = Some(OCI_ARTIFACT_MANIFEST);
        assert!(kept(artifact, "{}").is_err());
        assert!(kept(artifact, r#"{"artifactType":""}"#).is_err());
        assert_eq!(
            kept(artifact, r#"{"artifactType":"application/x.sig"}"#).unwrap(),
            OCI_ARTIFACT_MANIFEST
        );
        // Records kept before the check are served as image manifests.
        assert_eq!(served_media_type("text/html".into()), OCI_MANIFEST);
        assert_eq!(served_media_type(OCI_MANIFEST.into()), OCI_MANIFEST);
    }
}
