//! `[tls]`: HTTPS only, with the connection timeouts still in force.
//!
//! Each test makes its own CA and a server certificate for 127.0.0.1 with
//! rcgen; clients trust that CA and nothing else.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bytes, write_htpasswd, Env, Options};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test CA and a server certificate it signed, on disk.
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "klts-mirror test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    // The chain as operators ship it: the server certificate, then its CA.
    std::fs::write(&cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    Pki { ca_pem: ca_cert.pem(), cert, key, _dir: dir }
}

async fn start(pki: &Pki, server: Option<&'static str>) -> Env {
    Env::with(Options { tls: Some((pki.cert.clone(), pki.key.clone())), server, ..Default::default() }).await
}

fn client(pki: &Pki) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
}

fn addr(env: &Env) -> String {
    env.url.trim_start_matches("https://").to_string()
}

#[tokio::test]
async fn https_with_a_trusted_ca_over_h2_and_http1() {
    let pki = pki();
    let env = start(&pki, None).await;
    assert!(env.url.starts_with("https://127.0.0.1:"), "{}", env.url);
    env.upstream.add_image("pause", "3.9", bytes(1000, 1));

    // ALPN picks h2 when the client offers it...
    let h2 = client(&pki).build().unwrap();
    let r = h2.get(format!("{}/v2/", env.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    let r = h2.get(format!("{}/v2/pause/manifests/3.9", env.url)).send().await.unwrap();
    assert_eq!(r.status(), 200, "pulls go through the proxy over TLS");
    r.bytes().await.unwrap();

    // ...and HTTP/1.1 when that is all the client speaks.
    let h1 = client(&pki).http1_only().build().unwrap();
    let r = h1.get(format!("{}/v2/", env.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // Writes are still refused without [auth], TLS or not.
    let r = h1.put(format!("{}/v2/pause/manifests/3.9", env.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A client that does not trust the CA gets no answer at all.
    let untrusting = reqwest::Client::builder().no_proxy().use_rustls_tls().build().unwrap();
    assert!(untrusting.get(format!("{}/v2/", env.url)).send().await.is_err());
}

/// With `[auth]`, the ping's challenge sends clients to the token endpoint
/// over HTTPS (the same listener), and the token fetched there opens
/// writes: over HTTP/2, where the host comes from `:authority`, and over
/// HTTP/1.1, from `Host`.
#[tokio::test]
async fn the_token_realm_is_https() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = write_htpasswd(&dir.path().join("htpasswd"), &[("alice", "s3cret")]);
    let tls = Some((pki.cert.clone(), pki.key.clone()));
    let env = Env::with(Options { tls, htpasswd: Some(htpasswd), ..Default::default() }).await;
    let expected = format!("Bearer realm=\"{}/auth/token\",service=\"klts-mirror\"", env.url);
    assert!(expected.contains("realm=\"https://127.0.0.1:"), "{expected}");
    for (client, version) in [
        (client(&pki).build().unwrap(), reqwest::Version::HTTP_2),
        (client(&pki).http1_only().build().unwrap(), reqwest::Version::HTTP_11),
    ] {
        let r = client.get(format!("{}/v2/", env.url)).send().await.unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["www-authenticate"], expected.as_str(), "{version:?}");
        // Where the challenge points: a token for alice...
        let url = format!("{}/auth/token?service=klts-mirror&scope=repository:pause:pull,push", env.url);
        let r = client.get(url).basic_auth("alice", Some("s3cret")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        let token = body["token"].as_str().unwrap().to_string();
        // ...that answers the ping and opens a write.
        let r = client.get(format!("{}/v2/", env.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "{version:?}");
        let r = client.post(format!("{}/v2/pause/blobs/uploads/", env.url)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 202, "{version:?}");
    }
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let pki = pki();
    let env = start(&pki, None).await;
    let a = addr(&env);
    let mut s = TcpStream::connect(&a).await.unwrap();
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    assert!(!out.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&out));

    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert!(plain.get(format!("http://{a}/v2/")).send().await.is_err());
}

/// Reads until the server closes the connection; returns when it did.
async fn closed_at(s: &mut (impl AsyncReadExt + Unpin)) -> Instant {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was not closed within 10s"),
        }
    }
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_cut_after_the_header_read_timeout() {
    let pki = pki();
    let env = start(&pki, Some("header_read_timeout = \"1s\"\nidle_timeout = \"30s\"")).await;
    let a = addr(&env);

    // Silent after connecting.
    let start = Instant::now();
    let mut silent = TcpStream::connect(&a).await.unwrap();
    // Half a ClientHello: a record header promising more than is sent.
    let mut half = TcpStream::connect(&a).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]).await.unwrap();
    for (what, s) in [("silent", &mut silent), ("half a ClientHello", &mut half)] {
        let after = closed_at(s).await.duration_since(start);
        assert!(after >= Duration::from_millis(900), "{what}: cut too early, after {after:?}");
        assert!(after < Duration::from_secs(4), "{what}: cut late, after {after:?}");
    }

    // The server is still answering.
    let r = client(&pki).build().unwrap().get(format!("{}/v2/", env.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// After the handshake, the header and idle timers see the decrypted
/// stream: half a request is cut at the header deadline (counted from the
/// accept, handshake included), an idle keep-alive connection at the idle
/// timeout.
#[tokio::test]
async fn header_and_idle_timeouts_apply_inside_tls() {
    let pki = pki();
    let env = start(&pki, Some("header_read_timeout = \"1s\"\nidle_timeout = \"4s\"")).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let a = addr(&env);

    // Half a header, then silence: cut about 1s after the accept.
    let start = Instant::now();
    let mut s = connector.connect(name.clone(), TcpStream::connect(&a).await.unwrap()).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    s.flush().await.unwrap();
    let after = closed_at(&mut s).await.duration_since(start);
    assert!(after >= Duration::from_millis(900), "half a header: {after:?}");
    assert!(after < Duration::from_millis(2900), "cut by the header timeout, not the idle one: {after:?}");

    // A whole request is answered; then idle for 4s, and closed.
    let mut s = connector.connect(name, TcpStream::connect(&a).await.unwrap()).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let answered = Instant::now();
    let after = closed_at(&mut s).await.duration_since(answered);
    assert!(after >= Duration::from_millis(3500) && after < Duration::from_secs(7), "idle: {after:?}");
}

#[tokio::test]
async fn a_reload_serves_a_renewed_certificate_to_new_connections() {
    let (old, renewed) = (pki(), pki());
    let options = Options { tls: Some((old.cert.clone(), old.key.clone())), ..Default::default() };
    let env = Env::with(options.clone()).await;
    let ping = |pki: &Pki| {
        let c = client(pki).build().unwrap();
        let url = format!("{}/v2/", env.url);
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(ping(&old).await.unwrap(), 200);
    let established = client(&old).pool_max_idle_per_host(1).build().unwrap();
    assert_eq!(established.get(format!("{}/v2/", env.url)).send().await.unwrap().status(), 200);

    // The operator renews the pair in place and sends SIGHUP.
    std::fs::copy(&renewed.cert, &old.cert).unwrap();
    std::fs::copy(&renewed.key, &old.key).unwrap();
    let cfg = klts_mirror::Config::from_toml(&common::config_text(&env.upstream.url(), &env.data, &options)).unwrap();
    env.mirror.reload(cfg).unwrap();

    assert_eq!(ping(&renewed).await.unwrap(), 200, "new connections get the renewed certificate");
    assert!(ping(&old).await.is_err(), "and no longer the old one");
    let r = established.get(format!("{}/v2/", env.url)).send().await.unwrap();
    assert_eq!(r.status(), 200, "an established connection keeps its session");
}
