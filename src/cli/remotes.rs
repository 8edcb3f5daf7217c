//! The configured registries ("remotes"): a small YAML file under the user's config
//! directory, or wherever `VMREG_CONFIG` points.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::library::write_private;
use crate::client::{ClientError, ClientResult, Credentials, PrivateKey, Secret};

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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Remote {
    /// Base URL.
    pub url: String,
    /// Root token used with this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_token: Option<Secret>,
    /// API key id used with this registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    /// That key's private key, as its file held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
}

impl Remote {
    /// The credentials kept with this remote, if any.
    pub fn credentials(&self) -> ClientResult<Option<Credentials>> {
        match (&self.root_token, &self.api_key_id, &self.api_key) {
            (Some(token), None, None) => Ok(Some(Credentials::RootToken(token.clone()))),
            (None, Some(id), Some(key)) => Ok(Some(Credentials::ApiKey {
                id: id.clone(),
                key: PrivateKey::parse(key.expose()).map_err(|e| {
                    ClientError::Invalid(format!("the remote's api_key: {e}"))
                })?,
            })),
            (None, None, None) => Ok(None),
            _ => Err(ClientError::Invalid(
                "the remote's credentials are incomplete: keep either root_token, or api_key_id with api_key".into(),
            )),
        }
    }

    /// Keeps these credentials with the remote (replacing any it had).
    pub fn keep(&mut self, stored: StoredCredentials) {
        self.root_token = None;
        self.api_key_id = None;
        self.api_key = None;
        match stored {
            StoredCredentials::None => {}
            StoredCredentials::RootToken(token) => self.root_token = Some(token),
            StoredCredentials::ApiKey { id, key } => {
                self.api_key_id = Some(id);
                self.api_key = Some(key);
            }
        }
    }

    /// How the remote authenticates, without the secret.
    pub fn auth_summary(&self) -> String {
        match (&self.root_token, &self.api_key_id) {
            (Some(_), _) => "root token".into(),
            (None, Some(id)) => format!("API key {id}"),
            _ => "none".into(),
        }
    }
}

/// Credentials as a remote keeps them: the key's text rather than its parsed form, so the
/// file reads back exactly as it was given.
#[derive(Clone, Debug, Default)]
pub enum StoredCredentials {
    /// None.
    #[default]
    None,
    /// A root token.
    RootToken(Secret),
    /// An API key id and its private key's text (already checked to parse).
    ApiKey {
        /// The key's id.
        id: String,
        /// The private key's text.
        key: Secret,
    },
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

    /// Writes the file, creating its directory; readable by its owner only, as it may hold
    /// credentials.
    pub fn save(&self, path: &Path) -> ClientResult<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
        }
        let text = serde_yaml::to_string(self)
            .map_err(|e| ClientError::Invalid(format!("remotes file: {e}")))?;
        write_private(path, text.as_bytes())
    }

    /// Adds (or replaces) a remote with the credentials to keep, and makes it current.
    pub fn add(&mut self, name: &str, url: &str, stored: StoredCredentials) -> ClientResult<()> {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(ClientError::Invalid(format!(
                "invalid remote name {name:?}"
            )));
        }
        crate::client::http::check_scheme(url)?;
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Invalid(format!("invalid registry URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Invalid(format!(
                "invalid registry URL {url:?}: use http:// or https://"
            )));
        }
        let mut remote = Remote {
            url: url.trim_end_matches('/').to_string(),
            ..Remote::default()
        };
        remote.keep(stored);
        self.remotes.insert(name.to_string(), remote);
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

    /// The URL to use: `-a URL`, else the remote `-r NAME`, else the current remote; with
    /// the remote it came from.
    pub fn resolve(
        &self,
        remote: Option<&str>,
        url: Option<&str>,
    ) -> ClientResult<(String, Option<&Remote>)> {
        if let Some(url) = url {
            return Ok((url.to_string(), None));
        }
        let name = remote.or(self.current.as_deref()).ok_or_else(|| {
            ClientError::Invalid(
                "no registry configured: run `vmreg registry add NAME URL` or pass -a URL".into(),
            )
        })?;
        let remote = self.get(name)?;
        Ok((remote.url.clone(), Some(remote)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_added_is_current_and_delete_clears_it() {
        let none = StoredCredentials::None;
        let url = |r: &Remotes, remote, url| r.resolve(remote, url).map(|(u, _)| u);
        let mut r = Remotes::default();
        r.add("a", "http://a:8089/", none.clone()).unwrap();
        r.add("b", "https://b", none.clone()).unwrap();
        assert_eq!(url(&r, None, None).unwrap(), "https://b");
        assert_eq!(url(&r, Some("a"), None).unwrap(), "http://a:8089");
        assert_eq!(url(&r, Some("a"), Some("http://x")).unwrap(), "http://x");
        r.delete("b").unwrap();
        assert!(url(&r, None, None).is_err());
        assert!(r.set("b").is_err());
        assert!(r.add("c", "ftp://c", none).is_err());
    }

    #[test]
    fn credentials_round_trip_through_a_file_only_its_owner_reads() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vmreg-remotes-{}", uuid::Uuid::new_v4()));
        let path = dir.join("remotes.yaml");
        let mut r = Remotes::default();
        let token = StoredCredentials::RootToken(Secret::new("root-token-123"));
        r.add("a", "http://a", token).unwrap();
        r.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Remotes::load(&path).unwrap();
        let (_, remote) = back.resolve(None, None).unwrap();
        let remote = remote.unwrap();
        assert!(matches!(
            remote.credentials().unwrap(),
            Some(Credentials::RootToken(t)) if t.expose() == "root-token-123"
        ));
        assert_eq!(remote.auth_summary(), "root token");
        assert!(!format!("{back:?}").contains("root-token-123"));
        let half = Remote {
            api_key_id: Some("k".into()),
            ..Remote::default()
        };
        assert!(half.credentials().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
