//! The job key (design §3): blake3 over a canonical, versioned,
//! length-prefixed encoding of everything that decides a job's output.
//!
//! [`KeyInputs`] keeps the components themselves (serialisable) so that
//! `kiln explain` can say which one changed since a job's last run.
//!
//! Architecture invariant: dependencies enter the key by their *output*
//! layer digest, never by their key, so an upstream job rebuilt to identical
//! bytes invalidates nothing downstream (early cutoff). Job and stage names,
//! timestamps, caches and secrets never enter the encoding.

use kiln_store::B3Digest;
use serde::{Deserialize, Serialize};

/// Bumped whenever the encoding below changes: every old key then misses.
pub const KEY_FORMAT_VERSION: u32 = 1;
const DOMAIN: &[u8] = b"kiln job key";

/// The driver as far as it decides a job's output (accel is not part of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverKey {
    /// `container`, `qemu` or `host`.
    pub kind: String,
    pub image: Option<B3Digest>,
    pub kernel: Option<B3Digest>,
    pub memory: Option<u64>,
    pub cpus: Option<u64>,
    pub pids: Option<u64>,
    /// Where the workspace is mounted: absolute paths end up in outputs.
    pub workspace: Option<String>,
}

/// One upstream job whose output layer the workspace contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepKey {
    /// For `explain` only: not part of the encoding.
    pub job: String,
    pub output: B3Digest,
}

/// Every component of a job key, as recorded for `kiln explain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInputs {
    pub version: u32,
    pub driver: DriverKey,
    pub script: String,
    /// The job's whole environment, sorted by name.
    pub env: Vec<(String, String)>,
    /// The (narrowed) base layer the job sees.
    pub base_layer: B3Digest,
    /// Upstream output layers, in topological order.
    pub deps: Vec<DepKey>,
    /// Declared artifacts as `SRC => NAME`.
    pub artifacts: Vec<String>,
}

impl KeyInputs {
    pub fn key(&self) -> B3Digest {
        let mut encoder = Encoder::default();
        encoder.bytes(DOMAIN);
        encoder.u64(u64::from(self.version));
        let driver = &self.driver;
        encoder.bytes(driver.kind.as_bytes());
        encoder.digest(driver.image.as_ref());
        encoder.digest(driver.kernel.as_ref());
        for limit in [driver.memory, driver.cpus, driver.pids] {
            encoder.opt_u64(limit);
        }
        encoder.opt_bytes(driver.workspace.as_deref().map(str::as_bytes));
        encoder.bytes(self.script.as_bytes());
        encoder.u64(self.env.len() as u64);
        for (name, value) in &self.env {
            encoder.bytes(name.as_bytes());
            encoder.bytes(value.as_bytes());
        }
        encoder.bytes(self.base_layer.as_bytes());
        encoder.u64(self.deps.len() as u64);
        for dep in &self.deps {
            encoder.bytes(dep.output.as_bytes());
        }
        encoder.u64(self.artifacts.len() as u64);
        for artifact in &self.artifacts {
            encoder.bytes(artifact.as_bytes());
        }
        B3Digest::from(encoder.hasher.finalize())
    }

    /// The components that differ from `previous`, in encoding order, each
    /// with a short human description.
    pub fn changes_since(&self, previous: &KeyInputs) -> Vec<String> {
        self.changes(previous)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The components that differ from `previous`, in encoding order; the
    /// ones `kiln explain` looks into (files, upstream outputs, the image)
    /// keep both digests.
    pub fn changes(&self, previous: &KeyInputs) -> Vec<KeyChange> {
        let mut changes: Vec<KeyChange> = Vec::new();
        if self.version != previous.version {
            changes.push(KeyChange::Other(format!(
                "key format version: {} → {}",
                previous.version, self.version
            )));
        }
        if self.driver != previous.driver {
            let (old, new) = (&previous.driver, &self.driver);
            if old.kind != new.kind {
                changes.push(KeyChange::Other(format!(
                    "driver type: {} → {}",
                    old.kind, new.kind
                )));
            }
            if old.image != new.image {
                changes.push(KeyChange::Image {
                    before: old.image,
                    now: new.image,
                });
            }
            if old.kernel != new.kernel {
                changes.push(KeyChange::Other("driver kernel changed".to_owned()));
            }
            if (old.memory, old.cpus, old.pids) != (new.memory, new.cpus, new.pids) {
                changes.push(KeyChange::Other(
                    "driver limits (memory/cpus/pids) changed".to_owned(),
                ));
            }
            if old.workspace != new.workspace {
                changes.push(KeyChange::Other(format!(
                    "driver workspace: {:?} → {:?}",
                    old.workspace, new.workspace
                )));
            }
        }
        if self.script != previous.script {
            changes.push(KeyChange::Other("script (commands) changed".to_owned()));
        }
        if self.env != previous.env {
            let old: std::collections::BTreeMap<_, _> = previous.env.iter().cloned().collect();
            let new: std::collections::BTreeMap<_, _> = self.env.iter().cloned().collect();
            let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                match (old.get(name), new.get(name)) {
                    (Some(a), Some(b)) if a != b => {
                        changes.push(KeyChange::Other(format!("env {name}: {a:?} → {b:?}")));
                    }
                    (Some(_), None) => {
                        changes.push(KeyChange::Other(format!("env {name} removed")))
                    }
                    (None, Some(b)) => {
                        changes.push(KeyChange::Other(format!("env {name} added: {b:?}")))
                    }
                    _ => {}
                }
            }
        }
        if self.base_layer != previous.base_layer {
            changes.push(KeyChange::Files {
                before: previous.base_layer,
                now: self.base_layer,
            });
        }
        if self.deps != previous.deps {
            let old_names: Vec<&str> = previous.deps.iter().map(|d| d.job.as_str()).collect();
            let new_names: Vec<&str> = self.deps.iter().map(|d| d.job.as_str()).collect();
            if old_names != new_names {
                changes.push(KeyChange::Other(format!(
                    "upstream jobs: [{}] → [{}]",
                    old_names.join(", "),
                    new_names.join(", ")
                )));
            } else {
                for (old, new) in previous.deps.iter().zip(&self.deps) {
                    if old.output != new.output {
                        changes.push(KeyChange::UpstreamOutput {
                            job: new.job.clone(),
                            before: old.output,
                            now: new.output,
                        });
                    }
                }
            }
        }
        if self.artifacts != previous.artifacts {
            changes.push(KeyChange::Other("declared artifacts changed".to_owned()));
        }
        changes
    }
}

/// One key component that differs from an earlier run's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// The (narrowed) sources and objects the job sees: two trees.
    Files { before: B3Digest, now: B3Digest },
    /// An upstream job's output layer: two trees.
    UpstreamOutput {
        job: String,
        before: B3Digest,
        now: B3Digest,
    },
    /// The driver's image: two image trees, or two host fingerprints.
    Image {
        before: Option<B3Digest>,
        now: Option<B3Digest>,
    },
    /// Anything else, already in words.
    Other(String),
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyChange::Files { before, now } => {
                write!(f, "sources/objects it sees (base layer): {before} → {now}")
            }
            KeyChange::UpstreamOutput { job, before, now } => {
                write!(f, "output of upstream job {job}: {before} → {now}")
            }
            KeyChange::Image { before, now } => write!(
                f,
                "driver image: {} → {}",
                show(before.as_ref()),
                show(now.as_ref())
            ),
            KeyChange::Other(text) => f.write_str(text),
        }
    }
}

fn show(digest: Option<&B3Digest>) -> String {
    digest.map_or_else(|| "none".to_owned(), B3Digest::to_string)
}

/// Length-prefixed fields: no two different inputs encode to the same bytes.
#[derive(Default)]
struct Encoder {
    hasher: blake3::Hasher,
}

impl Encoder {
    fn u64(&mut self, value: u64) {
        self.hasher.update(&value.to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.hasher.update(bytes);
    }

    fn opt_bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => {
                self.hasher.update(&[0]);
            }
            Some(bytes) => {
                self.hasher.update(&[1]);
                self.bytes(bytes);
            }
        }
    }

    fn opt_u64(&mut self, value: Option<u64>) {
        match value {
            None => {
                self.hasher.update(&[0]);
            }
            Some(value) => {
                self.hasher.update(&[1]);
                self.hasher.update(&value.to_le_bytes());
            }
        }
    }

    fn digest(&mut self, digest: Option<&B3Digest>) {
        self.opt_bytes(digest.map(|d| &d.as_bytes()[..]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyInputs {
        KeyInputs {
            version: KEY_FORMAT_VERSION,
            driver: DriverKey {
                kind: "container".into(),
                image: Some(B3Digest::of(b"image")),
                kernel: None,
                memory: None,
                cpus: None,
                pids: None,
                workspace: Some("/work".into()),
            },
            script: "#!/bin/sh\ntrue\n".into(),
            env: vec![("A".into(), "1".into())],
            base_layer: B3Digest::of(b"base"),
            deps: vec![DepKey {
                job: "compile".into(),
                output: B3Digest::of(b"out"),
            }],
            artifacts: vec!["hello => hello".into()],
        }
    }

    #[test]
    fn every_component_changes_the_key_but_names_do_not() {
        let base = sample();
        let key = base.key();
        let mut renamed = base.clone();
        renamed.deps[0].job = "other".into();
        assert_eq!(renamed.key(), key, "dependency names are not in the key");
        type Change = Box<dyn Fn(&mut KeyInputs)>;
        let variants: Vec<Change> = vec![
            Box::new(|k| k.version += 1),
            Box::new(|k| k.driver.kind = "host".into()),
            Box::new(|k| k.driver.image = None),
            Box::new(|k| k.driver.memory = Some(1)),
            Box::new(|k| k.driver.workspace = Some("/w".into())),
            Box::new(|k| k.script.push('x')),
            Box::new(|k| k.env[0].1 = "2".into()),
            Box::new(|k| k.base_layer = B3Digest::of(b"other")),
            Box::new(|k| k.deps[0].output = B3Digest::of(b"other")),
            Box::new(|k| k.deps.clear()),
            Box::new(|k| k.artifacts.clear()),
        ];
        for (index, change) in variants.iter().enumerate() {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(changed.key(), key, "variant {index}");
            assert!(!changed.changes_since(&base).is_empty(), "variant {index}");
        }
    }

    /// The key of `sample()` under each key format version. A change to
    /// the encoding changes every key in every store: it must come with a
    /// new `KEY_FORMAT_VERSION` and a new line here, never an edited one.
    const PINNED_KEYS: &[(u32, &str)] = &[(
        1,
        "blake3:3efbed31895d0e7bd015bf6aea87cbf8763ed1589d63a7a2193a782f4c3e65f5",
    )];

    #[test]
    fn the_encoding_is_pinned_by_the_format_version() {
        let key = sample().key().to_string();
        let pinned = PINNED_KEYS
            .iter()
            .find(|(version, _)| *version == KEY_FORMAT_VERSION)
            .unwrap_or_else(|| panic!("add ({KEY_FORMAT_VERSION}, \"{key}\") to PINNED_KEYS"));
        assert_eq!(
            pinned.1, key,
            "the key encoding changed: bump KEY_FORMAT_VERSION and pin the new key beside the old"
        );
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let mut a = sample();
        a.env = vec![("AB".into(), "C".into())];
        let mut b = sample();
        b.env = vec![("A".into(), "BC".into())];
        assert_ne!(a.key(), b.key());
    }
}
