//! The control API: HTTP/1.1 + JSON on a Unix socket (axum over tokio's
//! `UnixListener`). Handlers run the synchronous [`Core`] operations on the
//! blocking pool under one mutex, so control operations are serialized and
//! the async runtime never blocks; the datapath never waits on any of it.

use super::{ApiError, ApiResult, Core, DaemonConfig};
use crate::api::*;
use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

type Shared = Arc<Mutex<Option<Core>>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
    }
}

async fn with_core<T, F>(s: Shared, f: F) -> ApiResult<Json<T>>
where
    T: Send + 'static,
    F: FnOnce(&mut Core) -> ApiResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_mut() {
            Some(core) => f(core),
            None => Err(ApiError {
                status: 503,
                message: "the daemon is shutting down".into(),
            }),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("handler failed: {e}")))?
    .map(Json)
}

fn body<T: DeserializeOwned>(b: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn router(s: Shared) -> Router {
    Router::new()
        .route("/_ping", get(|| async { Json(serde_json::json!({"ok": true, "version": env!("CARGO_PKG_VERSION")})) }))
        .route(
            "/networks",
            get(|State(s): State<Shared>| async move { with_core(s, |c| Ok(c.list_networks())).await })
                .post(|State(s): State<Shared>, b: Bytes| async move {
                    let req: CreateNetwork = body(&b)?;
                    with_core(s, move |c| c.create_network(req)).await
                }),
        )
        .route(
            "/networks/prune",
            post(|State(s): State<Shared>| async move { with_core(s, |c| c.prune_networks()).await }),
        )
        .route(
            "/networks/{name}",
            get(|State(s): State<Shared>, Path(n): Path<String>| async move {
                with_core(s, move |c| c.inspect_network(&n)).await
            })
            .delete(|State(s): State<Shared>, Path(n): Path<String>| async move {
                with_core(s, move |c| c.remove_network(&n)).await
            }),
        )
        .route(
            "/networks/{name}/connect",
            post(|State(s): State<Shared>, Path(n): Path<String>, b: Bytes| async move {
                let req: Connect = body(&b)?;
                with_core(s, move |c| c.connect(&n, req)).await
            }),
        )
        .route(
            "/networks/{name}/disconnect",
            post(|State(s): State<Shared>, Path(n): Path<String>, b: Bytes| async move {
                let req: Disconnect = body(&b)?;
                with_core(s, move |c| c.disconnect(&n, &req.container)).await
            }),
        )
        .route(
            "/containers",
            get(|State(s): State<Shared>| async move { with_core(s, |c| Ok(c.list_containers())).await })
                .post(|State(s): State<Shared>, b: Bytes| async move {
                    let req: CreateContainer = body(&b)?;
                    with_core(s, move |c| c.create_container(req)).await
                }),
        )
        .route(
            "/nat",
            get(|State(s): State<Shared>| async move { with_core(s, |c| c.nat_info()).await }),
        )
        .route(
            "/containers/{name}/rename",
            post(|State(s): State<Shared>, Path(n): Path<String>, b: Bytes| async move {
                let req: Rename = body(&b)?;
                with_core(s, move |c| c.rename_container(&n, &req.name)).await
            }),
        )
        .route(
            "/containers/{name}",
            delete(|State(s): State<Shared>, Path(n): Path<String>| async move {
                with_core(s, move |c| c.remove_container(&n)).await
            }),
        )
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .with_state(s)
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(cfg: DaemonConfig) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tapnet daemon must run as root (it creates TAP devices and network namespaces)");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: DaemonConfig) -> Result<()> {
    let sock = cfg.socket.clone();
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            bail!(
                "another tapnet daemon is already listening on {}",
                sock.display()
            );
        }
        std::fs::remove_file(&sock)
            .with_context(|| format!("removing stale socket {}", sock.display()))?;
    }
    let c2 = cfg.clone();
    let core = tokio::task::spawn_blocking(move || Core::start(c2)).await??;
    let shared: Shared = Arc::new(Mutex::new(Some(core)));
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("listening on {}", sock.display()))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660))?;
    eprintln!(
        "tapnet: daemon listening on {} (state in {})",
        sock.display(),
        cfg.state_dir.display()
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    axum::serve(listener, router(shared.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    eprintln!("tapnet: shutting down (TAP devices are kept for the next start)");
    let core = tokio::task::spawn_blocking(move || {
        shared.lock().unwrap_or_else(|p| p.into_inner()).take()
    })
    .await?;
    if let Some(c) = core {
        tokio::task::spawn_blocking(move || c.shutdown()).await?;
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}
