//! The steps before any job runs (design §5 rules 1–3), shared by
//! `kiln run`, `kiln plan` and `kiln explain`: drivers created, objects
//! placed, sources resolved, base layer composed; and the job key inputs
//! computed once upstream outputs are known.

use std::collections::HashMap;
use std::path::Path;

use kiln_grammar::manifest::{Driver as DriverSpec, Manifest};
use kiln_store::{B3Digest, JobResult, Store, TempRoots};

use super::RunError;
use crate::driver::{CreateContext, Driver, hermetic_env};
use crate::graph::{BuildGraph, DepKey, KEY_FORMAT_VERSION, KeyInputs};
use crate::layers::{self, LayerCache};
use crate::resolve::{self, PlacedObject, ResolvedSource};

/// The distinct drivers of a manifest, and which one each job uses.
pub struct DriverSet {
    pub specs: Vec<DriverSpec>,
    /// Per job (graph order): an index into `specs`.
    pub of_job: Vec<usize>,
}

impl DriverSet {
    pub fn of(graph: &BuildGraph) -> DriverSet {
        let mut specs: Vec<DriverSpec> = Vec::new();
        let mut of_job = Vec::with_capacity(graph.jobs.len());
        for node in &graph.jobs {
            let index = match specs.iter().position(|spec| *spec == node.job.driver) {
                Some(index) => index,
                None => {
                    specs.push(node.job.driver.clone());
                    specs.len() - 1
                }
            };
            of_job.push(index);
        }
        DriverSet { specs, of_job }
    }
}

/// A short name for a driver in events: `container:host`, `host`.
pub fn driver_name(spec: &DriverSpec) -> String {
    match spec {
        DriverSpec::Container(container) => format!("container:{}", container.image),
        DriverSpec::Qemu(qemu) => format!("qemu:{}", qemu.image),
        DriverSpec::Host(_) => "host".to_owned(),
    }
}

pub fn create_driver(spec: &DriverSpec, context: &CreateContext) -> Result<Driver, RunError> {
    Ok(Driver::create(spec, context)?)
}

/// The store handle and what a build keeps while it runs. One per build,
/// behind a mutex, used from the blocking pool.
pub struct StoreCtx {
    pub store: Store,
    pub roots: TempRoots,
    pub layers: LayerCache,
    narrowed: HashMap<Vec<String>, B3Digest>,
    /// Bottom parts of deep layer stacks merged into one tree, by the
    /// layers they merge.
    squashed: HashMap<Vec<B3Digest>, B3Digest>,
}

/// At most this many lower layers go into one workspace overlay. overlayfs
/// stacks at most 500, and the legacy `mount(2)` option string holding
/// them is limited to one page, so a deep stack is squashed first.
pub const MAX_LOWER_LAYERS: usize = 48;
/// Deep stacks are squashed in prefixes of a multiple of this many layers,
/// so that the jobs of a long chain share the same few squashed trees
/// instead of each merging its own.
const SQUASH_BLOCK: usize = 32;

impl StoreCtx {
    pub fn open(store_dir: &Path, layers_dir: &Path) -> Result<StoreCtx, RunError> {
        let store = Store::open(store_dir)?;
        let roots = store.temp_roots()?;
        Ok(StoreCtx {
            store,
            roots,
            layers: LayerCache::new(layers_dir.to_path_buf()),
            narrowed: HashMap::new(),
            squashed: HashMap::new(),
        })
    }

    /// The base layer narrowed to `inputs` (memoised per pattern list).
    pub fn base_for(
        &mut self,
        base: &B3Digest,
        inputs: Option<&[String]>,
    ) -> Result<B3Digest, RunError> {
        let Some(patterns) = inputs else {
            return Ok(*base);
        };
        if let Some(digest) = self.narrowed.get(patterns) {
            return Ok(*digest);
        }
        let digest = layers::narrow(&mut self.store, base, patterns, &self.roots)?;
        self.narrowed.insert(patterns.to_vec(), digest);
        Ok(digest)
    }

    /// `layers` (bottom first, each at most once) as at most
    /// [`MAX_LOWER_LAYERS`] layers showing the same files: past that the
    /// bottom layers, a multiple of [`SQUASH_BLOCK`] of them, become one
    /// merged tree (whiteouts applied, so it needs nothing below it).
    pub fn squash_deep_stack(&mut self, layers: &[B3Digest]) -> Result<Vec<B3Digest>, RunError> {
        if layers.len() <= MAX_LOWER_LAYERS {
            return Ok(layers.to_vec());
        }
        // The squashed tree plus what stays above it must fit.
        let excess = layers.len() - MAX_LOWER_LAYERS + 1;
        let prefix = excess.div_ceil(SQUASH_BLOCK) * SQUASH_BLOCK;
        let (bottom, rest) = layers.split_at(prefix.min(layers.len()));
        let squashed = match self.squashed.get(bottom) {
            Some(digest) => *digest,
            None => {
                let digest =
                    layers::merged_tree(&mut self.store, &self.roots, &bottom[0], &bottom[1..])?;
                self.squashed.insert(bottom.to_vec(), digest);
                digest
            }
        };
        Ok(std::iter::once(squashed)
            .chain(rest.iter().copied())
            .collect())
    }

    pub fn place_objects(
        &mut self,
        manifest: &Manifest,
        workspace: Option<&str>,
    ) -> Vec<Result<PlacedObject, resolve::ResolveError>> {
        manifest
            .objects
            .iter()
            .map(|object| {
                resolve::place_object(&mut self.store, &self.roots, manifest, workspace, object)
            })
            .collect()
    }

    pub fn resolve_sources(
        &mut self,
        manifest: &Manifest,
    ) -> Vec<Result<ResolvedSource, resolve::ResolveError>> {
        manifest
            .sources
            .iter()
            .map(|source| resolve::resolve_source(&mut self.store, &self.roots, manifest, source))
            .collect()
    }

    pub fn compose_base(
        &mut self,
        sources: &[ResolvedSource],
        objects: &[PlacedObject],
    ) -> Result<B3Digest, RunError> {
        Ok(resolve::compose_base(
            &mut self.store,
            &self.roots,
            sources,
            objects,
        )?)
    }

    /// The key inputs of job `index`, or `None` while an upstream output is
    /// unknown.
    pub fn key_inputs(
        &mut self,
        graph: &BuildGraph,
        index: usize,
        driver: &Driver,
        base: &B3Digest,
        outputs: &[Option<B3Digest>],
    ) -> Result<Option<KeyInputs>, RunError> {
        let node = &graph.jobs[index];
        let mut deps = Vec::with_capacity(node.upstream.len());
        for &upstream in &node.upstream {
            let Some(output) = outputs[upstream] else {
                return Ok(None);
            };
            deps.push(DepKey {
                job: graph.jobs[upstream].job.name.clone(),
                output,
            });
        }
        let base_layer = self.base_for(base, node.job.inputs.as_deref())?;
        Ok(Some(KeyInputs {
            version: KEY_FORMAT_VERSION,
            driver: driver.key(),
            script: node.job.script(),
            env: job_env(&node.job.env),
            base_layer,
            deps,
            artifacts: node
                .job
                .artifacts
                .iter()
                .map(|artifact| format!("{} => {}", artifact.src, artifact.name))
                .collect(),
        }))
    }
}

/// What the cache holds for a job's key: the one "is it cached?" rule that
/// `kiln run` (the scheduler), `kiln plan` and `kiln explain` share.
#[derive(Debug)]
pub enum CacheLookup {
    /// The job is never served from the cache: the host driver, or
    /// `network = true`.
    Uncacheable,
    /// A passed, trusted result for the key: the job is cached.
    Hit(JobResult),
    /// Nothing the cache serves; `recorded` is a result it does not serve
    /// (untrusted, from a bundle), which `--check` still compares with.
    Miss { recorded: Option<JobResult> },
}

/// Whether a job's result may ever come from the cache.
pub fn cacheable(driver: &Driver, job: &kiln_grammar::manifest::Job) -> bool {
    driver.cacheable() && !job.network
}

impl StoreCtx {
    /// Looks `key` up for `job` on `driver`. A result found is held by this
    /// context's temporary roots in the lookup's own transaction, so
    /// curation running meanwhile cannot sweep the layer a hit restores.
    pub fn lookup_cached(
        &mut self,
        job: &kiln_grammar::manifest::Job,
        driver: &Driver,
        key: &B3Digest,
    ) -> Result<CacheLookup, RunError> {
        if !cacheable(driver, job) {
            return Ok(CacheLookup::Uncacheable);
        }
        Ok(match self.store.lookup_job_result_held(key, &self.roots)? {
            Some(result) if result.status == kiln_store::JOB_PASSED => CacheLookup::Hit(result),
            recorded => CacheLookup::Miss { recorded },
        })
    }
}

pub fn job_env(env: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    hermetic_env(env, crate::driver::HOME)
}
