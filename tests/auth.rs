//! Who may write and who may pull: `[auth]` over HTTP, as registry clients
//! see it (Basic credentials, 401 with a challenge).

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::{assert_error, bytes, write_htpasswd, Env, Options};

const CHALLENGE: &str = "Basic realm=\"klts-mirror\"";

/// Every write the distribution API has, one per method.
const WRITES: [(&str, &str); 5] = [
    ("POST", "/v2/pause/blobs/uploads/"),
    ("PATCH", "/v2/pause/blobs/uploads/0c7e6a4e-2b7d-4d0f-9d3c-7ac9c1d5a001"),
    ("PUT", "/v2/pause/blobs/uploads/0c7e6a4e-2b7d-4d0f-9d3c-7ac9c1d5a001?digest=sha256:00"),
    ("PUT", "/v2/pause/manifests/3.9"),
    ("DELETE", "/v2/pause/manifests/3.9"),
];

fn method(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).unwrap()
}

/// A mirror with `[auth]` for alice (password "s3cret"); the htpasswd file
/// lives in `dir`.
async fn with_alice(dir: &tempfile::TempDir, anonymous_pull: Option<bool>) -> Env {
    let htpasswd = write_htpasswd(&dir.path().join("htpasswd"), &[("alice", "s3cret"), ("bob", "hunter2")]);
    Env::with(Options { htpasswd: Some(htpasswd), anonymous_pull, ..Default::default() }).await
}

async fn send(env: &Env, m: &str, path: &str, creds: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = env.client.request(method(m), format!("{}{path}", env.url));
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    req.send().await.unwrap()
}

/// A spec 401 with the Basic challenge clients answer with credentials.
async fn assert_challenged(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(challenge.as_deref(), Some(CHALLENGE), "{what}");
    assert!(resp.headers().contains_key("x-request-id"), "{what}");
    assert_error(resp, 401, "UNAUTHORIZED").await;
}

#[tokio::test]
async fn without_auth_every_write_is_refused_and_pulls_are_anonymous() {
    logs();
    let env = Env::start().await;
    env.upstream.add_image("pause", "3.9", bytes(100, 1));
    for (m, path) in WRITES {
        assert_challenged(send(&env, m, path, None).await, &format!("{m} {path}")).await;
        // No users exist, so no credentials can open a write.
        assert_challenged(send(&env, m, path, Some(("alice", "s3cret"))).await, &format!("{m} {path} +creds")).await;
    }
    assert_challenged(send(&env, "PUT", "/not/the/api", None).await, "writes outside /v2/").await;
    assert_eq!(env.get("/v2/").await.status(), 200);
    assert_eq!(env.get("/v2/pause/manifests/3.9").await.status(), 200);
    assert_eq!(env.head("/v2/pause/manifests/3.9").await.status(), 200);
    assert_eq!(env.mirror.authenticator().bcrypt_verifications(), 0);
}

#[tokio::test]
async fn with_auth_writes_need_a_valid_user_and_pulls_stay_anonymous() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, None).await;
    env.upstream.add_image("pause", "3.9", bytes(100, 2));
    for (m, path) in WRITES {
        let what = format!("{m} {path}");
        assert_challenged(send(&env, m, path, None).await, &what).await;
        assert_challenged(send(&env, m, path, Some(("alice", "wrong"))).await, &format!("{what} wrong password")).await;
        assert_challenged(send(&env, m, path, Some(("mallory", "s3cret"))).await, &format!("{what} unknown user"))
            .await;
        assert_challenged(send(&env, m, path, Some(("alice", ""))).await, &format!("{what} empty password")).await;
        // A valid user reaches the handler: a new upload session, an
        // unknown one, a bad digest, or a method not offered (yet).
        let r = send(&env, m, path, Some(("alice", "s3cret"))).await;
        assert_ne!(r.status(), 401, "{what}");
        assert!(r.headers().get("www-authenticate").is_none(), "{what}");
        match (m, path.contains("/blobs/uploads/")) {
            ("POST", true) => assert_eq!(r.status(), 202, "{what}"),
            ("PATCH", true) => assert_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await,
            ("PUT", true) => assert_error(r, 400, "DIGEST_INVALID").await,
            ("PUT", false) => assert_error(r, 400, "MANIFEST_INVALID").await,
            _ => assert_error(r, 404, "MANIFEST_UNKNOWN").await,
        }
    }
    let r = send(&env, "DELETE", "/v2/pause/manifests/3.9", Some(("bob", "hunter2"))).await;
    // Every user in the file gets through (nothing was published to delete).
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;
    // Malformed or foreign schemes are no credentials.
    for value in ["Basic %%%", "Basic ", "Basic YWxpY2U=", "Bearer s3cret", "s3cret"] {
        let r = env
            .client
            .put(format!("{}/v2/pause/manifests/3.9", env.url))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_challenged(r, value).await;
    }
    // Anonymous pulls by default.
    assert_eq!(env.get("/v2/").await.status(), 200);
    let r = env.get("/v2/pause/manifests/3.9").await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.head("/v2/pause/manifests/3.9").await.status(), 200);
    // Credentials sent with a pull are checked all the same.
    assert_challenged(send(&env, "GET", "/v2/", Some(("alice", "wrong"))).await, "wrong password on a pull").await;
    assert_eq!(send(&env, "GET", "/v2/", Some(("alice", "s3cret"))).await.status(), 200);
}

#[tokio::test]
async fn without_anonymous_pull_pulls_need_a_valid_user() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, Some(false)).await;
    let (md, layer) = env.upstream.add_image("pause", "3.9", bytes(1000, 3));
    let pulls = ["/v2/".to_string(), "/v2/pause/manifests/3.9".into(), format!("/v2/pause/blobs/{layer}")];
    for path in &pulls {
        assert_challenged(send(&env, "GET", path, None).await, path).await;
        assert_eq!(send(&env, "HEAD", path, None).await.status(), 401, "HEAD {path}");
        assert_challenged(send(&env, "GET", path, Some(("alice", "nope"))).await, path).await;
    }
    assert_eq!(env.upstream.total(), 0, "nothing is fetched for a refused pull");
    for path in &pulls {
        let r = send(&env, "GET", path, Some(("alice", "s3cret"))).await;
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = send(&env, "HEAD", "/v2/pause/manifests/3.9", Some(("bob", "hunter2"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
}

/// A push is dozens of requests with the same credentials: bcrypt runs
/// once, not once per request.
#[tokio::test]
async fn fifty_authenticated_requests_cost_one_bcrypt_round() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, Some(false)).await;
    let auth = env.mirror.authenticator().clone();
    for i in 0..50 {
        let (m, path) = if i % 5 == 4 { ("GET", "/v2/") } else { WRITES[i % 5] };
        let r = send(&env, m, path, Some(("alice", "s3cret"))).await;
        assert_ne!(r.status(), 401, "{m} {path}");
    }
    assert_eq!(auth.bcrypt_verifications(), 1);

    // At once, another user's first requests still share one round.
    let env = Arc::new(env);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move { send(&env, "POST", WRITES[0].1, Some(("bob", "hunter2"))).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 202, "each starts an upload");
    }
    assert_eq!(auth.bcrypt_verifications(), 2);

    // Failures are not remembered as successes: each is verified again,
    // unknown users included (they cost a round like everybody else).
    for creds in [("alice", "nope"), ("alice", "nope"), ("mallory", "x"), ("mallory", "x")] {
        assert_eq!(send(&env, "PUT", WRITES[3].1, Some(creds)).await.status(), 401);
    }
    assert_eq!(auth.bcrypt_verifications(), 6);
    assert_ne!(send(&env, "PUT", WRITES[3].1, Some(("alice", "s3cret"))).await.status(), 401);
    assert_eq!(auth.bcrypt_verifications(), 6, "still remembered");
}

/// Everything this test binary logs, at every level: the subscriber is
/// process-wide (a thread-scoped one can miss events whose callsites other
/// tests' threads register concurrently), so every test installs it first
/// and the log check covers all of them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .init();
        logs
    })
}

#[tokio::test]
async fn credentials_are_never_logged() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, Some(false)).await;
    for creds in [("alice", "s3cret"), ("alice", "Wr0ngPassw0rd"), ("mallory", "Wr0ngPassw0rd")] {
        send(&env, "PUT", "/v2/pause/manifests/3.9", Some(creds)).await.bytes().await.unwrap();
        send(&env, "GET", "/v2/pause/manifests/nope", Some(creds)).await.bytes().await.unwrap();
    }
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(text.contains("request refused"), "the refusals are logged: {text}");
    for secret in ["s3cret", "hunter2", "Wr0ngPassw0rd", "YWxpY2U6czNjcmV0", "$2y$04$"] {
        assert!(!text.contains(secret), "{secret:?} in the log:\n{text}");
    }
}
