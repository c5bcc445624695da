//! Signing keys and the keys a store trusts (design §10), as Nix's
//! `trusted-public-keys`: a job result that comes from outside (a bundle)
//! becomes a cache hit only when it carries a signature by a trusted key.
//!
//! Keys are ed25519. A public key is written `NAME:BASE64` (32 bytes), a
//! secret key file holds `NAME:BASE64` of the 32-byte seed. Both live in
//! the store directory, which the `host` view never shows to a job:
//! `keys/NAME.secret` (mode 0600) and `trusted-keys` (one public key per
//! line).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use kiln_store::{B3Digest, JobArtifact};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key name {0:?}: use letters, digits, `.`, `_` and `-` only")]
    BadName(String),
    #[error("{what} {text:?} is not `NAME:BASE64` of {len} bytes")]
    BadKey {
        what: &'static str,
        text: String,
        len: usize,
    },
    #[error("there is no signing key {name:?} in this store ({}): create one with `kiln key generate {name}`", path.display())]
    NoSuchKey { name: String, path: PathBuf },
    #[error("a signing key {name:?} exists already ({})", path.display())]
    KeyExists { name: String, path: PathBuf },
    #[error("no random bytes for a key: {0}")]
    Random(String),
}

/// A public key with its name, as `NAME:BASE64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, TrustError> {
        let bad = || TrustError::BadKey {
            what: "public key",
            text: text.to_owned(),
            len: 32,
        };
        let (name, bytes) = split_key(text.trim(), 32).ok_or_else(bad)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
        Ok(PublicKey { name, key })
    }

    /// Whether `signature` (as in a bundle) is this key's over `message`.
    fn verifies(&self, message: &[u8], signature: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(signature) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify_strict(message, &signature).is_ok()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

/// A signing key read from the store.
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

impl SecretKey {
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The signature (base64) of a job result, as a bundle carries it.
    pub fn sign_result(&self, result: &SignedFields<'_>) -> ResultSignature {
        let signature = self.key.sign(&result.message());
        ResultSignature {
            key: self.public().to_string(),
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

/// A signature over one job result, by the key it names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultSignature {
    /// The public key, `NAME:BASE64`.
    pub key: String,
    /// The ed25519 signature, base64.
    pub signature: String,
}

/// What a result's signature covers: everything a cache hit hands on.
pub struct SignedFields<'a> {
    pub key: &'a B3Digest,
    pub output_layer: &'a B3Digest,
    pub log: Option<&'a B3Digest>,
    pub artifacts: &'a [JobArtifact],
}

/// Names the encoding of [`SignedFields::message`]; a change to it is a
/// new version.
const RESULT_SIGNATURE_DOMAIN: &[u8] = b"kiln job result signature v1\0";

impl SignedFields<'_> {
    /// A canonical, length-prefixed encoding.
    fn message(&self) -> Vec<u8> {
        fn bytes(out: &mut Vec<u8>, data: &[u8]) {
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
        }
        let mut out = RESULT_SIGNATURE_DOMAIN.to_vec();
        bytes(&mut out, self.key.as_bytes());
        bytes(&mut out, self.output_layer.as_bytes());
        match self.log {
            Some(log) => bytes(&mut out, log.as_bytes()),
            None => bytes(&mut out, &[]),
        }
        out.extend_from_slice(&(self.artifacts.len() as u64).to_le_bytes());
        for artifact in self.artifacts {
            bytes(&mut out, artifact.name.as_bytes());
            bytes(&mut out, artifact.object.kind.name().as_bytes());
            bytes(&mut out, artifact.object.digest.as_bytes());
            out.extend_from_slice(&artifact.size.to_le_bytes());
        }
        out
    }
}

fn split_key(text: &str, len: usize) -> Option<(String, Vec<u8>)> {
    let (name, encoded) = text.split_once(':')?;
    check_name(name).ok()?;
    let bytes = STANDARD.decode(encoded).ok()?;
    (bytes.len() == len).then(|| (name.to_owned(), bytes))
}

fn check_name(name: &str) -> Result<(), TrustError> {
    let fine = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    fine.then_some(())
        .ok_or_else(|| TrustError::BadName(name.to_owned()))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The keys of one store directory.
pub struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    pub fn new(store_dir: &Path) -> Keyring {
        Keyring {
            dir: store_dir.to_owned(),
        }
    }

    fn secret_path(&self, name: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{name}.secret"))
    }

    fn trusted_path(&self) -> PathBuf {
        self.dir.join("trusted-keys")
    }

    /// Creates the signing key `name` (mode 0600) and returns its public key.
    pub fn generate(&self, name: &str) -> Result<PublicKey, TrustError> {
        check_name(name)?;
        let path = self.secret_path(name);
        let keys = self.dir.join("keys");
        std::fs::create_dir_all(&keys).map_err(io(&keys))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|err| TrustError::Random(err.to_string()))?;
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(TrustError::KeyExists {
                    name: name.to_owned(),
                    path,
                });
            }
            Err(err) => return Err(io(&path)(err)),
        };
        writeln!(file, "{name}:{}", STANDARD.encode(seed))
            .and_then(|()| file.sync_all())
            .map_err(io(&path))?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
        .public())
    }

    pub fn secret(&self, name: &str) -> Result<SecretKey, TrustError> {
        check_name(name)?;
        let path = self.secret_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(TrustError::NoSuchKey {
                    name: name.to_owned(),
                    path,
                });
            }
            Err(err) => return Err(io(&path)(err)),
        };
        let bad = || TrustError::BadKey {
            what: "secret key file",
            text: path.display().to_string(),
            len: 32,
        };
        let (stored_name, seed) = split_key(text.trim(), 32).ok_or_else(bad)?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad())?;
        Ok(SecretKey {
            name: stored_name,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The trusted public keys, in the order they were added.
    pub fn trusted(&self) -> Result<Vec<PublicKey>, TrustError> {
        let path = self.trusted_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io(&path)(err)),
        };
        text.lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(PublicKey::parse)
            .collect()
    }

    fn write_trusted(&self, keys: &[PublicKey]) -> Result<(), TrustError> {
        let path = self.trusted_path();
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let temp = self.dir.join("trusted-keys.tmp");
        let text: String = keys.iter().map(|key| format!("{key}\n")).collect();
        std::fs::write(&temp, text)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(io(&path))
    }

    /// Trusts `key`; `false` when it was trusted already.
    pub fn trust(&self, key: PublicKey) -> Result<bool, TrustError> {
        let mut keys = self.trusted()?;
        if keys.contains(&key) {
            return Ok(false);
        }
        keys.push(key);
        self.write_trusted(&keys)?;
        Ok(true)
    }

    /// Stops trusting the keys named `name_or_key` (a name, or a whole
    /// public key); returns those removed.
    pub fn distrust(&self, name_or_key: &str) -> Result<Vec<PublicKey>, TrustError> {
        let keys = self.trusted()?;
        let (removed, kept): (Vec<_>, Vec<_>) = keys
            .into_iter()
            .partition(|key| key.name == name_or_key || key.to_string() == name_or_key.trim());
        if !removed.is_empty() {
            self.write_trusted(&kept)?;
        }
        Ok(removed)
    }

    /// The trusted key that signed `fields`, if any.
    pub fn verify(
        trusted: &[PublicKey],
        fields: &SignedFields<'_>,
        signature: &ResultSignature,
    ) -> Option<PublicKey> {
        let named = PublicKey::parse(&signature.key).ok()?;
        let key = trusted.iter().find(|key| **key == named)?;
        key.verifies(&fields.message(), &signature.signature)
            .then(|| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_store::ObjectRef;

    #[test]
    fn a_signature_verifies_only_for_the_same_result_and_a_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::new(dir.path());
        let public = keyring.generate("ci-1").unwrap();
        assert_eq!(PublicKey::parse(&public.to_string()).unwrap(), public);
        let secret = keyring.secret("ci-1").unwrap();
        assert_eq!(secret.public(), public);
        let (key, layer, log) = (B3Digest::of(b"k"), B3Digest::of(b"l"), B3Digest::of(b"g"));
        let artifacts = vec![JobArtifact {
            name: "out".into(),
            object: ObjectRef::blob(B3Digest::of(b"a")),
            size: 1,
        }];
        let fields = SignedFields {
            key: &key,
            output_layer: &layer,
            log: Some(&log),
            artifacts: &artifacts,
        };
        let signature = secret.sign_result(&fields);
        let trusted = vec![public.clone()];
        assert_eq!(Keyring::verify(&trusted, &fields, &signature), Some(public));
        // Not trusted: no.
        assert_eq!(Keyring::verify(&[], &fields, &signature), None);
        // Any field changed: no.
        let other = B3Digest::of(b"other");
        for changed in [
            SignedFields {
                key: &other,
                ..fields
            },
            SignedFields {
                output_layer: &other,
                ..fields
            },
            SignedFields {
                log: None,
                ..fields
            },
            SignedFields {
                artifacts: &[],
                ..fields
            },
        ] {
            assert_eq!(Keyring::verify(&trusted, &changed, &signature), None);
        }
        // A tampered signature byte: no.
        let mut bytes = STANDARD.decode(&signature.signature).unwrap();
        bytes[0] ^= 1;
        let tampered = ResultSignature {
            signature: STANDARD.encode(bytes),
            ..signature.clone()
        };
        assert_eq!(Keyring::verify(&trusted, &fields, &tampered), None);
        // Another key under the same name: no.
        let impostor = Keyring::new(&dir.path().join("other"))
            .generate("ci-1")
            .unwrap();
        assert_ne!(impostor, trusted[0]);
        let forged = ResultSignature {
            key: impostor.to_string(),
            ..signature
        };
        assert_eq!(Keyring::verify(&trusted, &fields, &forged), None);
    }

    #[test]
    fn keys_are_private_and_the_trust_list_is_edited_by_name_or_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::new(dir.path());
        let a = keyring.generate("a").unwrap();
        let mode = std::fs::metadata(dir.path().join("keys/a.secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            keyring.generate("a"),
            Err(TrustError::KeyExists { .. })
        ));
        assert!(matches!(
            keyring.generate("../x"),
            Err(TrustError::BadName(_))
        ));
        let b = keyring.generate("b").unwrap();
        assert!(keyring.trust(a.clone()).unwrap());
        assert!(!keyring.trust(a.clone()).unwrap());
        assert!(keyring.trust(b.clone()).unwrap());
        assert_eq!(keyring.trusted().unwrap(), [a.clone(), b.clone()]);
        assert_eq!(keyring.distrust("a").unwrap(), [a]);
        assert_eq!(keyring.distrust(&b.to_string()).unwrap(), [b]);
        assert!(keyring.trusted().unwrap().is_empty());
        assert!(PublicKey::parse("nocolon").is_err());
        assert!(PublicKey::parse("n:AAAA").is_err());
    }
}
