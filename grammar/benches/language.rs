//! Language benchmark (issue 2): evaluate a manifest generating 10,000 jobs
//! with `genList`/`map`, and parse a 1 MiB manifest. Plain `std::time`, no
//! harness: `cargo bench -p kiln-grammar --bench language`, or
//! `benches/language.sh` at the repository root, which also times `kiln eval`
//! end to end and the Nix evaluator on the same files.
//!
//! With `KILN_BENCH_DIR=DIR` the inputs are written there (and kept).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_grammar::SourceMap;
use kiln_grammar::eval::{EvalOptions, eval_file};
use kiln_grammar::syntax::{Ast, parse};

/// A manifest whose jobs come from `genList`/`map`, each like a real job.
/// Written with `builtins.` names only, so Nix evaluates it too.
pub fn generated_jobs_manifest(jobs: usize) -> String {
    format!(
        r#"# {jobs} jobs from genList/map.
let
  count = {jobs};
  stages = [ "build" "test" "package" ];
  mkJob = i:
    let
      n = toString i;
      stage = builtins.elemAt stages (i - (i / 3) * 3);
    in {{
      name = "job-${{n}}";
      value = {{
        inherit stage;
        commands = [
          "echo building shard ${{n}} of ${{toString count}}"
          "make -j4 TARGET=target-${{n}}"
          "./run-tests --shard ${{n}} --stage ${{stage}}"
        ];
        artifacts = [ "out/target-${{n}}.bin => bin/target-${{n}}" ];
        env = {{ SHARD = n; STAGE = stage; }};
        needs = if stage == "test" then [ "job-${{toString (i - 1)}}" ] else [ ];
      }};
    }};
in {{
  inherit stages;
  driver = {{ type = "container"; image = "host"; }};
  env = {{ CC = "gcc"; }};
  jobs = builtins.listToAttrs (map mkJob (builtins.genList (i: i) count));
}}
"#
    )
}

/// About `size` bytes of hand-written-looking manifest: one big set of jobs.
pub fn large_manifest(size: usize) -> String {
    let mut out = String::from(
        "# A large literal manifest.\n{\n  driver = { type = \"container\"; image = \"host\"; };\n  stages = [ \"build\" \"test\" ];\n  jobs = {\n",
    );
    let mut n = 0;
    while out.len() < size {
        out.push_str(&format!(
            r#"    job-{n} = {{
      stage = if {n} / 2 * 2 == {n} then "build" else "test";
      commands = [ "make target-{n}" "./check --id {n} --name 'job {n}'" ];
      artifacts = [ "out/{n}.bin => bin/{n}" ];
      env = {{ ID = "{n}"; LEVEL = toString ({n} + 1); }};
      /* block comment */ # line comment
    }};
"#
        ));
        n += 1;
    }
    out.push_str("  };\n}\n");
    out
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`
/// (all threads). On a busy machine wall time says little; CPU time per run
/// is what the code costs.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

struct Timing {
    min: Duration,
    median: Duration,
    cpu_per_run: Option<Duration>,
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Timing {
    let cpu_before = cpu_time();
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect();
    let cpu_per_run = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| (after - before) / runs as u32);
    samples.sort();
    Timing {
        min: samples[0],
        median: samples[runs / 2],
        cpu_per_run,
    }
}

fn report(what: &str, timing: Timing) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<44} wall min {:>7.1} ms  median {:>7.1} ms  cpu/run {:>7.1} ms",
        ms(timing.min),
        ms(timing.median),
        timing.cpu_per_run.map_or(f64::NAN, ms)
    );
}

fn runs() -> usize {
    std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
}

fn main() {
    let kept = std::env::var_os("KILN_BENCH_DIR").map(PathBuf::from);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = kept.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("bench dir");

    let jobs_path = dir.join("jobs-10000.kiln");
    std::fs::write(&jobs_path, generated_jobs_manifest(10_000)).expect("write");
    let large_path = dir.join("large-1mib.kiln");
    let large = large_manifest(1 << 20);
    std::fs::write(&large_path, &large).expect("write");

    let options = EvalOptions::default();
    let eval = |path: &Path| {
        let mut sources = SourceMap::new();
        match eval_file(path, &options, &mut sources) {
            Ok(evaluated) => evaluated,
            Err(diagnostic) => panic!("{}", diagnostic.render(&sources)),
        }
    };
    let jobs = eval(&jobs_path);
    let count = match &jobs.value.data {
        kiln_grammar::Data::Attrs(attrs) => match attrs.get("jobs").map(|a| &a.value.data) {
            Some(kiln_grammar::Data::Attrs(jobs)) => jobs.len(),
            _ => 0,
        },
        _ => 0,
    };
    assert_eq!(count, 10_000);
    if let Some(dump) = std::env::var_os("KILN_BENCH_DUMP") {
        // For comparing with another evaluator (benches/language.sh).
        let json = jobs.value.to_json(&dir);
        std::fs::write(dump, serde_json::to_string(&json).expect("JSON")).expect("write dump");
    }

    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();
    report(
        "eval 10,000 generated jobs (eval_file)",
        time(runs(), || eval(&jobs_path)),
    );
    if only == "eval" {
        return;
    }
    report(
        &format!("parse 1 MiB manifest ({} bytes)", large.len()),
        time(runs(), || {
            // Parse on a big-stack thread, as the evaluator does.
            let mut sources = SourceMap::new();
            let file = sources.add(&large_path, large.as_str());
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(kiln_grammar::syntax::PARSER_STACK)
                    .spawn_scoped(s, || {
                        let mut ast = Ast::new();
                        parse(file, &sources, &mut ast).map(|_| ast.len())
                    })
                    .expect("thread")
                    .join()
                    .expect("parser thread")
                    .expect("parses")
            })
        }),
    );
    report(
        "parse + eval 1 MiB manifest (eval_file)",
        time(runs(), || eval(&large_path)),
    );
    println!("inputs: {}", dir.display());
}
