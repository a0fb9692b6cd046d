//! How `mesh-node` and `meshctl` prove who they are to NATS, and check the
//! NATS servers: one of user and password, token, NKey seed or creds file,
//! and TLS (a CA to check the servers, a client certificate if they ask).
//!
//! Secrets are read from files or `MESH_NATS_PASSWORD` / `MESH_NATS_TOKEN`,
//! kept as [`Secret`] (never printed) and handed to the client only.

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Secret};

/// NATS credentials and TLS settings from flags and the environment.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct NatsAuthArgs {
    /// NATS user; the password comes from MESH_NATS_PASSWORD or
    /// --nats-password-file.
    #[arg(long, env = "MESH_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS password.
    #[arg(long, env = "MESH_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding a NATS token (MESH_NATS_TOKEN may hold it instead).
    #[arg(long, env = "MESH_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// File holding an NKey seed (SU...).
    #[arg(long, env = "MESH_NATS_NKEY_FILE", value_name = "FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// NATS creds file (user JWT and NKey seed).
    #[arg(long, env = "MESH_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) that signs the NATS servers' certificates;
    /// makes TLS required.
    #[arg(long, env = "MESH_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, env = "MESH_NATS_CERT", value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// Client key (PEM) of --nats-cert.
    #[arg(long, env = "MESH_NATS_KEY", value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
}

impl NatsAuthArgs {
    /// Each setting from `self`, else from `other` (the config file).
    pub fn or(self, other: NatsAuthArgs) -> NatsAuthArgs {
        NatsAuthArgs {
            nats_user: self.nats_user.or(other.nats_user),
            nats_password_file: self.nats_password_file.or(other.nats_password_file),
            nats_token_file: self.nats_token_file.or(other.nats_token_file),
            nats_nkey_file: self.nats_nkey_file.or(other.nats_nkey_file),
            nats_creds: self.nats_creds.or(other.nats_creds),
            nats_ca: self.nats_ca.or(other.nats_ca),
            nats_cert: self.nats_cert.or(other.nats_cert),
            nats_key: self.nats_key.or(other.nats_key),
        }
    }
}

/// How a client authenticates to NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsCredentials {
    /// No credentials (a development server).
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: Secret,
    },
    /// A token.
    Token(Secret),
    /// An NKey seed.
    NKey(Secret),
    /// A creds file (JWT and seed), read when connecting.
    CredsFile(PathBuf),
}

/// Checked NATS credentials and TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// Who the client is.
    pub credentials: NatsCredentials,
    /// The CA that signs the servers' certificates (TLS required if set).
    pub ca: Option<PathBuf>,
    /// The client certificate and key, if the servers verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

fn read_secret(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = crate::config::read_bounded(path, 64 * 1024)
        .map_err(|e| ConfigError(format!("cannot read {key} {}: {e}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError(format!("{key} {} is empty", path.display())));
    }
    Ok(Secret::from_text(text))
}

fn readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| ConfigError(format!("cannot read {key} {}: {e}", path.display())))
}

impl NatsAuth {
    /// Checks the settings; `env` looks up `MESH_NATS_PASSWORD` and
    /// `MESH_NATS_TOKEN`.
    pub fn resolve(
        args: NatsAuthArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<NatsAuth, ConfigError> {
        let mut methods = Vec::new();
        if let Some(user) = args.nats_user {
            let password = match (args.nats_password_file, env("MESH_NATS_PASSWORD")) {
                (Some(path), _) => read_secret("nats_password_file", &path)?,
                (None, Some(p)) if !p.trim().is_empty() => Secret::from_text(p.trim()),
                _ => {
                    return Err(ConfigError(format!(
                        "nats_user {user} needs a password: nats_password_file or \
                         MESH_NATS_PASSWORD"
                    )))
                }
            };
            methods.push((
                "nats_user",
                NatsCredentials::UserPassword { user, password },
            ));
        } else if args.nats_password_file.is_some() {
            return Err(ConfigError(
                "nats_password_file is set without nats_user".into(),
            ));
        }
        match (args.nats_token_file, env("MESH_NATS_TOKEN")) {
            (Some(path), _) => methods.push((
                "nats_token_file",
                NatsCredentials::Token(read_secret("nats_token_file", &path)?),
            )),
            (None, Some(t)) if !t.trim().is_empty() => methods.push((
                "MESH_NATS_TOKEN",
                NatsCredentials::Token(Secret::from_text(t.trim())),
            )),
            _ => {}
        }
        if let Some(path) = args.nats_nkey_file {
            let seed = read_secret("nats_nkey_file", &path)?;
            if !seed.expose().starts_with("SU") {
                return Err(ConfigError(format!(
                    "nats_nkey_file {}: not a user NKey seed (they start with SU)",
                    path.display()
                )));
            }
            methods.push(("nats_nkey_file", NatsCredentials::NKey(seed)));
        }
        if let Some(path) = args.nats_creds {
            readable("nats_creds", &path)?;
            methods.push(("nats_creds", NatsCredentials::CredsFile(path)));
        }
        if methods.len() > 1 {
            let names: Vec<&str> = methods.iter().map(|(k, _)| *k).collect();
            return Err(ConfigError(format!(
                "give one kind of NATS credentials, not {}",
                names.join(" and ")
            )));
        }
        if let Some(ca) = &args.nats_ca {
            readable("nats_ca", ca)?;
        }
        let client_cert = match (args.nats_cert, args.nats_key) {
            (Some(cert), Some(key)) => {
                readable("nats_cert", &cert)?;
                readable("nats_key", &key)?;
                Some((cert, key))
            }
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError("nats_cert needs nats_key".into())),
            (None, Some(_)) => return Err(ConfigError("nats_key needs nats_cert".into())),
        };
        Ok(NatsAuth {
            credentials: methods.pop().map(|(_, m)| m).unwrap_or_default(),
            ca: args.nats_ca,
            client_cert,
        })
    }

    /// Connection options carrying these credentials and TLS settings.
    pub async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        options = match &self.credentials {
            NatsCredentials::None => options,
            NatsCredentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsCredentials::Token(token) => options.token(token.expose().to_owned()),
            NatsCredentials::NKey(seed) => options.nkey(seed.expose().to_owned()),
            NatsCredentials::CredsFile(path) => options
                .credentials_file(path)
                .await
                .map_err(|e| anyhow::anyhow!("nats_creds {}: {e}", path.display()))?,
        };
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn each_kind_of_credentials_resolves_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let args = NatsAuthArgs {
            nats_user: Some("node".into()),
            nats_password_file: Some(file(&dir, "pw", "hunter2-long-password\n")),
            ..NatsAuthArgs::default()
        };
        let auth = NatsAuth::resolve(args, |_| None).unwrap();
        assert!(matches!(
            &auth.credentials,
            NatsCredentials::UserPassword { user, password }
                if user == "node" && password.expose() == "hunter2-long-password"
        ));
        assert!(!format!("{auth:?}").contains("hunter2"), "{auth:?}");

        let token = NatsAuth::resolve(NatsAuthArgs::default(), |k| {
            (k == "MESH_NATS_TOKEN").then(|| "tok-secret".to_owned())
        })
        .unwrap();
        assert!(!format!("{token:?}").contains("tok-secret"));
        assert!(matches!(token.credentials, NatsCredentials::Token(_)));
    }

    #[test]
    fn contradictory_or_incomplete_settings_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                NatsAuthArgs {
                    nats_user: Some("u".into()),
                    ..NatsAuthArgs::default()
                },
                "needs a password",
            ),
            (
                NatsAuthArgs {
                    nats_user: Some("u".into()),
                    nats_password_file: Some(file(&dir, "p", "pw")),
                    nats_token_file: Some(file(&dir, "t", "tok")),
                    ..NatsAuthArgs::default()
                },
                "give one kind of NATS credentials",
            ),
            (
                NatsAuthArgs {
                    nats_nkey_file: Some(file(&dir, "n", "not-a-seed")),
                    ..NatsAuthArgs::default()
                },
                "not a user NKey seed",
            ),
            (
                NatsAuthArgs {
                    nats_cert: Some(file(&dir, "c", "x")),
                    ..NatsAuthArgs::default()
                },
                "nats_cert needs nats_key",
            ),
            (
                NatsAuthArgs {
                    nats_creds: Some(dir.path().join("missing.creds")),
                    ..NatsAuthArgs::default()
                },
                "cannot read nats_creds",
            ),
        ];
        for (args, expected) in cases {
            let err = NatsAuth::resolve(args, |_| None).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
