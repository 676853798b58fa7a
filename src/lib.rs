//! klts-mirror: a pull-through OCI registry mirror for Kubernetes LTS images.
//!
//! # Layout
//! - [`oci`]: protocol vocabulary (digests, names, routes, error codes); no I/O.
//! - [`config`]: `config.toml` types, defaults and validation.
//! - [`flight`]: keyed single-flight, used by the proxy (manifests, tags)
//!   and the upstream client (tokens).
//! - [`storage`]: the content store on `object_store`; [`storage::paths`] is
//!   the one key mapper.
//! - [`upstream`]: the registry client (tokens, redirects, timeouts).
//! - [`registry`]: what this site holds (manifests and tags by class, blobs)
//!   with memory indices; knows nothing of upstreams.
//! - [`proxy`]: pull-through policy over the registry, single-flight and
//!   streaming fills; the only module that talks to upstreams.
//! - [`http`]: the axum edge; the only module that speaks HTTP to clients.
//! - [`server`]: the listener: connection cap, header and idle timeouts.

pub mod config;
pub mod flight;
pub mod http;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod storage;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;

/// Why the mirror could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("upstream client: {0}")]
    Upstream(String),
}

/// A configured mirror: the store, the proxy and the HTTP app over them.
#[derive(Clone)]
pub struct Mirror {
    proxy: Arc<proxy::Proxy>,
    server: config::ServerConfig,
}

impl Mirror {
    pub fn new(cfg: &Config) -> Result<Mirror, StartError> {
        let store = Arc::new(storage::Store::open(&cfg.storage)?);
        let registry = Arc::new(registry::Registry::new(store, cfg.storage.manifest_memory_bytes));
        let proxy = proxy::Proxy::new(cfg, registry).map_err(|e| StartError::Upstream(e.to_string()))?;
        Ok(Mirror { proxy: Arc::new(proxy), server: cfg.server.clone() })
    }

    pub fn proxy(&self) -> &Arc<proxy::Proxy> {
        &self.proxy
    }

    pub fn router(&self) -> axum::Router {
        http::router(http::AppState { proxy: self.proxy.clone(), registry: self.proxy.registry().clone() })
    }

    /// Serves on `listener` until `shutdown` completes, then lets requests
    /// in progress finish. Bind with [`server::bind`] for a deep backlog.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(listener, self.router(), self.server.clone(), shutdown).await
    }
}
