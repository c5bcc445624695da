//! `kiln __build`: the build process a controller starts (docs/controller.md).
//!
//! It finds its controller through the environment (never its argv),
//! fetches the build's parameters, loads the same manifest and checks it is
//! the one the controller validated, runs the scheduler and drivers against
//! the store, and sends every event back. It stops its jobs when the
//! controller asks (`GET /stop` answers), when the controller is gone (that
//! request fails, or SIGTERM from the parent-death signal), or on SIGTERM.

use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::Method;
use kiln_grammar::load;
use tokio::sync::watch;

use crate::cli::EXIT_FAILURE;
use crate::cli::manifest::ManifestInputs;
use crate::controller::api::{StopMessage, manifest_digest};
use crate::controller::forward::Forward;
use crate::controller::server::request_stop;
use crate::controller::{BuildParams, ControllerClient};
use crate::driver::Stop;
use crate::events::{EventBus, Route, Router};
use crate::graph::BuildGraph;
use crate::scheduler::{RunOptions, run_build};

/// Exit code of a build process that could not run its build (the
/// controller records it as failed).
const EXIT_BUILD_PROCESS: u8 = EXIT_FAILURE;
const _: () = assert!(EXIT_BUILD_PROCESS as i32 == crate::controller::EXIT_COULD_NOT_RUN);

pub fn build_main() -> ExitCode {
    // Stop (cleanly: SIGTERM is a kill) when whatever started us dies: the
    // controller, or in a container the sandbox's PID 1.
    let parent = nix::unistd::getppid();
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err()
        || nix::unistd::getppid() != parent
        || parent.as_raw() == 1
    {
        eprintln!("error: the process that started this build is gone");
        return ExitCode::from(EXIT_BUILD_PROCESS);
    }
    // First, while this process has one thread.
    let client = match ControllerClient::from_env() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_BUILD_PROCESS);
        }
    };
    match run(client) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_BUILD_PROCESS)
        }
    }
}

fn run(client: ControllerClient) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.max(2))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(build(client));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

async fn build(client: ControllerClient) -> anyhow::Result<ExitCode> {
    let mut connection = client.connect().await?;
    let body = connection
        .expect_ok(Method::GET, "/build", Bytes::new())
        .await?;
    let params: BuildParams =
        serde_json::from_slice(&body).map_err(crate::controller::ControllerError::Params)?;
    let inputs = ManifestInputs {
        args: params.args.clone(),
        allow_paths: params.allow_paths.clone(),
    };
    let loaded = load::load(&params.manifest, &inputs.load_options()?);
    let manifest = match loaded.result {
        Ok(manifest) => manifest,
        Err(_) => bail!(
            "the manifest {} no longer loads:\n{}",
            params.manifest.display(),
            loaded.render_diagnostics()
        ),
    };
    if manifest_digest(&manifest) != params.manifest_digest {
        bail!(
            "the manifest {} (or a file it imports) changed after kiln read it; run again",
            params.manifest.display()
        );
    }
    let graph = BuildGraph::compile(&manifest).context("compiling the build graph")?;
    let options = RunOptions {
        jobs: params.options.jobs.max(1),
        no_cache: params.options.no_cache,
        check: params.options.check,
        store_dir: params.options.store_dir.clone(),
        helper: std::env::current_exe().context("locating the kiln binary")?,
        owner: params.options.owner.clone(),
        log_limit: params.options.log_limit,
    };
    let bus = EventBus::start(
        params.build,
        Router::new().interceptor(Route::All, Forward::new(client.clone(), connection)),
    )?;
    let (stop_sender, _) = watch::channel(None);
    let watcher = tokio::spawn(watch_controller(client, stop_sender.clone()));
    let signals = crate::cli::run::watch_signals(stop_sender.clone())?;
    let outcome = run_build(&manifest, graph, options, bus.emitter(), stop_sender).await;
    watcher.abort();
    signals.abort();
    let finished = bus.finish().await;
    outcome?;
    finished.context("sending the build's events to the controller")?;
    Ok(ExitCode::SUCCESS)
}

/// Stops the build when the controller asks, or when it is gone.
async fn watch_controller(client: ControllerClient, stop: watch::Sender<Option<Stop>>) {
    let reason = match client.connect().await {
        Ok(mut connection) => match connection
            .expect_ok(Method::GET, "/stop", Bytes::new())
            .await
        {
            Ok(body) => serde_json::from_slice::<StopMessage>(&body)
                .map_or(Stop::Killed, |message| message.stop.into()),
            Err(_) => Stop::Killed,
        },
        Err(_) => Stop::Killed,
    };
    request_stop(&stop, reason);
}
