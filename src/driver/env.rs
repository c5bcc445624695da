//! The hermetic job environment (design §5): exactly the manifest's env
//! plus fixed values; nothing comes from the host.

use std::collections::BTreeMap;

/// `HOME` inside every job: jobs run as root of their environment.
pub const HOME: &str = "/root";

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The job's environment, sorted by name. The manifest's values win over
/// the fixed ones (a job may set its own `PATH` or `SOURCE_DATE_EPOCH`).
pub fn hermetic_env(manifest_env: &BTreeMap<String, String>, home: &str) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = [
        ("PATH", DEFAULT_PATH),
        ("HOME", home),
        ("LANG", "C.UTF-8"),
        ("TZ", "UTC"),
        ("SOURCE_DATE_EPOCH", "0"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    for (name, value) in manifest_env {
        env.insert(name.clone(), value.clone());
    }
    env.into_iter().collect()
}
