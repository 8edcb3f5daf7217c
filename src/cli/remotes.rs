//! The configured registries ("remotes"): a small YAML file under the user's config
//! directory, or wherever `VMREG_CONFIG` points.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::library::write_atomic;
use crate::client::{ClientError, ClientResult};

/// The remotes file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Remotes {
    /// The remote used when `-r` and `-a` are absent.
    #[serde(default)]
    pub current: Option<String>,
    /// Remotes by name.
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// One configured registry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remote {
    /// Base URL.
    pub url: String,
}

/// Where the remotes file lives: `VMREG_CONFIG`, else `$XDG_CONFIG_HOME/vmreg/remotes.yaml`,
/// else `~/.config/vmreg/remotes.yaml`.
pub fn config_path() -> ClientResult<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(path) = env("VMREG_CONFIG") {
        return Ok(path);
    }
    let base = env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .ok_or_else(|| {
            ClientError::Invalid("cannot find a config directory: set VMREG_CONFIG or HOME".into())
        })?;
    Ok(base.join("vmreg").join("remotes.yaml"))
}

impl Remotes {
    /// Reads the file; a missing file is an empty configuration.
    pub fn load(path: &Path) -> ClientResult<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(Self::default()),
            Ok(text) => serde_yaml::from_str(&text).map_err(|e| {
                ClientError::Invalid(format!("{}: not a remotes file: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ClientError::io(path, e)),
        }
    }

    /// Writes the file, creating its directory.
    pub fn save(&self, path: &Path) -> ClientResult<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
        }
        let text = serde_yaml::to_string(self)
            .map_err(|e| ClientError::Invalid(format!("remotes file: {e}")))?;
        write_atomic(path, text.as_bytes())
    }

    /// Adds (or replaces) a remote and makes it current.
    pub fn add(&mut self, name: &str, url: &str) -> ClientResult<()> {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(ClientError::Invalid(format!(
                "invalid remote name {name:?}"
            )));
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Invalid(format!("invalid registry URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Invalid(format!(
                "invalid registry URL {url:?}: use http:// or https://"
            )));
        }
        self.remotes.insert(
            name.to_string(),
            Remote {
                url: url.trim_end_matches('/').to_string(),
            },
        );
        self.current = Some(name.to_string());
        Ok(())
    }

    /// Makes a remote current.
    pub fn set(&mut self, name: &str) -> ClientResult<()> {
        self.get(name)?;
        self.current = Some(name.to_string());
        Ok(())
    }

    /// Removes a remote; when it was current, no remote is.
    pub fn delete(&mut self, name: &str) -> ClientResult<()> {
        self.get(name)?;
        self.remotes.remove(name);
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        Ok(())
    }

    /// A remote by name.
    pub fn get(&self, name: &str) -> ClientResult<&Remote> {
        self.remotes.get(name).ok_or_else(|| {
            ClientError::Invalid(format!(
                "unknown remote {name:?} (see `vmreg registry list-repos`)"
            ))
        })
    }

    /// The URL to use: `-a URL`, else the remote `-r NAME`, else the current remote.
    pub fn resolve(&self, remote: Option<&str>, url: Option<&str>) -> ClientResult<String> {
        if let Some(url) = url {
            return Ok(url.to_string());
        }
        let name = remote.or(self.current.as_deref()).ok_or_else(|| {
            ClientError::Invalid(
                "no registry configured: run `vmreg registry add NAME URL` or pass -a URL".into(),
            )
        })?;
        Ok(self.get(name)?.url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_added_is_current_and_delete_clears_it() {
        let mut r = Remotes::default();
        r.add("a", "http://a:8089/").unwrap();
        r.add("b", "https://b").unwrap();
        assert_eq!(r.resolve(None, None).unwrap(), "https://b");
        assert_eq!(r.resolve(Some("a"), None).unwrap(), "http://a:8089");
        assert_eq!(r.resolve(Some("a"), Some("http://x")).unwrap(), "http://x");
        r.delete("b").unwrap();
        assert!(r.resolve(None, None).is_err());
        assert!(r.set("b").is_err());
        assert!(r.add("c", "ftp://c").is_err());
    }
}
