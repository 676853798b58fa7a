//! Who may write and who may pull: `[auth]` over HTTP, as registry clients
//! see it: the ping's Bearer challenge, tokens from `/auth/token`, Basic
//! credentials on any request, and 401s with the challenge to answer.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;

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

/// A request with `Authorization: <value>` as given.
async fn send_with(env: &Env, m: &str, path: &str, authorization: &str) -> reqwest::Response {
    env.client
        .request(method(m), format!("{}{path}", env.url))
        .header("authorization", authorization)
        .send()
        .await
        .unwrap()
}

async fn with_token(env: &Env, m: &str, path: &str, token: &str) -> reqwest::Response {
    send_with(env, m, path, &format!("Bearer {token}")).await
}

/// `Bearer realm=…,service=…` of a mirror reached at `env.url`.
fn bearer(env: &Env) -> String {
    format!("Bearer realm=\"{}/auth/token\",service=\"klts-mirror\"", env.url)
}

fn challenge_of(resp: &reqwest::Response) -> String {
    resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// A spec 401 with exactly `challenge`.
async fn assert_refused(resp: reqwest::Response, challenge: &str, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    assert_eq!(challenge_of(&resp), challenge, "{what}");
    assert!(resp.headers().contains_key("x-request-id"), "{what}");
    assert_error(resp, 401, "UNAUTHORIZED").await;
}

/// A spec 401 with the Basic challenge: writes without `[auth]`, and the
/// token endpoint's refusals.
async fn assert_basic_challenge(resp: reqwest::Response, what: &str) {
    assert_refused(resp, CHALLENGE, what).await;
}

/// A spec 401 that sends the client to the token endpoint (with `[auth]`).
async fn assert_challenged(env: &Env, resp: reqwest::Response, what: &str) {
    let challenge = challenge_of(&resp);
    assert!(challenge.starts_with(&bearer(env)), "{what}: {challenge}");
    assert_refused(resp, &challenge, what).await;
}

/// The token endpoint's answer: 200 with the token as both `token` and
/// `access_token`, valid 300 s from now.
async fn token(env: &Env, query: &str, creds: Option<(&str, &str)>) -> String {
    let r = send(env, "GET", &format!("/auth/token{query}"), creds).await;
    assert_eq!(r.status(), 200, "{query} {:?}", creds.map(|c| c.0));
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: serde_json::Value = r.json().await.unwrap();
    let t = body["token"].as_str().expect("token").to_string();
    assert_eq!(body["access_token"], t.as_str(), "{body}");
    assert_eq!(body["expires_in"], 300, "{body}");
    let issued = humantime::parse_rfc3339(body["issued_at"].as_str().expect("issued_at")).expect("RFC 3339");
    let age = SystemTime::now().duration_since(issued).unwrap_or_default();
    assert!(age < Duration::from_secs(5), "issued just now: {body}");
    t
}

#[tokio::test]
async fn without_auth_every_write_is_refused_and_pulls_are_anonymous() {
    logs();
    let env = Env::start().await;
    env.upstream.add_image("pause", "3.9", bytes(100, 1));
    for (m, path) in WRITES {
        assert_basic_challenge(send(&env, m, path, None).await, &format!("{m} {path}")).await;
        // No users exist, so no credentials can open a write.
        assert_basic_challenge(send(&env, m, path, Some(("alice", "s3cret"))).await, &format!("{m} {path} +creds"))
            .await;
    }
    assert_basic_challenge(send(&env, "PUT", "/not/the/api", None).await, "writes outside /v2/").await;
    assert_eq!(env.get("/v2/").await.status(), 200);
    assert!(env.get("/v2/").await.headers().get("www-authenticate").is_none());
    assert_eq!(env.get("/v2/pause/manifests/3.9").await.status(), 200);
    assert_eq!(env.head("/v2/pause/manifests/3.9").await.status(), 200);
    // No tokens without users: the path is nothing special.
    assert_eq!(env.get("/auth/token").await.status(), 404);
    assert_eq!(send(&env, "GET", "/auth/token", Some(("alice", "s3cret"))).await.status(), 404);
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
        assert_challenged(&env, send(&env, m, path, None).await, &what).await;
        assert_challenged(&env, send(&env, m, path, Some(("alice", "wrong"))).await, &format!("{what} wrong password"))
            .await;
        let unknown = send(&env, m, path, Some(("mallory", "s3cret"))).await;
        assert_challenged(&env, unknown, &format!("{what} unknown user")).await;
        assert_challenged(&env, send(&env, m, path, Some(("alice", ""))).await, &format!("{what} empty password"))
            .await;
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
    // Malformed credentials, tokens that are not ours, and schemes that are
    // not ours open no write.
    for value in ["Basic %%%", "Basic ", "Basic YWxpY2U=", "Basic Og==", "Bearer s3cret", "Bearer ", "s3cret"] {
        assert_challenged(&env, send_with(&env, "PUT", "/v2/pause/manifests/3.9", value).await, value).await;
    }
    // Anonymous pulls by default: content needs nothing, and the empty
    // Basic credentials containers/image sends when it has none are none.
    let r = env.get("/v2/pause/manifests/3.9").await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.head("/v2/pause/manifests/3.9").await.status(), 200);
    assert_eq!(send_with(&env, "GET", "/v2/pause/manifests/3.9", "Basic Og==").await.status(), 200);
    // Only the ping challenges, so that clients learn where tokens are.
    assert_refused(env.get("/v2/").await, &bearer(&env), "the ping").await;
    assert_refused(send_with(&env, "GET", "/v2/", "Basic Og==").await, &bearer(&env), "the ping, Og==").await;
    assert_eq!(env.head("/v2/").await.status(), 401);
    // Credentials sent with a pull are checked all the same.
    assert_challenged(&env, send(&env, "GET", "/v2/", Some(("alice", "wrong"))).await, "wrong password, ping").await;
    let r = send(&env, "GET", "/v2/pause/manifests/3.9", Some(("alice", "wrong"))).await;
    assert_challenged(&env, r, "wrong password on a pull").await;
    assert_eq!(send(&env, "GET", "/v2/", Some(("alice", "s3cret"))).await.status(), 200);
}

#[tokio::test]
async fn challenges_name_the_token_endpoint_the_host_and_the_scope() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, None).await;
    let b = bearer(&env);
    assert_refused(env.get("/v2/").await, &b, "ping").await;
    let scoped = |actions: &str| format!("{b},scope=\"repository:pause:{actions}\"");
    assert_refused(send(&env, "PUT", "/v2/pause/manifests/3.9", None).await, &scoped("pull,push"), "PUT").await;
    assert_refused(send(&env, "POST", "/v2/pause/blobs/uploads/", None).await, &scoped("pull,push"), "POST").await;
    assert_refused(send(&env, "DELETE", "/v2/pause/manifests/3.9", None).await, &scoped("delete"), "DELETE").await;
    let r = send(&env, "PUT", "/v2/registry.k8s.io/pause/manifests/3.9?ns=x", None).await;
    assert_refused(r, &format!("{b},scope=\"repository:registry.k8s.io/pause:pull,push\""), "nested name").await;
    let r = send(&env, "GET", "/v2/pause/manifests/3.9", Some(("alice", "wrong"))).await;
    assert_refused(r, &scoped("pull"), "a pull with a wrong password").await;

    // The realm is the host the client named, when it is one...
    let port = env.url.rsplit(':').next().unwrap();
    for host in ["mirror.example:5000", "mirror.example", "[::1]:5000", "10.1.2.3"] {
        let r = env.client.get(format!("{}/v2/", env.url)).header("host", host).send().await.unwrap();
        let expected = format!("Bearer realm=\"http://{host}/auth/token\",service=\"klts-mirror\"");
        assert_refused(r, &expected, host).await;
    }
    // ...and the address the mirror listens on otherwise.
    assert!(b.contains(&format!("http://127.0.0.1:{port}/auth/token")), "{b}");
    for host in ["evil\"example", "a@b:5000", "a b", "x:y:z", "host:65536"] {
        let r = env.client.get(format!("{}/v2/", env.url)).header("host", host).send().await.unwrap();
        assert_refused(r, &b, host).await;
    }
}

#[tokio::test]
async fn a_users_token_opens_writes_an_anonymous_one_only_pulls() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, None).await;
    env.upstream.add_image("pause", "3.9", bytes(100, 4));
    let query = "?service=klts-mirror&scope=repository:pause:pull,push&account=alice";
    let alice = token(&env, query, Some(("alice", "s3cret"))).await;
    assert!(!alice.contains("s3cret") && !alice.contains("alice"), "nothing readable in a token: {alice}");
    // As docker login checks a password: the ping, with the token.
    assert_eq!(with_token(&env, "GET", "/v2/", &alice).await.status(), 200);
    let r = with_token(&env, "POST", "/v2/pause/blobs/uploads/", &alice).await;
    assert_eq!(r.status(), 202, "a token opens an upload");
    let r = with_token(&env, "PUT", "/v2/pause/manifests/3.9", &alice).await;
    assert_error(r, 400, "MANIFEST_INVALID").await;
    assert_eq!(with_token(&env, "GET", "/v2/pause/manifests/3.9", &alice).await.status(), 200);

    // Without credentials: an anonymous token, for pulls.
    let anonymous = token(&env, "?service=klts-mirror&scope=repository:pause:pull", None).await;
    assert_ne!(anonymous, alice);
    assert_eq!(with_token(&env, "GET", "/v2/", &anonymous).await.status(), 200, "answers the ping");
    assert_eq!(with_token(&env, "GET", "/v2/pause/manifests/3.9", &anonymous).await.status(), 200);
    assert_eq!(with_token(&env, "HEAD", "/v2/pause/manifests/3.9", &anonymous).await.status(), 200);
    for (m, path) in WRITES {
        assert_challenged(&env, with_token(&env, m, path, &anonymous).await, &format!("{m} {path} anonymous")).await;
    }
    // containers/image's empty credentials are none: an anonymous token too.
    let r = send_with(&env, "GET", "/auth/token?scope=repository:pause:pull", "Basic Og==").await;
    assert_eq!(r.status(), 200);
    // Another user's token is that user's.
    let bob = token(&env, "", Some(("bob", "hunter2"))).await;
    let r = with_token(&env, "DELETE", "/v2/pause/manifests/3.9", &bob).await;
    assert_error(r, 404, "MANIFEST_UNKNOWN").await;

    // Wrong credentials: 401 with the Basic challenge, which is how
    // `docker login` learns the password is wrong.
    for creds in [("alice", "wrong"), ("mallory", "s3cret"), ("alice", "")] {
        let r = send(&env, "GET", "/auth/token?service=klts-mirror", Some(creds)).await;
        assert_basic_challenge(r, creds.1).await;
    }
    assert_basic_challenge(send_with(&env, "GET", "/auth/token", "Basic %%%").await, "malformed").await;
    // Only GET issues tokens.
    let r = send(&env, "POST", "/auth/token", Some(("alice", "s3cret"))).await;
    assert_error(r, 405, "UNSUPPORTED").await;
}

#[tokio::test]
async fn expired_garbled_forged_and_foreign_tokens_are_refused() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, None).await;
    env.upstream.add_image("pause", "3.9", bytes(100, 5));
    let alice = token(&env, "", Some(("alice", "s3cret"))).await;
    let key = env.mirror.authenticator().token_key();
    let expired = key.issue(Some("alice"), SystemTime::now() - Duration::from_secs(301));
    // alice's signature over bob's name: the MAC does not match.
    let (_, tag) = alice.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = format!("{}.{tag}", b64.encode(br#"{"sub":"bob","exp":99999999999}"#));
    let unsigned = format!("{}.", b64.encode(br#"{"sub":"alice","exp":99999999999}"#));
    // Tokens are valid only on the replica that issued them.
    let replica = env.replica(Options { htpasswd: Some(dir.path().join("htpasswd")), ..Default::default() }).await;
    let foreign = token(&replica, "", Some(("alice", "s3cret"))).await;
    let long = "A".repeat(5000);
    let refused = [
        ("expired", expired.as_str()),
        ("forged", &forged),
        ("unsigned", &unsigned),
        ("another replica's", &foreign),
        ("garbled", "not-a-token"),
        ("garbled", "a.b"),
        ("garbled", &alice[1..]),
        ("too long", &long),
    ];
    for (what, t) in refused {
        for (m, path) in [("PUT", "/v2/pause/manifests/3.9"), ("GET", "/v2/pause/manifests/3.9"), ("GET", "/v2/")] {
            let r = with_token(&env, m, path, t).await;
            let c = challenge_of(&r);
            assert!(c.starts_with(&bearer(&env)) && c.ends_with(",error=\"invalid_token\""), "{what} {m} {path}: {c}");
            assert_refused(r, &c, &format!("{what} {m} {path}")).await;
        }
    }
    // The real one still works, on its own replica only.
    assert_eq!(with_token(&env, "GET", "/v2/", &alice).await.status(), 200);
    assert_eq!(with_token(&replica, "GET", "/v2/", &foreign).await.status(), 200);
    assert_eq!(with_token(&replica, "GET", "/v2/", &alice).await.status(), 401);
}

#[tokio::test]
async fn without_anonymous_pull_pulls_need_a_valid_user() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, Some(false)).await;
    let (md, layer) = env.upstream.add_image("pause", "3.9", bytes(1000, 3));
    let pulls = ["/v2/".to_string(), "/v2/pause/manifests/3.9".into(), format!("/v2/pause/blobs/{layer}")];
    // No anonymous tokens either.
    assert_basic_challenge(env.get("/auth/token?scope=repository:pause:pull").await, "anonymous token").await;
    assert_basic_challenge(send_with(&env, "GET", "/auth/token", "Basic Og==").await, "Og== token").await;
    for path in &pulls {
        assert_challenged(&env, send(&env, "GET", path, None).await, path).await;
        assert_eq!(send(&env, "HEAD", path, None).await.status(), 401, "HEAD {path}");
        assert_challenged(&env, send(&env, "GET", path, Some(("alice", "nope"))).await, path).await;
        assert_challenged(&env, send_with(&env, "GET", path, "Basic Og==").await, path).await;
    }
    // An anonymous token (as another configuration of this process could
    // have made) is no credentials here.
    let anonymous = env.mirror.authenticator().token_key().issue(None, SystemTime::now());
    assert_challenged(&env, with_token(&env, "GET", "/v2/pause/manifests/3.9", &anonymous).await, "anonymous").await;
    assert_eq!(env.upstream.total(), 0, "nothing is fetched for a refused pull");
    for path in &pulls {
        let r = send(&env, "GET", path, Some(("alice", "s3cret"))).await;
        assert_eq!(r.status(), 200, "{path}");
    }
    let alice = token(&env, "?scope=repository:pause:pull", Some(("alice", "s3cret"))).await;
    for path in &pulls {
        assert_eq!(with_token(&env, "GET", path, &alice).await.status(), 200, "{path} with a token");
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

    // A client that fetches a token per repository costs no more, and
    // requests with a token cost none.
    for repo in ["a", "b", "c"] {
        let t = token(&env, &format!("?scope=repository:{repo}:pull,push"), Some(("alice", "s3cret"))).await;
        assert_ne!(with_token(&env, "PUT", WRITES[3].1, &t).await.status(), 401);
    }
    assert_eq!(auth.bcrypt_verifications(), 6, "the token endpoint shares the cache");
    let r = send(&env, "GET", "/auth/token", Some(("alice", "wrong"))).await;
    assert_eq!(r.status(), 401);
    assert_eq!(auth.bcrypt_verifications(), 7, "a wrong password costs a round there too");
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
async fn credentials_and_tokens_are_never_logged() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let env = with_alice(&dir, Some(false)).await;
    for creds in [("alice", "s3cret"), ("alice", "Wr0ngPassw0rd"), ("mallory", "Wr0ngPassw0rd")] {
        send(&env, "PUT", "/v2/pause/manifests/3.9", Some(creds)).await.bytes().await.unwrap();
        send(&env, "GET", "/v2/pause/manifests/nope", Some(creds)).await.bytes().await.unwrap();
        send(&env, "GET", "/auth/token?scope=repository:pause:pull", Some(creds)).await.bytes().await.unwrap();
    }
    let alice = token(&env, "?scope=repository:pause:push", Some(("alice", "s3cret"))).await;
    with_token(&env, "PUT", "/v2/pause/manifests/3.9", &alice).await.bytes().await.unwrap();
    let stale =
        env.mirror.authenticator().token_key().issue(Some("alice"), SystemTime::now() - Duration::from_secs(600));
    with_token(&env, "GET", "/v2/pause/manifests/3.9", &stale).await.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(text.contains("request refused"), "the refusals are logged: {text}");
    assert!(text.contains("token issued"), "issuing is logged: {text}");
    let (alice_payload, alice_mac) = alice.split_once('.').unwrap();
    let (stale_payload, stale_mac) = stale.split_once('.').unwrap();
    for secret in ["s3cret", "hunter2", "Wr0ngPassw0rd", "YWxpY2U6czNjcmV0", "$2y$04$"].into_iter().chain([
        alice_payload,
        alice_mac,
        stale_payload,
        stale_mac,
    ]) {
        assert!(!text.contains(secret), "{secret:?} in the log:\n{text}");
    }
}
