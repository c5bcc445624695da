//! `kiln key` and `kiln trust`: signing keys and the keys whose signed job
//! results this store serves as cache hits (docs/offline.md, "Threat model").

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::trust::{Keyring, PublicKey};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create the signing key NAME in this store and print its public key
    Generate {
        /// Letters, digits, `.`, `_` and `-`
        name: String,
    },
    /// Print the public key of the signing key NAME (give it to `kiln trust add`)
    Public {
        /// The key's name, as given to `kiln key generate`
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (`NAME:BASE64`, as `kiln key public` prints it)
    Add {
        /// `NAME:BASE64`, as `kiln key public NAME` prints it
        public_key: String,
    },
    /// List the trusted public keys
    Ls {
        /// Print the keys as JSON: name and public key
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting a key, by name or whole public key
    Rm {
        /// The key's name, or its whole public key `NAME:BASE64`
        key: String,
    },
}

pub fn key(store_dir: &Path, command: KeyCommand) -> anyhow::Result<ExitCode> {
    let keyring = Keyring::new(store_dir);
    let public = match command {
        KeyCommand::Generate { name } => keyring.generate(&name)?,
        KeyCommand::Public { name } => keyring.secret(&name)?.public(),
    };
    crate::cli::outln!("{public}")?;
    Ok(ExitCode::SUCCESS)
}

pub fn trust(store_dir: &Path, command: TrustCommand) -> anyhow::Result<ExitCode> {
    let keyring = Keyring::new(store_dir);
    match command {
        TrustCommand::Add { public_key } => {
            let key = PublicKey::parse(&public_key)?;
            if keyring.trust(key.clone())? {
                eprintln!("trusted {key}");
            } else {
                eprintln!("{key} was trusted already");
            }
        }
        TrustCommand::Ls { json: true } => {
            let keys: Vec<serde_json::Value> = keyring
                .trusted()?
                .into_iter()
                .map(|key| serde_json::json!({ "name": key.name, "public_key": key.to_string() }))
                .collect();
            crate::cli::print_json(&keys)?;
        }
        TrustCommand::Ls { json: false } => {
            for key in keyring.trusted()? {
                crate::cli::outln!("{key}")?;
            }
        }
        TrustCommand::Rm { key } => {
            let removed = keyring.distrust(&key)?;
            if removed.is_empty() {
                anyhow::bail!("no trusted key named {key:?} (`kiln trust ls` lists them)");
            }
            for key in removed {
                eprintln!("no longer trusted: {key}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
