//! `klts-mirror serve [--config PATH] [--listen ADDR] [--offline]`,
//! `klts-mirror images --kubernetes-version V [--image-repository R]`,
//! `klts-mirror bundle create|verify|import …` (air-gap bundles, see `airgap`).
//!
//! Thin by design: parse arguments, load configuration, set up logging,
//! bind, and hand over to the library. Configuration problems and bad
//! versions exit with code 2 and one line naming the key or the version.
//! `serve` turns signals into library calls: SIGTERM/SIGINT start the drain
//! (`Mirror::serve`), SIGHUP reloads the configuration (`Mirror::reload`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use klts_mirror::airgap::{self, images::ImageSources, progress::Progress};
use klts_mirror::kubeadm::{self, KubernetesVersion};
use klts_mirror::{Config, Mirror};
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Parser)]
#[command(name = "klts-mirror", version, about = "Pull-through OCI registry mirror for Kubernetes LTS images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "./config.toml")]
        config: PathBuf,
        /// Listen address; overrides `listen` in the configuration.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Sealed mode: never contact any upstream (as `cache.offline = true`).
        #[arg(long)]
        offline: bool,
    },
    /// Print the images kubeadm of a release pulls, as `kubeadm config images list` does, without going online.
    Images {
        /// Release, e.g. v1.18.20 or an LTS build v1.18.20-lts.2; a patch number is required.
        #[arg(long)]
        kubernetes_version: String,
        /// Registry prefix for all images (kubeadm's `imageRepository`); default: that release's.
        #[arg(long)]
        image_repository: Option<String>,
    },
    /// Air-gap bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Resolve images as `serve` would and write them as one OCI layout
    /// archive (and OUTPUT's .lock beside it).
    Create(BundleCreate),
    /// Re-hash every blob of a bundle and check that nothing is missing.
    Verify {
        archive: PathBuf,
        /// The lock the bundle was made --since: check that it lists all the bundle leaves out.
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Load an archive (OCI layout tar, .tar.gz, .tar.zst, or docker save)
    /// into the store as pinned images; safe while the server runs, and
    /// resumable.
    Import {
        /// The archive.
        archive: PathBuf,
        /// Configuration file (its storage and upstreams).
        #[arg(long, default_value = "./config.toml")]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct BundleCreate {
    /// The archive to write (a plain tar).
    #[arg(short, long)]
    output: PathBuf,
    /// Add kubeadm's images for this Kubernetes version.
    #[arg(long = "kubernetes-version", value_name = "V")]
    kubernetes_versions: Vec<String>,
    /// Add an image: [host/]repo[:tag|@digest].
    #[arg(long = "image", value_name = "REF")]
    images: Vec<String>,
    /// Add the images of a file: one REF per line, # comments.
    #[arg(long, value_name = "F")]
    images_file: Option<PathBuf>,
    /// Carry only these platforms of multi-arch images (indexes stay whole).
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    platforms: Vec<airgap::images::Platform>,
    /// Add the pause images containerd releases use as sandbox_image.
    #[arg(long)]
    containerd_sandbox: bool,
    /// Leave out every manifest and blob an older bundle's lock lists.
    #[arg(long, value_name = "OLD.lock")]
    since: Option<PathBuf>,
    /// Configuration file (upstreams, storage) of the mirror to resolve through.
    #[arg(long, default_value = "./config.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve { config, listen, offline } => serve(&config, listen, offline),
        Command::Bundle { command: BundleCommand::Import { archive, config } } => bundle_import(&config, &archive),
        Command::Bundle { command: BundleCommand::Create(args) } => bundle_create(args),
        Command::Bundle { command: BundleCommand::Verify { archive, base } } => {
            bundle_verify(&archive, base.as_deref())
        }
        Command::Images { kubernetes_version, image_repository } => {
            images(&kubernetes_version, image_repository.as_deref())
        }
    }
}

/// One image per line on stdout; a bad version or repository is one line on
/// stderr and exit code 2.
fn images(version: &str, repository: Option<&str>) -> ExitCode {
    let list = match version.parse::<KubernetesVersion>().and_then(|v| kubeadm::images(&v, repository)) {
        Ok(list) => list,
        Err(e) => {
            eprintln!("klts-mirror: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = list.iter().try_for_each(|image| writeln!(out, "{image}")).and_then(|()| out.flush());
    // A closed pipe (`| head -1`) is the reader's choice, not an error worth a message.
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn bundle_create(a: BundleCreate) -> ExitCode {
    let cfg = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => return fail(e, ExitCode::from(2)),
    };
    let sources = ImageSources {
        images: a.images,
        images_file: a.images_file,
        kubernetes_versions: a.kubernetes_versions,
        containerd_sandbox: a.containerd_sandbox,
    };
    let images = match sources.gather() {
        Ok(i) => i,
        Err(e) => return fail(e, ExitCode::FAILURE),
    };
    let mirror = match Mirror::new(&cfg) {
        Ok(m) => m,
        Err(e) => return fail(e, ExitCode::from(2)),
    };
    let request = airgap::create::Request { output: a.output, images, platforms: a.platforms, since: a.since };
    let created = klts_mirror::server::runtime()
        .map_err(|e| airgap::BundleError::Internal(format!("cannot start runtime: {e}")))
        .and_then(|rt| rt.block_on(airgap::create::create(mirror.proxy().clone(), request, Progress::for_stderr())));
    match created {
        Ok(summary) => {
            summary.lines().iter().for_each(|l| println!("{l}"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e, ExitCode::FAILURE),
    }
}

fn bundle_verify(archive: &std::path::Path, base: Option<&std::path::Path>) -> ExitCode {
    match airgap::verify::verify(archive, base, &Progress::for_stderr()) {
        Ok(report) if report.is_ok() => {
            println!("{}: OK: {}", archive.display(), report.summary());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{}: {}", archive.display(), report.summary());
            report.problems.iter().for_each(|p| eprintln!("klts-mirror: {p}"));
            eprintln!("klts-mirror: {}: {} problems", archive.display(), report.problems.len());
            ExitCode::FAILURE
        }
        Err(e) => fail(e, ExitCode::FAILURE),
    }
}

/// Prints an error, one `klts-mirror: ` line per line of it; returns `code`.
fn fail(e: impl std::fmt::Display, code: ExitCode) -> ExitCode {
    e.to_string().lines().for_each(|l| eprintln!("klts-mirror: {l}"));
    code
}

/// The configuration, or exit code 2 with one line naming the key.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("klts-mirror: {e}");
        ExitCode::from(2)
    })
}

/// Prints the report (problems on stderr); exit 1 when there were any.
fn bundle_import(config: &std::path::Path, archive: &std::path::Path) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Two workers: the archive reader has a thread of its own, and writes
    // and hashes run on the blocking pool.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("klts-mirror: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let progress = klts_mirror::airgap::import::Progress::for_stderr();
    match runtime.block_on(klts_mirror::airgap::import::run(&cfg, archive, &progress)) {
        Ok(report) => {
            print!("{report}");
            if report.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "klts-mirror: bundle import of {} had {} problem(s)",
                    archive.display(),
                    report.problems.len()
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("klts-mirror: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path, listen: Option<SocketAddr>, offline: bool) -> ExitCode {
    let mut cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    cfg.cache.offline |= offline;
    let mirror = match Mirror::new(&cfg) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("klts-mirror: {e}");
            return ExitCode::from(2);
        }
    };
    limit_malloc_arenas();
    trim_heap_periodically();
    let runtime = match klts_mirror::server::runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("klts-mirror: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listen.unwrap_or(cfg.listen);
    let path = path.to_path_buf();
    runtime.block_on(async move {
        let listener = match klts_mirror::server::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("klts-mirror: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Handlers first: from the "serving" line on, a signal must find
        // them (SIGTERM's and SIGHUP's default is to kill the process).
        let signals = match Signals::register() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("klts-mirror: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(reload_on_hangup(signals.hangup, mirror.clone(), path, offline));
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listen = %local, storage = ?cfg.storage.backend, path = %cfg.storage.path.display(), sealed = cfg.cache.offline, "klts-mirror serving");
        match mirror.serve(listener, shutdown_signal(signals.interrupt, signals.terminate)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("klts-mirror: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// glibc gives every thread that allocates its own arena (up to 8 per
/// core), and each keeps the large read buffers it once held. Two arenas
/// keep peak memory flat under many concurrent blob streams.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Freed buffers of departed clients stay in glibc's heap: after 1,000
/// stalled readers left, 78 MiB stayed resident. `malloc_trim` hands free
/// pages in the middle of the heap back to the kernel; every 10 s it costs
/// one walk of the free lists and keeps idle RSS near its floor.
fn trim_heap_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new().name("heap-trim".into()).spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(10));
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the heap trimmer");
        }
    }
}

/// The signals `serve` answers, registered before it announces itself.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}

/// SIGINT or SIGTERM: the drain begins (see `Mirror::serve`).
async fn shutdown_signal(mut interrupt: Signal, mut terminate: Signal) {
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = %name, "shutting down");
}

/// SIGHUP: reads `path` again and applies it (see `Mirror::reload`). A
/// configuration that would not start is refused with the line start-up
/// would print, and the running one stays. `--offline` holds across
/// reloads, like `--listen`.
async fn reload_on_hangup(mut hangup: Signal, mirror: Mirror, path: PathBuf, offline: bool) {
    while hangup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
        // Reading the files (the config, htpasswd, the TLS pair) blocks.
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&p)).await;
        let applied = match loaded {
            Ok(Ok(mut cfg)) => {
                cfg.cache.offline |= offline;
                mirror.reload(cfg).map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = applied {
            tracing::error!("configuration reload refused: klts-mirror: {e}; the previous configuration keeps serving");
        }
    }
}
