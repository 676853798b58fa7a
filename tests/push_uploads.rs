//! Blob uploads over HTTP, as a publisher's client sees them: monolithic,
//! POST + PUT, chunked (in and out of order), streamed, mounts, cancel,
//! restarts and the sweep of abandoned uploads; every refusal with its
//! status, spec error code and headers, and the store left intact.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_error, bytes, write_htpasswd, Env, Options};
use klts_mirror::oci::{Algorithm, Digest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "publisher";
const PASSWORD: &str = "s3cret";

fn opts(dir: &Path, uploads: Option<&'static str>, server: Option<&'static str>) -> Options {
    let htpasswd = write_htpasswd(&dir.join("htpasswd"), &[(USER, PASSWORD)]);
    Options { htpasswd: Some(htpasswd), uploads, server, ..Default::default() }
}

/// A mirror with `[auth]` for the publisher (the htpasswd file lives in
/// the returned directory).
async fn mirror(uploads: Option<&'static str>) -> (Env, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::with(opts(dir.path(), uploads, None)).await;
    (env, dir)
}

fn sha256(data: &[u8]) -> String {
    Digest::of_with(Algorithm::Sha256, data).to_string()
}

fn sha512(data: &[u8]) -> String {
    Digest::of_with(Algorithm::Sha512, data).to_string()
}

/// `loc` (absolute or relative, as the mirror sent it) as a URL.
fn url(env: &Env, loc: &str) -> String {
    if loc.starts_with("http") {
        loc.to_string()
    } else {
        format!("{}{loc}", env.url)
    }
}

/// `loc` with one more query parameter, keeping the ones it has.
fn with_query(loc: &str, param: &str) -> String {
    format!("{loc}{}{param}", if loc.contains('?') { '&' } else { '?' })
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// A request with the publisher's credentials.
fn push(env: &Env, method: &str, loc: &str) -> reqwest::RequestBuilder {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    env.client.request(m, url(env, loc)).basic_auth(USER, Some(PASSWORD))
}

/// POST a new session under `name`; returns its Location.
async fn start(env: &Env, name: &str) -> String {
    let r = push(env, "POST", &format!("/v2/{name}/blobs/uploads/")).send().await.unwrap();
    assert_session(&r, 202, name, 0);
    header(&r, "location")
}

/// A chunk at `first` with its Content-Range; returns the response.
async fn patch(env: &Env, loc: &str, first: u64, chunk: &[u8]) -> reqwest::Response {
    let last = first + chunk.len() as u64 - 1;
    push(env, "PATCH", loc)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{first}-{last}"))
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap()
}

/// The closing PUT with no body.
async fn close(env: &Env, loc: &str, digest: &str) -> reqwest::Response {
    push(env, "PUT", &with_query(loc, &format!("digest={digest}"))).body(Vec::new()).send().await.unwrap()
}

/// An answer that continues a session: status, Location under `name`,
/// Docker-Upload-UUID naming the same session, Range `0-<last byte>`.
fn assert_session(r: &reqwest::Response, status: u16, name: &str, offset: u64) {
    assert_eq!(r.status().as_u16(), status, "{:?}", r.headers());
    let loc = header(r, "location");
    let prefix = format!("/v2/{name}/blobs/uploads/");
    assert!(loc.starts_with(&prefix), "Location {loc:?} is under {prefix}");
    let id = loc[prefix.len()..].split('?').next().unwrap();
    assert!(!id.is_empty() && id.len() <= 64, "{id}");
    assert_eq!(header(r, "docker-upload-uuid"), id);
    assert_eq!(header(r, "range"), format!("0-{}", offset.saturating_sub(1)));
}

/// A 201 for `digest` under `name`.
fn assert_created(r: &reqwest::Response, name: &str, digest: &str) {
    assert_eq!(r.status(), 201, "{:?}", r.headers());
    assert_eq!(header(r, "location"), format!("/v2/{name}/blobs/{digest}"));
    assert_eq!(header(r, "docker-content-digest"), digest);
}

async fn pull(env: &Env, path: &str) -> Vec<u8> {
    let r = env.get(path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.bytes().await.unwrap().to_vec()
}

/// Every blob file, checked against its own name: nothing partial or
/// unverified is ever visible under blobs/. Returns their digests.
fn stored_blobs(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    let root = env.data.join("blobs");
    for alg_dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let alg = alg_dir.file_name().to_string_lossy().to_string();
        for shard in std::fs::read_dir(alg_dir.path()).unwrap().flatten() {
            for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
                let name = format!("{alg}:{}", f.file_name().to_string_lossy());
                let data = std::fs::read(f.path()).unwrap();
                let actual = if alg == "sha512" { sha512(&data) } else { sha256(&data) };
                assert_eq!(actual, name, "a blob file holds exactly its digest's bytes");
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Upload sessions on disk.
fn sessions(env: &Env) -> usize {
    std::fs::read_dir(env.data.join("_uploads")).map(|d| d.count()).unwrap_or(0)
}

/// Files waiting in the spool (monolithic pushes in progress).
fn spool_files(env: &Env) -> usize {
    files_under(&env.data.join("_spool")).iter().filter(|p| !p.to_string_lossy().ends_with(".lock")).count()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn monolithic_post_and_post_then_put() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/kube-apiserver";
    let data = bytes(5000, 1);
    let d = sha256(&data);
    let r =
        push(&env, "POST", &format!("/v2/{name}/blobs/uploads/?digest={d}")).body(data.clone()).send().await.unwrap();
    assert_created(&r, name, &d);
    assert_eq!(pull(&env, &header(&r, "location")).await, data);

    // POST, then the whole blob in the PUT.
    let data2 = bytes(3000, 2);
    let d2 = sha256(&data2);
    let loc = start(&env, name).await;
    let r = push(&env, "PUT", &with_query(&loc, &format!("digest={d2}"))).body(data2.clone()).send().await.unwrap();
    assert_created(&r, name, &d2);
    assert_eq!(pull(&env, &header(&r, "location")).await, data2);
    let h = env.head(&format!("/v2/{name}/blobs/{d2}")).await;
    assert_eq!((h.status().as_u16(), header(&h, "content-length")), (200, "3000".into()));

    assert_eq!(stored_blobs(&env), sorted(vec![d, d2]));
    assert_eq!((sessions(&env), spool_files(&env)), (0, 0), "nothing left behind");
    assert_eq!(env.upstream.total(), 0, "a push never asks upstream");
}

#[tokio::test]
async fn chunked_upload_with_status_and_the_last_chunk_in_the_put() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/etcd";
    let data = bytes(3067, 3);
    let d = sha256(&data);
    let loc = start(&env, name).await;
    let r = push(&env, "GET", &loc).send().await.unwrap();
    assert_session(&r, 204, name, 0);
    let r = patch(&env, &loc, 0, &data[..1024]).await;
    assert_session(&r, 202, name, 1024);
    let loc = header(&r, "location");
    let r = patch(&env, &loc, 1024, &data[1024..2048]).await;
    assert_session(&r, 202, name, 2048);
    for m in ["GET", "HEAD"] {
        let r = push(&env, m, &loc).send().await.unwrap();
        assert_session(&r, 204, name, 2048);
    }
    // The status is told also with the closing PUT's query on the URL.
    let r = push(&env, "GET", &with_query(&loc, &format!("digest={d}"))).send().await.unwrap();
    assert_session(&r, 204, name, 2048);
    // The last chunk travels in the PUT, with its Content-Range.
    let r = push(&env, "PUT", &with_query(&loc, &format!("digest={d}")))
        .header("content-range", "2048-3066")
        .body(data[2048..].to_vec())
        .send()
        .await
        .unwrap();
    assert_created(&r, name, &d);
    assert_eq!(pull(&env, &format!("/v2/{name}/blobs/{d}")).await, data);
    assert_eq!(sessions(&env), 0);
    // The session is over: continuing it, or finishing it again, is unknown.
    assert_error(patch(&env, &loc, 3067, b"more").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(close(&env, &loc, &d).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(push(&env, "GET", &loc).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn out_of_order_chunks_are_416_and_the_upload_goes_on() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/kube-proxy";
    let data = bytes(3067, 4);
    let d = sha256(&data);
    let loc = start(&env, name).await;
    // A gap before anything was received.
    let r = patch(&env, &loc, 1024, &data[1024..2048]).await;
    assert_session(&r, 416, name, 0);
    assert_error(r, 416, "BLOB_UPLOAD_INVALID").await;
    let r = patch(&env, &loc, 0, &data[..1024]).await;
    assert_session(&r, 202, name, 1024);
    // A gap, sent as the closing PUT: the range is checked first.
    let r = push(&env, "PUT", &with_query(&loc, &format!("digest={d}")))
        .header("content-range", "2048-3066")
        .body(data[2048..].to_vec())
        .send()
        .await
        .unwrap();
    assert_session(&r, 416, name, 1024);
    let r = patch(&env, &loc, 1024, &data[1024..2048]).await;
    assert_session(&r, 202, name, 2048);
    // An overlap: bytes already received.
    let r = patch(&env, &loc, 0, &data[..1024]).await;
    assert_session(&r, 416, name, 2048);
    let r = patch(&env, &loc, 2047, &data[2047..]).await;
    assert_session(&r, 416, name, 2048);
    let r = push(&env, "GET", &loc).send().await.unwrap();
    assert_session(&r, 204, name, 2048);
    let r = patch(&env, &loc, 2048, &data[2048..]).await;
    assert_session(&r, 202, name, 3067);
    assert_created(&close(&env, &loc, &d).await, name, &d);
    assert_eq!(pull(&env, &format!("/v2/{name}/blobs/{d}")).await, data);
    assert_eq!(stored_blobs(&env), vec![d]);
}

#[tokio::test]
async fn streamed_patches_without_content_range_append() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/coredns";
    let data = bytes(300_000, 5);
    let d = sha256(&data);
    let loc = start(&env, name).await;
    // Chunked transfer encoding, no Content-Length, no Content-Range.
    let stream_of = |part: Vec<u8>| {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = part.chunks(7000).map(|c| Ok(c.to_vec())).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(pieces))
    };
    let r = push(&env, "PATCH", &loc).body(stream_of(data[..100_001].to_vec())).send().await.unwrap();
    assert_session(&r, 202, name, 100_001);
    let loc = header(&r, "location");
    let r = push(&env, "PATCH", &loc).body(stream_of(data[100_001..].to_vec())).send().await.unwrap();
    assert_session(&r, 202, name, 300_000);
    assert_created(&close(&env, &loc, &d).await, name, &d);
    assert_eq!(pull(&env, &format!("/v2/{name}/blobs/{d}")).await, data);
}

#[tokio::test]
async fn zero_byte_and_sha512_blobs() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/pause";
    // The empty blob, chunked with an empty body, as Go clients send it.
    for (empty, alg) in [(sha256(b""), "sha256"), (sha512(b""), "sha512")] {
        let body = reqwest::Body::wrap_stream(futures::stream::empty::<Result<Vec<u8>, std::io::Error>>());
        let r =
            push(&env, "POST", &format!("/v2/{name}/blobs/uploads/?digest={empty}")).body(body).send().await.unwrap();
        assert_created(&r, name, &empty);
        let loc = start(&env, name).await;
        assert_created(&close(&env, &loc, &empty).await, name, &empty);
        let r = env.get(&format!("/v2/{name}/blobs/{empty}")).await;
        assert_eq!((r.status().as_u16(), header(&r, "content-length")), (200, "0".into()), "{alg}");
    }
    // sha512, chunked: the algorithm is named only by the closing PUT.
    let data = bytes(200_000, 6);
    let d = sha512(&data);
    let loc = start(&env, name).await;
    let r = patch(&env, &loc, 0, &data[..70_000]).await;
    let r = patch(&env, &header(&r, "location"), 70_000, &data[70_000..]).await;
    assert_session(&r, 202, name, 200_000);
    assert_created(&close(&env, &header(&r, "location"), &d).await, name, &d);
    let r = env.get(&format!("/v2/{name}/blobs/{d}")).await;
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(r.bytes().await.unwrap(), data);
    // And monolithic.
    let data = bytes(1000, 7);
    let d2 = sha512(&data);
    let r =
        push(&env, "POST", &format!("/v2/{name}/blobs/uploads/?digest={d2}")).body(data.clone()).send().await.unwrap();
    assert_created(&r, name, &d2);
    assert_eq!(stored_blobs(&env), sorted(vec![sha256(b""), sha512(b""), d, d2]));
}

/// 20 MiB in uneven chunks, pulled back under other name shapes: blobs are
/// content-addressed, shared by every repository.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_mib_in_uneven_chunks_pulled_back_under_other_names() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/big-layer";
    let data = bytes(20 * 1024 * 1024, 8);
    let d = sha256(&data);
    let mut loc = start(&env, name).await;
    let sizes = [1usize, 4095, 1_048_579, 7_340_033, 333, 5_000_000];
    let mut at = 0usize;
    for (i, n) in sizes.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
        let end = at.saturating_add(*n).min(data.len());
        let r = patch(&env, &loc, at as u64, &data[at..end]).await;
        assert_session(&r, 202, name, end as u64);
        loc = header(&r, "location");
        at = end;
        if at == data.len() {
            assert_eq!(i, sizes.len(), "the last chunk carries the rest");
            break;
        }
    }
    assert_created(&close(&env, &loc, &d).await, name, &d);
    for path in [
        format!("/v2/{name}/blobs/{d}"),
        format!("/v2/registry.k8s.io/{name}/blobs/{d}"),
        format!("/v2/k8s.gcr.io/other/repo/blobs/{d}"),
        format!("/v2/library/busybox/blobs/{d}?ns=docker.io"),
    ] {
        assert!(pull(&env, &path).await == data, "byte-identical under {path}");
    }
    assert_eq!(env.upstream.total(), 0, "served from the store, never fetched");
}

#[tokio::test]
async fn a_session_belongs_to_its_repository() {
    let (env, _dir) = mirror(None).await;
    let data = bytes(2000, 9);
    let d = sha256(&data);
    // Started under a host prefix; the same repository by its bare name
    // (the default upstream) continues it: routed exactly like a pull.
    let loc = start(&env, "registry.k8s.io/klts/scheduler").await;
    let id = loc.rsplit('/').next().unwrap().to_string();
    let r = patch(&env, &format!("/v2/klts/scheduler/blobs/uploads/{id}"), 0, &data[..1000]).await;
    assert_session(&r, 202, "klts/scheduler", 1000);
    // Any other repository does not know it.
    for other in [
        format!("/v2/klts/controller-manager/blobs/uploads/{id}"),
        format!("/v2/klts/scheduler/blobs/uploads/{id}?ns=docker.io"),
        format!("/v2/docker.io/klts/scheduler/blobs/uploads/{id}"),
    ] {
        assert_error(patch(&env, &other, 1000, &data[1000..]).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        assert_error(close(&env, &other, &d).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        assert_error(push(&env, "GET", &other).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
        assert_error(push(&env, "DELETE", &other).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // With ns, the Location keeps it, so following it stays in the repository.
    let r = push(&env, "POST", "/v2/klts/scheduler/blobs/uploads/?ns=k8s.gcr.io").send().await.unwrap();
    let ns_loc = header(&r, "location");
    assert!(ns_loc.ends_with("?ns=k8s.gcr.io"), "{ns_loc}");
    assert_session(&patch(&env, &ns_loc, 0, b"x").await, 202, "klts/scheduler", 1);

    // Untouched by all that, the first session finishes.
    let r = patch(&env, &loc, 1000, &data[1000..]).await;
    assert_session(&r, 202, "registry.k8s.io/klts/scheduler", 2000);
    assert_created(&close(&env, &loc, &d).await, "registry.k8s.io/klts/scheduler", &d);
    assert_eq!(stored_blobs(&env), vec![d]);
}

#[tokio::test]
async fn cancel_forgets_the_session_and_its_bytes() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/kube-apiserver";
    let loc = start(&env, name).await;
    patch(&env, &loc, 0, &bytes(5000, 10)).await;
    assert_eq!(sessions(&env), 1);
    let r = push(&env, "DELETE", &loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(sessions(&env), 0, "bytes gone");
    assert_error(push(&env, "GET", &loc).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(patch(&env, &loc, 5000, b"x").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(close(&env, &loc, &sha256(b"")).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(push(&env, "DELETE", &loc).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(stored_blobs(&env).is_empty());
}

#[tokio::test]
async fn mounts_copy_nothing_and_fall_back_to_a_session() {
    let (env, _dir) = mirror(None).await;
    let data = bytes(4000, 11);
    let d = sha256(&data);
    let r =
        push(&env, "POST", &format!("/v2/klts/a/blobs/uploads/?digest={d}")).body(data.clone()).send().await.unwrap();
    assert_created(&r, "klts/a", &d);
    // Stored: 201 in any repository, with or without `from`.
    for q in [format!("mount={d}&from=klts/a"), format!("mount={d}"), format!("from=nowhere&mount={d}")] {
        let r = push(&env, "POST", &format!("/v2/klts/b/blobs/uploads/?{q}")).send().await.unwrap();
        assert_created(&r, "klts/b", &d);
        assert_eq!(pull(&env, &header(&r, "location")).await, data);
    }
    assert_eq!(sessions(&env), 0, "a mount starts no session");
    // Not stored (or not a digest at all): an ordinary session.
    let missing = bytes(1000, 12);
    let md = sha256(&missing);
    for q in [format!("mount={md}&from=klts/a"), "mount=sha256:nope&from=klts/a".to_string()] {
        let r = push(&env, "POST", &format!("/v2/klts/b/blobs/uploads/?{q}")).send().await.unwrap();
        assert_session(&r, 202, "klts/b", 0);
    }
    let r = push(&env, "POST", &format!("/v2/klts/b/blobs/uploads/?mount={md}&from=klts/a")).send().await.unwrap();
    let put = push(&env, "PUT", &with_query(&header(&r, "location"), &format!("digest={md}")));
    assert_created(&put.body(missing.clone()).send().await.unwrap(), "klts/b", &md);
    assert_eq!(stored_blobs(&env), sorted(vec![d, md]));
}

#[tokio::test]
async fn wrong_digests_store_nothing_and_end_the_session() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/kube-apiserver";
    let good = bytes(3067, 13);
    let mut evil = good.clone();
    evil.extend_from_slice(b"oh no");
    let d = sha256(&good);
    // Monolithic.
    let r =
        push(&env, "POST", &format!("/v2/{name}/blobs/uploads/?digest={d}")).body(evil.clone()).send().await.unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    // POST + PUT.
    let loc = start(&env, name).await;
    let r = push(&env, "PUT", &with_query(&loc, &format!("digest={d}"))).body(evil.clone()).send().await.unwrap();
    assert_error(r, 400, "DIGEST_INVALID").await;
    assert_error(push(&env, "GET", &loc).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    // Chunked, and a sha512 that does not match.
    for digest in [d.clone(), sha512(&good)] {
        let loc = start(&env, name).await;
        let r = patch(&env, &loc, 0, &evil[..2000]).await;
        let r = patch(&env, &header(&r, "location"), 2000, &evil[2000..]).await;
        assert_session(&r, 202, name, evil.len() as u64);
        assert_error(close(&env, &loc, &digest).await, 400, "DIGEST_INVALID").await;
        // The session is gone with its bytes.
        assert_error(patch(&env, &loc, evil.len() as u64, b"x").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    assert!(stored_blobs(&env).is_empty(), "nothing stored");
    assert_eq!((sessions(&env), spool_files(&env)), (0, 0));
    // The right bytes under the same digest still go in afterwards.
    let r =
        push(&env, "POST", &format!("/v2/{name}/blobs/uploads/?digest={d}")).body(good.clone()).send().await.unwrap();
    assert_created(&r, name, &d);
    assert_eq!(stored_blobs(&env), vec![d]);
}

#[tokio::test]
async fn malformed_requests_are_refused_and_the_session_goes_on() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/kube-apiserver";
    let data = bytes(100, 14);
    let d = sha256(&data);
    let loc = start(&env, name).await;
    // The closing PUT needs a digest, a valid one.
    let r = push(&env, "PUT", &loc).body(data.clone()).send().await.unwrap();
    assert_session_headers(&r, name);
    assert_error(r, 400, "DIGEST_INVALID").await;
    for bad in ["sha256:xyz", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256", "SHA256:00"] {
        let r = push(&env, "PUT", &with_query(&loc, &format!("digest={bad}"))).body(data.clone()).send().await.unwrap();
        assert_error(r, 400, "DIGEST_INVALID").await;
        let r = push(&env, "POST", &format!("/v2/{name}/blobs/uploads/?digest={bad}")).body(data.clone()).send().await;
        assert_error(r.unwrap(), 400, "DIGEST_INVALID").await;
    }
    // A Content-Range that disagrees with Content-Length, or is not one.
    let r = push(&env, "PATCH", &loc).header("content-range", "0-9").body(data[..5].to_vec()).send().await.unwrap();
    assert_session_headers(&r, name);
    assert_error(r, 400, "SIZE_INVALID").await;
    for bad in ["0-", "9-0", "abc", "-5"] {
        let r = push(&env, "PATCH", &loc).header("content-range", bad).body(data.clone()).send().await.unwrap();
        assert_error(r, 400, "BLOB_UPLOAD_INVALID").await;
    }
    // A chunked body longer than its Content-Range.
    let body = reqwest::Body::wrap_stream(futures::stream::iter(vec![Ok::<_, std::io::Error>(data.clone())]));
    let r = push(&env, "PATCH", &loc).header("content-range", "0-49").body(body).send().await.unwrap();
    assert_error(r, 400, "SIZE_INVALID").await;
    // Nothing of that was kept.
    assert_session(&push(&env, "GET", &loc).send().await.unwrap(), 204, name, 0);
    // Unknown and malformed ids, and methods the resource does not have.
    let unknown = format!("/v2/{name}/blobs/uploads/{}", "A".repeat(32));
    assert_error(patch(&env, &unknown, 0, &data).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(close(&env, &unknown, &d).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    for bad in ["not.an.id", &"x".repeat(65), "...", "a%2Fb", "%41"] {
        let path = format!("/v2/{name}/blobs/uploads/{bad}");
        assert_error(patch(&env, &path, 0, &data).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        assert_error(push(&env, "GET", &path).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    let r = push(&env, "PATCH", &format!("/v2/{name}/blobs/uploads/")).body(data.clone()).send().await.unwrap();
    assert_error(r, 405, "UNSUPPORTED").await;
    let r = push(&env, "POST", &loc).send().await.unwrap();
    assert_error(r, 405, "UNSUPPORTED").await;
    // The session still works.
    assert_session(&patch(&env, &loc, 0, &data).await, 202, name, 100);
    assert_created(&close(&env, &loc, &d).await, name, &d);
    assert_eq!(stored_blobs(&env), vec![d]);
}

fn assert_session_headers(r: &reqwest::Response, name: &str) {
    assert!(header(r, "location").starts_with(&format!("/v2/{name}/blobs/uploads/")), "{:?}", r.headers());
    assert!(!header(r, "docker-upload-uuid").is_empty());
}

#[tokio::test]
async fn unknown_namespaces_and_missing_credentials_are_refused() {
    let (env, _dir) = mirror(None).await;
    let data = bytes(100, 15);
    let d = sha256(&data);
    for path in [
        format!("/v2/pause/blobs/uploads/?ns=quay.io&digest={d}"),
        format!("/v2/quay.io/pause/blobs/uploads/?digest={d}"),
        "/v2/pause/blobs/uploads/?ns=quay.io".to_string(),
    ] {
        let r = push(&env, "POST", &path).body(data.clone()).send().await.unwrap();
        assert_error(r, 404, "NAME_UNKNOWN").await;
    }
    let loc = start(&env, "pause").await;
    for (what, creds) in [("none", None), ("wrong password", Some((USER, "wrong"))), ("unknown user", Some(("x", "y")))]
    {
        let with = |m: &str, path: &str| {
            let r = env.client.request(reqwest::Method::from_bytes(m.as_bytes()).unwrap(), url(&env, path));
            match creds {
                Some((u, p)) => r.basic_auth(u, Some(p)),
                None => r,
            }
        };
        let posted = with("POST", &format!("/v2/pause/blobs/uploads/?digest={d}")).body(data.clone());
        let tries = [
            posted.send().await.unwrap(),
            with("POST", "/v2/pause/blobs/uploads/").send().await.unwrap(),
            with("PATCH", &loc).header("content-range", "0-99").body(data.clone()).send().await.unwrap(),
            with("PUT", &with_query(&loc, &format!("digest={d}"))).body(data.clone()).send().await.unwrap(),
            // Anonymous pulls do not extend to reading an upload's status.
            with("GET", &loc).send().await.unwrap(),
            with("DELETE", &loc).send().await.unwrap(),
        ];
        for r in tries {
            // The challenge that sends clients for a token that can push here.
            let challenge = header(&r, "www-authenticate");
            let realm = format!("Bearer realm=\"{}/auth/token\",service=\"klts-mirror\"", env.url);
            assert!(challenge.starts_with(&realm), "{what}: {challenge}");
            assert!(challenge.contains(",scope=\"repository:pause:"), "{what}: {challenge}");
            assert_error(r, 401, "UNAUTHORIZED").await;
        }
    }
    assert!(stored_blobs(&env).is_empty(), "nothing stored");
    assert_session(&push(&env, "GET", &loc).send().await.unwrap(), 204, "pause", 0);
}

/// Sends a request with `content_length` announced but only `sent` bytes
/// of body, then half-closes (or, with `hold`, keeps the connection open
/// silent for that long first). Returns the status answered, if any.
async fn truncated(
    env: &Env,
    method: &str,
    path: &str,
    content_length: usize,
    sent: &[u8],
    hold: Option<Duration>,
) -> u16 {
    use base64::Engine;
    let addr = env.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {content_length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    if let Some(h) = hold {
        tokio::time::sleep(h).await;
    }
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn truncated_bodies_keep_nothing() {
    let (env, _dir) = mirror(None).await;
    let name = "klts/kube-apiserver";
    let data = bytes(200_000, 16);
    let d = sha256(&data);
    let loc = start(&env, name).await;
    assert_session(&patch(&env, &loc, 0, &data[..50_000]).await, 202, name, 50_000);

    // A PATCH whose body ends before its Content-Length: the chunk is
    // dropped whole; the session stays where it was.
    let status = truncated(&env, "PATCH", &loc, 100_000, &data[50_000..120_000], None).await;
    assert!(status == 0 || status == 400, "{status}");
    assert_session(&push(&env, "GET", &loc).send().await.unwrap(), 204, name, 50_000);
    let file = env.data.join("_uploads").join(loc.rsplit('/').next().unwrap()).join("data");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 50_000, "the partial chunk is cut off");
    // The same for a closing PUT with the last bytes.
    let put = with_query(&loc, &format!("digest={d}"));
    let status = truncated(&env, "PUT", &put, 150_000, &data[50_000..60_000], None).await;
    assert!(status == 0 || status == 400, "{status}");
    assert_session(&push(&env, "GET", &loc).send().await.unwrap(), 204, name, 50_000);
    // A monolithic POST cut off leaves no blob and no spool file.
    let path = format!("/v2/{name}/blobs/uploads/?digest={d}");
    let status = truncated(&env, "POST", &path, data.len(), &data[..150_000], None).await;
    assert!(status == 0 || status == 400, "{status}");
    assert!(stored_blobs(&env).is_empty());
    assert_eq!(spool_files(&env), 0);

    // The client resends the chunk and finishes: the blob is right, which
    // it would not be had any of the cut-off bytes been kept.
    assert_session(&patch(&env, &loc, 50_000, &data[50_000..]).await, 202, name, 200_000);
    assert_created(&close(&env, &loc, &d).await, name, &d);
    assert_eq!(pull(&env, &format!("/v2/{name}/blobs/{d}")).await, data);
    assert_eq!(stored_blobs(&env), vec![d]);
}

#[tokio::test]
async fn a_stalled_body_fails_its_chunk_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::with(opts(dir.path(), None, Some("idle_timeout = \"1s\""))).await;
    let name = "klts/kube-apiserver";
    let data = bytes(10_000, 17);
    let loc = start(&env, name).await;
    // Half the body, then silence: the chunk is dropped and the session
    // is free again (a stalled client does not hold it).
    let status = truncated(&env, "PATCH", &loc, 10_000, &data[..5000], Some(Duration::from_secs(3))).await;
    assert!(status == 0 || status == 400, "{status}");
    assert_session(&push(&env, "GET", &loc).send().await.unwrap(), 204, name, 0);
    assert_session(&patch(&env, &loc, 0, &data).await, 202, name, 10_000);
    assert_created(&close(&env, &loc, &sha256(&data)).await, name, &sha256(&data));
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::with(opts(dir.path(), None, None)).await;
    let name = "klts/kube-controller-manager";
    let data = bytes(2_000_000, 18);
    let (a, b) = (start(&env, name).await, start(&env, name).await);
    for loc in [&a, &b] {
        assert_session(&patch(&env, loc, 0, &data[..700_000]).await, 202, name, 700_000);
    }
    let env = env.restart(opts(dir.path(), None, None)).await;
    // Where they stood, continued, finished (one as sha256, one as sha512:
    // either way the file is hashed again, the running hash being lost).
    for (loc, digest) in [(&a, sha256(&data)), (&b, sha512(&data))] {
        assert_session(&push(&env, "GET", loc).send().await.unwrap(), 204, name, 700_000);
        assert_session(&patch(&env, loc, 700_000, &data[700_000..1_500_000]).await, 202, name, 1_500_000);
        assert_session(&patch(&env, loc, 700_000, &data[700_000..800_000]).await, 416, name, 1_500_000);
        assert_session(&patch(&env, loc, 1_500_000, &data[1_500_000..]).await, 202, name, 2_000_000);
        assert_created(&close(&env, loc, &digest).await, name, &digest);
        assert_eq!(pull(&env, &format!("/v2/{name}/blobs/{digest}")).await, data);
    }
    // A wrong digest after a restart is refused all the same.
    let c = start(&env, name).await;
    patch(&env, &c, 0, &data[..1000]).await;
    let env = env.restart(opts(dir.path(), None, None)).await;
    assert_error(close(&env, &c, &sha256(&data)).await, 400, "DIGEST_INVALID").await;
    assert_eq!(sessions(&env), 0);
    assert_eq!(stored_blobs(&env), sorted(vec![sha256(&data), sha512(&data)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_uploads_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    // One left over from a previous run with a longer max_age.
    let env = Env::with(opts(dir.path(), None, None)).await;
    let name = "klts/kube-scheduler";
    let old = start(&env, name).await;
    patch(&env, &old, 0, b"stale bytes").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let short = Some("max_age = \"1s\"");
    let env = env.restart(opts(dir.path(), short, None)).await;
    assert_eq!(sessions(&env), 0, "swept at start-up");
    assert_error(push(&env, "GET", &old).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;

    // While running: an idle session goes; one in use stays.
    let idle = start(&env, name).await;
    let busy = start(&env, name).await;
    let data = bytes(1000, 19);
    for i in 0..10u64 {
        assert_session(
            &patch(&env, &busy, i * 100, &data[(i * 100) as usize..][..100]).await,
            202,
            name,
            (i + 1) * 100,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_error(push(&env, "GET", &idle).send().await.unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(patch(&env, &idle, 0, b"late").await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_created(&close(&env, &busy, &sha256(&data)).await, name, &sha256(&data));
    assert_eq!(sessions(&env), 0, "nothing of the idle one is left on disk");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_uploads_of_the_same_blob() {
    let (env, _dir) = mirror(None).await;
    let env = Arc::new(env);
    let data = Arc::new(bytes(1_500_000, 20));
    let d = sha256(&data);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (env, data, d) = (env.clone(), data.clone(), d.clone());
            tokio::spawn(async move {
                let name = format!("klts/repo{}", i % 3);
                if i % 4 == 3 {
                    let path = format!("/v2/{name}/blobs/uploads/?digest={d}");
                    let r = push(&env, "POST", &path).body(data.to_vec()).send().await.unwrap();
                    assert_created(&r, &name, &d);
                    return;
                }
                let loc = start(&env, &name).await;
                let r = patch(&env, &loc, 0, &data[..600_000 + i * 1000]).await;
                assert_session(&r, 202, &name, 600_000 + i as u64 * 1000);
                let r =
                    patch(&env, &header(&r, "location"), 600_000 + i as u64 * 1000, &data[600_000 + i * 1000..]).await;
                assert_created(&close(&env, &header(&r, "location"), &d).await, &name, &d);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stored_blobs(&env), vec![d.clone()]);
    assert_eq!((sessions(&env), spool_files(&env)), (0, 0));
    assert_eq!(pull(&env, &format!("/v2/klts/anywhere/blobs/{d}")).await, *data);
}
