//! Compiling a typed [`Manifest`] into a [`BuildGraph`] (design §3): the
//! jobs in a topological order, their direct dependencies (`needs`) and the
//! transitive set of jobs whose output layers their workspace contains.
//!
//! Architecture invariant: the graph is pure data derived from the manifest;
//! it does no IO. Keys need upstream *output* digests, so they are computed
//! by the scheduler as jobs finish ([`key`]), never here.

pub mod key;

use std::collections::HashMap;

use kiln_grammar::manifest::{Job, Manifest};

pub use key::{DepKey, DriverKey, KEY_FORMAT_VERSION, KeyChange, KeyInputs};

/// Why a manifest cannot become a graph. The grammar already rejects
/// unknown names and cycles, so these only guard the invariants.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("job {job} needs unknown job {need}")]
    UnknownNeed { job: String, need: String },
    #[error("the jobs {0} form a cycle through `needs`")]
    Cycle(String),
}

/// One job of the graph. Indices point into [`BuildGraph::jobs`].
#[derive(Clone, Debug)]
pub struct JobNode {
    pub job: Job,
    /// Direct dependencies, in topological order.
    pub needs: Vec<usize>,
    /// Every job whose output layer the workspace contains (the transitive
    /// closure of `needs`), in topological order: the lower layers after
    /// the base layer, and the dependency part of the key.
    pub upstream: Vec<usize>,
    /// Jobs that need this one directly.
    pub dependents: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct BuildGraph {
    /// In topological order: every job comes after all of its `needs`.
    pub jobs: Vec<JobNode>,
    pub stages: Vec<String>,
    pub allow_failures: Vec<String>,
    /// Djinn manifests run one job at a time.
    pub sequential: bool,
}

impl BuildGraph {
    pub fn compile(manifest: &Manifest) -> Result<BuildGraph, GraphError> {
        let by_name: HashMap<&str, usize> = manifest
            .jobs
            .iter()
            .enumerate()
            .map(|(index, job)| (job.name.as_str(), index))
            .collect();
        let mut direct = Vec::with_capacity(manifest.jobs.len());
        for job in &manifest.jobs {
            let mut needs = Vec::with_capacity(job.needs.len());
            for need in &job.needs {
                let index =
                    by_name
                        .get(need.as_str())
                        .copied()
                        .ok_or_else(|| GraphError::UnknownNeed {
                            job: job.name.clone(),
                            need: need.clone(),
                        })?;
                needs.push(index);
            }
            direct.push(needs);
        }
        let order = topological_order(manifest, &direct)?;
        let mut position = vec![0; order.len()];
        for (pos, &index) in order.iter().enumerate() {
            position[index] = pos;
        }
        // Transitive closures as bit sets over topological positions: the
        // set bits, read in order, are the upstream jobs in topological order.
        let words = order.len().div_ceil(64);
        let mut closure: Vec<Vec<u64>> = vec![vec![0; words]; order.len()];
        let mut jobs = Vec::with_capacity(order.len());
        for (pos, &index) in order.iter().enumerate() {
            let mut set = vec![0u64; words];
            for &need in &direct[index] {
                let need_pos = position[need];
                set[need_pos / 64] |= 1 << (need_pos % 64);
                for (word, upstream) in set.iter_mut().zip(&closure[need_pos]) {
                    *word |= upstream;
                }
            }
            let upstream = bits(&set);
            closure[pos] = set;
            let mut needs: Vec<usize> = direct[index].iter().map(|&n| position[n]).collect();
            needs.sort_unstable();
            needs.dedup();
            jobs.push(JobNode {
                job: manifest.jobs[index].clone(),
                needs,
                upstream,
                dependents: Vec::new(),
            });
        }
        for pos in 0..jobs.len() {
            for need in jobs[pos].needs.clone() {
                jobs[need].dependents.push(pos);
            }
        }
        Ok(BuildGraph {
            jobs,
            stages: manifest.stages.clone(),
            allow_failures: manifest.allow_failures.clone(),
            sequential: manifest.sequential,
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.jobs.iter().position(|node| node.job.name == name)
    }
}

fn bits(set: &[u64]) -> Vec<usize> {
    let mut out = Vec::new();
    for (word_index, &word) in set.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            let bit = word.trailing_zeros() as usize;
            out.push(word_index * 64 + bit);
            word &= word - 1;
        }
    }
    out
}

/// Kahn's algorithm, stable: among ready jobs the one declared first (in
/// stage order, then manifest order) goes first, so the order is the same
/// on every run.
fn topological_order(manifest: &Manifest, direct: &[Vec<usize>]) -> Result<Vec<usize>, GraphError> {
    let count = manifest.jobs.len();
    let stage_of = |index: usize| {
        manifest
            .stages
            .iter()
            .position(|stage| *stage == manifest.jobs[index].stage)
            .unwrap_or(usize::MAX)
    };
    let mut remaining: Vec<usize> = direct.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (index, needs) in direct.iter().enumerate() {
        for &need in needs {
            dependents[need].push(index);
        }
    }
    let mut ready: std::collections::BTreeSet<(usize, usize)> = (0..count)
        .filter(|&index| remaining[index] == 0)
        .map(|index| (stage_of(index), index))
        .collect();
    let mut order = Vec::with_capacity(count);
    while let Some(first) = ready.pop_first() {
        let index = first.1;
        order.push(index);
        for &dependent in &dependents[index] {
            remaining[dependent] -= 1;
            if remaining[dependent] == 0 {
                ready.insert((stage_of(dependent), dependent));
            }
        }
    }
    if order.len() != count {
        let stuck: Vec<&str> = (0..count)
            .filter(|&index| remaining[index] > 0)
            .map(|index| manifest.jobs[index].name.as_str())
            .collect();
        return Err(GraphError::Cycle(stuck.join(", ")));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> BuildGraph {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.kiln");
        std::fs::write(&path, text).unwrap();
        let loaded = kiln_grammar::load::load(&path, &Default::default());
        let manifest = loaded.result.unwrap();
        BuildGraph::compile(&manifest).unwrap()
    }

    fn names(graph: &BuildGraph, indices: &[usize]) -> Vec<String> {
        indices
            .iter()
            .map(|&i| graph.jobs[i].job.name.clone())
            .collect()
    }

    #[test]
    fn upstream_is_the_transitive_closure_in_topological_order() {
        let graph = compile(
            r#"{ driver = { type = "host"; }; stages = [ "a" "b" "c" ];
                 jobs = {
                   z = { stage = "c"; needs = [ "y" ]; commands = [ "true" ]; };
                   y = { stage = "b"; needs = [ "w" ]; commands = [ "true" ]; };
                   x = { stage = "a"; commands = [ "true" ]; };
                   w = { stage = "a"; commands = [ "true" ]; };
                 }; }"#,
        );
        let order: Vec<&str> = graph.jobs.iter().map(|n| n.job.name.as_str()).collect();
        for (before, after) in [("w", "y"), ("y", "z")] {
            let position = |name| order.iter().position(|n| *n == name).unwrap();
            assert!(position(before) < position(after), "{order:?}");
        }
        let z = graph.index_of("z").unwrap();
        assert_eq!(names(&graph, &graph.jobs[z].needs), ["y"]);
        assert_eq!(names(&graph, &graph.jobs[z].upstream), ["w", "y"]);
        let w = graph.index_of("w").unwrap();
        assert_eq!(names(&graph, &graph.jobs[w].dependents), ["y"]);
    }

    #[test]
    fn default_needs_make_every_earlier_stage_upstream() {
        let graph = compile(
            r#"{ driver = { type = "host"; }; stages = [ "a" "b" ];
                 jobs = { p = { stage = "a"; commands = [ "true" ]; };
                          q = { stage = "a"; commands = [ "true" ]; };
                          r = { stage = "b"; commands = [ "true" ]; }; }; }"#,
        );
        let r = graph.index_of("r").unwrap();
        assert_eq!(names(&graph, &graph.jobs[r].upstream), ["p", "q"]);
        assert!(graph.jobs[graph.index_of("p").unwrap()].upstream.is_empty());
    }
}
