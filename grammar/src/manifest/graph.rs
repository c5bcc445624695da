//! Job names, stages and dependencies: defaults, uniqueness, and a cycle
//! check, so the graph compiler receives a DAG with every edge explicit.

use std::collections::HashMap;

use crate::diagnostic::{Diagnostic, Phase};
use crate::manifest::convert::{job_name, unknown_stage};
use crate::manifest::fields::{Checked, Context, Reported, did_you_mean};
use crate::manifest::{Driver, Format, Job, normalize_job_name};
use crate::source::Span;

/// A converted job whose name, stage, needs and driver are not settled yet.
pub(crate) struct PendingJob {
    pub span: Span,
    pub name: Option<(String, Span)>,
    pub stage: (String, Span),
    pub needs: Option<Vec<(String, Span)>>,
    pub job: Job,
    pub has_driver: bool,
    /// Where each explicit `needs` entry was written, by resolved name.
    pub need_spans: HashMap<String, Span>,
}

pub(crate) fn resolve(
    cx: &mut Context,
    mut pending: Vec<PendingJob>,
    stages: &[(String, Span)],
    build_driver: Option<&Driver>,
) -> Checked<Vec<Job>> {
    let stage_names: Vec<&str> = stages.iter().map(|(stage, _)| stage.as_str()).collect();
    let mut failed = false;

    // Stages and drivers.
    let mut stage_of = Vec::with_capacity(pending.len());
    for job in &mut pending {
        let (stage, span) = &job.stage;
        match stage_names.iter().position(|known| known == stage) {
            Some(index) => stage_of.push(index),
            None => {
                unknown_stage(cx, stage, *span, &stage_names, "the job");
                failed = true;
                stage_of.push(usize::MAX);
            }
        }
        job.job.stage = stage.clone();
        if !job.has_driver {
            match build_driver {
                Some(driver) => job.job.driver = driver.clone(),
                None => {
                    cx.push(
                        Diagnostic::error(Phase::Schema, "this job has no driver", Some(job.span))
                            .with_help("set `driver` at the top of the manifest or in the job"),
                    );
                    failed = true;
                }
            }
        }
    }
    if failed {
        return Err(Reported);
    }

    // Names: explicit ones normalised, the rest `<stage>.<n>`.
    let mut per_stage = vec![0usize; stages.len()];
    let mut seen: HashMap<String, Span> = HashMap::new();
    for (job, &stage) in pending.iter_mut().zip(&stage_of) {
        per_stage[stage] += 1;
        let (name, span) = match &job.name {
            Some((name, span)) => match job_name(cx, name, *span) {
                Ok(name) => (name, *span),
                Err(Reported) => {
                    failed = true;
                    continue;
                }
            },
            None => (
                format!("{}.{}", normalize_job_name(&job.stage.0), per_stage[stage]),
                job.span,
            ),
        };
        if let Some(first) = seen.get(&name) {
            cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("two jobs are named \"{name}\""),
                    Some(span),
                )
                .with_related(*first, "the other job")
                .with_help("job names must be unique after normalisation to [a-z0-9._-]"),
            );
            failed = true;
        } else {
            seen.insert(name.clone(), span);
        }
        job.job.name = name;
    }
    if failed {
        return Err(Reported);
    }

    let mut order: Vec<usize> = (0..pending.len()).collect();
    if cx.format == Format::Djinn {
        // Djinn runs stage by stage, each stage's jobs in manifest order, one
        // at a time: each job needs exactly the one before it.
        order.sort_by_key(|&index| stage_of[index]);
        let names: Vec<String> = order.iter().map(|&i| pending[i].job.name.clone()).collect();
        for (position, &index) in order.iter().enumerate() {
            pending[index].job.needs = position
                .checked_sub(1)
                .map(|previous| names[previous].clone())
                .into_iter()
                .collect();
        }
    } else {
        let index_of: HashMap<String, usize> = pending
            .iter()
            .enumerate()
            .map(|(index, job)| (job.job.name.clone(), index))
            .collect();
        let all_names: Vec<String> = pending.iter().map(|job| job.job.name.clone()).collect();
        // Jobs of stages 0..s, in declaration order, for each stage s: the
        // default `needs`, computed once per stage rather than per job.
        let mut earlier: Vec<Vec<String>> = Vec::with_capacity(stages.len());
        for stage in 0..stages.len() {
            earlier.push(
                (0..pending.len())
                    .filter(|&other| stage_of[other] < stage)
                    .map(|other| all_names[other].clone())
                    .collect(),
            );
        }
        for index in 0..pending.len() {
            let needs = match pending[index].needs.take() {
                None => earlier[stage_of[index]].clone(),
                Some(written) => {
                    let mut needs: Vec<String> = Vec::new();
                    for (need, span) in written {
                        let normalized = normalize_job_name(&need);
                        let Some(&other) = index_of.get(&normalized) else {
                            let known: Vec<&str> = all_names.iter().map(String::as_str).collect();
                            let mut diagnostic = Diagnostic::error(
                                Phase::Schema,
                                format!("`needs` names job \"{need}\", which does not exist"),
                                Some(span),
                            );
                            if let Some(hint) = did_you_mean(&normalized, &known) {
                                diagnostic =
                                    diagnostic.with_help(format!("did you mean \"{hint}\"?"));
                            }
                            cx.push(diagnostic);
                            failed = true;
                            continue;
                        };
                        if stage_of[other] > stage_of[index] {
                            cx.push(
                                Diagnostic::error(
                                    Phase::Schema,
                                    format!(
                                        "job \"{}\" (stage \"{}\") needs \"{}\", which runs in the later stage \"{}\"",
                                        pending[index].job.name,
                                        pending[index].job.stage,
                                        normalized,
                                        pending[other].job.stage
                                    ),
                                    Some(span),
                                )
                                .with_related(pending[other].span, "that job"),
                            );
                            failed = true;
                            continue;
                        }
                        if !needs.contains(&normalized) {
                            pending[index].need_spans.insert(normalized.clone(), span);
                            needs.push(normalized);
                        }
                    }
                    needs
                }
            };
            pending[index].job.needs = needs;
        }
        if failed {
            return Err(Reported);
        }
        check_cycles(cx, &pending, &index_of)?;
    }

    let mut slots: Vec<Option<PendingJob>> = pending.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .filter_map(|index| slots[index].take().map(|pending| pending.job))
        .collect())
}

/// Depth-first search with colours, iterative so a long chain of jobs
/// cannot overflow the stack.
fn check_cycles(
    cx: &mut Context,
    jobs: &[PendingJob],
    index_of: &HashMap<String, usize>,
) -> Checked<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let edges: Vec<Vec<usize>> = jobs
        .iter()
        .map(|job| {
            job.job
                .needs
                .iter()
                .filter_map(|need| index_of.get(need).copied())
                .collect()
        })
        .collect();
    let mut colour = vec![Colour::White; jobs.len()];
    for root in 0..jobs.len() {
        if colour[root] != Colour::White {
            continue;
        }
        // (node, next edge to follow)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = Colour::Grey;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&target) = edges[node].get(*next) {
                *next += 1;
                match colour[target] {
                    Colour::White => {
                        colour[target] = Colour::Grey;
                        stack.push((target, 0));
                    }
                    Colour::Grey => {
                        let start = stack.iter().position(|&(n, _)| n == target).unwrap_or(0);
                        let cycle: Vec<usize> = stack[start..].iter().map(|&(n, _)| n).collect();
                        let mut path: Vec<&str> =
                            cycle.iter().map(|&n| jobs[n].job.name.as_str()).collect();
                        path.push(&jobs[target].job.name);
                        // Each edge is shown where its `needs` entry was written.
                        let edge_span = |from: usize, to: &str| {
                            jobs[from]
                                .need_spans
                                .get(to)
                                .copied()
                                .unwrap_or(jobs[from].span)
                        };
                        let mut diagnostic = Diagnostic::error(
                            Phase::Schema,
                            format!("dependency cycle: {}", path.join(" → ")),
                            Some(edge_span(cycle[0], path[1])),
                        )
                        .with_label(format!("\"{}\" needs \"{}\"", path[0], path[1]))
                        .with_help("`needs` must form a DAG");
                        for (position, &from) in cycle.iter().enumerate().skip(1) {
                            diagnostic = diagnostic.with_related(
                                edge_span(from, path[position + 1]),
                                format!("\"{}\" needs \"{}\"", path[position], path[position + 1]),
                            );
                        }
                        return Err(cx.push(diagnostic));
                    }
                    Colour::Black => {}
                }
            } else {
                colour[node] = Colour::Black;
                stack.pop();
            }
        }
    }
    Ok(())
}
