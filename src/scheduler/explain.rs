//! The key inputs of each job's last run, per project, for `kiln explain`:
//! one JSON blob (job name → [`KeyInputs`]) under the root
//! `job_result/explain:<owner>`, rewritten once at the end of each build.

use std::collections::BTreeMap;

use kiln_store::{ObjectRef, RootKind, Store, TempRoots};

use super::RunError;
use crate::graph::KeyInputs;

fn root_name(owner: &str) -> String {
    format!("explain:{owner}")
}

pub fn load(store: &Store, owner: &str) -> Result<BTreeMap<String, KeyInputs>, RunError> {
    let Some(root) = store.get_root(RootKind::JobResult, &root_name(owner))? else {
        return Ok(BTreeMap::new());
    };
    if root.broken {
        return Ok(BTreeMap::new());
    }
    let bytes = store.blob_bytes(&root.object.digest)?;
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

pub fn save(
    store: &mut Store,
    roots: &TempRoots,
    owner: &str,
    updates: BTreeMap<String, KeyInputs>,
) -> Result<(), RunError> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut all = load(store, owner)?;
    all.extend(updates);
    let bytes = serde_json::to_vec(&all).map_err(|e| RunError::Internal(e.to_string()))?;
    let report = store.add_bytes(&bytes, roots)?;
    store.set_root(
        RootKind::JobResult,
        &root_name(owner),
        ObjectRef::blob(report.object.digest),
    )?;
    Ok(())
}
