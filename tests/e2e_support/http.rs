//! Minimal blocking HTTP client over async reqwest. The tests are otherwise
//! sequential tool runs, so a private current-thread runtime keeps them plain
//! `#[test]` functions without needing tokio's process feature.

use std::time::Duration;

use reqwest::header::HeaderMap;
pub use reqwest::Method;

/// Accept header containerd sends when resolving a tag; mirrors must answer it
/// with the index as stored upstream (no conversion).
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*";

pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// A fully read response.
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// Header value as a string, empty when absent, for readable assertions.
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
    }
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build tokio runtime");
        // no_proxy: every request in these tests targets 127.0.0.1.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("build reqwest client");
        Http { rt, client }
    }

    pub fn get(&self, url: &str, accept: Option<&str>) -> Response {
        self.send(Method::GET, url, accept)
    }

    pub fn head(&self, url: &str, accept: Option<&str>) -> Response {
        self.send(Method::HEAD, url, accept)
    }

    /// A request with Basic credentials and an optional body (publishing:
    /// manifest PUTs and DELETEs).
    pub fn send_as(&self, method: Method, url: &str, user: (&str, &str), body: Option<(&str, Vec<u8>)>) -> Response {
        self.rt.block_on(async {
            let mut req = self.client.request(method.clone(), url).basic_auth(user.0, Some(user.1));
            if let Some((content_type, bytes)) = body {
                req = req.header("Content-Type", content_type).body(bytes);
            }
            let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
            read(resp).await.unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"))
        })
    }

    /// Like [`Http::get`] but returns `None` on connection errors, for
    /// readiness polling.
    pub fn try_get(&self, url: &str) -> Option<Response> {
        self.rt.block_on(async {
            let resp = self.client.get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
            read(resp).await.ok()
        })
    }

    fn send(&self, method: Method, url: &str, accept: Option<&str>) -> Response {
        self.rt.block_on(async {
            let mut req = self.client.request(method.clone(), url);
            if let Some(accept) = accept {
                req = req.header("Accept", accept);
            }
            let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
            read(resp).await.unwrap_or_else(|e| panic!("{method} {url}: reading body failed: {e}"))
        })
    }
}

async fn read(resp: reqwest::Response) -> reqwest::Result<Response> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?.to_vec();
    Ok(Response { status, headers, body })
}
