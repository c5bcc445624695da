//! `kiln provenance BUILD` end to end: every build records an in-toto
//! Statement v1 with a SLSA Provenance v1 predicate. The statement is checked
//! against the structure the two specs require (field names and types), its
//! subjects against `sha256sum` of the artifacts `kiln artifacts get` writes,
//! its materials against the manifest, a path source and a git source.

#[path = "run_support/mod.rs"]
mod support;

use std::process::Command;

use serde_json::{Map, Value};
use support::Project;

const MANIFEST: &str = r#"{ flavour ? "plain" }: {
  driver = { type = "container"; image = "host"; };
  env = { FLAVOUR = flavour; };
  sources = [ ./. { url = "../repo"; ref = "main"; dir = "lib"; } ];
  stages = [ "build" ];
  jobs = {
    bin = { stage = "build"; commands = [ "printf 'binary %s' $FLAVOUR > app" ]; artifacts = [ "app" ]; };
    docs = { stage = "build"; commands = [ "mkdir -p site/img" "cp lib/readme.txt site/index.txt" "echo png > site/img/logo.png" ]; artifacts = [ "site" ]; };
  };
}"#;

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// in-toto DigestSet: a non-empty map of algorithm → lower-case hex.
fn check_digest_set(value: &Value, what: &str) -> Map<String, Value> {
    let set = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: digest is not an object"));
    assert!(!set.is_empty(), "{what}: empty digest set");
    for (algorithm, hex) in set {
        let hex = hex
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {algorithm} not a string"));
        let len = match algorithm.as_str() {
            "sha256" | "blake3" => 64,
            "gitCommit" => 40,
            other => panic!("{what}: unexpected algorithm {other}"),
        };
        assert!(is_hex(hex, len), "{what}: {algorithm} = {hex:?}");
    }
    set.clone()
}

/// in-toto ResourceDescriptor: at least one of uri, digest, content; the
/// optional fields have their types.
fn check_resource(value: &Value, what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object"));
    assert!(
        ["uri", "digest", "content"]
            .iter()
            .any(|k| object.contains_key(*k)),
        "{what}: needs uri, digest or content"
    );
    for key in object.keys() {
        assert!(
            [
                "uri",
                "digest",
                "name",
                "downloadLocation",
                "mediaType",
                "content",
                "annotations"
            ]
            .contains(&key.as_str()),
            "{what}: unknown field {key}"
        );
    }
    for key in ["uri", "name"] {
        if let Some(field) = object.get(key) {
            assert!(field.is_string(), "{what}: {key} is not a string");
        }
    }
    if let Some(uri) = object.get("uri").and_then(Value::as_str) {
        assert!(uri.contains(':'), "{what}: {uri} is not a URI");
    }
    if let Some(digest) = object.get("digest") {
        check_digest_set(digest, what);
    }
    if let Some(annotations) = object.get("annotations") {
        assert!(annotations.is_object(), "{what}: annotations");
    }
}

fn check_timestamp(value: &Value, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{what}: {text}: {e}"));
}

/// The required structure of in-toto Statement v1 and SLSA Provenance v1.
fn check_statement(statement: &Value) {
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let subjects = statement["subject"].as_array().expect("subject is a list");
    assert!(!subjects.is_empty(), "a statement needs a subject");
    for subject in subjects {
        let name = subject["name"].as_str().expect("subject name");
        let digest = check_digest_set(&subject["digest"], name);
        assert!(digest.contains_key("sha256") && digest.contains_key("blake3"));
    }
    let predicate = statement["predicate"].as_object().expect("predicate");
    let definition = predicate["buildDefinition"]
        .as_object()
        .expect("buildDefinition");
    let build_type = definition["buildType"].as_str().expect("buildType");
    check_documented(build_type);
    assert!(definition["externalParameters"].is_object());
    if let Some(internal) = definition.get("internalParameters") {
        assert!(internal.is_object());
    }
    for (i, dependency) in definition["resolvedDependencies"]
        .as_array()
        .expect("resolvedDependencies")
        .iter()
        .enumerate()
    {
        check_resource(dependency, &format!("resolvedDependencies[{i}]"));
    }
    let details = predicate["runDetails"].as_object().expect("runDetails");
    let builder = details["builder"].as_object().expect("builder");
    check_documented(builder["id"].as_str().expect("builder.id"));
    for (_, version) in builder["version"].as_object().expect("builder.version") {
        assert!(version.is_string());
    }
    let metadata = details["metadata"].as_object().expect("metadata");
    assert!(metadata["invocationId"].is_string());
    check_timestamp(&metadata["startedOn"], "startedOn");
    check_timestamp(&metadata["finishedOn"], "finishedOn");
    for (i, byproduct) in details["byproducts"]
        .as_array()
        .expect("byproducts")
        .iter()
        .enumerate()
    {
        check_resource(byproduct, &format!("byproducts[{i}]"));
    }
}

fn sha256sum(path: &std::path::Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn every_build_records_a_statement_whose_subjects_and_materials_check_out() {
    let project = Project::new(MANIFEST);
    project.write("notes.txt", "a path source file\n");
    let repo = project.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("readme.txt"), "from git\n").unwrap();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "readme.txt"]);
    git(&["commit", "-q", "-m", "one"]);
    let commit = git(&["rev-parse", "HEAD"]);

    // The git source is a sibling of the project: allowed explicitly.
    let allow = repo.to_str().unwrap().to_owned();
    let run = project.run(&["--arg", "flavour=spicy", "--allow-path", &allow]);
    assert_eq!(run.code, 0, "{}", run.describe());

    let output = project
        .kiln()
        .args(["provenance", "last"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let statement: Value = serde_json::from_slice(&output.stdout).unwrap();
    check_statement(&statement);

    // Subjects: each artifact file, with blake3 = the store digest and
    // sha256 = sha256sum of the file `kiln artifacts get` writes.
    let subjects: Vec<(String, String, String)> = statement["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["digest"]["blake3"].as_str().unwrap().to_owned(),
                s["digest"]["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = subjects.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["app", "site/img/logo.png", "site/index.txt"]);
    let out = project.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for artifact in ["app", "site"] {
        let got = project
            .kiln()
            .args(["artifacts", "get", "last", artifact, "-o"])
            .arg(out.join(artifact))
            .output()
            .unwrap();
        assert!(got.status.success(), "{got:?}");
    }
    for (name, blake3, sha256) in &subjects {
        let file = out.join(name);
        assert_eq!(&sha256sum(&file), sha256, "sha256 of {name}");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(&blake3::hash(&bytes).to_hex().to_string(), blake3);
    }
    let saved_app = run
        .artifacts()
        .into_iter()
        .find(|(n, _)| n == "app")
        .unwrap()
        .1;
    assert_eq!(saved_app, format!("blake3:{}", subjects[0].1));

    // Materials: the manifest (sha256 of the file), the path source and
    // the git source (commit and tree), the image.
    let definition = &statement["predicate"]["buildDefinition"];
    assert_eq!(definition["externalParameters"]["args"]["flavour"], "spicy");
    assert!(
        definition["externalParameters"]["manifest"]
            .as_str()
            .unwrap()
            .ends_with("/project/build.kiln")
    );
    let dependencies = definition["resolvedDependencies"].as_array().unwrap();
    let named = |name: &str| {
        dependencies
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no material {name}: {dependencies:#?}"))
    };
    let manifest = named("manifest");
    assert_eq!(
        manifest["digest"]["sha256"].as_str().unwrap(),
        sha256sum(&project.root().join("build.kiln"))
    );
    assert!(manifest["uri"].as_str().unwrap().starts_with("file:///"));
    let trees: Vec<(String, String)> = run
        .of_type("source/resolved")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["tree"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let path_source = named("source .");
    let path_tree = &trees.iter().find(|(n, _)| n == ".").unwrap().1;
    assert_eq!(
        format!(
            "blake3:{}",
            path_source["digest"]["blake3"].as_str().unwrap()
        ),
        *path_tree
    );
    let git_source = named("source lib");
    assert_eq!(git_source["digest"]["gitCommit"], commit.as_str());
    let git_tree = &trees.iter().find(|(n, _)| n == "lib").unwrap().1;
    assert_eq!(
        format!(
            "blake3:{}",
            git_source["digest"]["blake3"].as_str().unwrap()
        ),
        *git_tree
    );
    let uri = git_source["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("git+file:///") && uri.ends_with(&format!("/repo@{commit}")),
        "{uri}"
    );
    let image = named("image of container:host");
    let created = run.of_type("driver/created");
    assert_eq!(
        format!("blake3:{}", image["digest"]["blake3"].as_str().unwrap()),
        created[0]["image"].as_str().unwrap()
    );

    let details = &statement["predicate"]["runDetails"];
    assert_eq!(details["metadata"]["invocationId"], "1");
    assert_eq!(
        details["builder"]["version"]["kiln"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        details["byproducts"].as_array().unwrap().len(),
        2,
        "two job logs"
    );

    // The statement is not one of the build's listed artifacts.
    let listed = project.kiln().args(["artifacts", "last"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains("provenance"), "{listed}");

    // A cached rebuild records its own statement: same subjects, new id.
    let again = project.run(&["--arg", "flavour=spicy", "--allow-path", &allow]);
    assert_eq!(again.status("bin"), "cached");
    let second = project.kiln().args(["provenance", "2"]).output().unwrap();
    let second: Value = serde_json::from_slice(&second.stdout).unwrap();
    check_statement(&second);
    assert_eq!(second["subject"], statement["subject"]);
    assert_eq!(
        second["predicate"]["runDetails"]["metadata"]["invocationId"],
        "2"
    );

    let missing = project.kiln().args(["provenance", "7"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no build 7"));
}

#[test]
fn a_build_without_artifacts_attests_its_output_layers_and_one_without_outputs_records_none() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = { quiet = { stage = "build"; commands = [ "echo done > done.txt" ]; }; };
}"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let output = project.kiln().args(["provenance", "1"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let statement: Value = serde_json::from_slice(&output.stdout).unwrap();
    let subjects = statement["subject"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "{statement:#}");
    assert_eq!(subjects[0]["name"], "output layer of job quiet");
    let layer = run.of_type("job/end")[0]["output_layer"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        format!(
            "blake3:{}",
            subjects[0]["digest"]["blake3"].as_str().unwrap()
        ),
        layer
    );

    // A source that cannot be resolved: no job runs, nothing to attest.
    project.write(
        "build.kiln",
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ { url = "../no-such-repo"; } ];
  stages = [ "build" ];
  jobs = { quiet = { stage = "build"; commands = [ "true" ]; }; };
}"#,
    );
    let failed = project.run(&[]);
    assert_eq!(failed.code, 3, "{}", failed.describe());
    assert!(
        !failed.stderr.contains("warning: recording the provenance"),
        "{}",
        failed.stderr
    );
    let output = project
        .kiln()
        .args(["provenance", "last"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("build 2 has no recorded provenance")
            && stderr.contains("no artifact and no job output"),
        "{stderr}"
    );
}

/// A builder id or build type is an https URI into docs/reproducibility.md
/// whose fragment is a heading there (as GitHub makes anchors).
fn check_documented(uri: &str) {
    let (page, fragment) = uri
        .strip_prefix("https://github.com/kiln-build/kiln/blob/main/")
        .and_then(|rest| rest.split_once('#'))
        .unwrap_or_else(|| panic!("{uri} is not a documented kiln URI"));
    let doc = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(page))
        .unwrap_or_else(|e| panic!("{uri}: {page}: {e}"));
    let anchors: Vec<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    assert!(
        anchors.iter().any(|anchor| anchor == fragment),
        "{uri}: no heading #{fragment} in {page} ({anchors:?})"
    );
}
