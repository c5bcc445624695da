use std::process::ExitCode;

// A plain `fn main`: the sandbox helper is chosen here, before anything
// else, so that it stays single-threaded (unshare in a multi-threaded
// process fails, and fork after a runtime has started is unsupported).
fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|arg| arg == kiln::sandbox::HELPER_ARG)
    {
        kiln::sandbox::helper_main(&args[2..]);
    }
    if args
        .get(1)
        .is_some_and(|arg| arg == kiln::controller::session::BUILD_ARG)
    {
        return kiln::cli::build::build_main();
    }
    kiln::cli::main()
}
