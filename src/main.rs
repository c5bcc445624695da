use std::process::ExitCode;

// A plain `fn main`: later the sandbox helper is chosen here, before any
// tokio runtime exists (unshare in a multi-threaded process fails).
fn main() -> ExitCode {
    kiln::cli::main()
}
