//! The sandbox helper: `kiln __sandbox SPEC STATUS`, chosen in `main` before
//! anything else runs, so the process is single-threaded when it unshares
//! and forks.
//!
//! Three processes take part:
//! - the helper (outside): resolves the spec, unshares, forks PID 1, applies
//!   cgroup limits, waits, and writes the outcome to the STATUS file;
//! - PID 1 of the new pid namespace: builds the root, forks the job, reaps
//!   every child (it is an init), reports the job's end;
//! - the job: `/bin/sh /.kiln/job.sh` in the workspace with the exact env.
//!
//! PID 1 and the job report to the helper over a close-on-exec pipe, one
//! JSON [`SandboxOutcome`] per line. If the helper dies, PID 1 gets SIGKILL
//! (parent-death signal) and the kernel kills the whole pid namespace with
//! it; the mount namespace, held only by those processes, goes too.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::confine::Confinement;
use super::error::SandboxError;
use super::outcome::SandboxOutcome;
use super::plan::Plan;
use super::setup;
use super::spec::SandboxSpec;
use super::sys::{Forked, RealSys, Sys};

/// The hidden first argument that selects the helper.
pub const HELPER_ARG: &str = "__sandbox";
/// The helper's exit code when the sandbox could not be set up.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// The job process's exit code when `/bin/sh` cannot be executed.
const EXIT_EXEC_FAILED: i32 = 127;

/// Entry point from `main`: never returns.
pub fn helper_main(args: &[std::ffi::OsString]) -> ! {
    let [spec_path, status_path] = args else {
        eprintln!("usage: kiln {HELPER_ARG} SPEC STATUS (internal; started by kiln itself)");
        std::process::exit(EXIT_SETUP_FAILED);
    };
    let status_path = PathBuf::from(status_path);
    let outcome = match read_spec(Path::new(spec_path)).and_then(|spec| run(&mut RealSys, &spec)) {
        Ok(outcome) => outcome,
        Err(err) => SandboxOutcome::SetupFailed {
            reason: err.to_string(),
        },
    };
    if let SandboxOutcome::SetupFailed { reason } = &outcome {
        eprintln!("kiln sandbox: setup failed: {reason}");
    }
    if let Err(err) = write_status(&status_path, &outcome) {
        eprintln!("kiln sandbox: {err}");
    }
    std::process::exit(outcome.helper_exit_code())
}

fn read_spec(path: &Path) -> Result<SandboxSpec, SandboxError> {
    let bytes = std::fs::read(path).map_err(|source| SandboxError::ReadSpec {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| SandboxError::ParseSpec {
        path: path.to_owned(),
        source,
    })
}

fn write_status(path: &Path, outcome: &SandboxOutcome) -> Result<(), SandboxError> {
    let json = serde_json::to_vec(outcome).expect("an outcome always serialises");
    std::fs::write(path, json).map_err(|source| SandboxError::WriteRunFile {
        path: path.to_owned(),
        source,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SandboxError::Pipe)
}

/// Runs the job described by `spec`; errors are setup failures.
pub fn run(sys: &mut impl Sys, spec: &SandboxSpec) -> Result<SandboxOutcome, SandboxError> {
    let plan = Plan::resolve(spec)?;
    // Compiled here, before any fork: the job process only installs it.
    let confinement = Confinement::compile()?;
    // Fail before unsharing anything when a limit cannot be honoured.
    let cgroup = Cgroup::prepare(sys, &plan.limits)?;
    let outcome = run_in(sys, &plan, &confinement, cgroup.as_ref());
    // Only the helper gets here: PID 1 never returns.
    if let Some(cgroup) = cgroup {
        cgroup.remove(sys);
    }
    outcome
}

fn run_in(
    sys: &mut impl Sys,
    plan: &Plan,
    confinement: &Confinement,
    cgroup: Option<&Cgroup>,
) -> Result<SandboxOutcome, SandboxError> {
    // If kiln dies, so does the helper, and with it the whole sandbox.
    sys.set_parent_death_signal()
        .map_err(SandboxError::ParentDeathSignal)?;
    setup::enter_namespaces(sys, plan)?;

    let (report_read, report_write) = pipe()?;
    let (go_read, go_write) = pipe()?;
    if cgroup.is_none() {
        // Nothing to do between fork and start: PID 1 finds its go byte
        // waiting instead of waiting for the helper to be scheduled again.
        nix::unistd::write(&go_write, b"g").map_err(SandboxError::Pipe)?;
    }
    let child = match sys.fork().map_err(SandboxError::Fork)? {
        Forked::Child => {
            drop((report_read, go_write));
            init(sys, plan, confinement, go_read, report_write)
        }
        Forked::Parent { child } => child,
    };
    drop((report_write, go_read));
    if let Some(cgroup) = cgroup {
        if let Err(err) = cgroup.add(sys, child) {
            // Closing the go pipe unwritten tells PID 1 to give up.
            drop(go_write);
            let _ = waitpid(child, None);
            return Err(err);
        }
        // PID 1 starts only once it is in its cgroup.
        let _ = nix::unistd::write(&go_write, b"g");
    }
    let outcome = wait_for_init(child, report_read);
    // Held open until now: PID 1 takes a hang-up on it for the helper's death.
    drop(go_write);
    outcome
}

fn wait_for_init(init: Pid, report: OwnedFd) -> Result<SandboxOutcome, SandboxError> {
    let status = loop {
        match waitpid(init, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    // PID 1 is gone, so is every process of its namespace: every write end
    // of the report pipe is closed and this read ends.
    let mut text = String::new();
    let _ = std::fs::File::from(report).read_to_string(&mut text);
    let reports: Vec<SandboxOutcome> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    if let Some(failure) = reports
        .iter()
        .find(|r| matches!(r, SandboxOutcome::SetupFailed { .. }))
    {
        return Ok(failure.clone());
    }
    if let Some(last) = reports.last() {
        return Ok(last.clone());
    }
    Err(SandboxError::Init(format!(
        "it ended without a report ({status:?})"
    )))
}

fn report(fd: &OwnedFd, outcome: &SandboxOutcome) {
    if let Ok(mut line) = serde_json::to_vec(outcome) {
        line.push(b'\n');
        // Small enough to be atomic and never block: the pipe is empty.
        let _ = nix::unistd::write(fd, &line);
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends this forked process without running the parent's
    // atexit handlers or flushing buffers it inherited.
    unsafe { libc::_exit(code) }
}

/// PID 1 of the sandbox. Never returns.
fn init(
    sys: &mut impl Sys,
    plan: &Plan,
    confinement: &Confinement,
    go: OwnedFd,
    report_fd: OwnedFd,
) -> ! {
    let fail = |err: SandboxError| -> ! {
        report(
            &report_fd,
            &SandboxOutcome::SetupFailed {
                reason: err.to_string(),
            },
        );
        exit_now(EXIT_SETUP_FAILED)
    };
    if let Err(errno) = sys.set_parent_death_signal() {
        fail(SandboxError::ParentDeathSignal(errno));
    }
    // The parent-death signal is armed. No go byte (the helper gave up), or
    // a hang-up on the go pipe (the helper died before the signal was
    // armed): stop here.
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(go.as_fd(), &mut byte), Ok(1)) || helper_gone(&go) {
        exit_now(EXIT_SETUP_FAILED);
    }
    drop(go);
    // Now in its cgroup (the helper put it there before the go byte): the
    // cgroup namespace is rooted at it.
    // The build process sees the host's cgroups: the sandboxes it starts
    // make theirs where a job started from the host would.
    let cgroup_namespace = if plan.profile == super::spec::Profile::Job {
        setup::enter_cgroup_namespace(sys)
    } else {
        Ok(())
    };
    if let Err(err) = cgroup_namespace
        .and_then(|()| setup::configure_namespaces(sys, plan))
        .and_then(|()| setup::build_root(sys, plan))
    {
        fail(err);
    }
    let job = match sys.fork() {
        Ok(Forked::Child) => {
            reset_signals();
            let _ = nix::unistd::setsid();
            let err = setup::exec_job(sys, plan, confinement);
            report(
                &report_fd,
                &SandboxOutcome::SetupFailed {
                    reason: err.to_string(),
                },
            );
            exit_now(EXIT_EXEC_FAILED)
        }
        Ok(Forked::Parent { child }) => child,
        Err(errno) => fail(SandboxError::Fork(errno)),
    };
    let outcome = reap_until(job);
    report(&report_fd, &outcome);
    exit_now(outcome.helper_exit_code())
}

/// True when no one holds the write end of `go` any more.
fn helper_gone(go: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(go.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// Reaps every child (orphans are re-parented to PID 1) until `job` ends.
fn reap_until(job: Pid) -> SandboxOutcome {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == job => {
                return SandboxOutcome::Exited { code };
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == job => {
                return SandboxOutcome::Signaled {
                    signal: signal as i32,
                };
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => {
                return SandboxOutcome::SetupFailed {
                    reason: SandboxError::Init(format!("waitpid failed: {errno}")).to_string(),
                };
            }
        }
    }
}

/// Rust ignores SIGPIPE before `main`; an ignored signal stays ignored
/// across exec, and a shell pipeline must see its default.
fn reset_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: restoring the default disposition installs no handler.
    unsafe {
        let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
}
