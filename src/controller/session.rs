//! One build's controller: its private directory and socket, the HTTP
//! server on it, and the build process it starts and watches.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::ControllerError;
use super::api::{BuildParams, ENV_TOKEN, ENV_URL};
use super::client::{Endpoint, with_short_path};
use super::feed::Feed;
use super::server::{ControllerState, router};
use super::token::Token;
use crate::driver::Stop;
use crate::events::Emitter;
use crate::sandbox::SandboxOutcome;
use crate::scheduler::builddir::BuildDir;

/// The hidden command that runs a build under a controller.
pub const BUILD_ARG: &str = "__build";

/// How long a build process may take to stop after it was asked to before
/// it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Where the build process runs (`kiln run --in`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BuildPlace {
    /// A child process of `kiln run`.
    #[default]
    Child,
    /// A child process inside a kiln container on the host image, the store
    /// mounted as a volume (its jobs are still sandboxed as usual).
    Container,
}

/// How the build process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEnd {
    Exited(i32),
    Signaled(i32),
    /// The build container could not be set up.
    ContainerFailed(String),
}

impl ProcessEnd {
    /// Said when the build process died without finishing its build.
    pub fn describe(&self) -> String {
        match self {
            ProcessEnd::ContainerFailed(reason) => {
                format!("the build container could not start: {reason}")
            }
            ProcessEnd::Exited(code) => format!("the build process exited with {code}"),
            ProcessEnd::Signaled(signal) => format!(
                "the build process was killed by {}",
                nix::sys::signal::Signal::try_from(*signal)
                    .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned())
            ),
        }
    }
}

/// A running controller.
pub struct Controller {
    dir: BuildDir,
    socket: PathBuf,
    token: Arc<Token>,
    stop: watch::Sender<Option<Stop>>,
    ended: Arc<AtomicBool>,
    /// The build container's sandbox run, with `--in container`.
    container: std::sync::Mutex<Option<crate::sandbox::SandboxRun>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ControllerError + 'a {
    move |source| ControllerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Controller {
    /// Makes `<store>/scratch/ctl-<build>` (0700), listens on `socket` in it
    /// (0600) and writes the token beside it (0600) for other clients of the
    /// same user (`kiln log -f`). Must be called inside the runtime.
    pub async fn start(
        store_dir: &Path,
        params: &BuildParams,
        emitter: Emitter,
        feed: Arc<Feed>,
        stop: watch::Sender<Option<Stop>>,
    ) -> Result<Controller, ControllerError> {
        let dir = BuildDir::create_controller(store_dir, params.build)?;
        let token = Arc::new(Token::generate().map_err(ControllerError::Token)?);
        let token_path = dir.path().join("token");
        write_private(&token_path, token.secret().as_bytes())
            .map_err(io("writing the token", &token_path))?;
        let socket = dir.path().join("socket");
        let listener = with_short_path(&socket, |p| std::os::unix::net::UnixListener::bind(p))
            .map_err(io("listening on", &socket))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io("restricting", &socket))?;
        listener
            .set_nonblocking(true)
            .map_err(io("listening on", &socket))?;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(io("listening on", &socket))?;
        let ended = Arc::new(AtomicBool::new(false));
        let state = ControllerState {
            token: Arc::clone(&token),
            params: serde_json::to_vec(params)
                .map_err(ControllerError::Params)?
                .into(),
            emitter,
            feed,
            stop: stop.clone(),
            ended: Arc::clone(&ended),
        };
        let (shutdown, shutdown_signal) = oneshot::channel();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router(state))
                .with_graceful_shutdown(async move {
                    let _ = shutdown_signal.await;
                })
                .await;
        });
        Ok(Controller {
            dir,
            socket,
            token,
            stop,
            ended,
            container: std::sync::Mutex::new(None),
            shutdown: Some(shutdown),
            server,
        })
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.socket.clone())
    }

    /// Whether the build process sent `build/end` (it finished its build).
    pub fn build_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `kiln __build` (the binary `exe`) in a session of its own, so
    /// that the terminal's Ctrl-C reaches only the controller, which stops
    /// the build through the API. The controller's address and token go
    /// through the environment; the process gets SIGTERM if the controller
    /// dies.
    pub fn spawn_build_process(
        &self,
        exe: &Path,
    ) -> Result<tokio::process::Child, ControllerError> {
        let mut command = std::process::Command::new(exe);
        command
            .arg(BUILD_ARG)
            .env(ENV_URL, self.endpoint().url())
            .env(ENV_TOKEN, self.token.secret())
            .stdin(Stdio::null());
        let parent = std::process::id();
        // SAFETY: runs in the forked child before exec; setsid, prctl and
        // getppid are async-signal-safe and touch no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                    .map_err(std::io::Error::from)?;
                // The controller died before the signal was armed.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("the controller is gone"));
                }
                Ok(())
            });
        }
        tokio::process::Command::from(command)
            .spawn()
            .map_err(io("starting the build process", exe))
    }

    /// Starts `kiln __build` inside a kiln container (`kiln run --in
    /// container`): the sandbox's build-process profile on the `host` image,
    /// with the store bound read-write at its own path (the socket is in
    /// it), `read_only` (the manifest's roots) and the kiln binary's
    /// directory bound read-only, and the host's `/sys`. Root only.
    pub fn spawn_build_container(
        &self,
        exe: &Path,
        store_dir: &Path,
        read_only: &[PathBuf],
    ) -> Result<tokio::process::Child, ControllerError> {
        use crate::sandbox::{Bind, Profile, RootFs, SandboxRun, SandboxSpec, WorkspaceSpec};
        let canonical = |path: &Path| std::fs::canonicalize(path).map_err(io("resolving", path));
        let exe = canonical(exe)?;
        let store = canonical(store_dir)?;
        let dir = self.dir.path().join("container");
        let workspace = WorkspaceSpec {
            path: PathBuf::from("/.kiln-build"),
            lower: vec![dir.join("lower")],
            upper: dir.join("upper"),
            work: dir.join("work"),
        };
        for made in [&workspace.lower[0], &workspace.upper, &workspace.work] {
            std::fs::create_dir_all(made).map_err(io("creating", made))?;
        }
        let script = dir.join("build.sh");
        let quoted = exe.to_string_lossy().replace('\'', "'\\''");
        std::fs::write(&script, format!("exec '{quoted}' {BUILD_ARG}\n"))
            .map_err(io("writing", &script))?;
        let mut spec = SandboxSpec::new(
            RootFs::Host {
                exclude: vec![store.clone()],
            },
            workspace,
            script,
        );
        spec.profile = Profile::BuildProcess;
        spec.network = true;
        spec.hostname = "kiln-build".to_owned();
        spec.env = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), "/tmp".into()),
            (ENV_URL.into(), self.endpoint().url()),
            (ENV_TOKEN.into(), self.token.secret().to_owned()),
        ];
        let mut read_only: Vec<PathBuf> = read_only
            .iter()
            .map(|path| canonical(path))
            .collect::<Result<_, _>>()?;
        if let Some(bin) = exe.parent() {
            read_only.push(bin.to_path_buf());
        }
        read_only.sort();
        read_only.dedup();
        spec.binds = read_only
            .into_iter()
            .map(|path| Bind {
                source: path.clone(),
                target: path,
                read_only: true,
            })
            .chain([
                Bind {
                    source: store.clone(),
                    target: store,
                    read_only: false,
                },
                Bind {
                    source: PathBuf::from("/sys"),
                    target: PathBuf::from("/sys"),
                    read_only: false,
                },
            ])
            .collect();
        let run = SandboxRun::prepare(&spec, &dir)?;
        let mut command = run.command(&exe);
        let parent = std::process::id();
        // SAFETY: as in `spawn_build_process`: async-signal-safe calls only.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("the controller is gone"));
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(command)
            .spawn()
            .map_err(io("starting the build container", &exe))?;
        *self.container.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
        Ok(child)
    }

    /// Waits for the build process to end. Once the build is asked to stop
    /// it has [`STOP_GRACE`] to do so before it is killed.
    pub async fn supervise(&self, child: &mut tokio::process::Child) -> ProcessEnd {
        use std::os::unix::process::ExitStatusExt;
        let pid = child.id();
        let mut stop = self.stop.subscribe();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let container = self.container.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let (Some(run), Ok(status)) = (container, &status) {
                        return match run.outcome(*status) {
                            SandboxOutcome::Exited { code } => ProcessEnd::Exited(code),
                            SandboxOutcome::Signaled { signal } => ProcessEnd::Signaled(signal),
                            SandboxOutcome::SetupFailed { reason } => ProcessEnd::ContainerFailed(reason),
                            aborted @ SandboxOutcome::Aborted { .. } => ProcessEnd::ContainerFailed(aborted.to_string()),
                        };
                    }
                    return match status {
                        Ok(status) => match (status.code(), status.signal()) {
                            (Some(code), _) => ProcessEnd::Exited(code),
                            (None, Some(signal)) => ProcessEnd::Signaled(signal),
                            (None, None) => ProcessEnd::Exited(-1),
                        },
                        Err(_) => ProcessEnd::Exited(-1),
                    };
                }
                _ = stop.wait_for(Option::is_some), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                _ = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = child.start_kill();
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                }
            }
            let _ = pid;
        }
    }

    /// After a build process died without finishing: kills what is left in
    /// its process group and sweeps build directories and cgroups whose
    /// owner is gone. Returns what was swept, for warnings.
    pub fn tear_down_after(&self, pid: Option<u32>, store_dir: &Path) -> Vec<PathBuf> {
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut swept = crate::scheduler::builddir::sweep_stale(store_dir);
        swept.extend(crate::sandbox::Cgroup::sweep_stale());
        swept
    }

    /// Stops serving (subscribers get the end of their streams first) and
    /// removes the private directory.
    pub async fn close(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let server = &mut self.server;
        if tokio::time::timeout(Duration::from_secs(2), &mut *server)
            .await
            .is_err()
        {
            server.abort();
        }
        let _ = self.dir.close();
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// How a build process is started.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The kiln binary.
    pub exe: PathBuf,
    pub place: BuildPlace,
    /// The manifest's allowed roots, which a build container must see.
    pub roots: Vec<PathBuf>,
}

/// How a build went, as far as its controller is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Supervised {
    /// The build process ran the build to its end (whatever its status).
    Finished,
    /// It could not run the build (it said why on its stderr).
    CouldNotRun,
    /// It died before the build ended.
    Died,
}

/// Exit code of a build process that could not run its build.
pub const EXIT_COULD_NOT_RUN: i32 = 1;

/// The controller's half of one build, start to end: serve the API, start
/// the build process, wait for it, and clean up after it if it died. A
/// build that did not end (the controller could not start it, it could not
/// run, it died) gets a `warning` and `build/end` `failed` here, so its
/// record is never left running.
pub async fn run_build_process(
    store_dir: &Path,
    params: &BuildParams,
    launch: &Launch,
    emitter: &Emitter,
    feed: Arc<Feed>,
    stop: watch::Sender<Option<Stop>>,
) -> Result<Supervised, ControllerError> {
    let started = std::time::Instant::now();
    let result = supervise_build(store_dir, params, launch, emitter, feed, stop).await;
    if let Err(error) = &result {
        emitter.emit(crate::events::Event::Warning {
            job: None,
            message: format!("the build could not run: {error}"),
        });
    }
    if !matches!(result, Ok(Supervised::Finished)) {
        emitter.emit(crate::events::Event::BuildEnd {
            status: crate::events::BuildStatus::Failed,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }
    result
}

async fn supervise_build(
    store_dir: &Path,
    params: &BuildParams,
    launch: &Launch,
    emitter: &Emitter,
    feed: Arc<Feed>,
    stop: watch::Sender<Option<Stop>>,
) -> Result<Supervised, ControllerError> {
    use crate::events::Event;
    let controller = Controller::start(store_dir, params, emitter.clone(), feed, stop).await?;
    let spawned = match launch.place {
        BuildPlace::Child => controller.spawn_build_process(&launch.exe),
        BuildPlace::Container => {
            controller.spawn_build_container(&launch.exe, store_dir, &launch.roots)
        }
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            controller.close().await;
            return Err(error);
        }
    };
    let pid = child.id();
    let end = controller.supervise(&mut child).await;
    let supervised = if controller.build_ended() {
        Supervised::Finished
    } else {
        let could_not_run = end == ProcessEnd::Exited(EXIT_COULD_NOT_RUN);
        if !could_not_run {
            emitter.emit(Event::Warning {
                job: None,
                message: format!("{} before the build ended", end.describe()),
            });
        }
        for swept in controller.tear_down_after(pid, store_dir) {
            emitter.emit(Event::Warning {
                job: None,
                message: format!("removed {} left by the build process", swept.display()),
            });
        }
        if could_not_run {
            Supervised::CouldNotRun
        } else {
            Supervised::Died
        }
    };
    controller.close().await;
    Ok(supervised)
}
