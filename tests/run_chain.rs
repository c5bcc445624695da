//! Deep stacks of layers: a chain of jobs, each needing the one before it,
//! sees every upstream output layer (issue: a chain of 38 failed when the
//! overlay's option string outgrew one page).

#[path = "run_support/mod.rs"]
mod support;

use support::Project;

/// A chain of `length` jobs; job `i` adds `f/i` and checks that every
/// earlier file is there with its content.
fn chain(length: usize) -> String {
    format!(
        r#"let
  job = i: let n = toString i; in {{
    name = "j${{n}}";
    stage = "build";
    needs = if i == 0 then [ ] else [ "j${{toString (i - 1)}}" ];
    commands = [
      "mkdir -p f && echo ${{n}} > f/${{n}}"
      "test $(ls f | wc -l) -eq $((${{n}} + 1))"
      "test $(cat f/* | awk '{{ s += $1 }} END {{ print s }}') -eq $((${{n}} * (${{n}} + 1) / 2))"
    ];
  }};
in {{
  driver = {{ type = "container"; image = "host"; }};
  stages = [ "build" ];
  jobs = map job (genList (i: i) {length});
}}
"#
    )
}

#[test]
fn a_chain_of_500_jobs_sees_every_upstream_layer() {
    let length = 500;
    let project = Project::new(&chain(length));
    let run = project.run(&["--jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.of_type("job/end").len(), length, "{}", run.describe());
    for i in [0, 37, 38, 47, 48, 49, 80, length - 1] {
        assert_eq!(run.status(&format!("j{i}")), "passed", "{}", run.describe());
    }
    // Cached the second time, squashed layers and all.
    let again = project.run(&["--jobs", "2"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert_eq!(again.status(&format!("j{}", length - 1)), "cached");
    project.assert_clean();
}
