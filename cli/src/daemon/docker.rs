//! Docker's remote network driver protocol (libnetwork `docs/remote.md`):
//! JSON over HTTP POSTs on a Unix socket Docker finds in
//! `/run/docker/plugins/`. This is the network half: Docker's
//! `network create -d tapnet` makes a tapnet network (named
//! `docker-<first 12 of Docker's id>`, with Docker's network id as its
//! id, subnet and gateway from Docker's IPAM, `-o tapnet.KEY=VALUE` as
//! tapnet options, `tapnet.driver` picking the tapnet driver), and
//! `network rm` removes it. Endpoints (CreateEndpoint, Join) are not served
//! yet: they answer with an error saying so.
//!
//! Errors are `{"Err": "..."}` with the same one-line messages as the
//! CLI; unknown methods answer 404.

use super::server::{with_core, Shared};
use crate::api::CreateNetwork;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Docker's content type for plugin answers.
const CT: &str = "application/vnd.docker.plugins.v1+json";

fn answer(v: Value) -> Response {
    ([(axum::http::header::CONTENT_TYPE, CT)], Json(v)).into_response()
}

fn fail(msg: impl std::fmt::Display) -> Response {
    answer(json!({ "Err": msg.to_string() }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateNet {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    #[serde(default, rename = "IPv4Data")]
    ipv4_data: Vec<IpData>,
}

#[derive(Deserialize)]
struct NetId {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

/// The tapnet network of Docker network `id`.
pub fn network_name(id: &str) -> String {
    format!("docker-{}", &id[..id.len().min(12)])
}

/// Docker's CreateNetwork as tapnet's: options `tapnet.KEY=VALUE` (from
/// `-o`) become the network's options, `tapnet.driver` its driver.
fn create_request(c: &CreateNet) -> Result<CreateNetwork, String> {
    if c.network_id.is_empty() {
        return Err("CreateNetwork without a NetworkID".into());
    }
    let generic = c
        .options
        .get("com.docker.network.generic")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut options = BTreeMap::new();
    let mut driver = None;
    for (k, v) in generic {
        let Some(k) = k.strip_prefix("tapnet.") else {
            continue; // Docker's own (com.docker.*)
        };
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if k == "driver" {
            driver = Some(v);
        } else {
            options.insert(k.to_string(), v);
        }
    }
    let v4 = c.ipv4_data.first();
    let strip = |s: &str| s.split('/').next().unwrap_or_default().to_string();
    Ok(CreateNetwork {
        name: network_name(&c.network_id),
        driver,
        options,
        subnet: v4.map(|d| d.pool.clone()).filter(|p| !p.is_empty()),
        gateway: v4.map(|d| strip(&d.gateway)).filter(|g| !g.is_empty()),
        internal: c
            .options
            .get("com.docker.network.internal")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        id: Some(c.network_id.clone()),
        ..Default::default()
    })
}

async fn method(State(s): State<Shared>, Path(m): Path<String>, body: Bytes) -> Response {
    match m.as_str() {
        "Plugin.Activate" => answer(json!({ "Implements": ["NetworkDriver"] })),
        "NetworkDriver.GetCapabilities" => {
            answer(json!({ "Scope": "local", "ConnectivityScope": "local" }))
        }
        "NetworkDriver.CreateNetwork" => {
            let req = match serde_json::from_slice::<CreateNet>(&body)
                .map_err(|e| format!("invalid CreateNetwork body: {e}"))
                .and_then(|c| create_request(&c))
            {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match with_core(s, move |c| c.create_network(req)).await {
                Ok(_) => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.DeleteNetwork" => {
            let Ok(n) = serde_json::from_slice::<NetId>(&body) else {
                return fail("invalid DeleteNetwork body");
            };
            let name = network_name(&n.network_id);
            match with_core(s, move |c| c.remove_network(&name)).await {
                Ok(_) => answer(json!({})),
                // already gone is done (Docker retries deletes)
                Err(e) if e.status == 404 => answer(json!({})),
                Err(e) => fail(e.message),
            }
        }
        "NetworkDriver.AllocateNetwork" | "NetworkDriver.FreeNetwork" => answer(json!({})),
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => answer(json!({})),
        "NetworkDriver.CreateEndpoint"
        | "NetworkDriver.DeleteEndpoint"
        | "NetworkDriver.EndpointOperInfo"
        | "NetworkDriver.Join"
        | "NetworkDriver.Leave"
        | "NetworkDriver.ProgramExternalConnectivity"
        | "NetworkDriver.RevokeExternalConnectivity" => fail(format!(
            "tapnet's Docker plugin does not serve {m} yet (networks only; use `tapnet run` or the CNI plugin for containers)"
        )),
        _ => (StatusCode::NOT_FOUND, fail(format!("unknown method {m}"))).into_response(),
    }
}

pub fn router(s: Shared) -> Router {
    Router::new()
        .route("/{method}", post(method))
        .with_state(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_options_become_tapnet_options() {
        let c: CreateNet = serde_json::from_value(json!({
            "NetworkID": "ce17aa0011223344556677889900aabbccddeeff00112233445566778899aabb",
            "Options": {"com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {"tapnet.driver": "macvlan", "tapnet.parent": "eth0",
                    "com.docker.network.bridge.name": "x"}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.99.0.1/24", "Pool": "10.99.0.0/24"}],
            "IPv6Data": []
        }))
        .unwrap();
        let r = create_request(&c).unwrap();
        assert_eq!(r.name, "docker-ce17aa001122");
        assert_eq!(r.driver.as_deref(), Some("macvlan"));
        assert_eq!(r.options.get("parent").map(String::as_str), Some("eth0"));
        assert_eq!(r.options.len(), 1);
        assert_eq!(r.subnet.as_deref(), Some("10.99.0.0/24"));
        assert_eq!(r.gateway.as_deref(), Some("10.99.0.1"));
    }
}
