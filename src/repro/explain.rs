//! `kiln explain` in words: a line for each key component that changed
//! since a job's earlier run and, for the trees among them (the files the
//! job sees, its upstream jobs' outputs, an imported image), which paths
//! were added, removed or changed, found by the same tree walk as
//! `kiln diff`.

use kiln_store::{B3Digest, ObjectKind, ObjectRef, Store};

use super::compare::compare_objects;
use crate::graph::KeyChange;

/// Paths listed under one changed tree; the rest are counted.
pub const PATHS_LISTED: usize = 20;

/// The lines describing `change`: the first says what changed, the ones
/// after it (indented by four spaces) which paths.
pub fn describe(store: &Store, change: &KeyChange) -> Vec<String> {
    match change {
        KeyChange::Files { before, now } => with_paths(
            store,
            "the files it sees (its sources and objects) changed",
            *before,
            *now,
        ),
        KeyChange::UpstreamOutput { job, before, now } => with_paths(
            store,
            &format!("the output of upstream job {job} changed"),
            *before,
            *now,
        ),
        KeyChange::Image {
            before: Some(before),
            now: Some(now),
        } if !is_tree(store, before) && !is_tree(store, now) => vec![
            "the host changed: its fingerprint (os-release, the package databases, \
             ld.so.cache) differs; kiln records the fingerprint, not which packages changed"
                .to_owned(),
        ],
        KeyChange::Image {
            before: Some(before),
            now: Some(now),
        } => with_paths(store, "the image changed", *before, *now),
        KeyChange::Image { .. } | KeyChange::Other(_) => vec![change.to_string()],
    }
}

fn is_tree(store: &Store, digest: &B3Digest) -> bool {
    matches!(store.object_kind(digest), Ok(ObjectKind::Tree))
}

/// `headline:` and the paths that differ between two trees, or the two
/// digests when one of the trees is no longer in the store.
fn with_paths(store: &Store, headline: &str, before: B3Digest, now: B3Digest) -> Vec<String> {
    if !is_tree(store, &before) || !is_tree(store, &now) {
        return vec![format!(
            "{headline} ({before} → {now}; the earlier files are no longer in the store)"
        )];
    }
    let comparison = match compare_objects(store, ObjectRef::tree(before), ObjectRef::tree(now), "")
    {
        Ok(comparison) => comparison,
        Err(error) => return vec![format!("{headline} (cannot compare them: {error})")],
    };
    let mut lines = vec![format!("{headline}:")];
    for difference in comparison.differences.iter().take(PATHS_LISTED) {
        lines.push(format!("    {}", difference.describe("before", "now")));
    }
    let more = comparison.count().saturating_sub(PATHS_LISTED as u64);
    if more > 0 {
        lines.push(format!("    ... and {more} more path(s)"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_that_is_no_tree_is_the_host_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let change = KeyChange::Image {
            before: Some(B3Digest::of(b"host before")),
            now: Some(B3Digest::of(b"host now")),
        };
        let lines = describe(&store, &change);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("the host changed: its fingerprint"),
            "{lines:?}"
        );
    }

    #[test]
    fn files_no_longer_in_the_store_are_named_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (before, now) = (B3Digest::of(b"a"), B3Digest::of(b"b"));
        let lines = describe(&store, &KeyChange::Files { before, now });
        assert_eq!(
            lines,
            [format!(
                "the files it sees (its sources and objects) changed ({before} → {now}; \
                 the earlier files are no longer in the store)"
            )]
        );
    }
}
