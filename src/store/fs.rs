//! Files on the local disk: the default when no S3 bucket is configured.
//!
//! Objects live under `<root>/objects/<key>`; an upload is a temporary file under
//! `<root>/uploads/` written part by part at the parts' offsets, synced, then renamed into
//! place, so an object is either absent or whole.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::{
    BlobStore, ByteStream, ObjectInfo, PartInfo, PendingUpload, Space, StoreError, StoreResult,
    UploadHandle,
};

const READ_BUFFER: usize = 256 * 1024;

/// Files under a directory.
pub struct FsStore {
    root: PathBuf,
    min_part_size: u64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn io_error(key: &str, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(key.to_string())
    } else {
        unavailable(format!("{key}: {e}"))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(unavailable)?
}

impl FsStore {
    /// Opens (or creates) a store under `root`.
    pub fn open(root: &Path, min_part_size: u64) -> StoreResult<Self> {
        for dir in ["objects", "uploads"] {
            std::fs::create_dir_all(root.join(dir)).map_err(unavailable)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            min_part_size,
        })
    }

    /// Where an object's bytes live; keys are made by the registry from validated names.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    fn upload_path(&self, upload: &UploadHandle) -> PathBuf {
        self.root.join("uploads").join(&upload.upload_id)
    }
}

/// A file's metadata, or `None` when it is gone.
fn file_metadata(path: &Path) -> StoreResult<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Epoch seconds of a file's last write.
fn modified_secs(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl BlobStore for FsStore {
    async fn begin_upload(&self, key: &str) -> StoreResult<UploadHandle> {
        let handle = UploadHandle {
            key: key.to_string(),
            upload_id: uuid::Uuid::new_v4().simple().to_string(),
        };
        let path = self.upload_path(&handle);
        blocking(move || {
            std::fs::File::create(&path)
                .map(|_| ())
                .map_err(unavailable)
        })
        .await?;
        Ok(handle)
    }

    async fn write_part(
        &self,
        upload: &UploadHandle,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<PartInfo> {
        let path = self.upload_path(upload);
        let key = upload.key.clone();
        blocking(move || {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&key, e))?;
            file.write_all_at(&data, offset).map_err(unavailable)?;
            file.sync_data().map_err(unavailable)?;
            Ok(PartInfo {
                number,
                size: data.len() as u64,
                etag: format!("{offset}"),
            })
        })
        .await
    }

    async fn complete_upload(&self, upload: &UploadHandle, parts: &[PartInfo]) -> StoreResult<()> {
        let from = self.upload_path(upload);
        let to = self.object_path(&upload.key);
        let size: u64 = parts.iter().map(|p| p.size).sum();
        let key = upload.key.clone();
        blocking(move || {
            let gone = |e: std::io::Error| match e.kind() {
                // Completed before (a retry after a lost reply, or a racing request): the
                // object is there, made from these parts, as S3 answers a second completion.
                std::io::ErrorKind::NotFound
                    if file_metadata(&to)?.is_some_and(|m| m.len() == size) =>
                {
                    Ok(())
                }
                _ => Err(io_error(&key, e)),
            };
            let file = match std::fs::OpenOptions::new().write(true).open(&from) {
                Ok(file) => file,
                Err(e) => return gone(e),
            };
            // A part rewritten after a resume may have left bytes past the end.
            file.set_len(size).map_err(unavailable)?;
            file.sync_all().map_err(unavailable)?;
            let dir = to
                .parent()
                .ok_or_else(|| unavailable("object key has no parent"))?;
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            if let Err(e) = std::fs::rename(&from, &to) {
                return gone(e);
            }
            sync_dir(dir).map_err(unavailable)
        })
        .await
    }

    async fn abort_upload(&self, upload: &UploadHandle) -> StoreResult<()> {
        let path = self.upload_path(upload);
        blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(unavailable(e)),
            _ => Ok(()),
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let to = self.object_path(key);
        let tmp = self
            .root
            .join("uploads")
            .join(uuid::Uuid::new_v4().simple().to_string());
        blocking(move || {
            std::fs::write(&tmp, &data).map_err(unavailable)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(unavailable)?;
            let dir = to
                .parent()
                .ok_or_else(|| unavailable("object key has no parent"))?;
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            std::fs::rename(&tmp, &to).map_err(unavailable)?;
            sync_dir(dir).map_err(unavailable)
        })
        .await
    }

    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let path = self.object_path(key);
        let owned_key = key.to_string();
        let file = blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(|e| io_error(&owned_key, e))?;
            if let Some((start, _)) = range {
                file.seek(SeekFrom::Start(start)).map_err(unavailable)?;
            }
            Ok(file)
        })
        .await?;
        let file = tokio::fs::File::from_std(file);
        let stream = match range {
            Some((start, end)) => {
                ReaderStream::with_capacity(file.take(end.saturating_sub(start)), READ_BUFFER)
                    .boxed()
            }
            None => ReaderStream::with_capacity(file, READ_BUFFER).boxed(),
        };
        Ok(stream.map(|r| r.map_err(unavailable)).boxed())
    }

    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        let path = self.object_path(key);
        let owned_key = key.to_string();
        blocking(move || {
            std::fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| io_error(&owned_key, e))
        })
        .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.object_path(key);
        let objects = self.root.join("objects");
        blocking(move || {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(unavailable(e)),
                _ => {}
            }
            // Drop directories the deletion emptied, up to the objects root.
            let mut dir = path.parent().map(Path::to_path_buf);
            while let Some(d) = dir {
                if d == objects || std::fs::remove_dir(&d).is_err() {
                    break;
                }
                dir = d.parent().map(Path::to_path_buf);
            }
            Ok(())
        })
        .await
    }

    async fn list_objects(&self, prefix: &str) -> StoreResult<Vec<ObjectInfo>> {
        let objects = self.root.join("objects");
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![objects.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(unavailable(e)),
                };
                for entry in entries {
                    let path = entry.map_err(unavailable)?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&objects) {
                        let key = rel.to_string_lossy().to_string();
                        if key.starts_with(&prefix) {
                            // Deleted since the directory was read: not there any more.
                            let Some(meta) = file_metadata(&path)? else {
                                continue;
                            };
                            out.push(ObjectInfo {
                                key,
                                size: meta.len(),
                                modified: modified_secs(&meta),
                            });
                        }
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn list_uploads(&self) -> StoreResult<Vec<PendingUpload>> {
        let uploads = self.root.join("uploads");
        blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&uploads).map_err(unavailable)? {
                let entry = entry.map_err(unavailable)?;
                let Some(meta) = file_metadata(&entry.path())? else {
                    continue;
                };
                out.push(PendingUpload {
                    key: None,
                    upload_id: entry.file_name().to_string_lossy().to_string(),
                    started: modified_secs(&meta),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn space(&self) -> StoreResult<Option<Space>> {
        let root = self.root.clone();
        blocking(move || disk_space(&root).map(Some)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        let objects = self.root.join("objects");
        blocking(move || std::fs::metadata(&objects).map(|_| ()).map_err(unavailable)).await
    }

    fn min_part_size(&self) -> u64 {
        self.min_part_size
    }

    fn describe(&self) -> String {
        format!("local disk {}", self.root.display())
    }
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> StoreResult<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(unavailable)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(unavailable(std::io::Error::last_os_error()));
    }
    let frsize = stat.f_frsize as u64;
    Ok(Space {
        free: stat.f_bavail as u64 * frsize,
        total: stat.f_blocks as u64 * frsize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn multipart_upload_becomes_visible_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), 4).unwrap();
        let up = store.begin_upload("blobs/a.ank/s1").await.unwrap();
        let p1 = store
            .write_part(&up, 1, 0, Bytes::from_static(b"abcd"))
            .await
            .unwrap();
        assert!(matches!(
            store.read("blobs/a.ank/s1").await,
            Err(StoreError::NotFound(_))
        ));
        let p2 = store
            .write_part(&up, 2, 4, Bytes::from_static(b"ef"))
            .await
            .unwrap();
        store.complete_upload(&up, &[p1, p2]).await.unwrap();
        assert_eq!(&store.read("blobs/a.ank/s1").await.unwrap()[..], b"abcdef");
        assert_eq!(
            collect(store.get("blobs/a.ank/s1", Some((1, 4))).await.unwrap()).await,
            b"bcd"
        );
        assert_eq!(store.list("blobs/").await.unwrap(), vec!["blobs/a.ank/s1"]);
        store.delete("blobs/a.ank/s1").await.unwrap();
        assert!(store.list("").await.unwrap().is_empty());
        assert!(
            !dir.path().join("objects/blobs").exists(),
            "emptied directories are removed"
        );
    }

    #[tokio::test]
    async fn keeps_the_blob_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), 4).unwrap();
        crate::store::contract::objects_round_trip(&store).await;
        crate::store::contract::multipart_uploads(&store).await;
        crate::store::contract::parts_in_any_order(&store).await;
    }

    #[tokio::test]
    async fn abort_discards_the_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path(), 4).unwrap();
        let up = store.begin_upload("k").await.unwrap();
        store
            .write_part(&up, 1, 0, Bytes::from_static(b"abcd"))
            .await
            .unwrap();
        store.abort_upload(&up).await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads"))
                .unwrap()
                .count(),
            0
        );
        assert!(store.space().await.unwrap().unwrap().total > 0);
    }
}
