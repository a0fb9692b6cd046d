//! Health over HTTP, for Prometheus (Scaleway Cockpit) and load balancers:
//! - `GET /metrics`: the Prometheus text exposition;
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 when the node has joined, reaches NATS, has its
//!   store open and holds its lease; otherwise 503, naming each failing
//!   check on its own line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{debug, info};

use crate::node::Shared;

/// Binds `addr` and serves the endpoints until the task is aborted.
pub(crate) async fn spawn(
    shared: Arc<Shared>,
    nats: async_nats::Client,
    addr: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    info!(address = %addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (shared, nats) = (shared.clone(), nats.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let (shared, nats) = (shared.clone(), nats.clone());
                    async move { Ok::<_, Infallible>(respond(&shared, &nats, &request)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    debug!(error = %e, "health connection ended");
                }
            });
        }
    }))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a static response builds")
}

fn respond(
    shared: &Shared,
    nats: &async_nats::Client,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let connected = nats.connection_state() == async_nats::connection::State::Connected;
    match request.uri().path() {
        "/metrics" => {
            let text = shared.stats.encode(&shared.gauges(connected));
            let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            reply(StatusCode::OK, kind, text)
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let failing = shared.readiness(connected);
            if failing.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                let body: String = failing.iter().map(|f| format!("{f}\n")).collect();
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
        }
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such path {other}: try /metrics, /healthz or /readyz\n"),
        ),
    }
}
