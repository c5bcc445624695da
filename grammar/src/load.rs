//! Loading a manifest file: pick the front end by extension, evaluate, and
//! convert to the typed [`Manifest`].
//!
//! `.yml` / `.yaml` go through the Djinn front end; anything else through
//! the kiln language.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, Phase, Severity};
use crate::eval::EvalOptions;
use crate::manifest::{self, Format, Manifest};
use crate::roots::AllowedRoots;
use crate::source::SourceMap;
use crate::value::Node;

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--arg NAME=VALUE`: arguments for a manifest that is a function.
    pub args: BTreeMap<String, String>,
    /// `--allow-path DIR`: directories the manifest may read besides its
    /// project root (see [`AllowedRoots`]).
    pub allow_paths: Vec<PathBuf>,
}

/// Why a manifest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file (or an import) could not be read: not the manifest's fault.
    #[error("{}", .0.message)]
    Io(Diagnostic),
    /// Syntax, evaluation or schema errors (at least one).
    #[error("invalid manifest: {} error(s)", .0.len())]
    Invalid(Vec<Diagnostic>),
}

impl LoadError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Io(diagnostic) => std::slice::from_ref(diagnostic),
            LoadError::Invalid(diagnostics) => diagnostics,
        }
    }
}

/// Everything loading one manifest produced.
#[derive(Debug)]
pub struct Loaded {
    /// Every file read (the manifest and its imports): renders diagnostics.
    pub sources: SourceMap,
    pub warnings: Vec<Diagnostic>,
    /// Every file loading read: the manifest, its imports and the paths
    /// named by path literals (absolute; in order of first use).
    pub files: Vec<PathBuf>,
    pub result: Result<Manifest, LoadError>,
}

impl Loaded {
    /// Warnings then errors, rendered for a terminal (no colour).
    pub fn render_diagnostics(&self) -> String {
        let errors = self
            .result
            .as_ref()
            .err()
            .map_or(&[][..], LoadError::diagnostics);
        self.warnings
            .iter()
            .chain(errors)
            .map(|diagnostic| diagnostic.render(&self.sources))
            .collect()
    }
}

/// The front end a file goes through.
pub fn format_of(path: &Path) -> Format {
    let extension = path.extension().and_then(|extension| extension.to_str());
    match extension {
        Some(e) if e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml") => Format::Djinn,
        _ => Format::Kiln,
    }
}

pub fn load(path: &Path, options: &LoadOptions) -> Loaded {
    let mut sources = SourceMap::new();
    let format = format_of(path);
    let mut warnings = Vec::new();
    // The one place a manifest's file access is configured: evaluation
    // (imports, path literals, hashFile) and the build (path sources and
    // objects, through `Manifest::roots`) check against these.
    let roots = match AllowedRoots::for_manifest(path, &options.allow_paths) {
        Ok(roots) => roots,
        Err(error) => {
            return Loaded {
                sources,
                warnings,
                files: Vec::new(),
                result: Err(LoadError::Io(Diagnostic::error(
                    Phase::Io,
                    error.to_string(),
                    None,
                ))),
            };
        }
    };
    let evaluated = match format {
        Format::Djinn => {
            if !options.args.is_empty() {
                warnings.push(Diagnostic::warning(
                    Phase::Eval,
                    format!(
                        "{}: --arg is ignored: a Djinn YAML manifest takes no arguments",
                        path.display()
                    ),
                    None,
                ));
            }
            read_djinn(path, &mut sources)
        }
        Format::Kiln => read_kiln(path, options, &roots, &mut sources),
    };
    let (node, files) = match evaluated {
        Ok(evaluated) => evaluated,
        Err(diagnostic) => {
            let error = if diagnostic.phase == Phase::Io {
                LoadError::Io(diagnostic)
            } else {
                LoadError::Invalid(vec![diagnostic])
            };
            return Loaded {
                sources,
                warnings,
                files: Vec::new(),
                result: Err(error),
            };
        }
    };
    let converted = manifest::from_node(&node, format, &manifest::manifest_dir(path));
    let (errors, more_warnings): (Vec<_>, Vec<_>) = converted
        .diagnostics
        .into_iter()
        .partition(|diagnostic| diagnostic.severity == Severity::Error);
    warnings.extend(more_warnings);
    let result = match converted.manifest {
        Some(mut manifest) if errors.is_empty() => {
            manifest.roots = roots;
            Ok(manifest)
        }
        _ => Err(LoadError::Invalid(errors)),
    };
    Loaded {
        sources,
        warnings,
        files,
        result,
    }
}

fn read_djinn(path: &Path, sources: &mut SourceMap) -> Result<(Node, Vec<PathBuf>), Diagnostic> {
    let bytes = std::fs::read(path).map_err(|error| {
        Diagnostic::error(
            Phase::Io,
            format!("cannot read {}: {error}", path.display()),
            None,
        )
    })?;
    let node = crate::djinn::parse_bytes(path, &bytes, sources)?;
    Ok((node, vec![path.to_path_buf()]))
}

fn read_kiln(
    path: &Path,
    options: &LoadOptions,
    roots: &AllowedRoots,
    sources: &mut SourceMap,
) -> Result<(Node, Vec<PathBuf>), Diagnostic> {
    let eval_options = EvalOptions {
        args: options.args.clone(),
        roots: Some(roots.clone()),
        ..EvalOptions::default()
    };
    let evaluated = crate::eval::eval_file(path, &eval_options, sources)?;
    Ok((evaluated.value, evaluated.files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_end_by_extension() {
        for djinn in [".djinn.yml", "a/b.yaml", "CI.YML"] {
            assert_eq!(format_of(Path::new(djinn)), Format::Djinn, "{djinn}");
        }
        for kiln in ["build.kiln", "build", "yml", "x.yml.kiln", "x.json"] {
            assert_eq!(format_of(Path::new(kiln)), Format::Kiln, "{kiln}");
        }
    }
}
