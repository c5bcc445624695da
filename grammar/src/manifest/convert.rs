//! `Node` → [`Manifest`]: every validation of `manifest.md` §2 and §3.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Phase};
use crate::manifest::fields::{Checked, Context, Reported, did_you_mean};
use crate::manifest::graph::{self, PendingJob};
use crate::manifest::paths::{
    self, LocalPath, normalize_absolute, normalize_job_name, workspace_relative,
};
use crate::manifest::{
    Accel, Artifact, Cache, ContainerDriver, Driver, Format, HostDriver, Kernel, Manifest, Object,
    ObjectSource, QemuDriver, Source, duration,
};
use crate::source::Span;
use crate::value::{Attr, Data, Node};

/// The result of converting one evaluated manifest.
#[derive(Debug)]
pub struct Converted {
    /// `None` when any error was found.
    pub manifest: Option<Manifest>,
    /// Errors and warnings in the order they were found.
    pub diagnostics: Vec<Diagnostic>,
}

const KILN_TOP: &[&str] = &[
    "namespace",
    "driver",
    "env",
    "sources",
    "objects",
    "stages",
    "allow_failures",
    "timeout",
    "jobs",
];
const DJINN_TOP: &[&str] = &[
    "namespace",
    "driver",
    "env",
    "sources",
    "objects",
    "stages",
    "allow_failures",
    "jobs",
];
const KILN_JOB: &[&str] = &[
    "stage",
    "name",
    "commands",
    "artifacts",
    "needs",
    "inputs",
    "env",
    "driver",
    "timeout",
    "caches",
    "network",
];
const DJINN_JOB: &[&str] = &["stage", "name", "commands", "artifacts"];
const DRIVER_TYPES: &[&str] = &["container", "qemu", "host", "docker", "os"];

/// Converts an evaluated manifest. `manifest_dir` is the absolute directory
/// of the manifest file: path literals are shown relative to it.
pub fn from_node(node: &Node, format: Format, manifest_dir: &Path) -> Converted {
    let manifest_dir = paths::normalize(manifest_dir);
    let mut converter = Converter {
        cx: Context::new(format),
        manifest_dir: &manifest_dir,
    };
    let manifest = converter.manifest(node).ok();
    let manifest = if converter.cx.has_errors() {
        None
    } else {
        manifest
    };
    Converted {
        manifest,
        diagnostics: converter.cx.diagnostics,
    }
}

struct Converter<'a> {
    cx: Context,
    manifest_dir: &'a Path,
}

/// A job as written, before names, needs and defaults are resolved.
struct WrittenJob {
    span: Span,
    /// From the attribute name (attribute-set form) or `name`.
    name: Option<(String, Span)>,
    stage: (String, Span),
    commands: Vec<String>,
    artifacts: Vec<Artifact>,
    needs: Option<Vec<(String, Span)>>,
    inputs: Option<Vec<String>>,
    env: BTreeMap<String, String>,
    driver: Option<Driver>,
    timeout: Option<Duration>,
    caches: Vec<Cache>,
    network: bool,
}

impl Converter<'_> {
    fn djinn(&self) -> bool {
        self.cx.format == Format::Djinn
    }

    fn manifest(&mut self, node: &Node) -> Checked<Manifest> {
        let known = if self.djinn() { DJINN_TOP } else { KILN_TOP };
        let attrs = match &node.data {
            Data::Attrs(_) => self.cx.attrs(node, "the manifest", known),
            Data::Function => Err(self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    "expected an attribute set (the manifest), found a function",
                    Some(node.span),
                )
                .with_help(
                    "a manifest that is a function is called with `--arg NAME=VALUE`; \
                            every formal without a default needs one",
                ),
            )),
            _ => Err(self.cx.mismatch(node, "an attribute set (the manifest)")),
        };
        // Unknown top-level keys are reported but the rest is still checked.
        let attrs = match attrs {
            Ok(attrs) => attrs,
            Err(Reported) => match &node.data {
                Data::Attrs(attrs) => attrs,
                _ => return Err(Reported),
            },
        };
        let get = |name: &str| attrs.get(name).map(|attr| &attr.value);

        let namespace = get("namespace")
            .map(|n| self.cx.non_empty_string(n, "`namespace`"))
            .transpose();
        let driver = get("driver").map(|d| self.driver(d)).transpose();
        let env = get("env")
            .map(|e| self.env(e))
            .transpose()
            .map(Option::unwrap_or_default);
        let sources = get("sources")
            .map(|s| self.sources(s))
            .transpose()
            .map(Option::unwrap_or_default);
        let objects = get("objects")
            .map(|o| self.objects(o))
            .transpose()
            .map(Option::unwrap_or_default);
        let stages = self
            .cx
            .required(attrs, node.span, "stages", "the manifest")
            .and_then(|s| self.stages(s));
        let timeout = get("timeout").map(|t| self.duration(t)).transpose();
        let allow_failures = match (&stages, get("allow_failures")) {
            (Ok(stages), Some(allowed)) => self.allow_failures(allowed, stages),
            (Err(Reported), Some(_)) => Err(Reported),
            (_, None) => Ok(Vec::new()),
        };
        let written_jobs = get("jobs")
            .map(|j| self.jobs(j))
            .transpose()
            .map(Option::unwrap_or_default);

        let (namespace, driver, env, sources, objects, stages, timeout, allow_failures) = (
            namespace?,
            driver?,
            env?,
            sources?,
            objects?,
            stages?,
            timeout?,
            allow_failures?,
        );
        let written_jobs = written_jobs?;
        let jobs = graph::resolve(
            &mut self.cx,
            written_jobs
                .into_iter()
                .map(|job| PendingJob {
                    has_driver: job.driver.is_some(),
                    need_spans: HashMap::new(),
                    span: job.span,
                    name: job.name,
                    stage: job.stage,
                    needs: job.needs,
                    job: crate::manifest::Job {
                        name: String::new(),
                        stage: String::new(),
                        commands: job.commands,
                        artifacts: job.artifacts,
                        needs: Vec::new(),
                        inputs: job.inputs,
                        env: merged(&env, job.env),
                        driver: match job.driver {
                            Some(driver) => driver,
                            // Filled in below, or reported as missing.
                            None => Driver::Host(HostDriver { alias: None }),
                        },
                        timeout: job.timeout.or(timeout),
                        caches: job.caches,
                        network: job.network,
                        span: job.span,
                    },
                })
                .collect(),
            &stages,
            driver.as_ref(),
        )?;
        Ok(Manifest {
            format: self.cx.format,
            namespace,
            driver,
            env,
            sources,
            objects,
            stages: stages.into_iter().map(|(stage, _)| stage).collect(),
            allow_failures,
            timeout,
            jobs,
            sequential: self.djinn(),
            dir: self.manifest_dir.to_path_buf(),
            roots: crate::roots::AllowedRoots::new([self.manifest_dir.to_path_buf()]),
        })
    }

    // ---- drivers -------------------------------------------------------

    fn driver(&mut self, node: &Node) -> Checked<Driver> {
        let Data::Attrs(raw) = &node.data else {
            return Err(self.cx.mismatch(node, "an attribute set (a driver)"));
        };
        let Some(kind) = raw.get("type") else {
            return Err(self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    "the driver is missing the required attribute `type`",
                    Some(node.span),
                )
                .with_help(format!("`type` is one of: {}", DRIVER_TYPES.join(", "))),
            ));
        };
        let kind_text = self.cx.string(&kind.value)?;
        let djinn = self.djinn();
        let known: &[&str] = match (kind_text.as_str(), djinn) {
            ("container" | "docker", false) => {
                &["type", "image", "workspace", "memory", "cpus", "pids"]
            }
            ("container" | "docker", true) => &["type", "image", "workspace"],
            ("qemu", false) => &[
                "type",
                "image",
                "kernel",
                "memory",
                "cpus",
                "accel",
                "workspace",
            ],
            // Djinn's QEMU driver also takes the guest architecture; kiln
            // runs x86_64 guests only, so the value is not kept.
            ("qemu", true) => &["type", "image", "arch"],
            ("host" | "os", _) => &["type"],
            (other, _) => {
                let mut diagnostic = Diagnostic::error(
                    Phase::Schema,
                    format!("unknown driver type \"{other}\""),
                    Some(kind.value.span),
                );
                diagnostic = match did_you_mean(other, DRIVER_TYPES) {
                    Some(hint) => diagnostic.with_help(format!("did you mean \"{hint}\"?")),
                    None => diagnostic
                        .with_help(format!("`type` is one of: {}", DRIVER_TYPES.join(", "))),
                };
                return Err(self.cx.push(diagnostic));
            }
        };
        let what = format!("a {kind_text} driver");
        let attrs = self.cx.attrs(node, &what, known)?;
        let get = |name: &str| attrs.get(name).map(|attr| &attr.value);
        let alias = matches!(kind_text.as_str(), "docker" | "os").then(|| kind_text.clone());
        match kind_text.as_str() {
            "container" | "docker" => {
                let image = self
                    .cx
                    .required(attrs, node.span, "image", &what)
                    .and_then(|i| self.cx.non_empty_string(i, "`image`"));
                let workspace = get("workspace")
                    .map(|w| self.workspace(w))
                    .transpose()
                    .map(|w| w.unwrap_or_else(|| "/work".to_string()));
                let memory = get("memory")
                    .map(|m| self.cx.positive_int(m, "`memory`"))
                    .transpose();
                let cpus = get("cpus")
                    .map(|c| self.cx.positive_int(c, "`cpus`"))
                    .transpose();
                let pids = get("pids")
                    .map(|p| self.cx.positive_int(p, "`pids`"))
                    .transpose();
                Ok(Driver::Container(ContainerDriver {
                    image: image?,
                    workspace: workspace?,
                    memory: memory?,
                    cpus: cpus?,
                    pids: pids?,
                    alias,
                }))
            }
            "qemu" => {
                let image = self
                    .cx
                    .required(attrs, node.span, "image", &what)
                    .and_then(|i| self.cx.non_empty_string(i, "`image`"));
                if let Some(arch) = get("arch") {
                    self.cx.string(arch)?;
                }
                let kernel = get("kernel")
                    .map(|k| self.kernel(k))
                    .transpose()
                    .map(|k| k.unwrap_or(Kernel::Default));
                let memory = get("memory")
                    .map(|m| self.cx.positive_int(m, "`memory`"))
                    .transpose()
                    .map(|m| m.unwrap_or(512));
                let cpus = get("cpus")
                    .map(|c| self.cx.positive_int(c, "`cpus`"))
                    .transpose()
                    .map(|c| c.unwrap_or(1));
                let accel = get("accel")
                    .map(|a| self.accel(a))
                    .transpose()
                    .map(|a| a.unwrap_or(Accel::Auto));
                // Djinn runs QEMU jobs in root's home.
                let default_workspace = if djinn { "/root" } else { "/work" };
                let workspace = get("workspace")
                    .map(|w| self.workspace(w))
                    .transpose()
                    .map(|w| w.unwrap_or_else(|| default_workspace.to_string()));
                Ok(Driver::Qemu(QemuDriver {
                    image: image?,
                    kernel: kernel?,
                    memory: memory?,
                    cpus: cpus?,
                    accel: accel?,
                    workspace: workspace?,
                }))
            }
            _ => Ok(Driver::Host(HostDriver { alias })),
        }
    }

    fn workspace(&mut self, node: &Node) -> Checked<String> {
        let text = self.cx.string(node)?;
        if !text.starts_with('/') {
            return Err(self.cx.error(
                node.span,
                format!("the workspace must be an absolute path, found \"{text}\""),
            ));
        }
        Ok(normalize_absolute(&text))
    }

    fn kernel(&mut self, node: &Node) -> Checked<Kernel> {
        match &node.data {
            Data::Str(text) if text == "default" => Ok(Kernel::Default),
            Data::Path(path) => Ok(Kernel::Path(LocalPath::new(path, self.manifest_dir))),
            Data::Str(text) => Err(self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("expected \"default\" or a path literal, found \"{text}\""),
                    Some(node.span),
                )
                .with_help("write a kernel image as a path literal, like `./vmlinuz`"),
            )),
            _ => Err(self.cx.mismatch(node, "\"default\" or a path")),
        }
    }

    fn accel(&mut self, node: &Node) -> Checked<Accel> {
        match self.cx.string(node)?.as_str() {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(self.cx.error(
                node.span,
                format!("unknown accel \"{other}\": expected \"auto\", \"kvm\" or \"tcg\""),
            )),
        }
    }

    // ---- env -----------------------------------------------------------

    fn env(&mut self, node: &Node) -> Checked<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        let mut first_seen: HashMap<String, Span> = HashMap::new();
        let mut failed = false;
        let mut add = |converter: &mut Self, key: String, value: String, span: Span| {
            if let Some(first) = first_seen.get(&key) {
                let message = format!("`{key}` is set twice in env");
                if converter.djinn() {
                    converter.cx.push(
                        Diagnostic::warning(
                            Phase::Schema,
                            format!("{message}; the last value wins"),
                            Some(span),
                        )
                        .with_related(*first, "first set here"),
                    );
                } else {
                    converter.cx.push(
                        Diagnostic::error(Phase::Schema, message, Some(span))
                            .with_related(*first, "first set here"),
                    );
                    return false;
                }
            }
            first_seen.insert(key.clone(), span);
            env.insert(key, value);
            true
        };
        match &node.data {
            Data::Attrs(attrs) => {
                for (key, attr) in attrs {
                    let value = match &attr.value.data {
                        Data::Int(number) => Ok(number.to_string()),
                        _ => self.cx.string(&attr.value),
                    };
                    let checked = value.and_then(|value| {
                        self.env_entry(key, &value, attr.name_span, attr.value.span)
                            .map(|()| value)
                    });
                    match checked {
                        Ok(value) => failed |= !add(self, key.clone(), value, attr.name_span),
                        Err(Reported) => failed = true,
                    }
                }
            }
            Data::List(items) => {
                for item in items {
                    let Ok(entry) = self.cx.string(item) else {
                        failed = true;
                        continue;
                    };
                    let Some((key, value)) = entry.split_once('=') else {
                        self.cx.push(
                            Diagnostic::error(
                                Phase::Schema,
                                format!("env entry \"{entry}\" has no `=`"),
                                Some(item.span),
                            )
                            .with_help("write env entries as \"NAME=value\""),
                        );
                        failed = true;
                        continue;
                    };
                    match self.env_entry(key, value, item.span, item.span) {
                        Ok(()) => {
                            failed |= !add(self, key.to_string(), value.to_string(), item.span)
                        }
                        Err(Reported) => failed = true,
                    }
                }
            }
            _ => {
                return Err(self.cx.mismatch(
                    node,
                    "an attribute set or a list of \"NAME=value\" strings (env)",
                ));
            }
        }
        if failed { Err(Reported) } else { Ok(env) }
    }

    fn env_entry(
        &mut self,
        key: &str,
        value: &str,
        key_span: Span,
        value_span: Span,
    ) -> Checked<()> {
        if key.is_empty() {
            return Err(self
                .cx
                .error(key_span, "an env variable needs a name before `=`"));
        }
        if key.contains(['=', '\0']) {
            return Err(self.cx.error(
                key_span,
                format!(
                    "env variable name \"{}\" contains `=` or NUL",
                    key.escape_debug()
                ),
            ));
        }
        if value.contains('\0') {
            return Err(self
                .cx
                .error(value_span, format!("the value of `{key}` contains NUL")));
        }
        Ok(())
    }

    // ---- sources and objects ------------------------------------------

    fn sources(&mut self, node: &Node) -> Checked<Vec<Source>> {
        let items = self.cx.list(node, "a list (sources)")?;
        let mut sources = Vec::new();
        let mut dirs: HashMap<String, Span> = HashMap::new();
        let mut failed = false;
        for item in items {
            match self.source(item) {
                Ok(source) => {
                    let dir = match &source {
                        Source::Path { dir, .. } | Source::Git { dir, .. } => dir.clone(),
                    };
                    if let Some(first) = dirs.get(&dir) {
                        self.cx.push(
                            Diagnostic::error(
                                Phase::Schema,
                                format!("two sources land in the same directory `{dir}`"),
                                Some(item.span),
                            )
                            .with_related(*first, "the other source")
                            .with_help("give one of them a different `dir`"),
                        );
                        failed = true;
                    } else {
                        dirs.insert(dir, item.span);
                    }
                    sources.push(source);
                }
                Err(Reported) => failed = true,
            }
        }
        if failed { Err(Reported) } else { Ok(sources) }
    }

    fn source(&mut self, node: &Node) -> Checked<Source> {
        match &node.data {
            Data::Path(path) => self.path_source(path, None, node.span),
            Data::Str(text) => self.djinn_source(text, node.span),
            Data::Attrs(raw) if raw.contains_key("path") => {
                let attrs = self.cx.attrs(node, "a path source", &["path", "dir"])?;
                let path_node = &attrs["path"].value;
                let Data::Path(path) = &path_node.data else {
                    return Err(self.cx.mismatch(path_node, "a path literal"));
                };
                // `dir = "app/"` (a trailing slash) places the path inside
                // `app`, under its own name; `dir = "app"` places it as `app`.
                let dir = attrs
                    .get("dir")
                    .map(|dir| {
                        let text = self.cx.string(&dir.value)?;
                        let inside = text.ends_with('/');
                        self.checked_dir(&text, dir.value.span)
                            .map(|dir| (dir, inside))
                    })
                    .transpose()?;
                self.path_source(path, dir, node.span)
            }
            Data::Attrs(raw) if raw.contains_key("url") => {
                let attrs = self
                    .cx
                    .attrs(node, "a git source", &["url", "ref", "rev", "dir"])?;
                let url_node = &attrs["url"].value;
                let url = self.git_url(url_node)?;
                let reference = attrs
                    .get("ref")
                    .map(|r| self.cx.non_empty_string(&r.value, "`ref`"))
                    .transpose()?;
                let rev = attrs.get("rev").map(|r| self.rev(&r.value)).transpose()?;
                let dir = match attrs.get("dir") {
                    Some(dir) => self.dir(&dir.value)?,
                    None => self.dir_from_url(&url, url_node.span)?,
                };
                Ok(Source::Git {
                    url,
                    reference,
                    rev,
                    dir,
                })
            }
            Data::Attrs(_) => Err(self.cx.push(Diagnostic::error(
                Phase::Schema,
                "a source attribute set needs `path` (a local path) or `url` (a git repository)",
                Some(node.span),
            ))),
            _ => Err(self.cx.mismatch(
                node,
                "a path, a \"URL [REF] [=> DIR]\" string or an attribute set (a source)",
            )),
        }
    }

    /// A path source; `dir` is where it lands and whether it goes inside
    /// that directory (`"app/"`: `app/<its name>`) or is that path (`"app"`).
    fn path_source(
        &mut self,
        path: &Path,
        dir: Option<(String, bool)>,
        span: Span,
    ) -> Checked<Source> {
        let path = LocalPath::new(path, self.manifest_dir);
        let project_root = path.absolute == self.manifest_dir;
        let dir = match dir {
            Some((dir, true)) if !project_root => match path.base_name() {
                Some(name) if dir == "." => name,
                Some(name) => format!("{dir}/{name}"),
                None => dir,
            },
            Some((dir, _)) => dir,
            None if project_root => ".".to_string(),
            None => match path.base_name() {
                Some(name) => name,
                None => {
                    return Err(self.cx.push(
                        Diagnostic::error(
                            Phase::Schema,
                            format!("cannot tell where source {} lands", path.relative),
                            Some(span),
                        )
                        .with_help("write it as { path = ...; dir = \"...\"; }"),
                    ));
                }
            },
        };
        Ok(Source::Path { path, dir })
    }

    /// Djinn's `URL [REF] [=> DIR]`.
    fn djinn_source(&mut self, text: &str, span: Span) -> Checked<Source> {
        let (left, dir) = match text.split_once("=>") {
            Some((left, dir)) => (left, Some(dir.trim())),
            None => (text, None),
        };
        let words: Vec<&str> = left.split_whitespace().collect();
        let (url, reference) = match words.as_slice() {
            [url] => (*url, None),
            [url, reference] => (*url, Some(reference.to_string())),
            _ => {
                return Err(self.cx.push(
                    Diagnostic::error(
                        Phase::Schema,
                        format!("malformed source \"{text}\""),
                        Some(span),
                    )
                    .with_help("write a source as \"URL [REF] [=> DIR]\""),
                ));
            }
        };
        let dir = match dir {
            Some(dir) if dir.is_empty() || dir.contains(char::is_whitespace) => {
                return Err(self.cx.push(
                    Diagnostic::error(
                        Phase::Schema,
                        format!("malformed source \"{text}\": expected one directory after `=>`"),
                        Some(span),
                    )
                    .with_help("write a source as \"URL [REF] [=> DIR]\""),
                ));
            }
            Some(dir) => self.checked_dir(dir, span)?,
            None => self.dir_from_url(url, span)?,
        };
        Ok(Source::Git {
            url: url.to_string(),
            reference,
            rev: None,
            dir,
        })
    }

    fn git_url(&mut self, node: &Node) -> Checked<String> {
        let url = self.cx.non_empty_string(node, "`url`")?;
        if url.contains(char::is_whitespace) {
            return Err(self
                .cx
                .error(node.span, format!("the URL \"{url}\" contains white space")));
        }
        Ok(url)
    }

    fn rev(&mut self, node: &Node) -> Checked<String> {
        let rev = self.cx.string(node)?;
        let hex = rev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || !(rev.len() == 40 || rev.len() == 64) {
            return Err(self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("`rev` \"{rev}\" is not a commit hash"),
                    Some(node.span),
                )
                .with_help("pin a full commit hash: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits; use `ref` for branches and tags"),
            ));
        }
        Ok(rev)
    }

    fn dir(&mut self, node: &Node) -> Checked<String> {
        let text = self.cx.string(node)?;
        self.checked_dir(&text, node.span)
    }

    fn checked_dir(&mut self, text: &str, span: Span) -> Checked<String> {
        workspace_relative(text).map_err(|error| {
            self.cx.error(
                span,
                format!("bad directory \"{text}\": {}", error.describe()),
            )
        })
    }

    /// The last URL segment without `.git`.
    fn dir_from_url(&mut self, url: &str, span: Span) -> Checked<String> {
        let trimmed = url.trim_end_matches('/');
        let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
        let name = last.strip_suffix(".git").unwrap_or(last);
        if name.is_empty() || name == "." || name == ".." {
            return Err(self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("cannot derive a directory name from the URL \"{url}\""),
                    Some(span),
                )
                .with_help("set the directory explicitly (`dir`, or \"URL => DIR\")"),
            ));
        }
        Ok(name.to_string())
    }

    fn objects(&mut self, node: &Node) -> Checked<Vec<Object>> {
        let items = self.cx.list(node, "a list (objects)")?;
        let mut objects = Vec::new();
        let mut failed = false;
        for item in items {
            match self.object(item) {
                Ok(object) => objects.push(object),
                Err(Reported) => failed = true,
            }
        }
        if failed { Err(Reported) } else { Ok(objects) }
    }

    fn object(&mut self, node: &Node) -> Checked<Object> {
        let (src, dst, span) = match &node.data {
            Data::Str(text) => {
                let (src, dst) = self.arrow(text, node.span, "\"SRC [=> DST]\"")?;
                (ObjectSource::Named(src), dst, node.span)
            }
            Data::Path(path) => (
                ObjectSource::Path(LocalPath::new(path, self.manifest_dir)),
                None,
                node.span,
            ),
            Data::Attrs(_) => {
                let attrs = self.cx.attrs(node, "an object", &["src", "dst"])?;
                let src_node = self.cx.required(attrs, node.span, "src", "an object")?;
                let src = match &src_node.data {
                    Data::Path(path) => ObjectSource::Path(LocalPath::new(path, self.manifest_dir)),
                    _ => ObjectSource::Named(self.cx.non_empty_string(src_node, "`src`")?),
                };
                let dst = attrs
                    .get("dst")
                    .map(|dst| {
                        self.cx
                            .non_empty_string(&dst.value, "`dst`")
                            .map(|d| (d, dst.value.span))
                    })
                    .transpose()?;
                let (dst, span) = match dst {
                    Some((dst, span)) => (Some(dst), span),
                    None => (None, node.span),
                };
                (src, dst, span)
            }
            _ => {
                return Err(self.cx.mismatch(
                    node,
                    "a \"SRC [=> DST]\" string, a path or an attribute set (an object)",
                ));
            }
        };
        let dst = match dst {
            Some(dst) if dst.starts_with('/') => normalize_absolute(&dst),
            Some(dst) => workspace_relative(&dst).map_err(|error| {
                self.cx.error(
                    span,
                    format!("bad object destination \"{dst}\": {}", error.describe()),
                )
            })?,
            None => {
                let base = match &src {
                    ObjectSource::Path(path) => path.base_name(),
                    ObjectSource::Named(name) => name
                        .rsplit('/')
                        .next()
                        .filter(|base| !base.is_empty() && *base != "." && *base != "..")
                        .map(str::to_string),
                };
                match base {
                    Some(base) => base,
                    None => {
                        return Err(self.cx.error(
                            span,
                            "cannot derive a destination for this object: write \"SRC => DST\"",
                        ));
                    }
                }
            }
        };
        Ok(Object { src, dst })
    }

    /// `"A [=> B]"` → (A, B).
    fn arrow(&mut self, text: &str, span: Span, form: &str) -> Checked<(String, Option<String>)> {
        let (left, right) = match text.split_once("=>") {
            Some((left, right)) => (left.trim(), Some(right.trim())),
            None => (text.trim(), None),
        };
        let malformed = left.is_empty() || right.is_some_and(|right| right.is_empty());
        if malformed {
            return Err(self.cx.push(
                Diagnostic::error(Phase::Schema, format!("malformed \"{text}\""), Some(span))
                    .with_help(format!("expected {form}")),
            ));
        }
        Ok((left.to_string(), right.map(str::to_string)))
    }

    // ---- stages --------------------------------------------------------

    fn stages(&mut self, node: &Node) -> Checked<Vec<(String, Span)>> {
        let stages = self.cx.strings(node)?;
        let mut failed = false;
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for (stage, span) in &stages {
            if stage.trim().is_empty() {
                self.cx.error(*span, "a stage name must not be empty");
                failed = true;
            } else if let Some(first) = seen.get(stage.as_str()) {
                self.cx.push(
                    Diagnostic::error(
                        Phase::Schema,
                        format!("stage \"{stage}\" is listed twice"),
                        Some(*span),
                    )
                    .with_related(*first, "first listed here"),
                );
                failed = true;
            } else {
                seen.insert(stage, *span);
            }
        }
        if failed { Err(Reported) } else { Ok(stages) }
    }

    fn allow_failures(&mut self, node: &Node, stages: &[(String, Span)]) -> Checked<Vec<String>> {
        let allowed = self.cx.strings(node)?;
        let names: Vec<&str> = stages.iter().map(|(stage, _)| stage.as_str()).collect();
        let mut failed = false;
        for (stage, span) in &allowed {
            if !names.contains(&stage.as_str()) {
                unknown_stage(&mut self.cx, stage, *span, &names, "allow_failures");
                failed = true;
            }
        }
        if failed {
            Err(Reported)
        } else {
            Ok(allowed.into_iter().map(|(stage, _)| stage).collect())
        }
    }

    fn duration(&mut self, node: &Node) -> Checked<Duration> {
        let text = self.cx.string(node)?;
        duration::parse_duration(&text).map_err(|error| {
            self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("malformed duration \"{text}\""),
                    Some(node.span),
                )
                .with_help(error.to_string()),
            )
        })
    }

    // ---- jobs ----------------------------------------------------------

    fn jobs(&mut self, node: &Node) -> Checked<Vec<WrittenJob>> {
        let mut jobs = Vec::new();
        let mut failed = false;
        match &node.data {
            Data::List(items) => {
                for item in items {
                    match self.job(item, None) {
                        Ok(job) => jobs.push(job),
                        Err(Reported) => failed = true,
                    }
                }
            }
            Data::Attrs(attrs) => {
                for (name, Attr { name_span, value }) in attrs {
                    match self.job(value, Some((name.clone(), *name_span))) {
                        Ok(job) => jobs.push(job),
                        Err(Reported) => failed = true,
                    }
                }
            }
            _ => {
                return Err(self
                    .cx
                    .mismatch(node, "a list of jobs or an attribute set of jobs (jobs)"));
            }
        }
        if failed { Err(Reported) } else { Ok(jobs) }
    }

    fn job(&mut self, node: &Node, key: Option<(String, Span)>) -> Checked<WrittenJob> {
        let known = if self.djinn() { DJINN_JOB } else { KILN_JOB };
        if let (Some((key, _)), Data::Attrs(raw)) = (&key, &node.data)
            && let Some(name) = raw.get("name")
        {
            return Err(self.cx.push(
                Diagnostic::error(
                    Phase::Schema,
                    format!("job `{key}` is named by its attribute; it cannot also set `name`"),
                    Some(name.name_span),
                )
                .with_help("remove `name`, or rename the attribute"),
            ));
        }
        let attrs = self.cx.attrs(node, "a job", known)?;
        let get = |name: &str| attrs.get(name).map(|attr| &attr.value);
        let name = match key {
            Some(key) => Ok(Some(key)),
            None => get("name")
                .map(|n| {
                    self.cx
                        .non_empty_string(n, "a job name")
                        .map(|name| (name, n.span))
                })
                .transpose(),
        };
        let stage = self
            .cx
            .required(attrs, node.span, "stage", "a job")
            .and_then(|s| self.cx.string(s).map(|stage| (stage, s.span)));
        let commands = self
            .cx
            .required(attrs, node.span, "commands", "a job")
            .and_then(|c| self.cx.strings(c))
            .map(|commands| commands.into_iter().map(|(command, _)| command).collect());
        let artifacts = get("artifacts")
            .map(|a| self.artifacts(a))
            .transpose()
            .map(Option::unwrap_or_default);
        let needs = get("needs").map(|n| self.cx.strings(n)).transpose();
        let inputs = get("inputs").map(|i| self.inputs(i)).transpose();
        let env = get("env")
            .map(|e| self.env(e))
            .transpose()
            .map(Option::unwrap_or_default);
        let driver = get("driver").map(|d| self.driver(d)).transpose();
        let timeout = get("timeout").map(|t| self.duration(t)).transpose();
        let caches = get("caches")
            .map(|c| self.caches(c))
            .transpose()
            .map(Option::unwrap_or_default);
        let network = get("network")
            .map(|n| self.cx.bool(n))
            .transpose()
            .map(|n| n.unwrap_or(false));
        Ok(WrittenJob {
            span: node.span,
            name: name?,
            stage: stage?,
            commands: commands?,
            artifacts: artifacts?,
            needs: needs?,
            inputs: inputs?,
            env: env?,
            driver: driver?,
            timeout: timeout?,
            caches: caches?,
            network: network?,
        })
    }

    fn artifacts(&mut self, node: &Node) -> Checked<Vec<Artifact>> {
        let items = self.cx.list(node, "a list (artifacts)")?;
        let mut artifacts = Vec::new();
        let mut failed = false;
        for item in items {
            match self.artifact(item) {
                Ok(artifact) => artifacts.push(artifact),
                Err(Reported) => failed = true,
            }
        }
        if failed { Err(Reported) } else { Ok(artifacts) }
    }

    fn artifact(&mut self, node: &Node) -> Checked<Artifact> {
        let (src, name, src_span, name_span) = match &node.data {
            Data::Str(text) => {
                let (src, name) = self.arrow(text, node.span, "\"SRC [=> NAME]\"")?;
                (src, name, node.span, node.span)
            }
            Data::Attrs(_) => {
                let attrs = self.cx.attrs(node, "an artifact", &["src", "name"])?;
                let src_node = self.cx.required(attrs, node.span, "src", "an artifact")?;
                let src = self.cx.non_empty_string(src_node, "`src`")?;
                let name = attrs
                    .get("name")
                    .map(|n| {
                        self.cx
                            .non_empty_string(&n.value, "`name`")
                            .map(|name| (name, n.value.span))
                    })
                    .transpose()?;
                let name_span = name.as_ref().map_or(node.span, |(_, span)| *span);
                (src, name.map(|(name, _)| name), src_node.span, name_span)
            }
            _ => {
                return Err(self.cx.mismatch(
                    node,
                    "a \"SRC [=> NAME]\" string or an attribute set (an artifact)",
                ));
            }
        };
        let src = workspace_relative(&src).map_err(|error| {
            self.cx.error(
                src_span,
                format!("bad artifact path \"{src}\": {}", error.describe()),
            )
        })?;
        let name = match name {
            Some(name) => workspace_relative(&name).map_err(|error| {
                self.cx.error(
                    name_span,
                    format!("bad artifact name \"{name}\": {}", error.describe()),
                )
            })?,
            // Each match of a glob keeps its path relative to the workspace.
            None if src.contains(['*', '?', '[']) => ".".to_string(),
            None => match src.rsplit('/').next() {
                Some(base) if base != "." => base.to_string(),
                _ => {
                    return Err(self.cx.error(
                        src_span,
                        "an artifact of the whole workspace needs a name: write \"SRC => NAME\"",
                    ));
                }
            },
        };
        Ok(Artifact { src, name })
    }

    fn inputs(&mut self, node: &Node) -> Checked<Vec<String>> {
        let items = self.cx.strings(node)?;
        let mut inputs = Vec::new();
        let mut failed = false;
        for (input, span) in items {
            match workspace_relative(&input) {
                Ok(input) => inputs.push(input),
                Err(error) => {
                    self.cx
                        .error(span, format!("bad input \"{input}\": {}", error.describe()));
                    failed = true;
                }
            }
        }
        if failed { Err(Reported) } else { Ok(inputs) }
    }

    fn caches(&mut self, node: &Node) -> Checked<Vec<Cache>> {
        let items = self.cx.list(node, "a list (caches)")?;
        let mut caches = Vec::new();
        let mut failed = false;
        for item in items {
            let cache = self
                .cx
                .attrs(item, "a cache", &["key", "paths"])
                .and_then(|attrs| {
                    let key = self
                        .cx
                        .required(attrs, item.span, "key", "a cache")
                        .and_then(|k| self.cx.non_empty_string(k, "a cache `key`"));
                    let paths = self
                        .cx
                        .required(attrs, item.span, "paths", "a cache")
                        .and_then(|p| self.cache_paths(p));
                    Ok(Cache {
                        key: key?,
                        paths: paths?,
                    })
                });
            match cache {
                Ok(cache) => caches.push(cache),
                Err(Reported) => failed = true,
            }
        }
        if failed { Err(Reported) } else { Ok(caches) }
    }

    fn cache_paths(&mut self, node: &Node) -> Checked<Vec<String>> {
        let mut paths = Vec::new();
        for (path, span) in self.cx.strings(node)? {
            let normalized = if path.starts_with('/') {
                Ok(normalize_absolute(&path))
            } else {
                workspace_relative(&path)
            };
            match normalized {
                Ok(path) => paths.push(path),
                Err(error) => {
                    return Err(self.cx.error(
                        span,
                        format!("bad cache path \"{path}\": {}", error.describe()),
                    ));
                }
            }
        }
        Ok(paths)
    }
}

fn merged(
    base: &BTreeMap<String, String>,
    job: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = base.clone();
    env.extend(job);
    env
}

pub(crate) fn unknown_stage(
    cx: &mut Context,
    stage: &str,
    span: Span,
    stages: &[&str],
    place: &str,
) {
    let mut diagnostic = Diagnostic::error(
        Phase::Schema,
        format!("{place} names stage \"{stage}\", which is not in `stages`"),
        Some(span),
    );
    diagnostic = match did_you_mean(stage, stages) {
        Some(hint) => diagnostic.with_help(format!("did you mean \"{hint}\"?")),
        None => diagnostic.with_help(format!("the stages are: {}", stages.join(", "))),
    };
    cx.push(diagnostic);
}

/// Normalised job name, or an error if nothing is left of it.
pub(crate) fn job_name(cx: &mut Context, name: &str, span: Span) -> Checked<String> {
    let normalized = normalize_job_name(name);
    if normalized.is_empty() {
        return Err(cx.error(span, "a job name must not be empty"));
    }
    Ok(normalized)
}
