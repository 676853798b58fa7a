//! `config.toml`: serde types, defaults and validation.
//!
//! This is the only place defaults live. Unknown keys are errors (a typo in
//! a bank's config must not silently fall back to a default), and every
//! error names the key it is about, because start-up fails with exactly one
//! line and exit code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub uploads: UploadsConfig,
    /// Without `[auth]` every write is refused and pulls are anonymous.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// With `[tls]` the listener serves HTTPS only.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:5000".parse().expect("static address")
}

/// `[server]`: what one client connection may hold, and for how long.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// A request's headers must arrive within this (slowloris defence).
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress, or a client
    /// that takes no byte of its response, is closed after this.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; beyond this, new connections wait in the
    /// listen backlog. Lowered at start-up to fit the fd limit.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// On SIGTERM or SIGINT, how long pulls and fills in progress may run
    /// on after the listener closed; whatever is still running then is cut
    /// (a cut fill keeps nothing). Long enough for a rolling restart not to
    /// break a layer download on a LAN; short enough for an orchestrator's
    /// kill timeout (Kubernetes waits 30 s too).
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> usize {
    4096
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Filesystem,
    Memory,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Where in-progress fills are spooled. Defaults to `<path>/_spool` for
    /// the filesystem backend (same filesystem, so commit is a rename) and
    /// the system temp dir otherwise.
    #[serde(default)]
    pub spool_path: Option<PathBuf>,
    /// Bytes of manifests kept in memory so warm manifest requests do no I/O.
    #[serde(default = "default_manifest_memory")]
    pub manifest_memory_bytes: u64,
}

fn default_path() -> PathBuf {
    PathBuf::from("./data")
}

fn default_manifest_memory() -> u64 {
    16 * 1024 * 1024
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::default(),
            path: default_path(),
            spool_path: None,
            manifest_memory_bytes: default_manifest_memory(),
        }
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: url::Url,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password or token.
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest silence tolerated while reading a response: a stalled
    /// upstream becomes an error instead of a hung pull.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Overall deadline for one upstream operation: a token fetch, a manifest
    /// HEAD or GET (body, redirects and token included), a blob HEAD, a whole
    /// paginated tags list, and a blob GET until its headers arrive. Needed
    /// because `read_timeout` is per read: an upstream trickling one byte
    /// just inside it would otherwise hold a client indefinitely. Blob bodies
    /// are exempt (a large layer on a slow link may rightly take long); they
    /// keep `read_timeout` only.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The password, read from `password_env` by [`Config::validate`].
    #[serde(skip)]
    pub password: Option<Secret>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(default = "default_upstream")]
    pub default_upstream: String,
}

fn default_upstream() -> String {
    "registry.k8s.io".to_string()
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { default_upstream: default_upstream() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a cached tag → digest mapping is served without asking upstream.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Never contact any upstream (air-gapped sites).
    #[serde(default)]
    pub offline: bool,
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { tag_ttl: default_tag_ttl(), offline: false }
    }
}

/// `[uploads]`: blob upload sessions of pushes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// An upload with no activity for this long is abandoned: its session
    /// and bytes are removed (by a periodic sweep, and at start-up). Long
    /// enough for a publisher to resume an interrupted push the next day.
    #[serde(default = "default_upload_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_upload_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig { max_age: default_upload_max_age() }
    }
}

/// `[auth]`: who may push, and whether pulling needs a user too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// bcrypt entries as `htpasswd -B` writes them. Optional for serde only,
    /// so that leaving it out is reported under its own key.
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    /// GET and HEAD of content need no credentials (only the `/v2/` ping
    /// challenges, so that clients learn where tokens come from); writes
    /// always do.
    #[serde(default = "default_anonymous_pull")]
    pub anonymous_pull: bool,
    /// The users, read from `htpasswd` by [`Config::from_toml`] (read
    /// again when SIGHUP reloads the configuration).
    #[serde(skip)]
    pub users: Vec<crate::htpasswd::Entry>,
}

fn default_anonymous_pull() -> bool {
    true
}

/// `[tls]`: serve HTTPS with this certificate chain and key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Both are required; optional for serde only, so that a missing one is
    /// reported under its own key.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The loaded pair, set by [`Config::from_toml`].
    #[serde(skip)]
    pub server: Option<crate::tls::ServerTls>,
}

/// A configuration problem, phrased for the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt; keep
            // the first line and name the key from the span it points at.
            let msg = e.message().lines().next().unwrap_or("").to_string();
            match e.span().and_then(|s| key_at(text, s.start)) {
                Some((key, line)) => ConfigError::Parse(format!("{key} (line {line}): {msg}")),
                None => ConfigError::Parse(msg),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        for (key, d) in [
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.idle_timeout", self.server.idle_timeout),
            ("uploads.max_age", self.uploads.max_age),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        if !self.upstreams.contains_key(&self.routing.default_upstream) {
            return Err(invalid(
                "routing.default_upstream",
                format!("{:?} is not one of the configured [upstreams]", self.routing.default_upstream),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, up) in &mut self.upstreams {
            let key = format!("upstreams.\"{name}\"");
            for n in std::iter::once(name.as_str()).chain(up.aliases.iter().map(String::as_str)) {
                if !valid_host(n) {
                    return Err(invalid(&key, format!("{n:?} is not a registry host name")));
                }
                if !seen.insert(n.to_string()) {
                    return Err(invalid(&key, format!("{n:?} is configured more than once")));
                }
            }
            if !matches!(up.url.scheme(), "http" | "https") || up.url.host().is_none() {
                return Err(invalid(format!("{key}.url"), "must be an http(s) URL with a host"));
            }
            if up.request_timeout.is_zero() {
                // Every upstream request would fail at once.
                return Err(invalid(format!("{key}.request_timeout"), "must be longer than 0s"));
            }
            if let Some(var) = &up.password_env {
                let value = std::env::var(var).map_err(|_| {
                    invalid(format!("{key}.password_env"), format!("environment variable {var} is not set"))
                })?;
                up.password = Some(Secret(value));
                if up.username.is_none() {
                    return Err(invalid(format!("{key}.username"), "required when password_env is set"));
                }
            }
        }
        if let Some(auth) = &mut self.auth {
            let path = auth.htpasswd.as_ref().ok_or_else(|| invalid("auth.htpasswd", "required in [auth]"))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("auth.htpasswd", format!("cannot read {}: {e}", path.display())))?;
            auth.users = crate::htpasswd::parse(&text)
                .map_err(|e| invalid("auth.htpasswd", format!("{} {e}", path.display())))?;
        }
        if let Some(tls) = &mut self.tls {
            let cert = tls.cert.as_ref().ok_or_else(|| invalid("tls.cert", "required in [tls]"))?;
            let key = tls.key.as_ref().ok_or_else(|| invalid("tls.key", "required in [tls]"))?;
            tls.server = Some(crate::tls::ServerTls::load(cert, key).map_err(|e| invalid(e.key(), e.to_string()))?);
        }
        if self.cache.tag_ttl.is_zero() && self.cache.offline {
            // Harmless, but almost certainly not what was meant.
            tracing::warn!("cache.tag_ttl = 0 has no effect with cache.offline = true");
        }
        Ok(())
    }
}

/// What a reload cannot change while the process runs: the socket, the
/// connection limits and drain, the store, upload sweeping, and whether
/// `[tls]` is on at all (its certificate and key can change).
impl Config {
    /// The keys of `new` that differ from `self` and need a restart.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("listen");
        }
        if self.server != new.server {
            keys.push("server");
        }
        if self.storage != new.storage {
            keys.push("storage");
        }
        if self.uploads != new.uploads {
            keys.push("uploads");
        }
        if self.tls.is_some() != new.tls.is_some() {
            keys.push("tls");
        }
        keys
    }

    /// `self` with the settings that need a restart taken from `running`,
    /// which goes on serving with them.
    pub fn keeping_restart_only(mut self, running: &Config) -> Config {
        self.listen = running.listen;
        self.server = running.server.clone();
        self.storage = running.storage.clone();
        self.uploads = running.uploads.clone();
        if self.tls.is_some() != running.tls.is_some() {
            self.tls = running.tls.clone();
        }
        self
    }
}

/// An upstream name is used as the first path component of host-prefixed
/// requests, so it must look like a host: lowercase DNS labels with a dot.
fn valid_host(n: &str) -> bool {
    n.contains('.')
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The dotted key (`cache.tag_ttl`) and line number of the `key = value`
/// line containing `offset`, with the table from the nearest `[header]`.
fn key_at(text: &str, offset: usize) -> Option<(String, usize)> {
    let offset = offset.min(text.len());
    let line_no = text[..offset].bytes().filter(|&b| b == b'\n').count() + 1;
    let line = text.lines().nth(line_no - 1)?;
    let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string())?;
    let table = text
        .lines()
        .take(line_no - 1)
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix('[').and_then(|l| l.strip_suffix(']')).map(|t| t.trim().to_string())
        })
        .last();
    let key = match table {
        Some(t) if !key.is_empty() => format!("{t}.{key}"),
        _ => key,
    };
    Some((key, line_no))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[upstreams."registry.k8s.io"]
url = "https://registry.k8s.io"
aliases = ["k8s.gcr.io"]
"#;

    #[test]
    fn the_shipped_default_config_is_valid() {
        let cfg = Config::from_toml(include_str!("../config.toml")).unwrap();
        assert_eq!(cfg.listen.port(), 5000);
        assert_eq!(cfg.storage.backend, Backend::Filesystem);
        assert_eq!(cfg.routing.default_upstream, "registry.k8s.io");
        assert_eq!(cfg.cache.tag_ttl, Duration::from_secs(300));
        assert!(cfg.upstreams.contains_key("docker.io"));
        assert_eq!(cfg.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(cfg.server.max_connections, 4096);
        assert_eq!(cfg.server.shutdown_grace, Duration::from_secs(30));
        assert!(cfg.auth.is_none() && cfg.tls.is_none(), "shipped with [auth] and [tls] commented out");
        assert_eq!(cfg.uploads.max_age, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn a_reload_names_and_keeps_what_needs_a_restart() {
        let running = Config::from_toml(MIN).unwrap();
        let same = Config::from_toml(&format!("{MIN}\n[cache]\ntag_ttl = \"1m\"\n")).unwrap();
        assert!(running.needs_restart(&same).is_empty(), "cache policy reloads");
        let moved = Config::from_toml(&format!(
            "listen = \"127.0.0.1:6000\"\n{MIN}\n[storage]\npath = \"/elsewhere\"\n[server]\nshutdown_grace = \"1s\"\n[cache]\ntag_ttl = \"1m\"\n"
        ))
        .unwrap();
        assert_eq!(running.needs_restart(&moved), ["listen", "server", "storage"]);
        let kept = moved.keeping_restart_only(&running);
        assert_eq!(kept.listen, running.listen);
        assert_eq!(kept.storage, running.storage);
        assert_eq!(kept.server, running.server);
        assert_eq!(kept.cache.tag_ttl, Duration::from_secs(60), "the rest is the new configuration");
        assert!(running.needs_restart(&kept).is_empty());
    }

    #[test]
    fn shutdown_grace_defaults_to_30s_and_parses() {
        assert_eq!(Config::from_toml(MIN).unwrap().server.shutdown_grace, Duration::from_secs(30));
        let cfg = Config::from_toml(&format!("{MIN}\n[server]\nshutdown_grace = \"2m\"\n")).unwrap();
        assert_eq!(cfg.server.shutdown_grace, Duration::from_secs(120));
        // 0s is allowed: cut everything at once.
        let cfg = Config::from_toml(&format!("{MIN}\n[server]\nshutdown_grace = \"0s\"\n")).unwrap();
        assert!(cfg.server.shutdown_grace.is_zero());
        let e = err(&format!("{MIN}\n[server]\nshutdown_grace = \"soon\"\n"));
        assert!(e.contains("server.shutdown_grace"), "{e}");
    }

    #[test]
    fn uploads_max_age_defaults_to_a_day_and_parses() {
        let cfg = Config::from_toml(&shipped_with(&["[uploads]", "max_age"])).unwrap();
        assert_eq!(cfg.uploads.max_age, Duration::from_secs(24 * 3600), "the shipped example is the default");
        let cfg = Config::from_toml(&format!("{MIN}\n[uploads]\nmax_age = \"90m\"\n")).unwrap();
        assert_eq!(cfg.uploads.max_age, Duration::from_secs(5400));
        let e = err(&format!("{MIN}\n[uploads]\nmax_age = \"0s\"\n"));
        assert!(e.contains("uploads.max_age"), "{e}");
        let e = err(&format!("{MIN}\n[uploads]\nmax_age = \"a day\"\n"));
        assert!(e.contains("uploads.max_age"), "{e}");
        let e = err(&format!("{MIN}\n[uploads]\nmaxage = \"1h\"\n"));
        assert!(e.contains("maxage"), "{e}");
    }

    /// The shipped file with the commented-out lines that start with one
    /// of `keys` enabled, as an operator would.
    fn shipped_with(keys: &[&str]) -> String {
        let enabled = |l: &'static str| match l.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => rest,
            _ => l,
        };
        include_str!("../config.toml").lines().map(enabled).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn the_shipped_auth_and_tls_examples_are_complete() {
        let e = err(&shipped_with(&["[auth]", "htpasswd", "anonymous_pull"]));
        assert!(e.contains("auth.htpasswd") && e.contains("/etc/klts-mirror/htpasswd"), "{e}");
        let e = err(&shipped_with(&["[tls]", "cert", "key"]));
        assert!(e.contains("tls.cert") && e.contains("/etc/klts-mirror/tls.crt"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let cfg = Config::from_toml(MIN).unwrap();
        assert_eq!(cfg.storage.path, PathBuf::from("./data"));
        assert!(!cfg.cache.offline);
        assert_eq!(cfg.upstreams["registry.k8s.io"].read_timeout, Duration::from_secs(30));
    }

    #[test]
    fn request_timeout_defaults_to_30s_and_parses() {
        let cfg = Config::from_toml(MIN).unwrap();
        assert_eq!(cfg.upstreams["registry.k8s.io"].request_timeout, Duration::from_secs(30));
        let cfg = Config::from_toml(&format!("{MIN}request_timeout = \"2m 5s\"\n")).unwrap();
        assert_eq!(cfg.upstreams["registry.k8s.io"].request_timeout, Duration::from_secs(125));
        let e = err(&format!("{MIN}request_timeout = \"0s\"\n"));
        assert!(e.contains("request_timeout"), "{e}");
        let e = err(&format!("{MIN}request_timeout = \"soon\"\n"));
        assert!(e.contains("request_timeout"), "{e}");
        let e = err(&format!("{MIN}request_timeuot = \"5s\"\n"));
        assert!(e.contains("request_timeuot"), "unknown keys stay errors: {e}");
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(&format!("bogus = 1\n{MIN}"));
        assert!(e.contains("bogus"), "{e}");
        let e = err(&format!("{MIN}\n[cache]\ntag_ttl = \"five minutes\"\n"));
        assert!(e.contains("cache.tag_ttl"), "{e}");
        let e = err(&format!("{MIN}\n[routing]\ndefault_upstream = \"docker.io\"\n"));
        assert!(e.contains("routing.default_upstream"), "{e}");
        let e = err(&format!("{MIN}\n[server]\nmax_connections = 0\n"));
        assert!(e.contains("server.max_connections"), "{e}");
        let e = err(&format!("{MIN}\n[server]\nidle_timeout = \"0s\"\n"));
        assert!(e.contains("server.idle_timeout"), "{e}");
        let e = err(&format!("{MIN}\n[server]\nheader_timeout = \"1s\"\n"));
        assert!(e.contains("header_timeout"), "{e}");
        let e = err(&format!("{MIN}\n[storage]\nbackend = \"s4\"\n"));
        assert!(e.contains("storage.backend") && e.contains("s4"), "{e}");
        let e = err(&format!("{MIN}\n[upstreams.\"docker.io\"]\nurl = \"ftp://x.y\"\n"));
        assert!(e.contains("upstreams.\"docker.io\".url"), "{e}");
        let e = err(&format!("{MIN}\n[upstreams.\"k8s.gcr.io\"]\nurl = \"https://x.y\"\n"));
        assert!(e.contains("more than once"), "{e}");
        let e = err(&format!("{MIN}\n[upstreams.\"ghcr.io\"]\nurl = \"https://ghcr.io\"\nusername = \"u\"\npassword_env = \"KLTS_TEST_UNSET_VAR\"\n"));
        assert!(e.contains("password_env") && e.contains("KLTS_TEST_UNSET_VAR"), "{e}");
    }

    fn htpasswd_file(dir: &std::path::Path, text: &str) -> PathBuf {
        let p = dir.join("htpasswd");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn alice() -> String {
        format!("alice:{}", bcrypt::hash_with_salt("pw", 4, [1; 16]).unwrap().format_for_version(bcrypt::Version::TwoY))
    }

    #[test]
    fn auth_loads_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = htpasswd_file(dir.path(), &alice());
        let cfg = Config::from_toml(&format!("{MIN}\n[auth]\nhtpasswd = \"{}\"\n", p.display())).unwrap();
        let auth = cfg.auth.unwrap();
        assert!(auth.anonymous_pull, "anonymous pulls by default");
        assert_eq!(auth.users.len(), 1);
        assert_eq!(auth.users[0].user, "alice");
        let cfg =
            Config::from_toml(&format!("{MIN}\n[auth]\nhtpasswd = \"{}\"\nanonymous_pull = false\n", p.display()))
                .unwrap();
        assert!(!cfg.auth.unwrap().anonymous_pull);
    }

    #[test]
    fn auth_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = err(&format!("{MIN}\n[auth]\nhtpasswd = \"{}\"\n", missing.display()));
        assert!(e.contains("auth.htpasswd") && e.contains("nope"), "{e}");
        let p = htpasswd_file(dir.path(), &format!("{}\nbob:$apr1$xyz$abc\n", alice()));
        let e = err(&format!("{MIN}\n[auth]\nhtpasswd = \"{}\"\n", p.display()));
        assert!(e.contains("auth.htpasswd") && e.contains("line 2") && e.contains("bcrypt"), "{e}");
        assert!(!e.contains("$apr1$xyz$abc"), "the hash is not echoed: {e}");
        let e = err(&format!("{MIN}\n[auth]\nanonymous_pull = false\n"));
        assert!(e.contains("auth.htpasswd"), "{e}");
        let e = err(&format!("{MIN}\n[auth]\nhtpasswd = \"{}\"\nanonymous_pulls = true\n", p.display()));
        assert!(e.contains("anonymous_pulls"), "{e}");
    }

    #[test]
    fn tls_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        let ok = format!("{MIN}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
        let cfg = Config::from_toml(&ok).unwrap();
        assert!(cfg.tls.unwrap().server.is_some());
        let e = err(&format!("{MIN}\n[tls]\ncert = \"{}\"\n", cert.display()));
        assert!(e.contains("tls.key") && e.contains("required"), "{e}");
        let e = err(&format!("{MIN}\n[tls]\nkey = \"{}\"\n", key.display()));
        assert!(e.contains("tls.cert") && e.contains("required"), "{e}");
        let e =
            err(&format!("{MIN}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", dir.path().join("x").display(), key.display()));
        assert!(e.contains("tls.cert"), "{e}");
        let e = err(&format!("{MIN}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), cert.display()));
        assert!(e.contains("tls.key"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}
