//! Pulling a version: its manifest, and its files by range.

use super::templates::find_version;
use super::{Registry, RegistryError, RegistryResult};
use crate::meta::{keys, MetaStoreExt};
use crate::model::FileRecord;
use crate::protocol::{Manifest, ManifestFile};
use crate::store::{ByteStream, Redirect};

impl Registry {
    /// The manifest of a version (latest by default) of a template named by id or name;
    /// notes the pull when `record_pull` is set (written later, see [`super::pulls`]).
    pub async fn manifest(
        &self,
        id_or_name: &str,
        tag: Option<&str>,
        number: Option<u32>,
        record_pull: bool,
    ) -> RegistryResult<Manifest> {
        let template = self.resolve(id_or_name).await?;
        crate::telemetry::trace::record_template(&template.id);
        let version = find_version(&template, tag, number)?;
        let manifest = Manifest {
            id: template.id,
            name: template.name.clone(),
            arch: template.effective_arch(),
            number: version.number,
            tag: version.tag.clone(),
            description: version.description.clone(),
            config: version.config.clone(),
            files: version
                .files
                .iter()
                .map(|f| ManifestFile {
                    name: f.name.clone(),
                    key: f.key(),
                    kind: f.kind,
                    size: f.size,
                    sha256: f.sha256.clone(),
                })
                .collect(),
            size: version.size(),
        };
        if record_pull {
            self.note_pull(template.id, &version.tag);
        }
        Ok(manifest)
    }

    /// The record of a stored file.
    pub async fn file(&self, key: &str) -> RegistryResult<FileRecord> {
        crate::model::validate_file_name(key)?;
        let record_key = keys::file(key);
        match self.meta.get_json(&record_key).await? {
            Some(record) => Ok(record),
            None => Err(RegistryError::NotFound(format!("file {key} not found"))),
        }
    }

    /// Streams a stored file, or the bytes `start..end` of it.
    pub async fn read_file(
        &self,
        record: &FileRecord,
        range: Option<(u64, u64)>,
    ) -> RegistryResult<ByteStream> {
        if let Some((start, end)) = range {
            if start >= end || end > record.size {
                return Err(RegistryError::RangeNotSatisfiable { size: record.size });
            }
        }
        // The size is known, so a whole file is asked for as its full range: the store
        // can then read it as several ranges at once.
        let range = range.or((record.size > 0).then_some((0, record.size)));
        Ok(self.blobs.get(&record.object, range).await?)
    }

    /// A presigned URL for the file, when the blob store redirects downloads.
    pub async fn redirect_for(&self, record: &FileRecord) -> RegistryResult<Option<Redirect>> {
        Ok(self.blobs.presign_get(&record.object).await?)
    }
}
