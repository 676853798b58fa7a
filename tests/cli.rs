//! The fixed command-line interface: configuration errors stop start-up
//! with one line naming the key and exit code 2.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_klts-mirror");

const BASE: &str = r#"
[storage]
backend = "memory"
[upstreams."registry.k8s.io"]
url = "https://registry.k8s.io"
"#;

/// Runs `serve` with `config` and returns (exit code, stderr).
fn serve_with(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_config_error(config: &str, needle: &str) {
    let (code, stderr) = serve_with(config);
    assert_eq!(code, Some(2), "exit code for {needle}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} named in {:?}", lines[0]);
}

#[test]
fn unknown_key() {
    assert_config_error(&format!("lisen = \"0.0.0.0:5000\"\n{BASE}"), "lisen");
}

#[test]
fn bad_duration() {
    assert_config_error(&format!("{BASE}\n[cache]\ntag_ttl = \"soon\"\n"), "tag_ttl");
}

#[test]
fn default_upstream_must_be_configured() {
    assert_config_error(&format!("{BASE}\n[routing]\ndefault_upstream = \"docker.io\"\n"), "routing.default_upstream");
}

#[test]
fn unwritable_storage_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let config = format!(
        "[storage]\nbackend = \"filesystem\"\npath = \"{}/sub\"\n[upstreams.\"registry.k8s.io\"]\nurl = \"https://registry.k8s.io\"\n",
        file.display()
    );
    assert_config_error(&config, "storage.path");
}

#[test]
fn missing_config_file() {
    let out = Command::new(BIN).args(["serve", "--config", "/nonexistent/klts.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/klts.toml"));
}

#[test]
fn help_lists_the_fixed_flags() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--config") && text.contains("--listen"), "{text}");
    assert!(text.contains("./config.toml"), "default config path shown: {text}");
}

/// Runs `images` with `args` and returns (exit code, stdout, stderr).
fn images(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).arg("images").args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn images_prints_what_kubeadm_lists() {
    let (code, stdout, stderr) = images(&["--kubernetes-version", "v1.18.20"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "k8s.gcr.io/kube-apiserver:v1.18.20\n\
         k8s.gcr.io/kube-controller-manager:v1.18.20\n\
         k8s.gcr.io/kube-scheduler:v1.18.20\n\
         k8s.gcr.io/kube-proxy:v1.18.20\n\
         k8s.gcr.io/pause:3.2\n\
         k8s.gcr.io/etcd:3.4.3-0\n\
         k8s.gcr.io/coredns:1.6.7\n"
    );
    assert!(stderr.is_empty(), "{stderr}");

    let (code, stdout, _) = images(&["--kubernetes-version=1.31.6"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        "registry.k8s.io/kube-apiserver:v1.31.6\n\
         registry.k8s.io/kube-controller-manager:v1.31.6\n\
         registry.k8s.io/kube-scheduler:v1.31.6\n\
         registry.k8s.io/kube-proxy:v1.31.6\n\
         registry.k8s.io/coredns/coredns:v1.11.3\n\
         registry.k8s.io/pause:3.10\n\
         registry.k8s.io/etcd:3.5.15-0\n"
    );
}

#[test]
fn images_with_a_repository_and_an_lts_build() {
    let (code, stdout, stderr) =
        images(&["--kubernetes-version", "v1.18.20-lts.2", "--image-repository", "ghcr.io/klts-io/kubernetes-lts"]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "ghcr.io/klts-io/kubernetes-lts/kube-apiserver:v1.18.20-lts.2");
    assert_eq!(
        lines[4..],
        [
            "ghcr.io/klts-io/kubernetes-lts/pause:3.2",
            "ghcr.io/klts-io/kubernetes-lts/etcd:3.4.3-0",
            "ghcr.io/klts-io/kubernetes-lts/coredns:1.6.7"
        ]
    );

    let (_, stdout, _) = images(&["--kubernetes-version", "v1.21.1", "--image-repository", "mirror.example:5000"]);
    assert!(stdout.ends_with("mirror.example:5000/coredns/coredns:v1.8.0\n"), "{stdout}");
    let (_, stdout, _) = images(&["--kubernetes-version", "v1.21.2", "--image-repository", "mirror.example:5000"]);
    assert!(stdout.ends_with("mirror.example:5000/coredns:v1.8.0\n"), "{stdout}");
}

/// Exit code 2, nothing on stdout, one line on stderr naming the input.
fn assert_refused(args: &[&str], needle: &str) {
    let (code, stdout, stderr) = images(args);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} named in {:?}", lines[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn images_refuses_bad_versions_in_one_line() {
    assert_refused(&["--kubernetes-version", "v1.18.x"], "\"v1.18.x\"");
    assert_refused(&["--kubernetes-version", "stable-1.18"], "\"stable-1.18\"");
    assert_refused(&["--kubernetes-version", "v1.18.21"], "\"v1.18.21\"");
    assert_refused(&["--kubernetes-version", "v1.9.0"], "\"v1.9.0\"");
    assert_refused(&["--kubernetes-version", "1.18"], "v1.18.20");
    assert_refused(&["--kubernetes-version", "v1.18.20", "--image-repository", "https://mirror"], "https://mirror");
}

#[test]
fn images_requires_a_version() {
    let (code, stdout, _) = images(&[]);
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());
}

#[test]
fn sealed_mode_and_bundle_import_are_on_the_command_line() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--offline"));
    let out = Command::new(BIN).args(["bundle", "import", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("<ARCHIVE>") && text.contains("--config") && text.contains("./config.toml"), "{text}");
}

#[test]
fn bundle_import_refuses_the_memory_backend_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, BASE).unwrap();
    let archive = dir.path().join("site.tar");
    std::fs::write(&archive, b"").unwrap();
    let out = Command::new(BIN)
        .args(["bundle", "import", archive.to_str().unwrap(), "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.backend"));
    std::fs::write(&path, format!("lisen = 1\n{BASE}")).unwrap();
    let out = Command::new(BIN)
        .args(["bundle", "import", archive.to_str().unwrap(), "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error, as for serve");
}
