//! Child-process plumbing: long-running services behind a kill-on-drop guard,
//! one-shot tool runs with a timeout, and free loopback ports.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default size of the log tail printed on failure: enough to see the last
/// requests and the error, small enough not to drown the panic message.
const DEFAULT_LOG_TAIL_BYTES: u64 = 24 * 1024;

/// Upper bound for any single tool invocation, so a hung client fails the
/// test instead of hanging CI.
const TOOL_TIMEOUT: Duration = Duration::from_secs(90);

/// Panics (never skips) when a required binary is missing, pointing at the
/// script that installs it, because a silently skipped e2e test proves nothing.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|tool| find_on_path(tool).is_none()).collect();
    assert!(
        missing.is_empty(),
        "e2e test needs these tools on PATH but they are missing: {missing:?}; \
         run `bash scripts/install-test-deps.sh` (as root) first"
    );
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|candidate| candidate.is_file())
}

/// A loopback port that was free a moment ago. Binding port 0 and dropping the
/// listener lets the child bind it; the tiny race is acceptable for tests.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener.local_addr().expect("local_addr").port()
}

/// Removes proxy variables so children only ever talk to 127.0.0.1 directly,
/// even on a machine whose environment sets a proxy.
pub fn loopback_only(cmd: &mut Command) -> &mut Command {
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost")
}

/// A running service (registry, mirror, containerd). Dropping it kills the
/// process, also while a failed assertion unwinds, and then prints the tail
/// of its log so the failure report shows what the service saw.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
    tail_bytes: u64,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let out = File::create(log).unwrap_or_else(|e| panic!("create log {log:?}: {e}"));
        let err = out.try_clone().expect("clone log file handle");
        loopback_only(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {name} ({cmd:?}): {e}"));
        ChildGuard { name: name.to_string(), child, log: log.to_path_buf(), tail_bytes: DEFAULT_LOG_TAIL_BYTES }
    }

    /// Limits the log tail printed on failure, for chatty services whose log
    /// is context rather than the likely culprit.
    pub fn with_log_tail(mut self, bytes: u64) -> Self {
        self.tail_bytes = bytes;
        self
    }

    /// Panics if the process has already exited, so a crash is reported as
    /// such rather than as a timeout; the log is printed by `Drop`.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("{} exited unexpectedly with {status}; its log {:?} is printed below", self.name, self.log);
        }
    }

    /// Last part of the service's combined stdout/stderr.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log, self.tail_bytes)
    }

    /// Polls `ready` until it returns true, failing fast if the process dies
    /// and with the log after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if ready() {
                return;
            }
            if Instant::now() > deadline {
                panic!("{} not ready after {timeout:?}; its log {:?} is printed below", self.name, self.log);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({:?}), last {} bytes -----\n{}\n----- end of {} log -----",
                self.name,
                self.log,
                self.tail_bytes,
                self.log_tail(),
                self.name
            );
        }
    }
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("<no log at {path:?}>");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    let _ = file.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    // Start at a line boundary when truncated, so the first line is whole.
    let from = match buf.iter().position(|&b| b == b'\n') {
        Some(newline) if start > 0 => newline + 1,
        _ => 0,
    };
    String::from_utf8_lossy(&buf[from..]).into_owned()
}

/// Result of a finished tool run.
pub struct ToolOutput {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl ToolOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs a one-shot tool, panicking with its command line, exit status, stdout
/// and stderr unless it succeeds within [`TOOL_TIMEOUT`].
pub fn run_tool(what: &str, cmd: &mut Command) -> ToolOutput {
    let (status, output) = run_with_timeout(what, cmd);
    if !status.success() {
        panic!(
            "{what} failed with {status}\ncommand: {cmd:?}\nstdout:\n{}\nstderr:\n{}",
            output.stdout_str(),
            output.stderr
        );
    }
    output
}

/// Spawns with stdout/stderr in anonymous temp files (no pipe deadlocks on
/// large output) and kills the tool if it outlives [`TOOL_TIMEOUT`].
fn run_with_timeout(what: &str, cmd: &mut Command) -> (ExitStatus, ToolOutput) {
    let mut out = tempfile::tempfile().expect("tempfile for stdout");
    let mut err = tempfile::tempfile().expect("tempfile for stderr");
    loopback_only(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone stdout file"))
        .stderr(err.try_clone().expect("clone stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e} (run `bash scripts/install-test-deps.sh`)"));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} timed out after {TOOL_TIMEOUT:?}\ncommand: {cmd:?}\nstderr:\n{}", read_all(&mut err));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = Vec::new();
    out.seek(SeekFrom::Start(0)).expect("rewind stdout");
    out.read_to_end(&mut stdout).expect("read stdout");
    let stderr = read_all(&mut err);
    (status, ToolOutput { stdout, stderr })
}

fn read_all(file: &mut File) -> String {
    let mut buf = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
