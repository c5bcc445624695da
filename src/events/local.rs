//! The route of a local `kiln run`: persist, console, and `--json`.

use std::io::IsTerminal;
use std::path::Path;

use kiln_store::Store;

use super::console::{LiveConsole, PlainConsole};
use super::handlers::BuildStatusHandler;
use super::json::JsonLines;
use super::persist::Persist;
use super::{Event, EventBus, EventError, Route, Router};

/// How progress is shown on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsoleMode {
    /// A live view when stderr is a terminal, else plain lines.
    #[default]
    Auto,
    Plain,
    Live,
    Off,
}

#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Print every envelope as a JSON line on stdout.
    pub json: bool,
    pub console: ConsoleMode,
    /// Do not show job output lines on the console.
    pub quiet: bool,
}

/// A started local build: its number and its bus.
pub struct LocalBus;

impl LocalBus {
    /// Records a new build of `manifest` for `owner` in the store at
    /// `store_dir`, starts its bus with the local route, and emits
    /// `build/queued` and `build/initializing` (this process). The caller
    /// emits the rest and calls [`EventBus::finish`].
    pub fn start(
        store_dir: &Path,
        owner: &str,
        manifest: &Path,
        options: &LocalOptions,
    ) -> Result<EventBus, EventError> {
        Self::start_with(store_dir, owner, manifest, options, |router| router)
    }

    /// [`LocalBus::start`], with more interceptors added by `extend` (the
    /// controller's feed and outcome).
    pub fn start_with(
        store_dir: &Path,
        owner: &str,
        manifest: &Path,
        options: &LocalOptions,
        extend: impl FnOnce(Router) -> Router,
    ) -> Result<EventBus, EventError> {
        let mut store = Store::open(store_dir).map_err(|source| EventError::OpenStore {
            dir: store_dir.to_path_buf(),
            source,
        })?;
        // Builds whose process died (SIGKILL, crash) end as Failed now.
        for dead in store.fail_dead_builds()? {
            eprintln!(
                "kiln: build {dead} marked failed: {}",
                kiln_store::DEAD_BUILD_REASON
            );
        }
        let (build, lease) = store.create_build_leased(owner)?;
        drop(store);
        let mut router = recording_router(store_dir, build, lease)?;
        let console = match options.console {
            ConsoleMode::Auto if std::io::stderr().is_terminal() => ConsoleMode::Live,
            ConsoleMode::Auto => ConsoleMode::Plain,
            other => other,
        };
        match console {
            ConsoleMode::Plain => {
                router = router.interceptor(
                    Route::All,
                    PlainConsole::new(std::io::stderr(), options.quiet),
                )
            }
            ConsoleMode::Live => {
                router = router.interceptor(Route::All, LiveConsole::new(options.quiet))
            }
            ConsoleMode::Auto | ConsoleMode::Off => {}
        }
        if options.json {
            router = router.interceptor(Route::All, JsonLines::stdout());
        }
        let bus = EventBus::start(build.0, extend(router))?;
        let emitter = bus.emitter();
        emitter.emit(Event::BuildQueued {
            owner: owner.to_owned(),
            manifest: manifest.display().to_string(),
        });
        emitter.emit(Event::BuildInitializing {
            pid: std::process::id(),
            host: hostname(),
        });
        Ok(bus)
    }
}

/// The part of every controller's route that records the build: the
/// build-status handler and the persist interceptor, which holds the
/// build's lease until the flow finishes.
pub fn recording_router(
    store_dir: &Path,
    build: kiln_store::BuildId,
    lease: kiln_store::Lease,
) -> Result<Router, EventError> {
    Ok(Router::new()
        .handler(BuildStatusHandler::ROUTE, BuildStatusHandler::default())
        .interceptor(
            Route::All,
            Persist::open(store_dir, build)?.with_lease(lease),
        ))
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}
