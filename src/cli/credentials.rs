//! Which credentials a command runs with: the flags, else the environment, else those kept
//! with the remote. Each source is taken whole, never half from one and half from another,
//! so an exported key cannot silently pair with a token given on the command line.

use std::path::PathBuf;

use super::remotes::{Remote, StoredCredentials};
use super::GlobalArgs;
use crate::client::{ClientError, ClientResult, Credentials, PrivateKey, Secret};

/// Root token variable.
pub const ENV_ROOT_TOKEN: &str = "VMREG_ROOT_TOKEN";
/// API key id variable.
pub const ENV_API_KEY_ID: &str = "VMREG_API_KEY_ID";
/// API key file variable.
pub const ENV_API_KEY_FILE: &str = "VMREG_API_KEY_FILE";

/// Credentials as one source gives them, before the key file is read.
struct Given {
    root_token: Option<Secret>,
    api_key_id: Option<String>,
    api_key_file: Option<PathBuf>,
    /// How the user names these settings, for errors.
    names: [&'static str; 3],
}

impl Given {
    fn from_flags(g: &GlobalArgs) -> Self {
        Self {
            root_token: g.root_token.clone().filter(|t| !t.is_empty()),
            api_key_id: g.api_key_id.clone().filter(|s| !s.is_empty()),
            api_key_file: g.api_key_file.clone().filter(|p| !p.as_os_str().is_empty()),
            names: ["--root-token", "--api-key-id", "--api-key-file"],
        }
    }

    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |name| env(name).filter(|v| !v.is_empty());
        Self {
            root_token: var(ENV_ROOT_TOKEN).map(Secret::new),
            api_key_id: var(ENV_API_KEY_ID),
            api_key_file: var(ENV_API_KEY_FILE).map(PathBuf::from),
            names: [ENV_ROOT_TOKEN, ENV_API_KEY_ID, ENV_API_KEY_FILE],
        }
    }

    fn is_empty(&self) -> bool {
        self.root_token.is_none() && self.api_key_id.is_none() && self.api_key_file.is_none()
    }

    /// The credentials, with the key file's text (checked to parse) for keeping.
    fn read(self) -> ClientResult<(Credentials, StoredCredentials)> {
        let [token_name, id_name, file_name] = self.names;
        match (self.root_token, self.api_key_id, self.api_key_file) {
            (Some(token), None, None) => Ok((
                Credentials::RootToken(token.clone()),
                StoredCredentials::RootToken(token),
            )),
            (Some(_), _, _) => Err(ClientError::Invalid(format!(
                "give either {token_name} or an API key ({id_name} with {file_name}), not both"
            ))),
            (None, Some(id), Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ClientError::io(&path, e))?;
                let key = PrivateKey::parse(&text)
                    .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
                let stored = StoredCredentials::ApiKey {
                    id: id.clone(),
                    key: Secret::new(text.trim()),
                };
                Ok((Credentials::ApiKey { id, key }, stored))
            }
            (None, Some(_), None) => Err(ClientError::Invalid(format!(
                "{id_name} needs {file_name} (the key's private key file)"
            ))),
            (None, None, Some(_)) => Err(ClientError::Invalid(format!(
                "{file_name} needs {id_name} (the key's id)"
            ))),
            (None, None, None) => Ok((Credentials::Anonymous, StoredCredentials::None)),
        }
    }
}

/// The credentials for a command: flags, else environment, else the remote's.
pub fn resolve(
    g: &GlobalArgs,
    remote: Option<&Remote>,
    env: &dyn Fn(&str) -> Option<String>,
) -> ClientResult<Credentials> {
    let flags = Given::from_flags(g);
    if !flags.is_empty() {
        return flags.read().map(|(c, _)| c);
    }
    let from_env = Given::from_env(env);
    if !from_env.is_empty() {
        return from_env.read().map(|(c, _)| c);
    }
    Ok(remote
        .map(Remote::credentials)
        .transpose()?
        .flatten()
        .unwrap_or_default())
}

/// The credentials `registry add` keeps with a new remote: those given as flags only (an
/// exported variable is not written to disk behind the user's back).
pub fn to_keep(g: &GlobalArgs) -> ClientResult<StoredCredentials> {
    Given::from_flags(g).read().map(|(_, stored)| stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        g: GlobalArgs,
    }

    fn args(list: &[&str]) -> GlobalArgs {
        let mut all = vec!["vmreg"];
        all.extend_from_slice(list);
        Cli::parse_from(all).g
    }

    fn key_file() -> (PathBuf, String) {
        use base64::Engine;
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(key.to_pkcs1_der().unwrap().as_bytes());
        let path = std::env::temp_dir().join(format!("vmreg-key-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, &b64).unwrap();
        (path, b64)
    }

    fn describe(g: &GlobalArgs, remote: Option<&Remote>, env: &[(&str, &str)]) -> String {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        match resolve(g, remote, &lookup) {
            Ok(c) => c.describe(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_remote() {
        let (file, _) = key_file();
        let file = file.display().to_string();
        let remote = Remote {
            url: "http://r".into(),
            root_token: Some(Secret::new("remote-token")),
            ..Remote::default()
        };
        let env_key = [
            (ENV_API_KEY_ID, "envkey"),
            (ENV_API_KEY_FILE, file.as_str()),
        ];
        assert_eq!(describe(&args(&[]), Some(&remote), &[]), "root token");
        assert_eq!(
            describe(&args(&[]), Some(&remote), &env_key),
            "API key \"envkey\""
        );
        assert_eq!(
            describe(
                &args(&["--root-token", "flagtoken12"]),
                Some(&remote),
                &env_key
            ),
            "root token"
        );
        assert_eq!(
            describe(
                &args(&["--api-key-id", "k1", "--api-key-file", &file]),
                None,
                &[(ENV_ROOT_TOKEN, "envtoken123")]
            ),
            "API key \"k1\""
        );
        assert_eq!(describe(&args(&[]), None, &[(ENV_ROOT_TOKEN, "")]), "none");
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn half_given_or_doubled_credentials_are_errors_that_name_the_setting() {
        let e = describe(&args(&["--api-key-id", "k"]), None, &[]);
        assert!(e.contains("--api-key-id needs --api-key-file"), "{e}");
        let e = describe(&args(&[]), None, &[(ENV_API_KEY_FILE, "/x")]);
        assert!(
            e.contains("VMREG_API_KEY_FILE needs VMREG_API_KEY_ID"),
            "{e}"
        );
        let e = describe(
            &args(&["--root-token", "secret-token-9", "--api-key-id", "k"]),
            None,
            &[],
        );
        assert!(
            e.contains("not both") && !e.contains("secret-token-9"),
            "{e}"
        );
        let e = describe(
            &args(&["--api-key-id", "k", "--api-key-file", "/nonexistent/key"]),
            None,
            &[],
        );
        assert!(e.contains("/nonexistent/key"), "{e}");
    }

    #[test]
    fn add_keeps_only_what_the_flags_give_and_the_key_text_as_given() {
        let (file, b64) = key_file();
        let g = args(&[
            "--api-key-id",
            "node1",
            "--api-key-file",
            &file.display().to_string(),
        ]);
        match to_keep(&g).unwrap() {
            StoredCredentials::ApiKey { id, key } => {
                assert_eq!(id, "node1");
                assert_eq!(key.expose(), b64);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            to_keep(&args(&[])).unwrap(),
            StoredCredentials::None
        ));
        std::fs::remove_file(&file).unwrap();
    }
}
