//! The registry's records — templates, versions, files — and the validation of every name
//! a client can send.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What part of a VM a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A disk image layer (`img_lib/<hex>.ank`).
    Image,
    /// A suspend image (`state_lib/<hex>.ank`).
    State,
    /// The VM's firmware variables (`vm_lib/<uuid>/nvram`).
    Nvram,
}

/// One file of a version, as pushed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The name in the VM library (`<hex>.ank`, `nvram`).
    pub name: String,
    /// What the file is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

impl FileRef {
    /// The name the registry stores the file under. Image and state layers are shared
    /// between tags and templates by name, as at the vendor; every VM has an `nvram`, so
    /// those are told apart by content.
    pub fn key(&self) -> String {
        file_key(&self.name, self.kind, &self.sha256)
    }
}

/// The registry key for a file (see [`FileRef::key`]).
pub fn file_key(name: &str, kind: FileKind, sha256: &str) -> String {
    match kind {
        FileKind::Nvram => format!("{NVRAM_KEY_PREFIX}{sha256}"),
        FileKind::Image | FileKind::State => name.to_string(),
    }
}

/// Prefix of the registry keys of nvram files; no layer may be named with it.
pub const NVRAM_KEY_PREFIX: &str = "nvram.";

/// One version (tag) of a template.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// Dense, 0-based serial number within the template.
    pub number: u32,
    /// The tag, unique within the template.
    pub tag: String,
    /// Free text given at push.
    pub description: String,
    /// The files, image layers top first.
    pub files: Vec<FileRef>,
    /// The VM configuration (config.yaml as JSON).
    pub config: serde_json::Value,
    /// Epoch seconds of the commit.
    pub created: u64,
    /// The upload session that committed it; names its manifest object.
    pub push_id: String,
    /// The commit's place in its template's history: taken from a counter that every
    /// commit attempt moves on and nothing moves back, so no two manifests of a template
    /// share one, and a later commit always has a larger one. 0 for versions committed
    /// before it was kept (their manifests are ordered by number and time).
    #[serde(default)]
    pub seq: u64,
}

impl Version {
    /// The key of the version's manifest in the bucket.
    pub fn manifest_key(&self, template: &Uuid) -> String {
        match self.seq {
            0 => crate::store::keys::manifest(template, self.number, &self.push_id),
            _ => crate::store::keys::push_manifest(template, &self.push_id),
        }
    }

    /// Sum of the sizes of the version's files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// File names of the given kind, in pushed order.
    pub fn names_of(&self, kind: FileKind) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.name.clone())
            .collect()
    }

    /// The distinct registry keys the version references.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.files.iter().map(FileRef::key).collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// A template: a named VM with its versions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// The pushed VM's UUID.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// `arm64` or `amd64`; empty in records written before arch was derived at push
    /// (see [`Template::effective_arch`]).
    pub arch: String,
    /// Epoch seconds of the first push.
    pub created: u64,
    /// Epoch seconds of the push of the newest version it holds: always
    /// [`Template::newest_push`], so that a revert rolls it back and the bucket's manifests
    /// alone give it again.
    pub last_push: u64,
    /// Versions ordered by number; numbers are 0..len.
    pub versions: Vec<Version>,
}

impl Template {
    /// The `last_push` the template's versions make: the creation of its newest version
    /// (never before the template's own creation). Derived rather than kept, so that the
    /// live index and `admin reindex`, which sees only the versions still in the bucket,
    /// agree: a reverted push leaves no trace in either.
    pub fn newest_push(&self) -> u64 {
        self.versions
            .iter()
            .map(|v| v.created)
            .fold(self.created, u64::max)
    }

    /// Sum of the distinct files of all versions: a layer shared by tags counts once.
    pub fn size(&self) -> u64 {
        let mut seen = std::collections::HashMap::new();
        for f in self.versions.iter().flat_map(|v| &v.files) {
            seen.insert(f.key(), f.size);
        }
        seen.values().sum()
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }

    /// The arch to show: the one set or pushed, else the one the latest configuration
    /// tells (see [`arch_of_config`]); never empty.
    pub fn effective_arch(&self) -> String {
        if !self.arch.is_empty() {
            return self.arch.clone();
        }
        let config = self.latest().map(|v| &v.config);
        arch_of_config(config.unwrap_or(&serde_json::Value::Null)).to_string()
    }

    /// Finds a version by tag or number; the latest when both are absent.
    pub fn find_version(&self, tag: Option<&str>, number: Option<u32>) -> Option<&Version> {
        match (tag, number) {
            (Some(tag), _) => self.versions.iter().find(|v| v.tag == tag),
            (None, Some(n)) => self.versions.get(n as usize),
            (None, None) => self.latest(),
        }
    }
}

/// The summary the listing shows; kept apart from the template so a list of 10,000
/// templates reads small records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateSummary {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Distinct bytes of all versions.
    pub size: u64,
    /// `arm64`, `amd64` or empty.
    pub arch: String,
    /// Epoch seconds of the first push.
    pub created: u64,
    /// Epoch seconds of the latest push.
    pub last_push: u64,
    /// Tag of the newest version.
    pub latest_tag: String,
    /// Number of versions.
    pub versions: u32,
    /// Every version, small; `None` in records written before listings carried them.
    #[serde(default)]
    pub version_list: Option<Vec<VersionSummary>>,
}

/// A version as a listing row shows it: the seed's Version keys that need no file list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// Serial number.
    pub number: u32,
    /// Tag.
    pub tag: String,
    /// Bytes of the version's files.
    pub size: u64,
}

impl From<&Template> for TemplateSummary {
    fn from(t: &Template) -> Self {
        Self {
            id: t.id,
            name: t.name.clone(),
            size: t.size(),
            arch: t.effective_arch(),
            created: t.created,
            last_push: t.last_push,
            latest_tag: t.latest().map(|v| v.tag.clone()).unwrap_or_default(),
            versions: t.versions.len() as u32,
            version_list: Some(
                t.versions
                    .iter()
                    .map(|v| VersionSummary {
                        number: v.number,
                        tag: v.tag.clone(),
                        size: v.size(),
                    })
                    .collect(),
            ),
        }
    }
}

/// A rejected name, tag or file name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

const MAX_NAME: usize = 255;

/// The largest file a version may hold: 5 TiB, S3's largest object.
pub const MAX_FILE_SIZE: u64 = 5 << 40;

fn check_text(what: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Invalid(format!("{what} is longer than {max} bytes")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Invalid(format!(
            "{what} must not contain control characters (found U+{:04X})",
            c as u32
        )));
    }
    if let Some(c) = value.chars().find(|c| is_deceptive(*c)) {
        return Err(Invalid(format!(
            "{what} must not contain invisible or direction-changing characters \
             (found U+{:04X}): they make a name display as another",
            c as u32
        )));
    }
    Ok(())
}

/// Characters that change how a name displays without showing themselves: the Unicode
/// bidirectional marks, embeddings, overrides and isolates (U+202E turns `gpj.exe` into
/// what looks like `exe.jpg`), the line and paragraph separators that break a log line
/// as a newline does, and the zero-width space, word joiner and byte-order mark, which
/// make two different names look alike. Zero-width (non-)joiners stay allowed: scripts
/// such as Devanagari and Persian need them.
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// A template name: printable, no path separators.
pub fn validate_template_name(name: &str) -> Result<(), Invalid> {
    check_text("template name", name, MAX_NAME)?;
    if name.contains(['/', '\\']) {
        return Err(Invalid("template name must not contain '/' or '\\'".into()));
    }
    Ok(())
}

/// A tag: printable; `+`, `:` and other URL-reserved characters are allowed.
pub fn validate_tag(tag: &str) -> Result<(), Invalid> {
    check_text("tag", tag, MAX_NAME)?;
    if tag.contains(['/', '\\']) {
        return Err(Invalid("tag must not contain '/' or '\\'".into()));
    }
    Ok(())
}

/// A file name inside the VM library: one path component, never `.` or `..`.
pub fn validate_file_name(name: &str) -> Result<(), Invalid> {
    check_text("file name", name, MAX_NAME)?;
    if name.contains(['/', '\\']) || name == "." || name == ".." || name.starts_with('.') {
        return Err(Invalid(format!(
            "invalid file name {name:?}: must be a plain file name"
        )));
    }
    Ok(())
}

/// A file of a version: its name must fit its kind.
pub fn validate_file(file: &FileRef) -> Result<(), Invalid> {
    validate_file_name(&file.name)?;
    if file.kind != FileKind::Nvram && file.name.starts_with(NVRAM_KEY_PREFIX) {
        return Err(Invalid(format!(
            "layer names must not start with {NVRAM_KEY_PREFIX:?}"
        )));
    }
    if file.size > MAX_FILE_SIZE {
        return Err(Invalid(format!(
            "{} declares {} bytes; files are at most {MAX_FILE_SIZE} bytes (5 TiB)",
            file.name, file.size
        )));
    }
    if !crate::digest::is_sha256_hex(&file.sha256) && !file.sha256.is_empty() {
        return Err(Invalid(format!(
            "sha256 of {} is not 64 lowercase hex digits",
            file.name
        )));
    }
    Ok(())
}

/// The architectures a template may be marked with.
pub fn validate_arch(arch: &str) -> Result<(), Invalid> {
    match arch {
        "arm64" | "amd64" => Ok(()),
        other => Err(Invalid(format!(
            "invalid arch {other:?}: must be \"arm64\" or \"amd64\""
        ))),
    }
}

/// The arch a VM configuration tells: an explicit `arch` (top level or under `cpu`),
/// else `arm64` when it has what only Apple silicon (Virtualization.framework) VMs
/// carry, a hardware model, machine identifier or auxiliary storage; else `amd64`, as the
/// vendor shows a template whose arch was never set.
pub fn arch_of_config(config: &serde_json::Value) -> &'static str {
    let explicit = [&config["arch"], &config["cpu"]["arch"]]
        .into_iter()
        .find_map(|v| v.as_str())
        .map(str::to_ascii_lowercase);
    match explicit.as_deref() {
        Some("arm64" | "aarch64" | "arm" | "apple") => return "arm64",
        Some("amd64" | "x86_64" | "x86-64" | "x64" | "intel") => return "amd64",
        _ => {}
    }
    const APPLE_SILICON_KEYS: [&str; 5] = [
        "hardware_model",
        "hw_model",
        "machine_identifier",
        "auxiliary_storage",
        "aux_storage",
    ];
    let apple = config
        .as_object()
        .is_some_and(|m| APPLE_SILICON_KEYS.iter().any(|k| m.contains_key(*k)));
    if apple {
        "arm64"
    } else {
        "amd64"
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, kind: FileKind, size: u64) -> FileRef {
        FileRef {
            name: name.into(),
            kind,
            size,
            sha256: format!("{:064x}", size),
        }
    }

    fn version(number: u32, files: Vec<FileRef>) -> Version {
        Version {
            number,
            tag: format!("t{number}"),
            description: String::new(),
            files,
            config: serde_json::Value::Null,
            created: 0,
            push_id: String::new(),
            seq: 0,
        }
    }

    #[test]
    fn template_size_counts_shared_layers_once() {
        let base = file("a.ank", FileKind::Image, 100);
        let t = Template {
            id: Uuid::nil(),
            name: "x".into(),
            arch: String::new(),
            created: 0,
            last_push: 0,
            versions: vec![
                version(0, vec![base.clone(), file("nvram", FileKind::Nvram, 5)]),
                version(
                    1,
                    vec![
                        file("b.ank", FileKind::Image, 10),
                        base,
                        file("nvram", FileKind::Nvram, 5),
                    ],
                ),
            ],
        };
        assert_eq!(t.versions[1].size(), 115);
        assert_eq!(t.size(), 115);
    }

    #[test]
    fn nvram_keys_are_content_addressed() {
        let a = file("nvram", FileKind::Nvram, 1);
        let b = file("nvram", FileKind::Nvram, 2);
        assert_ne!(a.key(), b.key());
        assert_eq!(file("x.ank", FileKind::Image, 1).key(), "x.ank");
    }

    #[test]
    fn rejects_path_tricks_in_file_names() {
        for bad in ["../etc", "a/b", "..", ".", "", "a\\b", ".hidden", "x\n"] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_file_name("113eb088112f4b0c9d28197590058301.ank").is_ok());
        let mut sneaky = file("nvram.abc", FileKind::Image, 1);
        assert!(validate_file(&sneaky).is_err());
        sneaky.name = "ok.ank".into();
        sneaky.sha256 = "XYZ".into();
        assert!(validate_file(&sneaky).is_err());
    }

    #[test]
    fn names_tags_and_file_names_refuse_direction_overrides_and_invisible_characters() {
        // U+202E shows "vm-gpj.exe" as "vm-exe.jpg"; the others hide or reorder text.
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{2028}', '\u{2029}',
            '\u{200B}', '\u{2060}', '\u{FEFF}', '\u{0085}', '\u{009B}', '\u{007F}', '\u{0000}',
        ] {
            let name = format!("vm-{c}gpj.exe");
            let template = validate_template_name(&name).unwrap_err();
            assert!(template.0.contains("template name"), "{c:?}: {template}");
            assert!(
                template.0.contains(&format!("U+{:04X}", c as u32)),
                "{template}"
            );
            assert!(validate_tag(&name).is_err(), "{c:?} in a tag");
            assert!(validate_file_name(&name).is_err(), "{c:?} in a file name");
        }
        // Other scripts, emoji and the joiners their spelling needs are names like any.
        for fine in [
            "Sonoma 14.5",
            "macOS-ソノマ",
            "क्\u{200D}ष",
            "نام\u{200C}ها",
            "🍎-vm",
        ] {
            assert!(validate_template_name(fine).is_ok(), "{fine:?}");
            assert!(validate_tag(fine).is_ok(), "{fine:?}");
        }
    }

    #[test]
    fn tags_allow_url_reserved_characters() {
        assert!(validate_tag("vanilla+port-forward-22+brew-git").is_ok());
        assert!(validate_tag("a:b&c=d?e#f").is_ok());
        assert!(validate_tag("").is_err());
        assert!(validate_tag("a/b").is_err());
    }

    #[test]
    fn arch_is_arm64_or_amd64() {
        assert!(validate_arch("arm64").is_ok());
        assert!(validate_arch("amd64").is_ok());
        assert!(validate_arch("x86").is_err());
    }

    #[test]
    fn arch_comes_from_the_configuration_else_amd64() {
        use serde_json::json;
        assert_eq!(arch_of_config(&json!({"arch": "arm64"})), "arm64");
        assert_eq!(arch_of_config(&json!({"cpu": {"arch": "x86_64"}})), "amd64");
        assert_eq!(arch_of_config(&json!({"hardware_model": "AAA="})), "arm64");
        assert_eq!(
            arch_of_config(&json!({"firmware": {"type": "uefi"}})),
            "amd64"
        );
        assert_eq!(arch_of_config(&serde_json::Value::Null), "amd64");
        let mut t = Template {
            id: Uuid::nil(),
            name: "x".into(),
            arch: String::new(),
            created: 0,
            last_push: 0,
            versions: vec![version(0, vec![])],
        };
        t.versions[0].config = json!({"machine_identifier": "x"});
        assert_eq!(t.effective_arch(), "arm64");
        t.arch = "amd64".into();
        assert_eq!(t.effective_arch(), "amd64");
    }

    #[test]
    fn finds_versions_by_tag_number_or_latest() {
        let t = Template {
            id: Uuid::nil(),
            name: "x".into(),
            arch: String::new(),
            created: 0,
            last_push: 0,
            versions: vec![version(0, vec![]), version(1, vec![])],
        };
        assert_eq!(t.find_version(Some("t0"), None).map(|v| v.number), Some(0));
        assert_eq!(t.find_version(None, Some(1)).map(|v| v.number), Some(1));
        assert_eq!(t.find_version(None, None).map(|v| v.number), Some(1));
        assert!(t.find_version(None, Some(2)).is_none());
        assert!(t.find_version(Some("nope"), None).is_none());
    }
}

/// The immutable manifest object written to the blob store for every committed version;
/// `vmreg admin reindex` rebuilds the metadata from these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredManifest {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// The version, with its configuration.
    pub version: Version,
    /// The object key holding each file, by registry key.
    pub objects: std::collections::BTreeMap<String, String>,
}

/// The template-level record beside the manifests (changes with `vm/arch`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredTemplate {
    /// Template id.
    pub id: Uuid,
    /// Template name.
    pub name: String,
    /// Template arch.
    pub arch: String,
    /// Epoch seconds of the first push.
    pub created: u64,
}

/// A stored file: its content, where its bytes are, and who uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Registry key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// The object holding the bytes.
    pub object: String,
    /// Number of versions referencing the file.
    pub refs: u64,
    /// Upload sessions that negotiated the file as already present; a pinned file is
    /// never deleted, so a push racing a revert cannot commit a dangling reference.
    pub pins: Vec<String>,
}
