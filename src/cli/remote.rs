//! The record commands against a server (`kiln builds|show|log|artifacts|
//! kill|pin --server URL`, docs/server.md): the server's JSON read back into
//! the store's record types, so the output is the same as locally.

use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use kiln_store::{Artifact, B3Digest, BuildId, BuildJob, BuildRecord, ObjectKind, ObjectRef};
use serde_json::Value;

use crate::controller::{ControllerClient, Endpoint};

/// `--server` and `--token` of the record commands.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RemoteArgs {
    /// Ask this server (e.g. http://127.0.0.1:8377) instead of the local store
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The server's API token [default: $KILN_TOKEN]
    #[arg(long, value_name = "TOKEN", env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl RemoteArgs {
    /// A client when `--server` was given.
    pub fn remote(&self) -> anyhow::Result<Option<Remote>> {
        let Some(server) = &self.server else {
            return Ok(None);
        };
        let token = self
            .token
            .clone()
            .context("--server needs a token: --token or KILN_TOKEN")?;
        Ok(Some(Remote::new(server, &token)?))
    }
}

pub struct Remote {
    client: ControllerClient,
    server: String,
    runtime: tokio::runtime::Runtime,
}

impl Remote {
    pub fn new(server: &str, token: &str) -> anyhow::Result<Remote> {
        Ok(Remote {
            client: ControllerClient::new(Endpoint::parse(server)?, token.to_owned()),
            server: server.to_owned(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?,
        })
    }

    fn call(&self, method: Method, path: &str) -> anyhow::Result<Bytes> {
        let (status, body) = self.runtime.block_on(async {
            let mut connection = self.client.connect().await?;
            connection.request(method, path, Bytes::new()).await
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
        let said = answer["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        match status {
            StatusCode::NOT_FOUND => bail!("{said}"),
            _ => bail!("{} answered {status}: {said}", self.server),
        }
    }

    fn json(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        let body = self.call(method, path)?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{} sent JSON kiln cannot read", self.server))
    }

    /// Every build, oldest first (as `kiln builds` lists them).
    pub fn builds(&self) -> anyhow::Result<Vec<BuildRecord>> {
        let mut all = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                Some(before) => format!("/api/builds?limit=1000&before={before}"),
                None => "/api/builds?limit=1000".to_owned(),
            };
            let page = self.json(Method::GET, &path)?;
            for build in page["builds"].as_array().into_iter().flatten() {
                all.push(record(build)?);
            }
            match page["next_before"].as_i64() {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        all.reverse();
        Ok(all)
    }

    /// One build: its record, jobs and artifacts.
    pub fn build(
        &self,
        selector: &str,
    ) -> anyhow::Result<(BuildRecord, Vec<BuildJob>, Vec<Artifact>)> {
        let value = self.json(Method::GET, &format!("/api/builds/{selector}"))?;
        let record = record(&value)?;
        let jobs = value["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(position, job)| build_job(record.id, position, job))
            .collect::<anyhow::Result<_>>()?;
        let artifacts = value["artifacts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|artifact| build_artifact(record.id, artifact))
            .collect::<anyhow::Result<_>>()?;
        Ok((record, jobs, artifacts))
    }

    /// The recorded event envelopes, one JSON line each.
    pub fn events(&self, build: BuildId) -> anyhow::Result<Vec<String>> {
        let body = self.call(Method::GET, &format!("/api/builds/{build}/events"))?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|data| data.trim_start().to_owned())
            .collect())
    }

    pub fn job_log(&self, build: BuildId, job: &str) -> anyhow::Result<Bytes> {
        let job: String = form_urlencoded::byte_serialize(job.as_bytes()).collect();
        self.call(Method::GET, &format!("/api/builds/{build}/log/{job}"))
    }

    /// `kiln log -f --server`: the build's events from the server, printed
    /// as `kiln log -f` prints them locally.
    pub fn follow(&self, build: BuildId, job: Option<&str>) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            let mut connection = self.client.connect().await?;
            crate::cli::follow::print_stream(
                &mut connection,
                &format!("/api/builds/{build}/events"),
                build.0,
                job,
            )
            .await
        })
    }

    pub fn pin(&self, build: BuildId, pinned: bool) -> anyhow::Result<()> {
        let action = if pinned { "pin" } else { "unpin" };
        self.call(Method::POST, &format!("/api/builds/{build}/{action}"))?;
        Ok(())
    }

    pub fn kill(&self, selector: &str) -> anyhow::Result<String> {
        let answer = self.json(Method::POST, &format!("/api/builds/{selector}/kill"))?;
        Ok(format!(
            "build {}: {}",
            answer["build"],
            answer["status"].as_str().unwrap_or("stopping")
        ))
    }

    /// Writes an artifact to `output`: a file as it is, a directory
    /// unpacked from the server's tar.
    pub fn get_artifact(
        &self,
        build: BuildId,
        artifact: &Artifact,
        output: &Path,
    ) -> anyhow::Result<u64> {
        let name: String = artifact
            .name
            .split('/')
            .map(|part| form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>())
            .collect::<Vec<_>>()
            .join("/");
        let path = format!("/api/builds/{build}/artifacts/{name}");
        let (status, body) = self.runtime.block_on(async {
            let mut connection = self.client.connect().await?;
            let (status, body) = connection.open_stream(&path, &[]).await?;
            let bytes = body
                .collect()
                .await
                .map_err(crate::controller::ControllerError::Http)?
                .to_bytes();
            anyhow::Ok((status, bytes))
        })?;
        if !status.is_success() {
            bail!(
                "{} answered {status} for artifact {}",
                self.server,
                artifact.name
            );
        }
        match artifact.object.kind {
            ObjectKind::Blob => {
                if output.exists() {
                    bail!("{} exists: kiln never overwrites", output.display());
                }
                std::fs::write(output, &body)
                    .with_context(|| format!("writing {}", output.display()))?;
            }
            ObjectKind::Tree => {
                if output.exists() {
                    bail!("{} exists: kiln never overwrites", output.display());
                }
                std::fs::create_dir_all(output)?;
                tar::Archive::new(&body[..])
                    .unpack(output)
                    .with_context(|| {
                        format!("unpacking {} into {}", artifact.name, output.display())
                    })?;
            }
        }
        Ok(body.len() as u64)
    }
}

fn record(value: &Value) -> anyhow::Result<BuildRecord> {
    Ok(BuildRecord {
        id: BuildId(
            value["build"]
                .as_i64()
                .context("a build without a number")?,
        ),
        owner: value["owner"].as_str().unwrap_or_default().to_owned(),
        status: serde_json::from_value(value["status"].clone())
            .context("an unknown build status")?,
        started: value["started"].as_i64().unwrap_or_default(),
        finished: value["finished"].as_i64(),
        pinned: value["pinned"].as_bool().unwrap_or(false),
        manifest: value["manifest"].as_str().map(str::to_owned),
        pid: None,
        host: None,
    })
}

fn digest(value: &Value) -> Option<B3Digest> {
    value.as_str().and_then(|text| text.parse().ok())
}

fn build_job(build: BuildId, position: usize, value: &Value) -> anyhow::Result<BuildJob> {
    Ok(BuildJob {
        build,
        name: value["job"]
            .as_str()
            .context("a job without a name")?
            .to_owned(),
        stage: value["stage"].as_str().unwrap_or_default().to_owned(),
        position: position as i64,
        status: value["status"].as_str().unwrap_or_default().to_owned(),
        key: digest(&value["key"]),
        key_inputs: Some(value["key_inputs"].clone()).filter(|v| !v.is_null()),
        started: value["started"].as_i64(),
        finished: value["finished"].as_i64(),
        duration_ms: value["duration_ms"].as_u64(),
        cached: value["cached"].as_bool().unwrap_or(false),
        log: digest(&value["log"]),
        exit_code: value["exit_code"]
            .as_i64()
            .and_then(|c| i32::try_from(c).ok()),
        message: value["message"].as_str().map(str::to_owned),
    })
}

fn build_artifact(build: BuildId, value: &Value) -> anyhow::Result<Artifact> {
    Ok(Artifact {
        id: 0,
        build,
        name: value["name"]
            .as_str()
            .context("an artifact without a name")?
            .to_owned(),
        object: ObjectRef {
            kind: serde_json::from_value(value["kind"].clone())
                .context("an unknown object kind")?,
            digest: digest(&value["digest"]).context("an artifact without a digest")?,
        },
        size: value["size"].as_u64().unwrap_or_default(),
        created: 0,
    })
}
