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
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};

pub(super) type Shared = Arc<Mutex<Option<Core>>>;

/// Set when the daemon stops: the streams that would otherwise never end
/// (`/events`, `/capture` on a quiet network) end then, so the graceful
/// shutdown, which waits for every connection, does not wait forever.
static STOPPING: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> = std::sync::OnceLock::new();

pub(super) fn stopping() -> tokio::sync::watch::Receiver<bool> {
    STOPPING
        .get_or_init(|| tokio::sync::watch::channel(false).0)
        .subscribe()
}

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

pub(super) async fn with_core<T, F>(s: Shared, f: F) -> ApiResult<Json<T>>
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

#[derive(serde::Deserialize)]
struct EventsQuery {
    /// Unix seconds: the backlog from then first.
    since: Option<u64>,
    /// Unix seconds: the stream ends then (at once if it is past).
    until: Option<u64>,
}

/// `GET /events`: one JSON event per line, the backlog from `since` first,
/// then as they happen, until the client goes. A subscriber too slow for
/// the bus's capacity is told how many it missed, in a line of its own.
async fn events_stream(s: Shared, since: Option<u64>, until: Option<u64>) -> ApiResult<Response> {
    let Json(bus) = with_core(s, |c| Ok(c.events())).await?;
    let (mut past, rx) = bus.subscribe(since);
    let end = until.unwrap_or(u64::MAX);
    past.retain(|e| e.time <= end);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // how long the live part lasts (None: until the client goes)
    let left = until.map(|u| std::time::Duration::from_secs(u).saturating_sub(now));
    let line = |e: &super::events::Event| {
        let mut b = serde_json::to_vec(e).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(b))
    };
    let past = futures::stream::iter(past.into_iter().map(move |e| line(&e)));
    let live = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((line(&e), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("{{\"missed\":{n}}}\n");
                    return Some((Ok(Bytes::from(note)), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures::StreamExt;
    let mut stop = stopping();
    let live = live.take_until(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let live = match left {
        Some(d) => live.take_until(tokio::time::sleep(d)).boxed(),
        None => live.boxed(),
    };
    let body = axum::body::Body::from_stream(past.chain(live));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response())
}

/// `GET /capture`: the pcapng stream of a capture (see [`super::capture`]),
/// until the client goes or `count` frames were sent.
async fn capture_stream(s: Shared, q: super::capture::CaptureQuery) -> ApiResult<Response> {
    let Json(started) = with_core(s, move |c| c.start_capture(&q)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let stop = stopping();
    tokio::task::spawn_blocking(move || super::capture::pump(started, tx, stop));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Bytes::from(b)), rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-pcapng")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// While someone listens to events, turns the datapath's counters into
/// events once a second (MAC moves, spoofed frames, NAT exhaustion).
fn watch_datapath(s: Shared) {
    tokio::spawn(async move {
        let Ok(Json(bus)) = with_core(s.clone(), |c| Ok(c.events())).await else {
            return;
        };
        let mut last: Option<super::events::DpMarks> = None;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = bus.subscribed.notified() => {}
            }
            if !bus.watched() {
                last = None;
                continue;
            }
            let Ok(Json(now)) = with_core(s.clone(), |c| c.dp_marks()).await else {
                continue;
            };
            super::events::dp_events(&bus, last.as_ref().unwrap_or(&now), &now, last.is_none());
            last = Some(now);
        }
    });
}

fn body<T: DeserializeOwned>(b: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Removes container `id` when its `run` (process `p`) exits: a pidfd
/// becomes readable then. A process already gone is reaped at once.
fn watch_client(s: Shared, id: String, p: super::procs::ProcRef) {
    tokio::spawn(async move {
        let mut watched = false;
        if let Ok(fd) = super::procs::pidfd(&p) {
            // SAFETY: the AsyncFd owns the pidfd; nothing else closes it
            // while it is registered
            let reg = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            if let Ok(afd) = reg {
                let _ = afd.readable().await;
                watched = true;
            }
        }
        // no pidfd (out of fds, an old kernel): look once a second instead
        while !watched && p.alive() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let _ = with_core(s, move |c| {
            c.reap(&id);
            Ok(())
        })
        .await;
    });
}

fn router(s: Shared) -> Router {
    Router::new()
        .route("/_ping", get(|| async {
            Json(serde_json::json!({
                "ok": true,
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "rootless": !nix::unistd::geteuid().is_root()
                    || std::fs::read_to_string("/proc/self/uid_map")
                        .map(|m| !m.split_whitespace().eq(["0", "0", "4294967295"]))
                        .unwrap_or(false),
            }))
        }))
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
                    let s2 = s.clone();
                    let Json((info, client)) = with_core(s, move |c| {
                        let info = c.create_container(req)?;
                        let client = c.client_of(&info.name);
                        Ok((info, client))
                    })
                    .await?;
                    if let Some((id, p)) = client {
                        watch_client(s2, id, p);
                    }
                    Ok::<_, ApiError>(Json(info))
                }),
        )
        .route(
            "/capture",
            get(|State(s): State<Shared>, q: axum::extract::Query<super::capture::CaptureQuery>| async move {
                capture_stream(s, q.0).await
            }),
        )
        .route(
            "/events",
            get(|State(s): State<Shared>, q: axum::extract::Query<EventsQuery>| async move {
                events_stream(s, q.since, q.until).await
            }),
        )
        .route(
            "/nat",
            get(|State(s): State<Shared>| async move { with_core(s, |c| c.nat_info()).await }),
        )
        .route(
            "/containers/{name}/process",
            put(|State(s): State<Shared>, Path(n): Path<String>, b: Bytes| async move {
                let req: ContainerProcess = body(&b)?;
                with_core(s, move |c| c.set_process(&n, req.pid)).await
            }),
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
            get(|State(s): State<Shared>, Path(n): Path<String>| async move {
                with_core(s, move |c| c.container_info(&n)).await
            })
            .delete(|State(s): State<Shared>, Path(n): Path<String>| async move {
                with_core(s, move |c| c.remove_container(&n)).await
            }),
        )
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .with_state(s)
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(mut cfg: DaemonConfig) -> Result<()> {
    let rootless = !nix::unistd::geteuid().is_root();
    if rootless {
        // before any thread exists: unshare(CLONE_NEWUSER) needs that
        enter_rootless(&mut cfg)?;
        if cfg.uplink.is_some() {
            bail!("--uplink needs root (a packet socket on a host interface); rootless mode goes out through the host's sockets");
        }
    }
    // fail at start, not at the first container, when TAPs cannot be made
    let tun = cfg
        .tun_device
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/dev/net/tun"));
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tun)
    {
        bail!(
            "cannot open the TUN device {}: {e}; {}",
            tun.display(),
            if rootless {
                "a rootless daemon needs one this user may read and write (Debian's /dev/net/tun is 0666), or --tun-device PATH"
            } else {
                "is the tun module loaded (modprobe tun)?"
            }
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg, rootless))
}

/// Rootless mode: a user namespace where this user is root (mapped to
/// itself outside), and a private mount namespace for the namespaces'
/// bind mounts. The daemon stays in the host's network namespace, so its
/// sockets (NAT, DNS, published ports) are ordinary sockets of the user.
fn enter_rootless(cfg: &mut DaemonConfig) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).context(
        "creating a user namespace (rootless mode; are unprivileged user namespaces allowed?)",
    )?;
    std::fs::write("/proc/self/setgroups", "deny").context("writing setgroups")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing uid_map")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing gid_map")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")?;
    // namespaces are bind-mounted on a tmpfs that lives and dies with us
    let dir = cfg.state_dir.join("netns");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;
    cfg.netns_dir = dir;
    eprintln!("tapnet: rootless mode (uid {uid}); outbound through the host's sockets");
    Ok(())
}

/// Who may drive the daemon: whoever may connect to its socket. As root:
/// root and the members of group `tapnet` if it exists (like Docker's
/// `docker` group), else root only (0660 root:root); rootless: the user
/// alone (0600). Returns a phrase saying which.
fn restrict_socket(sock: &std::path::Path, rootless: bool) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    // (a rootless daemon is root in its own user namespace by now)
    if rootless {
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))?;
        return Ok("socket 0600, this user only".into());
    }
    let group = nix::unistd::Group::from_name("tapnet").ok().flatten();
    if let Some(g) = &group {
        nix::unistd::chown(sock, None, Some(g.gid))
            .with_context(|| format!("giving {} to group tapnet", sock.display()))?;
    }
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o660))?;
    Ok(match group {
        Some(_) => "socket 0660 root:tapnet, root and group tapnet".into(),
        None => "socket 0660 root:root, root only (create group tapnet to share it)".into(),
    })
}

async fn serve(cfg: DaemonConfig, rootless: bool) -> Result<()> {
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
    // the runs that own containers: watched again (those that ended while
    // the daemon was down are reaped at once)
    let clients = core.clients();
    let shared: Shared = Arc::new(Mutex::new(Some(core)));
    // the NAT table, checkpointed once a second for a restart to put back
    let s2 = shared.clone();
    let nat = cfg.uplink.is_some();
    tokio::spawn(async move {
        if !nat {
            return;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let _ = with_core(s2.clone(), |c| {
                c.nat_checkpoint();
                Ok(())
            })
            .await;
        }
    });
    for (id, p) in clients {
        watch_client(shared.clone(), id, p);
    }
    // the cluster store's sessions (overlay networks)
    let cl = {
        let g = shared.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().and_then(|c| c.cluster_handle())
    };
    if let Some(cl) = cl {
        tokio::spawn(super::cluster::run(shared.clone(), cl));
    }
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("listening on {}", sock.display()))?;
    let who = restrict_socket(&sock, rootless)?;
    eprintln!(
        "tapnet: daemon listening on {} ({who}; state in {})",
        sock.display(),
        cfg.state_dir.display()
    );
    // Docker's remote network driver, on a socket of its own; with a
    // cluster store also the global-scope one, next to it
    let mut docker_socks = Vec::new();
    if let Some(p) = &cfg.docker_plugin {
        let global = format!("{}.sock", super::docker::OVERLAY_PLUGIN);
        if cfg.cluster.is_some() && p.file_name().is_some_and(|f| *f == *global) {
            anyhow::bail!(
                "--docker-plugin {}: that name is the global plugin's socket, made next to the local one; name the local one differently (e.g. tapnet.sock)",
                p.display()
            );
        }
        docker_socks.push((p.clone(), false));
        if cfg.cluster.is_some() {
            let name = format!("{}.sock", super::docker::OVERLAY_PLUGIN);
            docker_socks.push((p.with_file_name(name), true));
        }
    }
    for (p, global) in &docker_socks {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(p);
        let l = tokio::net::UnixListener::bind(p)
            .with_context(|| format!("listening on {} (--docker-plugin)", p.display()))?;
        restrict_socket(p, rootless)?;
        let driver = if *global {
            super::docker::OVERLAY_PLUGIN
        } else {
            "tapnet"
        };
        eprintln!(
            "tapnet: Docker network plugin on {} (docker network create -d {driver})",
            p.display()
        );
        let r = super::docker::router(shared.clone(), *global);
        tokio::spawn(async move {
            let _ = axum::serve(l, r).await;
        });
    }
    watch_datapath(shared.clone());
    if cfg.cluster.is_some() {
        // the sealing sequence floor moves along with the clock (kept
        // while the store is away too: sealing goes on then)
        let s = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::cluster::SEAL_FLOOR_REFRESH);
            loop {
                tick.tick().await;
                let _ = with_core(s.clone(), |c| {
                    c.keep_seal_floor();
                    Ok(())
                })
                .await;
            }
        });
    }
    // Prometheus metrics, on TCP
    if let Some(addr) = cfg.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (--metrics-addr)"))?;
        eprintln!("tapnet: metrics on http://{addr}/metrics");
        let s = shared.clone();
        let r = Router::new().route(
            "/metrics",
            get(|| async move {
                let Json(text) = with_core(s, |c| c.metrics_text()).await?;
                Ok::<_, ApiError>((
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                ))
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(l, r).await;
        });
    }
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        STOPPING
            .get_or_init(|| tokio::sync::watch::channel(false).0)
            .send_replace(true);
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
    for (p, _) in docker_socks {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
