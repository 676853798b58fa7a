//! A private containerd daemon plus `ctr`, used to pull the way a kubelet
//! node does: through a `hosts.toml` mirror entry, which makes containerd add
//! `?ns=<registry host>` to every request it sends to the mirror.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{run_tool, ChildGuard, ToolOutput};
use super::toml_str;

pub struct Containerd {
    pub socket: PathBuf,
    dir: PathBuf,
    _guard: ChildGuard,
}

impl Containerd {
    /// Starts containerd with root, state, sockets and plugin dirs all under
    /// `dir`. CRI is disabled: it needs kernel features and is irrelevant to
    /// fetching content, which is all the test does.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create containerd dir");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(&config, daemon_config(dir, &socket)).expect("write containerd config");
        let mut guard = ChildGuard::spawn(
            "containerd",
            Command::new("containerd").arg("--config").arg(&config),
            &dir.join("containerd.log"),
        );
        guard.wait_ready(Duration::from_secs(15), || socket.exists());
        let containerd = Containerd { socket, dir: dir.to_path_buf(), _guard: guard };
        containerd.ctr("ctr version", &["version"]);
        containerd
    }

    /// Runs `ctr --address <socket> <args>` and panics unless it succeeds.
    pub fn ctr(&self, what: &str, args: &[&str]) -> ToolOutput {
        run_tool(what, Command::new("ctr").arg("--address").arg(&self.socket).args(args))
    }

    /// Writes `<hosts>/<registry>/hosts.toml` sending both resolve and pull to
    /// `mirror_url`, with `server` set to the mirror too so that nothing can
    /// fall through to the real registry on the internet.
    pub fn write_hosts_toml(&self, registry: &str, mirror_url: &str) -> PathBuf {
        let hosts_dir = self.dir.join("certs.d");
        let registry_dir = hosts_dir.join(registry);
        std::fs::create_dir_all(&registry_dir).expect("create hosts.toml dir");
        let hosts_toml = format!(
            "server = {url}\n\n[host.{url}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            url = toml_str(mirror_url)
        );
        std::fs::write(registry_dir.join("hosts.toml"), hosts_toml).expect("write hosts.toml");
        hosts_dir
    }

    /// `ctr content fetch --all-platforms` of `reference` via `hosts_dir`.
    /// Fetching (not `images pull`) avoids unpacking into a snapshotter, which
    /// needs mounts; `--http-dump` records every request and response header
    /// so the test can check what containerd actually sent.
    pub fn fetch_all_platforms(&self, hosts_dir: &Path, reference: &str) -> ToolOutput {
        let hosts = hosts_dir.to_str().expect("utf-8 hosts dir");
        self.ctr(
            &format!("ctr content fetch {reference}"),
            &["content", "fetch", "--hosts-dir", hosts, "--plain-http", "--all-platforms", "--http-dump", reference],
        )
    }

    /// Digests of every blob in containerd's content store.
    pub fn content_digests(&self) -> Vec<String> {
        let out = self.ctr("ctr content ls", &["content", "ls", "-q"]);
        out.stdout_str().lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }

    /// Target digest of the image record `reference` created by the fetch.
    pub fn image_target_digest(&self, reference: &str) -> String {
        let out = self.ctr("ctr images ls", &["images", "ls"]);
        let listing = out.stdout_str();
        listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .and_then(|l| l.split_whitespace().find(|f| f.starts_with("sha256:")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("ctr images ls has no image {reference}:\n{listing}"))
    }
}

/// containerd v2 config confined to `dir`: private root/state/sockets, no
/// debug or metrics listeners, no CRI.
fn daemon_config(dir: &Path, socket: &Path) -> String {
    let path = |p: &Path| toml_str(p.to_str().expect("utf-8 path"));
    format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
         [grpc]\n  address = {grpc}\n\n\
         [ttrpc]\n  address = {ttrpc}\n\n\
         [debug]\n  address = \"\"\n\n\
         [metrics]\n  address = \"\"\n\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = path(&dir.join("root")),
        state = path(&dir.join("state")),
        grpc = path(socket),
        ttrpc = path(&dir.join("containerd-ttrpc.sock")),
        opt = path(&dir.join("opt")),
    )
}
