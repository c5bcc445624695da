//! Colour in what kiln prints for people on stderr: on a terminal unless
//! `NO_COLOR` is set (https://no-color.org) or `TERM=dumb`, overridden by
//! `--color always|never`. Decided once per process, by `cli::main`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

/// `--color`: when kiln colours its stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When stderr is a terminal, `NO_COLOR` is unset or empty and `TERM` is not `dumb`
    #[default]
    Auto,
    /// Always, even into a pipe or file
    Always,
    /// Never
    Never,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Decides, for the rest of the process, whether stderr gets colour.
pub fn init(choice: ColorChoice) {
    let enabled = match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
            let dumb = std::env::var_os("TERM").is_some_and(|term| term == "dumb");
            !no_color && !dumb && std::io::stderr().is_terminal()
        }
    };
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether stderr gets colour.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What a piece of text means, and so its colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Failed: red.
    Bad,
    /// Killed, timed out, a warning: yellow.
    Warn,
    /// Passed: green.
    Good,
    /// Cached, skipped, hints: dim.
    Quiet,
    /// Headings: bold.
    Strong,
}

/// `text` in its tone's colour when colour is on, else unchanged.
pub fn paint(text: &str, tone: Tone) -> String {
    if !enabled() || text.is_empty() {
        return text.to_owned();
    }
    let code = match tone {
        Tone::Bad => "1;31",
        Tone::Warn => "33",
        Tone::Good => "32",
        Tone::Quiet => "2",
        Tone::Strong => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}
