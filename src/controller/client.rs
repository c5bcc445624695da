//! The build process's side of the API: one HTTP/1.1 connection to the
//! controller, over its unix socket or TCP, kept for the build's life.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::ControllerError;
use super::api::{ENV_TOKEN, ENV_URL};

/// Where a controller listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, ControllerError> {
        if let Some(path) = url.strip_prefix("unix:") {
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(rest) = url.strip_prefix("http://") {
            Ok(Endpoint::Tcp(rest.trim_end_matches('/').to_owned()))
        } else {
            Err(ControllerError::BadUrl(url.to_owned()))
        }
    }

    pub fn url(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix:{}", path.display()),
            Endpoint::Tcp(address) => format!("http://{address}"),
        }
    }
}

/// `sockaddr_un` holds 108 bytes: a longer socket path is reached through
/// its directory's descriptor, `/proc/self/fd/N/NAME`.
const MAX_SOCKET_PATH: usize = 100;

/// Runs `f` with a path to `socket` short enough for `sockaddr_un`.
pub(crate) fn with_short_path<T>(
    socket: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if socket.as_os_str().len() <= MAX_SOCKET_PATH {
        return f(socket);
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return f(socket);
    };
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    let result = f(&short);
    drop(dir);
    result
}

/// The controller's address and the build's token.
#[derive(Clone)]
pub struct ControllerClient {
    endpoint: Endpoint,
    token: String,
}

impl std::fmt::Debug for ControllerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ControllerClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl ControllerClient {
    pub fn new(endpoint: Endpoint, token: String) -> Self {
        Self { endpoint, token }
    }

    /// Reads [`ENV_URL`] and [`ENV_TOKEN`] and removes both from this
    /// process's environment, so that nothing it starts inherits them.
    ///
    /// Must be called before any other thread exists.
    pub fn from_env() -> Result<Self, ControllerError> {
        let url = std::env::var(ENV_URL).map_err(|_| ControllerError::MissingEnv(ENV_URL))?;
        let token = std::env::var(ENV_TOKEN).map_err(|_| ControllerError::MissingEnv(ENV_TOKEN))?;
        // SAFETY: called first thing in `kiln __build`'s main, before any
        // thread (the tokio runtime included) exists, so nothing reads the
        // environment concurrently.
        unsafe {
            std::env::remove_var(ENV_URL);
            std::env::remove_var(ENV_TOKEN);
        }
        Ok(Self::new(Endpoint::parse(&url)?, token))
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens one connection (HTTP/1.1, kept alive).
    pub async fn connect(&self) -> Result<Connection, ControllerError> {
        let connect_error = |source| ControllerError::Connect {
            endpoint: self.endpoint.url(),
            source,
        };
        let sender = match &self.endpoint {
            Endpoint::Unix(path) => {
                let std_stream =
                    with_short_path(path, |p| std::os::unix::net::UnixStream::connect(p))
                        .map_err(connect_error)?;
                std_stream.set_nonblocking(true).map_err(connect_error)?;
                let stream = tokio::net::UnixStream::from_std(std_stream).map_err(connect_error)?;
                handshake(stream).await?
            }
            Endpoint::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(connect_error)?;
                let _ = stream.set_nodelay(true);
                handshake(stream).await?
            }
        };
        Ok(Connection {
            sender,
            authorization: format!("Bearer {}", self.token),
        })
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, ControllerError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ControllerError::Http)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One open connection; requests on it go one after another.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authorization: String,
}

impl Connection {
    /// Sends one request and reads the whole response body.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ControllerError> {
        self.request_with(method, path, &[], body).await
    }

    /// [`Connection::request`] with more headers.
    pub async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ControllerError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "kiln-controller")
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|error| ControllerError::Request(error.to_string()))?;
        self.sender.ready().await.map_err(ControllerError::Http)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(ControllerError::Http)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(ControllerError::Http)?
            .to_bytes();
        Ok((status, body))
    }

    /// Sends a GET and hands back the response's status and body as it
    /// streams (server-sent events).
    pub async fn open_stream(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, hyper::body::Incoming), ControllerError> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(hyper::header::HOST, "kiln-controller")
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::ACCEPT, "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|error| ControllerError::Request(error.to_string()))?;
        self.sender.ready().await.map_err(ControllerError::Http)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(ControllerError::Http)?;
        Ok((response.status(), response.into_body()))
    }

    /// A request whose answer must be 2xx; returns the body.
    pub async fn expect_ok(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, ControllerError> {
        let (status, body) = self.request(method, path, body).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(ControllerError::Status {
                path: path.to_owned(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(500).collect(),
            })
        }
    }
}
