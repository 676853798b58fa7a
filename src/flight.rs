//! Keyed single-flight for small results (manifests, tag revalidations,
//! upstream tokens, tags lists).
//!
//! The first caller for a key spawns the work as its own task; callers that
//! arrive while it runs await the same shared result. Because the work is a
//! spawned task, a client that disconnects cannot cancel it for the others,
//! and every waiter (not just the first) sees the result, errors included.
//! The task removes its own entry when it finishes, so a later call for the
//! key starts afresh (a failure is not remembered).
//!
//! Blobs do not use this: their bodies stream through `proxy::fill`.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

type Entry<T, E> = (u64, Shared<BoxFuture<'static, Result<T, E>>>);

pub struct Group<K, T, E> {
    inflight: Mutex<HashMap<K, Entry<T, E>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl<K, T, E> Default for Group<K, T, E> {
    fn default() -> Self {
        Group { inflight: Mutex::new(HashMap::new()), next_id: Default::default() }
    }
}

impl<K, T, E> Group<K, T, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<tokio::task::JoinError> + 'static,
{
    /// Runs `work` for `key` unless a run is already in flight, and returns
    /// that run's result either way. `work` is only called by the leader.
    pub async fn run<F, Fut>(self: &Arc<Self>, key: K, work: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let shared = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, f)) = map.get(&key) {
                f.clone()
            } else {
                let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let this = Arc::clone(self);
                let k = key.clone();
                let fut = work();
                // The lock is held until the entry is inserted, so the task's
                // own removal below cannot run before the insertion.
                let task = tokio::spawn(async move {
                    // Removes the entry however the work ends, panics included.
                    let _leave = Leave { group: this, key: Some(k), id };
                    fut.await
                });
                let shared = async move { task.await.map_err(E::from)? }.boxed().shared();
                map.insert(key, (id, shared.clone()));
                shared
            }
        };
        shared.await
    }

    /// Number of runs in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Leave<K: Hash + Eq, T, E> {
    group: Arc<Group<K, T, E>>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, T, E> Drop for Leave<K, T, E> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut map = self.group.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&key).is_some_and(|(eid, _)| *eid == self.id) {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq)]
    struct E(String);
    impl From<tokio::task::JoinError> for E {
        fn from(e: tokio::task::JoinError) -> Self {
            E(e.to_string())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let g: Arc<Group<&str, u32, E>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (g, calls) = (g.clone(), calls.clone());
            handles.push(tokio::spawn(async move {
                g.run("k", || {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok(7)
                    }
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(g.is_empty(), "finished runs leave the map");
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiter_sees_the_error_and_it_is_not_remembered() {
        let g: Arc<Group<u8, u32, E>> = Arc::default();
        let slow_fail = || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(E("boom".into()))
        };
        let (a, b) = tokio::join!(g.run(1, slow_fail), g.run(1, slow_fail));
        assert_eq!(a, Err(E("boom".into())));
        assert_eq!(b, Err(E("boom".into())));
        assert_eq!(g.run(1, || async { Ok(3) }).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_survives_its_caller_going_away() {
        let g: Arc<Group<u8, u32, E>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let caller = tokio::spawn({
            let g = g.clone();
            async move {
                g.run(1, || async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(1)
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1, "work completed although its caller was cancelled");
        assert!(g.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_run_is_an_error_for_all() {
        let g: Arc<Group<u8, u32, E>> = Arc::default();
        let r = g.run(1, || async { panic!("bug") }).await;
        assert!(r.is_err());
        assert!(g.is_empty());
    }
}
