//! Pull-through policy: the only module that sees both the store and the
//! upstreams.
//!
//! Resolution order for a manifest by tag: published tag → pinned tag →
//! cached tag (fresh: served; stale: one HEAD revalidation; upstream
//! unavailable: served stale) → upstream. By digest: memory → store →
//! upstream. Blobs: fill in progress → store → upstream fill. Every upstream
//! fetch is single-flight.

pub mod fill;
pub mod routing;
pub mod taglist;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use self::fill::{Fill, Fills};
use self::routing::{RoutingError, RoutingTable};
use self::taglist::TagLists;
use crate::config::Config;
use crate::flight::Group;
use crate::oci::{media, Digest, Reference, RepoKey, RepoName, Tag};
use crate::storage::{self, now_secs, BlobHandle, ByteStream, Class, Store, StoredManifest, TagLink};
use crate::upstream::{self, Upstream};

/// How long a published/pinned tag lookup is trusted in memory. Publishing
/// through this replica invalidates at once; other replicas see a new
/// publish within this bound.
const LOCAL_TAG_RECHECK: Duration = Duration::from_secs(2);

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

#[derive(Clone)]
struct ManifestWeighter;

impl Weighter<Digest, Arc<StoredManifest>> for ManifestWeighter {
    fn weight(&self, _: &Digest, m: &Arc<StoredManifest>) -> u64 {
        (m.body.len() + m.media_type.len() + 128) as u64
    }
}

/// What memory knows about one tag of one repository, so that a warm
/// request by tag costs one lookup and no I/O.
#[derive(Clone, Default)]
struct TagState {
    /// The published or pinned link as last read from the store, and when
    /// (`None` until first read).
    local: Option<(Option<(Class, Digest)>, Instant)>,
    /// The cached-class link; memory is write-through for this class.
    cached: Option<TagLink>,
}

type TagKey = (RepoKey, Tag);

/// Borrowed `TagKey` for lookups without cloning; hashes exactly like the
/// tuple (fields in order).
#[derive(Hash)]
struct TagKeyRef<'a>(&'a RepoKey, &'a Tag);

impl quick_cache::Equivalent<TagKey> for TagKeyRef<'_> {
    fn equivalent(&self, k: &TagKey) -> bool {
        self.0 == &k.0 && self.1 == &k.1
    }
}

/// Read-modify-write of one tag's state. Races between two writers only
/// lose a memory entry, which is reloaded from the store.
fn update_tag(tags: &Cache<TagKey, TagState>, key: &RepoKey, tag: &Tag, f: impl FnOnce(&mut TagState)) {
    let mut state = tags.get(&TagKeyRef(key, tag)).unwrap_or_default();
    f(&mut state);
    tags.insert((key.clone(), tag.clone()), state);
}

pub struct Proxy {
    store: Arc<Store>,
    routing: RoutingTable,
    upstreams: std::collections::HashMap<String, Arc<Upstream>>,
    offline: bool,
    tag_ttl: Duration,
    /// Hot manifests by digest, bounded by bytes: a warm manifest request
    /// does no I/O.
    manifests: Arc<Cache<Digest, Arc<StoredManifest>, ManifestWeighter>>,
    /// Tag links by class; cached-class entries are write-through, local
    /// classes are rechecked after `LOCAL_TAG_RECHECK`.
    tags: Arc<Cache<TagKey, TagState>>,
    tag_flights: Arc<Group<TagKey, (Arc<StoredManifest>, CacheStatus), Error>>,
    manifest_flights: Arc<Group<Digest, Arc<StoredManifest>, Error>>,
    fills: Arc<Fills>,
    /// Upstream tags lists: single-flight per repository, kept for `tag_ttl`.
    tag_lists: TagLists,
}

impl Proxy {
    pub fn new(cfg: &Config, store: Arc<Store>) -> Result<Proxy> {
        let mut upstreams = std::collections::HashMap::new();
        for (name, up) in &cfg.upstreams {
            upstreams.insert(name.clone(), Arc::new(Upstream::new(name, up)?));
        }
        let budget = cfg.storage.manifest_memory_bytes.max(1);
        Ok(Proxy {
            store,
            routing: RoutingTable::new(cfg),
            upstreams,
            offline: cfg.cache.offline,
            tag_ttl: cfg.cache.tag_ttl,
            manifests: Arc::new(Cache::with_weighter((budget / 4096).max(16) as usize, budget, ManifestWeighter)),
            tags: Arc::new(Cache::new(100_000)),
            tag_flights: Arc::default(),
            manifest_flights: Arc::default(),
            fills: Arc::default(),
            tag_lists: TagLists::new(cfg.cache.tag_ttl),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Fills in progress (for tests and metrics).
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    pub fn route(&self, name: &RepoName, ns: Option<&str>) -> Result<RepoKey> {
        Ok(self.routing.route(name, ns)?)
    }

    fn upstream(&self, key: &RepoKey) -> Result<Arc<Upstream>> {
        self.upstreams
            .get(key.upstream())
            .cloned()
            .ok_or_else(|| Error::Routing(RoutingError::UnknownUpstream(key.upstream().to_string())))
    }

    /// Repositories to try upstream, in order. Kubernetes moved CoreDNS to
    /// `coredns/coredns` at v1.8; kubeadm with a custom imageRepository still
    /// asks for `<repo>/coredns:v1.x`, which the Kubernetes registry lacks.
    fn upstream_repos(&self, key: &RepoKey, reference: Option<&Reference>) -> Vec<RepoName> {
        let mut repos = vec![key.repo().clone()];
        let versioned = match reference {
            Some(Reference::Tag(t)) => t.as_str().starts_with('v'),
            _ => true,
        };
        if versioned && key.repo().as_str() == "coredns" && self.routing.is_kubernetes(key.upstream()) {
            repos.push("coredns/coredns".parse().expect("static name"));
        }
        repos
    }

    // ---- manifests ---------------------------------------------------

    pub async fn manifest(&self, key: &RepoKey, reference: &Reference) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(key, d).await,
            Reference::Tag(t) => self.manifest_by_tag(key, t).await,
        }
    }

    async fn manifest_by_digest(&self, key: &RepoKey, d: &Digest) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        if let Some(m) = self.local_manifest(d).await? {
            return Ok((m, CacheStatus::Hit));
        }
        if self.offline {
            return Err(Error::ManifestUnknown);
        }
        let m = self.fetch_manifest_by_digest(key, d).await?;
        Ok((m, CacheStatus::Miss))
    }

    async fn local_manifest(&self, d: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        local_manifest(&self.manifests, &self.store, d).await
    }

    async fn fetch_manifest_by_digest(&self, key: &RepoKey, d: &Digest) -> Result<Arc<StoredManifest>> {
        let up = self.upstream(key)?;
        let repos = self.upstream_repos(key, None);
        let (store, d2) = (self.store.clone(), d.clone());
        let m = self
            .manifest_flights
            .run(d.clone(), || async move {
                let reference = Reference::Digest(d2.clone());
                let body = first_found(&repos, |r| {
                    let (up, reference) = (up.clone(), reference.clone());
                    async move { up.get_manifest(&r, &reference).await }
                })
                .await
                .map_err(not_found_as(Error::ManifestUnknown))?;
                let m = verified_manifest(body, Some(&d2))?;
                keep_manifest(&store, &m).await;
                Ok(Arc::new(m))
            })
            .await?;
        self.manifests.insert(d.clone(), m.clone());
        Ok(m)
    }

    async fn manifest_by_tag(&self, key: &RepoKey, tag: &Tag) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        let state = self.tags.get(&TagKeyRef(key, tag)).unwrap_or_default();
        let local = match state.local {
            Some((link, loaded)) if loaded.elapsed() < LOCAL_TAG_RECHECK => link,
            _ => {
                let link = self.read_local_tag(key, tag).await?;
                let l = link.clone();
                update_tag(&self.tags, key, tag, |s| s.local = Some((l, Instant::now())));
                link
            }
        };
        if let Some((class, digest)) = local {
            let m = self.local_manifest(&digest).await?.ok_or_else(|| {
                tracing::error!(repo = %key, %tag, %digest, class = class.as_str(), "tag points to a missing manifest");
                Error::ManifestUnknown
            })?;
            return Ok((m, CacheStatus::Hit));
        }
        let cached = match state.cached {
            Some(link) => Some(link),
            None => {
                let link = self.store.get_tag(Class::Cached, key, tag).await?;
                if let Some(l) = &link {
                    let l = l.clone();
                    update_tag(&self.tags, key, tag, |s| s.cached = Some(l));
                }
                link
            }
        };
        if let Some(link) = &cached {
            let age = now_secs().saturating_sub(link.checked);
            if self.offline || Duration::from_secs(age) < self.tag_ttl {
                if let Some(m) = self.local_manifest(&link.digest).await? {
                    return Ok((m, CacheStatus::Hit));
                }
            }
        }
        if self.offline {
            return Err(Error::ManifestUnknown);
        }
        // Revalidate (or fetch) once, however many clients ask at once.
        let flight_key = (key.clone(), tag.clone());
        let this = self.tag_resolver(key, tag, cached);
        self.tag_flights.run(flight_key, || this).await
    }

    /// Builds the single-flight work that revalidates or fetches a tag.
    fn tag_resolver(
        &self,
        key: &RepoKey,
        tag: &Tag,
        cached: Option<TagLink>,
    ) -> impl Future<Output = Result<(Arc<StoredManifest>, CacheStatus)>> + Send + 'static {
        let ctx = TagWork {
            up: self.upstream(key),
            repos: self.upstream_repos(key, Some(&Reference::Tag(tag.clone()))),
            store: self.store.clone(),
            manifests: self.manifests.clone(),
            key: key.clone(),
            tag: tag.clone(),
        };
        let tags = self.tags.clone();
        async move {
            let out = ctx.resolve(cached).await;
            // A stale answer leaves the link as it was, so the next request
            // tries upstream again instead of trusting an unconfirmed tag.
            if let Ok((m, CacheStatus::Hit | CacheStatus::Miss)) = &out {
                let link = TagLink { digest: m.digest.clone(), checked: now_secs() };
                update_tag(&tags, &ctx.key, &ctx.tag, |s| s.cached = Some(link));
            }
            out
        }
    }

    /// The published tag, else the pinned one, from the store.
    async fn read_local_tag(&self, key: &RepoKey, tag: &Tag) -> Result<Option<(Class, Digest)>> {
        for class in [Class::Published, Class::Pinned] {
            if let Some(link) = self.store.get_tag(class, key, tag).await? {
                return Ok(Some((class, link.digest)));
            }
        }
        Ok(None)
    }

    /// Records a published or pinned tag (the push and import paths use
    /// this; the manifest must already be stored).
    pub async fn put_local_tag(&self, class: Class, key: &RepoKey, tag: &Tag, digest: &Digest) -> Result<()> {
        let link = TagLink { digest: digest.clone(), checked: 0 };
        self.store.put_tag(class, key, tag, &link).await?;
        // Re-read so that a published tag still wins over a pinned one.
        let local = self.read_local_tag(key, tag).await?;
        update_tag(&self.tags, key, tag, |s| s.local = Some((local, Instant::now())));
        Ok(())
    }

    // ---- blobs -------------------------------------------------------

    /// Finds a blob: a fill in progress, the store, or (GET) a new fill.
    /// `head`: answer without ever downloading the body.
    pub async fn blob(&self, key: &RepoKey, d: &Digest, head: bool) -> Result<BlobReply> {
        // The map before the store: see `fill` for why the order matters.
        if let Some(fill) = self.fills.get(d) {
            return joined(fill).await;
        }
        if let Some(h) = self.store.open_blob(d).await? {
            return Ok(BlobReply { size: Some(h.size()), cache: CacheStatus::Hit, source: BlobSource::Stored(h) });
        }
        if self.offline {
            return Err(Error::BlobUnknown);
        }
        let up = self.upstream(key)?;
        let repos = self.upstream_repos(key, None);
        if head {
            let size = first_found(&repos, |r| {
                let (up, d) = (up.clone(), d.clone());
                async move { up.head_blob(&r, &d).await }
            })
            .await
            .map_err(not_found_as(Error::BlobUnknown))?;
            return Ok(BlobReply { size, cache: CacheStatus::Miss, source: BlobSource::Remote });
        }
        let d2 = d.clone();
        let fill = self.fills.join_or_start(d, &self.store, move || async move {
            first_found(&repos, |r| {
                let (up, d) = (up.clone(), d2.clone());
                async move { up.get_blob(&r, &d).await }
            })
            .await
        });
        joined(fill).await
    }

    // ---- tags list ---------------------------------------------------

    /// All tags: published ∪ pinned ∪ upstream's list (the cached copy of
    /// it when upstream fails or the mirror is offline), sorted. Upstream's
    /// list is fetched once per repository however many clients ask, and
    /// not asked again for `tag_ttl`.
    pub async fn tags(&self, key: &RepoKey) -> Result<Vec<String>> {
        let mut all = BTreeSet::new();
        for class in [Class::Published, Class::Pinned] {
            all.extend(self.store.list_tags(class, key).await?.into_iter().map(|t| t.to_string()));
        }
        let remote = if self.offline {
            Err(upstream::Error::Transport("offline mode".into()))
        } else {
            let (up, repos, store, k) =
                (self.upstream(key)?, self.upstream_repos(key, None), self.store.clone(), key.clone());
            self.tag_lists.get(key, move || Self::fetch_tags(up, repos, store, k)).await
        };
        match remote {
            Ok(list) => all.extend(list.iter().cloned()),
            Err(upstream::Error::NotFound) if all.is_empty() => return Err(Error::NameUnknown),
            Err(upstream::Error::NotFound) => {}
            Err(e) => match self.store.get_taglist(key).await? {
                Some(list) => all.extend(list),
                None => {
                    all.extend(self.store.list_tags(Class::Cached, key).await?.into_iter().map(|t| t.to_string()));
                    if all.is_empty() {
                        return Err(if self.offline { Error::NameUnknown } else { Error::Upstream(e) });
                    }
                }
            },
        }
        Ok(all.into_iter().collect())
    }

    /// Upstream's tags list, also stored for when upstream is down. Owned
    /// arguments: it runs as a single-flight task (see `taglist`).
    async fn fetch_tags(
        up: Arc<Upstream>,
        repos: Vec<RepoName>,
        store: Arc<Store>,
        key: RepoKey,
    ) -> std::result::Result<Vec<String>, upstream::Error> {
        let list = first_found(&repos, |r| {
            let up = up.clone();
            async move { up.tags(&r).await }
        })
        .await?;
        if let Err(e) = store.put_taglist(&key, &list).await {
            tracing::warn!(repo = %key, error = %e, "could not cache tags list");
        }
        Ok(list)
    }
}

/// The parts of `Proxy` that tag resolution needs inside its spawned task.
struct TagWork {
    up: Result<Arc<Upstream>>,
    repos: Vec<RepoName>,
    store: Arc<Store>,
    manifests: Arc<Cache<Digest, Arc<StoredManifest>, ManifestWeighter>>,
    key: RepoKey,
    tag: Tag,
}

impl TagWork {
    async fn resolve(&self, cached: Option<TagLink>) -> Result<(Arc<StoredManifest>, CacheStatus)> {
        let up = self.up.clone()?;
        let Some(link) = cached else {
            return self.fetch_by_tag(&up).await.map(|m| (m, CacheStatus::Miss));
        };
        // Revalidate with one HEAD (a HEAD does not count against Docker
        // Hub's pull limit); fetch the body only if the digest moved.
        let reference = Reference::Tag(self.tag.clone());
        let head = first_found(&self.repos, |r| {
            let (up, reference) = (up.clone(), reference.clone());
            async move { up.head_manifest(&r, &reference).await }
        })
        .await;
        match head {
            Ok(h) if h.digest.as_ref() == Some(&link.digest) => {
                if let Some(m) = self.local(&link.digest).await? {
                    self.record(&link.digest).await;
                    return Ok((m, CacheStatus::Hit));
                }
                self.fetch_by_tag(&up).await.map(|m| (m, CacheStatus::Miss))
            }
            Ok(_) => self.fetch_by_tag(&up).await.map(|m| (m, CacheStatus::Miss)),
            Err(e) if e.is_unavailable() => match self.local(&link.digest).await? {
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

    async fn local(&self, d: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        local_manifest(&self.manifests, &self.store, d).await
    }

    async fn fetch_by_tag(&self, up: &Arc<Upstream>) -> Result<Arc<StoredManifest>> {
        let reference = Reference::Tag(self.tag.clone());
        let body = first_found(&self.repos, |r| {
            let (up, reference) = (up.clone(), reference.clone());
            async move { up.get_manifest(&r, &reference).await }
        })
        .await
        .map_err(not_found_as(Error::ManifestUnknown))?;
        let m = Arc::new(verified_manifest(body, None)?);
        if keep_manifest(&self.store, &m).await {
            self.record(&m.digest).await;
        }
        self.manifests.insert(m.digest.clone(), m.clone());
        Ok(m)
    }

    /// Remembers where the tag points. A failure (full disk) is logged, not
    /// answered: the manifest in hand is verified and still served.
    async fn record(&self, d: &Digest) {
        let link = TagLink { digest: d.clone(), checked: now_secs() };
        if let Err(e) = self.store.put_tag(Class::Cached, &self.key, &self.tag, &link).await {
            tracing::error!(repo = %self.key, tag = %self.tag, error = %e, "cannot record the cached tag; serving it uncached");
        }
    }
}

/// A manifest from memory, else from the store (then kept in memory).
async fn local_manifest(
    manifests: &Cache<Digest, Arc<StoredManifest>, ManifestWeighter>,
    store: &Store,
    d: &Digest,
) -> Result<Option<Arc<StoredManifest>>> {
    if let Some(m) = manifests.get(d) {
        return Ok(Some(m));
    }
    let Some(m) = store.get_manifest(d).await? else {
        return Ok(None);
    };
    let m = Arc::new(m);
    manifests.insert(d.clone(), m.clone());
    Ok(Some(m))
}

/// Stores a verified manifest. A failure (full disk) is logged and the
/// manifest still served: it is verified, and losing a good answer to a
/// storage problem would turn a cache fault into an outage. Returns whether
/// it was stored.
async fn keep_manifest(store: &Store, m: &StoredManifest) -> bool {
    match store.put_manifest(m).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(digest = %m.digest, error = %e, "cannot store a verified manifest; serving it uncached");
            false
        }
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

/// Tries each repository in order while upstream says "not found".
async fn first_found<T, F, Fut>(repos: &[RepoName], mut f: F) -> std::result::Result<T, upstream::Error>
where
    F: FnMut(RepoName) -> Fut,
    Fut: Future<Output = std::result::Result<T, upstream::Error>>,
{
    let mut last = upstream::Error::NotFound;
    for r in repos {
        match f(r.clone()).await {
            Err(upstream::Error::NotFound) => last = upstream::Error::NotFound,
            other => return other,
        }
    }
    Err(last)
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
