//! Pull-through policy: the only module that sees both the store and the
//! upstreams.
//!
//! Resolution order for a manifest by tag: published tag → pinned tag →
//! cached tag (fresh: served; stale: one HEAD revalidation; upstream
//! unavailable: served stale) → upstream. By digest: memory → store →
//! upstream. Blobs: fill in progress → store → upstream fill. Every upstream
//! fetch is single-flight. Referrers: local ones merged with upstream's.
//!
//! Sealed mode (`cache.offline`, `serve --offline`) stops before every
//! upstream step: what is not held is answered as not in the site's
//! bundles ([`Error::NotInBundles`]), and no connection is ever opened.

pub mod fill;
pub mod origin;
pub mod routing;
pub mod taglist;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use self::fill::{Fill, Fills};
use self::origin::Origin;
use self::routing::{RoutingError, RoutingTable};
use self::taglist::TagLists;
use crate::config::Config;
use crate::flight::Group;
use crate::oci::referrers::{self, Referrer};
use crate::oci::{media, Digest, Reference, RepoKey, RepoName, Tag};
use crate::registry::{self, Registry};
use crate::storage::{self, now_secs, BlobHandle, ByteStream, Class, Store, StoredManifest, TagLink};
use crate::upstream::{self, Upstream};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Routing(#[from] RoutingError),
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
    #[error("repository unknown")]
    NameUnknown,
    /// Sealed mode (`cache.offline`): `what` (a reference or a blob) is not
    /// held here, and no upstream may be asked.
    #[error("{0} is not in this site's bundles (sealed mode)")]
    NotInBundles(String),
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    #[error("upstream content failed verification: {0}")]
    Corrupt(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Self {
        match e {
            registry::Error::ManifestUnknown => Error::ManifestUnknown,
            registry::Error::BlobUnknown => Error::BlobUnknown,
            registry::Error::Storage(why) => Error::Storage(why),
            // The read paths the proxy uses raise nothing else.
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where a response's content came from, sent as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store.
    Hit,
    /// Fetched from upstream for this request (or a concurrent one).
    Miss,
    /// Cached copy served because upstream failed.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// A blob ready to be answered: its size (once known) and where its bytes are.
pub struct BlobReply {
    pub size: Option<u64>,
    pub cache: CacheStatus,
    pub source: BlobSource,
}

pub enum BlobSource {
    Stored(BlobHandle),
    Filling(Arc<Fill>),
    /// HEAD answered by upstream; there are no bytes to stream.
    Remote,
}

impl BlobReply {
    /// The size, waiting for the fill to finish when upstream did not
    /// announce one (needed to answer a Range request).
    pub async fn known_size(&mut self) -> Result<Option<u64>> {
        if self.size.is_none() {
            if let BlobSource::Filling(f) = &self.source {
                self.size = Some(f.wait_verified().await?);
            }
        }
        Ok(self.size)
    }

    /// Bytes `start..end` (`None`: to the end).
    pub fn stream(self, start: u64, end: Option<u64>) -> ByteStream {
        match self.source {
            BlobSource::Stored(h) => {
                let size = h.size();
                h.stream(start, end.unwrap_or(size).min(size))
            }
            BlobSource::Filling(f) => f.stream(start, end),
            BlobSource::Remote => Box::pin(futures::stream::empty()),
        }
    }
}

type TagKey = (RepoKey, Tag);

/// What a configuration reload (SIGHUP) may change: the upstreams, how
/// requests reach them, and the cache policy. Each request works with the
/// snapshot it took when it started, so a reload never changes the course
/// of a pull in progress; everything that must outlive a reload (the
/// single-flight maps, fills in progress, caches) stays in [`Proxy`].
struct Policy {
    routing: RoutingTable,
    upstreams: std::collections::HashMap<String, Arc<Upstream>>,
    offline: bool,
    tag_ttl: Duration,
}

impl Policy {
    /// `current`: the policy being replaced, whose upstream clients are
    /// kept (with their tokens and connection pools) where an upstream's
    /// configuration did not change.
    fn new(cfg: &Config, current: Option<&Policy>) -> Result<Policy> {
        let mut upstreams = std::collections::HashMap::new();
        for (name, up) in &cfg.upstreams {
            let kept = current.and_then(|p| p.upstreams.get(name)).filter(|u| u.config() == up);
            let client = match kept {
                Some(u) => u.clone(),
                None => Arc::new(Upstream::new(name, up)?),
            };
            upstreams.insert(name.clone(), client);
        }
        Ok(Policy {
            routing: RoutingTable::new(cfg),
            upstreams,
            offline: cfg.cache.offline,
            tag_ttl: cfg.cache.tag_ttl,
        })
    }

    /// Where to ask upstream for `key` (and `reference`, which decides
    /// the CoreDNS rule; see `origin`).
    fn origin(&self, key: &RepoKey, reference: Option<&Reference>) -> Result<Origin> {
        let up = self
            .upstreams
            .get(key.upstream())
            .cloned()
            .ok_or_else(|| Error::Routing(RoutingError::UnknownUpstream(key.upstream().to_string())))?;
        Ok(Origin::new(up, key.repo(), self.routing.is_kubernetes(key.upstream()), reference))
    }
}

/// The pull-through layer over the local [`Registry`].
pub struct Proxy {
    registry: Arc<Registry>,
    /// Swapped whole by [`Proxy::reconfigure`]; read once per request.
    policy: ArcSwap<Policy>,
    tag_flights: Arc<Group<TagKey, (Arc<StoredManifest>, CacheStatus), Error>>,
    manifest_flights: Arc<Group<Digest, Arc<StoredManifest>, Error>>,
    fills: Arc<Fills>,
    /// Upstream tags lists: single-flight per repository, kept for `tag_ttl`.
    tag_lists: TagLists,
}

impl Proxy {
    pub fn new(cfg: &Config, registry: Arc<Registry>) -> Result<Proxy> {
        Ok(Proxy {
            registry,
            policy: ArcSwap::from_pointee(Policy::new(cfg, None)?),
            tag_flights: Arc::default(),
            manifest_flights: Arc::default(),
            fills: Arc::default(),
            tag_lists: TagLists::new(),
        })
    }

    /// Applies a reloaded configuration's upstreams, routing and cache
    /// policy to the requests that start from now on. Requests in
    /// progress, fills and single-flight jobs finish with what they
    /// started with; the caches stay. On error nothing changes.
    pub fn reconfigure(&self, cfg: &Config) -> Result<()> {
        let next = Policy::new(cfg, Some(&self.policy.load()))?;
        self.policy.store(Arc::new(next));
        Ok(())
    }

    /// The policy for one request.
    fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    pub fn store(&self) -> &Arc<Store> {
        self.registry.store()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Fills in progress (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    /// Resolves once no fill is in progress (the shutdown drain).
    pub async fn fills_settled(&self) {
        self.fills.settled().await
    }

    /// Stops every fill in progress; each throws its spool file away and
    /// stores nothing (the end of the shutdown grace).
    pub fn cut_fills(&self) -> usize {
        self.fills.abort_all()
    }

    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<RepoKey> {
        Ok(self.policy.load().routing.route(name, ns)?)
    }

    // ---- manifests ---------------------------------------------------

    pub async fn manifest(&self, key: &RepoKey, reference: &Reference) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        let policy = self.policy();
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(&policy, key, d).await,
            Reference::Tag(t) => self.manifest_by_tag(&policy, key, t).await,
        }
    }

    async fn manifest_by_digest(
        &self,
        policy: &Policy,
        key: &RepoKey,
        d: &Digest,
    ) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        if let Some(m) = self.registry.manifest(d).await? {
            return Ok((m, CacheStatus::Hit));
        }
        if policy.offline {
            return Err(Error::NotInBundles(format!("{key}@{d}")));
        }
        let m = self.fetch_manifest_by_digest(policy, key, d).await?;
        Ok((m, CacheStatus::Miss))
    }

    async fn fetch_manifest_by_digest(
        &self,
        policy: &Policy,
        key: &RepoKey,
        d: &Digest,
    ) -> Result<Arc<StoredManifest>> {
        let origin = policy.origin(key, None)?;
        let (registry, d2) = (self.registry.clone(), d.clone());
        self.manifest_flights
            .run(d.clone(), || async move {
                let body = origin
                    .manifest(&Reference::Digest(d2.clone()))
                    .await
                    .map_err(not_found_as(Error::ManifestUnknown))?;
                let m = Arc::new(verified_manifest(body, Some(&d2))?);
                registry.keep_manifest(&m).await;
                Ok(m)
            })
            .await
    }

    async fn manifest_by_tag(
        &self,
        policy: &Policy,
        key: &RepoKey,
        tag: &Tag,
    ) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        if let Some((class, digest)) = self.local_tag(policy, key, tag).await? {
            let m = self.registry.manifest(&digest).await?.ok_or_else(|| {
                tracing::error!(repo = %key, %tag, %digest, class = class.as_str(), "tag points to a missing manifest");
                Error::ManifestUnknown
            })?;
            return Ok((m, CacheStatus::Hit));
        }
        let cached = self.registry.cached_tag(key, tag).await?;
        if let Some(link) = &cached {
            let age = now_secs().saturating_sub(link.checked);
            if policy.offline || Duration::from_secs(age) < policy.tag_ttl {
                if let Some(m) = self.registry.manifest(&link.digest).await? {
                    return Ok((m, CacheStatus::Hit));
                }
            }
        }
        if policy.offline {
            return Err(Error::NotInBundles(format!("{key}:{tag}")));
        }
        // Revalidate (or fetch) once, however many clients ask at once.
        let flight_key = (key.clone(), tag.clone());
        let this = self.tag_resolver(policy, key, tag, cached);
        self.tag_flights.run(flight_key, || this).await
    }

    /// The published or pinned tag of `key`, else, by the CoreDNS rule (see
    /// `origin`), that of `coredns/coredns`: a sealed site imported
    /// kubeadm's `registry.k8s.io/coredns/coredns:v1.8.6`, and kubeadm with
    /// `imageRepository` pointed at the mirror asks for `coredns:v1.8.6`.
    async fn local_tag(&self, policy: &Policy, key: &RepoKey, tag: &Tag) -> Result<Option<(Class, Digest)>> {
        if let Some(found) = self.registry.local_tag(key, tag).await? {
            return Ok(Some(found));
        }
        let coredns = key.repo().as_str() == "coredns"
            && tag.as_str().starts_with('v')
            && policy.routing.is_kubernetes(key.upstream());
        if !coredns {
            return Ok(None);
        }
        let alt = RepoKey::new(key.upstream().into(), "coredns/coredns".parse().expect("static name"));
        Ok(self.registry.local_tag(&alt, tag).await?)
    }

    /// Builds the single-flight work that revalidates or fetches a tag.
    fn tag_resolver(
        &self,
        policy: &Policy,
        key: &RepoKey,
        tag: &Tag,
        cached: Option<TagLink>,
    ) -> impl Future<Output = Result<(Arc<StoredManifest>, CacheStatus)>> + Send + 'static {
        let ctx = TagWork {
            origin: policy.origin(key, Some(&Reference::Tag(tag.clone()))),
            registry: self.registry.clone(),
            key: key.clone(),
            tag: tag.clone(),
        };
        async move { ctx.resolve(cached).await }
    }

    /// Records a published or pinned tag (the manifest must already be
    /// stored).
    pub async fn put_local_tag(&self, class: Class, key: &RepoKey, tag: &Tag, digest: &Digest) -> Result<()> {
        Ok(self.registry.put_local_tag(class, key, tag, digest).await?)
    }

    // ---- blobs -------------------------------------------------------

    /// Finds a blob: a fill in progress, the store, or (GET) a new fill.
    /// `head`: answer without ever downloading the body.
    pub async fn blob(&self, key: &RepoKey, d: &Digest, head: bool) -> Result<BlobReply> {
        let policy = self.policy();
        // The map before the store: see `fill` for why the order matters.
        if let Some(fill) = self.fills.get(d) {
            return joined(fill).await;
        }
        if let Some(h) = self.registry.open_blob(d).await? {
            return Ok(BlobReply { size: Some(h.size()), cache: CacheStatus::Hit, source: BlobSource::Stored(h) });
        }
        if policy.offline {
            return Err(Error::NotInBundles(format!("blob {d} of {key}")));
        }
        let origin = policy.origin(key, None)?;
        if head {
            let size = origin.head_blob(d).await.map_err(not_found_as(Error::BlobUnknown))?;
            return Ok(BlobReply { size, cache: CacheStatus::Miss, source: BlobSource::Remote });
        }
        let d2 = d.clone();
        let fill = self.fills.join_or_start(d, self.registry.store(), move || async move { origin.blob(&d2).await });
        joined(fill).await
    }

    /// Stores the blobs that a pushed manifest names and this site lacks,
    /// from `key`'s upstream. A blob HEAD falls through to upstream, so a
    /// client pushing an image whose layers upstream already has (a patched
    /// build over an upstream base) is told they exist and never uploads
    /// them; the manifest naming them must be accepted all the same, and
    /// what is published must not depend on upstream keeping them.
    /// Best effort, and quiet: a blob that cannot be fetched stays missing,
    /// and the publish that follows reports it (`MANIFEST_BLOB_UNKNOWN`).
    pub async fn fetch_blobs_for_push(&self, key: &RepoKey, content_type: Option<&str>, body: &[u8]) {
        let Ok(m) = crate::oci::manifest::Manifest::parse(content_type, body) else { return };
        let policy = self.policy();
        if policy.offline || m.required_blobs().next().is_none() {
            return;
        }
        let Ok(origin) = policy.origin(key, None) else { return };
        let fetches = m.required_blobs().map(|b| {
            let origin = origin.clone();
            async move {
                let d = &b.digest;
                // The map before the store, as in `blob`.
                let fill = match self.fills.get(d) {
                    Some(fill) => fill,
                    None if self.registry.store().has_blob(d).await.unwrap_or(false) => return,
                    None => {
                        let d2 = d.clone();
                        self.fills.join_or_start(
                            d,
                            self.registry.store(),
                            move || async move { origin.blob(&d2).await },
                        )
                    }
                };
                match fill.wait_done().await {
                    Ok(()) => {
                        tracing::info!(repo = %key, digest = %d, "blob of a pushed manifest fetched from upstream")
                    }
                    Err(Error::Upstream(upstream::Error::NotFound)) => {}
                    Err(e) => {
                        tracing::warn!(repo = %key, digest = %d, error = %e, "blob of a pushed manifest not fetched")
                    }
                }
            }
        });
        futures::future::join_all(fetches).await;
    }

    // ---- referrers ---------------------------------------------------

    /// The referrers of `subject`: this site's (published, pinned) and,
    /// unless offline, upstream's, each digest once. Upstream is asked on
    /// every call (a signature may appear there at any time); when it
    /// fails, the local ones are the answer, and a registry without the
    /// referrers API (404) simply has none.
    pub async fn referrers(&self, key: &RepoKey, subject: &Digest) -> Result<Vec<Referrer>> {
        let policy = self.policy();
        let local = self.registry.referrers(key, subject).await?;
        if policy.offline {
            return Ok(local);
        }
        match policy.origin(key, None)?.referrers(subject).await {
            Ok(remote) => Ok(referrers::merge(local, remote)),
            Err(upstream::Error::NotFound) => Ok(local),
            Err(e) => {
                tracing::warn!(repo = %key, %subject, error = %e, "upstream referrers unavailable; listing local ones");
                Ok(local)
            }
        }
    }

    // ---- tags list ---------------------------------------------------

    /// All tags: published ∪ pinned ∪ upstream's list (the cached copy of
    /// it when upstream fails or the mirror is offline), sorted. Upstream's
    /// list is fetched once per repository however many clients ask, and
    /// not asked again for `tag_ttl`.
    pub async fn tags(&self, key: &RepoKey) -> Result<Vec<String>> {
        let policy = self.policy();
        let mut all = BTreeSet::new();
        for class in [Class::Published, Class::Pinned] {
            all.extend(self.registry.tags(class, key).await?.into_iter().map(|t| t.to_string()));
        }
        let remote = if policy.offline {
            Err(upstream::Error::Transport("offline mode".into()))
        } else {
            let (origin, store, k) = (policy.origin(key, None)?, self.registry.store().clone(), key.clone());
            self.tag_lists.get(key, policy.tag_ttl, move || Self::fetch_tags(origin, store, k)).await
        };
        match remote {
            Ok(list) => all.extend(list.iter().cloned()),
            Err(upstream::Error::NotFound) if all.is_empty() => return Err(Error::NameUnknown),
            Err(upstream::Error::NotFound) => {}
            Err(e) => match self.registry.stored_taglist(key).await? {
                Some(list) => all.extend(list),
                None => {
                    all.extend(self.registry.tags(Class::Cached, key).await?.into_iter().map(|t| t.to_string()));
                    if all.is_empty() {
                        return Err(if policy.offline { Error::NameUnknown } else { Error::Upstream(e) });
                    }
                }
            },
        }
        Ok(all.into_iter().collect())
    }

    /// Upstream's tags list, also stored for when upstream is down. Owned
    /// arguments: it runs as a single-flight task (see `taglist`).
    async fn fetch_tags(origin: Origin, store: Arc<Store>, key: RepoKey) -> upstream::Result<Vec<String>> {
        let list = origin.tags().await?;
        if let Err(e) = store.put_taglist(&key, &list).await {
            tracing::warn!(repo = %key, error = %e, "could not cache tags list");
        }
        Ok(list)
    }
}

/// The parts of `Proxy` that tag resolution needs inside its spawned task.
struct TagWork {
    origin: Result<Origin>,
    registry: Arc<Registry>,
    key: RepoKey,
    tag: Tag,
}

impl TagWork {
    async fn resolve(&self, cached: Option<TagLink>) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        let origin = self.origin.clone()?;
        let Some(link) = cached else {
            return self.fetch_by_tag(&origin).await.map(|m| (m, CacheStatus::Miss));
        };
        // Revalidate with one HEAD (a HEAD does not count against Docker
        // Hub's pull limit); fetch the body only if the digest moved.
        match origin.head_manifest(&Reference::Tag(self.tag.clone())).await {
            Ok(h) if h.digest.as_ref() == Some(&link.digest) => {
                if let Some(m) = self.registry.manifest(&link.digest).await? {
                    self.registry.confirm_cached_tag(&self.key, &self.tag, &link.digest).await;
                    return Ok((m, CacheStatus::Hit));
                }
                self.fetch_by_tag(&origin).await.map(|m| (m, CacheStatus::Miss))
            }
            Ok(_) => self.fetch_by_tag(&origin).await.map(|m| (m, CacheStatus::Miss)),
            // A stale answer leaves the link as it was, so the next request
            // tries upstream again instead of trusting an unconfirmed tag.
            Err(e) if e.is_unavailable() => match self.registry.manifest(&link.digest).await? {
                Some(m) => {
                    tracing::warn!(repo = %self.key, tag = %self.tag, error = %e, "upstream unavailable; serving cached manifest");
                    Ok((m, CacheStatus::Stale))
                }
                None => Err(Error::Upstream(e)),
            },
            Err(upstream::Error::NotFound) => Err(Error::ManifestUnknown),
            Err(e) => Err(Error::Upstream(e)),
        }
    }

    async fn fetch_by_tag(&self, origin: &Origin) -> Result<Arc<StoredManifest>> {
        let body =
            origin.manifest(&Reference::Tag(self.tag.clone())).await.map_err(not_found_as(Error::ManifestUnknown))?;
        let m = Arc::new(verified_manifest(body, None)?);
        // Both log a storage failure and keep the answer in memory.
        self.registry.keep_manifest(&m).await;
        self.registry.confirm_cached_tag(&self.key, &self.tag, &m.digest).await;
        Ok(m)
    }
}

/// Checks a manifest body against the digest it was asked by (if any) and
/// the digest upstream claimed (if any).
fn verified_manifest(body: upstream::ManifestBody, expected: Option<&Digest>) -> Result<StoredManifest> {
    // Stored under the digest it was asked by (sha256 or sha512), else sha256.
    let digest = expected.cloned().unwrap_or_else(|| Digest::of(&body.body));
    for claimed in [Some(&digest), body.digest_header.as_ref()].into_iter().flatten() {
        if !claimed.matches(&body.body) {
            return Err(Error::Corrupt(format!("manifest does not hash to {claimed}")));
        }
    }
    let media_type = media::resolve(body.content_type.as_deref(), &body.body);
    Ok(StoredManifest { digest, media_type, body: body.body })
}

fn not_found_as(e: Error) -> impl FnOnce(upstream::Error) -> Error {
    move |u| {
        if u == upstream::Error::NotFound {
            e
        } else {
            Error::Upstream(u)
        }
    }
}

async fn joined(fill: Arc<Fill>) -> Result<BlobReply> {
    let size = fill.wait_started().await.map_err(|e| match e {
        Error::Upstream(upstream::Error::NotFound) => Error::BlobUnknown,
        e => e,
    })?;
    Ok(BlobReply { size, cache: CacheStatus::Miss, source: BlobSource::Filling(fill) })
}
