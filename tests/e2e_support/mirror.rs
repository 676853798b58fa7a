//! The system under test: the `klts-mirror` binary built by cargo, pointed at
//! the loopback upstream for both registry.k8s.io and docker.io.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::http::Http;

/// Whether something accepts TCP connections on 127.0.0.1:`port` (readiness
/// of an HTTPS listener, which the plain client cannot ask).
pub fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
use super::process::{free_port, ChildGuard};
use super::toml_str;

/// How long the mirror may take to answer `GET /v2/` with 200.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Mirror {
    pub port: u16,
    guard: ChildGuard,
}

impl Mirror {
    /// Writes the mirror config under `dir` and starts
    /// `klts-mirror serve --config <file> --listen 127.0.0.1:<port>`.
    pub fn start(dir: &Path, http: &Http, upstream_port: u16, default_upstream: &str) -> Self {
        Self::start_with(dir, upstream_port, default_upstream, "", |port| {
            let url = format!("http://127.0.0.1:{port}/v2/");
            http.try_get(&url).is_some_and(|r| r.status == 200)
        })
    }

    /// Like [`Mirror::start`] with `extra` appended to the config (tables
    /// such as `[auth]` or `[tls]`) and `ready(port)` deciding when it is up.
    pub fn start_with(
        dir: &Path,
        upstream_port: u16,
        default_upstream: &str,
        extra: &str,
        ready: impl FnMut(u16) -> bool,
    ) -> Self {
        Self::start_with_args(dir, upstream_port, default_upstream, extra, &[], ready)
    }

    /// Sealed mode (`serve --offline`): nothing is ever asked of the
    /// upstream at `upstream_port` (which need not exist).
    pub fn start_sealed(dir: &Path, http: &Http, upstream_port: u16) -> Self {
        Self::start_with_args(dir, upstream_port, "registry.k8s.io", "", &["--offline"], |port| {
            let url = format!("http://127.0.0.1:{port}/v2/");
            http.try_get(&url).is_some_and(|r| r.status == 200)
        })
    }

    /// The configuration file the mirror runs with (`bundle import` uses it too).
    pub fn config_path(dir: &Path) -> std::path::PathBuf {
        dir.join("config.toml")
    }

    fn start_with_args(
        dir: &Path,
        upstream_port: u16,
        default_upstream: &str,
        extra: &str,
        args: &[&str],
        mut ready: impl FnMut(u16) -> bool,
    ) -> Self {
        std::fs::create_dir_all(dir).expect("create mirror dir");
        let config = Self::config_path(dir);
        let text = format!(
            "{}
{extra}
",
            mirror_config(dir, upstream_port, default_upstream)
        );
        std::fs::write(&config, text).expect("write mirror config");
        let port = free_port();
        let mut guard = ChildGuard::spawn(
            "klts-mirror",
            Command::new(env!("CARGO_BIN_EXE_klts-mirror"))
                .env("RUST_LOG", "info,klts_mirror=debug")
                .env("RUST_BACKTRACE", "1")
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .args(args),
            &dir.join("mirror.stderr.log"),
        );
        guard.wait_ready(STARTUP_TIMEOUT, || ready(port));
        Mirror { port, guard }
    }

    /// `host:port` as clients put it in front of repository names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Fails with the mirror log if the process has died mid-test.
    pub fn assert_running(&mut self) {
        self.guard.assert_running();
    }
}

/// The config the brief prescribes: both upstreams on the same loopback
/// registry, k8s.gcr.io as an alias, filesystem storage in the tempdir.
pub fn mirror_config(dir: &Path, upstream_port: u16, default_upstream: &str) -> String {
    let upstream = toml_str(&format!("http://127.0.0.1:{upstream_port}"));
    format!(
        "listen = \"127.0.0.1:0\"\n\n\
         [storage]\nbackend = \"filesystem\"\npath = {data}\n\n\
         [upstreams.\"registry.k8s.io\"]\nurl = {upstream}\naliases = [\"k8s.gcr.io\"]\n\n\
         [upstreams.\"docker.io\"]\nurl = {upstream}\n\n\
         [routing]\ndefault_upstream = {default}\n\n\
         [cache]\ntag_ttl = \"5m\"\noffline = false\n",
        data = toml_str(dir.join("mirror-data").to_str().expect("utf-8 path")),
        default = toml_str(default_upstream),
    )
}
