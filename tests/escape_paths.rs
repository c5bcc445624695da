//! Store and workspace content cannot lead kiln out of its roots on the
//! host (issue: a symlink in a source plus a cache path created a host
//! directory; a cache whose content is a symlink bound a host directory
//! writable into the job). Each probe targets a real host directory that
//! the test first shows is there and writable (the control).
//!
//! Run as root (CI does), like every sandbox test.

#[path = "run_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use kiln_store::{AddOptions, ObjectRef, RootKind, Store};
use support::Project;

/// A host directory the host view shows (not below /tmp, which it hides),
/// removed at the end.
struct HostDir(PathBuf);

impl HostDir {
    fn new(name: &str) -> HostDir {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these probes need root: run the suite as root, as CI does"
        );
        let path = PathBuf::from(format!("/srv/kiln-escape-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        // The control: the directory is there and writable from the host.
        std::fs::write(path.join("control"), b"x").unwrap();
        HostDir(path)
    }

    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cache_job(paths: &str, command: &str) -> String {
    format!(
        r#"{{
  driver = {{ type = "container"; image = "host"; }};
  sources = [ ./src ];
  stages = [ "s" ];
  jobs.j = {{
    stage = "s";
    caches = [ {{ key = "probe"; paths = [ {paths} ]; }} ];
    commands = [ {command} ];
  }};
}}"#
    )
}

#[test]
fn a_symlink_in_a_source_does_not_take_a_cache_path_to_the_host() {
    let host = HostDir::new("source");
    let project = Project::new(&cache_job(r#""src/lnk/x""#, r#""true""#));
    project.write("src/file", "x");
    // During the sandbox's setup the host's root sits at /oldroot.
    let target = Path::new("/oldroot").join(host.0.strip_prefix("/").unwrap());
    std::os::unix::fs::symlink(&target, project.root().join("src/lnk")).unwrap();

    let run = project.run(&[]);
    assert_eq!(host.entries(), ["control"], "{}", run.describe());
    // The symlink leads nowhere in the sandbox's own root: a clear failure.
    assert_eq!(run.status("j"), "failed", "{}", run.describe());
    assert!(
        run.describe().contains("src/lnk/x"),
        "the failure names the cache path: {}",
        run.describe()
    );
    project.assert_clean();
}

#[test]
fn a_cache_whose_content_is_a_symlink_binds_nothing_of_the_host() {
    let host = HostDir::new("cache");
    let project = Project::new(&cache_job(
        r#""c""#,
        r#""echo pwned > c/pwned" "test ! -e c/control""#,
    ));
    project.write("src/file", "x");
    // A cache root (as a bundle or an earlier build could leave it) whose
    // entry for the first path is a symlink to the host directory.
    let planted = project.dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(&host.0, planted.join("0")).unwrap();
    {
        let mut store = Store::open(&project.store).unwrap();
        let roots = store.temp_roots().unwrap();
        let added = store
            .add_path(&planted, &AddOptions::default(), &roots)
            .unwrap();
        store
            .set_root(
                RootKind::Cache,
                "probe",
                ObjectRef::tree(added.object.digest),
            )
            .unwrap();
    }

    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(host.entries(), ["control"], "{}", run.describe());
    project.assert_clean();
}
