//! Helpers shared by seawall's integration tests: a loopback axum server and
//! a plain HTTP/1 client.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An axum server on a loopback port, stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Serves `router` on `127.0.0.1` at a free port.
    pub async fn start(router: axum::Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // The server runs until the test drops it; an accept error ends it.
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { addr, task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    /// Status and headers.
    pub head: http::response::Parts,
    /// The body.
    pub body: Bytes,
}

/// A plain HTTP/1 client over loopback.
#[derive(Debug, Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    /// A new client.
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Fetched, Box<dyn std::error::Error + Send + Sync>> {
        let res: Response<_> = self.client.request(req).await?;
        let (head, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Fetched { head, body })
    }

    /// `GET url`.
    pub async fn get(
        &self,
        url: &str,
    ) -> Result<Fetched, Box<dyn std::error::Error + Send + Sync>> {
        let req = Request::get(url).body(Full::new(Bytes::new()))?;
        self.send(req).await
    }
}
