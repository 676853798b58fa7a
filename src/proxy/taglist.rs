//! Upstream tags lists, fetched once per repository however many clients
//! ask, and kept in memory for `cache.tag_ttl`.
//!
//! A tags list can be large (up to `upstream::MAX_TAGS_BYTES` of JSON) and
//! paginated, so each fetch is expensive for both sides; clients such as
//! `crane ls` or Renovate ask for the same list in bursts. Only successful
//! lists are kept: a failure is answered from the stored copy by
//! `Proxy::tags`, and the next request asks upstream again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use tokio::time::Instant;

use crate::flight::Group;
use crate::oci::RepoKey;
use crate::upstream;

/// Bytes of tags lists kept in memory, all repositories together. A list
/// heavier than this is served but not kept.
const MEMORY_BYTES: u64 = 64 * 1024 * 1024;

pub type TagList = Arc<Vec<String>>;

#[derive(Clone)]
struct ListWeighter;

impl Weighter<RepoKey, (TagList, Instant)> for ListWeighter {
    fn weight(&self, _: &RepoKey, (list, _): &(TagList, Instant)) -> u64 {
        // Each tag costs its bytes plus a `String` header.
        list.iter().map(|t| (t.len() + std::mem::size_of::<String>()) as u64).sum::<u64>() + 64
    }
}

type ListCache =
    Cache<RepoKey, (TagList, Instant), ListWeighter, DefaultHashBuilder, DefaultLifecycle<RepoKey, (TagList, Instant)>>;

pub struct TagLists {
    /// Lists by repository with the instant they were fetched.
    lists: Arc<ListCache>,
    flights: Arc<Group<RepoKey, TagList, upstream::Error>>,
}

impl Default for TagLists {
    fn default() -> Self {
        TagLists::new()
    }
}

impl TagLists {
    pub fn new() -> TagLists {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(1024)
            .weight_capacity(MEMORY_BYTES)
            // One shard: a shard refuses items heavier than its share of the
            // capacity, and a big list must fit. Tags lists are rare enough
            // that one lock costs nothing.
            .shards(1)
            .build()
            .expect("static cache options");
        let lists =
            Cache::with_options(options, ListWeighter, DefaultHashBuilder::default(), DefaultLifecycle::default());
        TagLists { lists: Arc::new(lists), flights: Arc::default() }
    }

    /// The list for `key`: from memory when fetched less than `ttl` ago (the
    /// policy of the asking request: a reload may change it),
    /// else from `fetch`, run once for all concurrent callers. `fetch` runs
    /// as its own task, so a client going away does not cancel it for the
    /// others.
    pub async fn get<F, Fut>(&self, key: &RepoKey, ttl: Duration, fetch: F) -> Result<TagList, upstream::Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<String>, upstream::Error>> + Send + 'static,
    {
        if let Some((list, fetched)) = self.lists.get(key) {
            if fetched.elapsed() < ttl {
                return Ok(list);
            }
        }
        let (lists, k) = (self.lists.clone(), key.clone());
        self.flights
            .run(key.clone(), move || {
                let fetched = fetch();
                async move {
                    let list = Arc::new(fetched.await?);
                    lists.insert(k, (list.clone(), Instant::now()));
                    Ok(list)
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(repo: &str) -> RepoKey {
        RepoKey::new("registry.k8s.io".into(), repo.parse().unwrap())
    }

    /// A fetch that counts its calls and answers `out` after a second.
    fn counted(
        calls: &Arc<AtomicUsize>,
        out: Result<Vec<String>, upstream::Error>,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<Vec<String>, upstream::Error>> {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                out
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_fetch_and_the_ttl_holds_it() {
        let lists = Arc::new(TagLists::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let tags = vec!["a".to_string(), "b".to_string()];
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let (lists, f) = (lists.clone(), counted(&calls, Ok(tags.clone())));
            waiters.push(tokio::spawn(async move { lists.get(&key("pause"), TTL, f).await }));
        }
        for w in waiters {
            assert_eq!(*w.await.unwrap().unwrap(), tags);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(290)).await;
        assert_eq!(*lists.get(&key("pause"), TTL, counted(&calls, Ok(vec![]))).await.unwrap(), tags);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "within the TTL: no fetch");
        assert!(lists.get(&key("etcd"), TTL, counted(&calls, Ok(vec![]))).await.unwrap().is_empty(), "per repository");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(lists.get(&key("pause"), TTL, counted(&calls, Ok(vec![]))).await.unwrap().is_empty(), "refetched");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_shared_but_not_kept() {
        let lists = Arc::new(TagLists::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let pause = key("pause");
        let (a, b) = tokio::join!(
            lists.get(&pause, TTL, counted(&calls, Err(upstream::Error::Status(503)))),
            lists.get(&pause, TTL, counted(&calls, Err(upstream::Error::Status(503)))),
        );
        assert_eq!((a, b), (Err(upstream::Error::Status(503)), Err(upstream::Error::Status(503))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(lists.get(&key("pause"), TTL, counted(&calls, Ok(vec!["x".into()]))).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a failure is asked again at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_ttl_keeps_nothing() {
        let lists = TagLists::new();
        let ttl = Duration::ZERO;
        let calls = Arc::new(AtomicUsize::new(0));
        lists.get(&key("pause"), ttl, counted(&calls, Ok(vec![]))).await.unwrap();
        lists.get(&key("pause"), ttl, counted(&calls, Ok(vec![]))).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_maximal_list_of_ordinary_tags_is_kept() {
        // The most upstream sends: 16 MiB of JSON, here as 10-byte tags
        // (`"v1.30.0-0",` is 13 bytes of JSON each).
        let list: TagList = Arc::new(vec!["v1.30.0-00".to_string(); upstream::MAX_TAGS_BYTES / 13]);
        let w = ListWeighter.weight(&key("x"), &(list, Instant::now()));
        assert!(w < MEMORY_BYTES * 97 / 100, "weight {w} must fit in the cache's one shard");
    }
}
