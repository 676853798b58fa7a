//! klts-mirror: a pull-through OCI registry mirror for Kubernetes LTS images.
//!
//! # Layout
//! - [`oci`]: protocol vocabulary (digests, names, routes, error codes); no I/O.
//! - [`config`]: `config.toml` types, defaults and validation.
//! - [`flight`]: keyed single-flight, used by the proxy (manifests, tags),
//!   the upstream client (tokens) and the authenticator (verifications).
//! - [`htpasswd`]: the users file of `[auth]`; parsing only.
//! - [`tls`]: `[tls]`'s certificate and key as a rustls configuration.
//! - [`kubeadm`]: kubeadm knowledge, no I/O: the images each release pulls.
//! - [`storage`]: the content store on `object_store`; [`storage::paths`] is
//!   the one key mapper.
//! - [`upstream`]: the registry client (tokens, redirects, timeouts).
//! - [`registry`]: what this site holds (manifests and tags by class, blobs)
//!   with memory indices, and blob uploads ([`registry::uploads`]); knows
//!   nothing of upstreams.
//! - [`proxy`]: pull-through policy over the registry, single-flight and
//!   streaming fills; the only module that talks to upstreams.
//! - [`http`]: the axum edge; the only module that speaks HTTP to clients,
//!   where requests are authorized ([`http::auth`]) and bearer tokens are
//!   issued and checked ([`http::token`]).
//! - [`airgap`]: bundles for air-gapped sites (OCI layout archives, their
//!   lock files), made through the proxy.
//! - [`server`]: the listener: connection cap, header and idle timeouts,
//!   TLS handshakes, the graceful drain.
//! - [`airgap`]: bundles for air-gapped sites; [`airgap::import`] pins an
//!   archive's images into the store.
//!
//! [`Mirror`] also holds what a configuration reload swaps: the proxy's
//! policy (upstreams, routing, cache policy), the authenticator's rules and
//! the TLS pair, each an atomically replaced snapshot that a request reads
//! once.

pub mod airgap;
pub mod config;
pub mod flight;
pub mod htpasswd;
pub mod http;
pub mod kubeadm;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod storage;
pub mod tls;
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
    #[error("no randomness for the token key: {0}")]
    Random(getrandom::Error),
}

/// A configured mirror: the store, the proxy and the HTTP app over them.
#[derive(Clone)]
pub struct Mirror {
    proxy: Arc<proxy::Proxy>,
    auth: Arc<http::auth::Authenticator>,
    uploads: Arc<registry::uploads::Uploads>,
    server: config::ServerConfig,
    tls: Option<tls::ServerTls>,
    /// The configured address: the token realm's host when a request names
    /// none (see [`http::auth::Realm`]), until [`Mirror::serve`] knows the
    /// address actually bound.
    listen: std::net::SocketAddr,
    /// The configuration in force: what [`Mirror::reload`] compares a new
    /// one with. One lock, so reloads apply one at a time.
    running: Arc<std::sync::Mutex<Config>>,
}

impl Mirror {
    pub fn new(cfg: &Config) -> Result<Mirror, StartError> {
        let store = Arc::new(storage::Store::open(&cfg.storage)?);
        let uploads = registry::uploads::Uploads::new(store.clone(), cfg.uploads.max_age, cfg.server.idle_timeout);
        let swept = uploads.sweep_at_start();
        if swept > 0 {
            tracing::info!(removed = swept, max_age = ?cfg.uploads.max_age, "removed abandoned uploads");
        }
        let registry = Arc::new(registry::Registry::new(store, cfg.storage.manifest_memory_bytes));
        let proxy = proxy::Proxy::new(cfg, registry).map_err(|e| StartError::Upstream(e.to_string()))?;
        let auth = http::auth::Authenticator::from_config(cfg.auth.as_ref()).map_err(StartError::Random)?;
        let tls = cfg.tls.as_ref().and_then(|t| t.server.clone());
        Ok(Mirror {
            proxy: Arc::new(proxy),
            auth: Arc::new(auth),
            uploads: Arc::new(uploads),
            server: cfg.server.clone(),
            tls,
            listen: cfg.listen,
            running: Arc::new(std::sync::Mutex::new(cfg.clone())),
        })
    }

    /// Applies a reloaded configuration (SIGHUP) to the requests that start
    /// from now on: upstreams, credentials, routing, cache policy, `[auth]`
    /// and the `[tls]` pair. Requests in progress finish with what they
    /// started with; single-flight jobs, fills and caches carry on. Settings
    /// that need a restart (see [`Config::needs_restart`]) keep their
    /// running values, with a warning. On error nothing changes.
    pub fn reload(&self, cfg: Config) -> Result<(), StartError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let restart = running.needs_restart(&cfg);
        let cfg = cfg.keeping_restart_only(&running);
        self.proxy.reconfigure(&cfg).map_err(|e| StartError::Upstream(e.to_string()))?;
        self.auth.reconfigure(cfg.auth.as_ref());
        if let (Some(live), Some(next)) = (&self.tls, cfg.tls.as_ref().and_then(|t| t.server.as_ref())) {
            live.replace(next);
        }
        for key in restart {
            tracing::warn!(key, "configuration reload: changes to [{key}] need a restart; the running values stay");
        }
        tracing::info!(upstreams = cfg.upstreams.len(), "configuration reloaded");
        *running = cfg;
        Ok(())
    }

    pub fn proxy(&self) -> &Arc<proxy::Proxy> {
        &self.proxy
    }

    pub fn authenticator(&self) -> &Arc<http::auth::Authenticator> {
        &self.auth
    }

    pub fn uploads(&self) -> &Arc<registry::uploads::Uploads> {
        &self.uploads
    }

    pub fn router(&self) -> axum::Router {
        self.router_on(self.listen)
    }

    /// The app as served on `local`: its token realm is HTTPS with `[tls]`.
    fn router_on(&self, local: std::net::SocketAddr) -> axum::Router {
        http::router(http::AppState {
            proxy: self.proxy.clone(),
            registry: self.proxy.registry().clone(),
            auth: self.auth.clone(),
            uploads: self.uploads.clone(),
            realm: Arc::new(http::auth::Realm::new(self.tls.is_some(), local)),
        })
    }

    /// Serves on `listener` (HTTPS only, with `[tls]`) until `shutdown`
    /// completes, then drains: the listener closes, and requests and fills
    /// in progress get until `server.shutdown_grace` to finish; what is
    /// still running then is cut, and a cut fill stores nothing. Abandoned
    /// uploads are swept meanwhile. Bind with [`server::bind`] for a deep
    /// backlog.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sweeper = tokio::spawn(self.uploads.clone().run_sweeper());
        let app = self.router_on(listener.local_addr().unwrap_or(self.listen));
        let grace = self.server.shutdown_grace;
        let (began, drain) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            shutdown.await;
            let _ = began.send(tokio::time::Instant::now() + grace);
        };
        let served = server::serve(listener, app, self.server.clone(), self.tls.clone(), shutdown).await;
        sweeper.abort();
        if let Ok(deadline) = drain.await {
            self.drain_fills(deadline).await;
        }
        served
    }

    /// Lets fills that no client waits for any more (their readers left,
    /// or they fetch for a push) finish until `deadline`, then cuts them.
    async fn drain_fills(&self, deadline: tokio::time::Instant) {
        let running = self.proxy.fills_in_flight();
        if running == 0 {
            return;
        }
        tracing::info!(fills = running, "waiting for fills in progress");
        if tokio::time::timeout_at(deadline, self.proxy.fills_settled()).await.is_ok() {
            return;
        }
        let cut = self.proxy.cut_fills();
        tracing::warn!(fills = cut, "shutdown grace over; fills cut, nothing of them is stored");
        // A cut fill removes its spool file as its task is dropped.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.proxy.fills_settled()).await;
    }
}
