//! Air-gapped sites: images carried in as OCI image layout archives.
//!
//! A bundle is made where the upstreams are reachable (`bundle create`,
//! resolving every image the way `serve` would), checked on either side of
//! the gap (`bundle verify`), and loaded into the site's mirror there
//! (`bundle import`). The archive format and its lock file are in
//! [`bundle`] and [`lock`]; which images travel is [`images`]; reading an
//! archive (plain, gzip or zstd tar) as a stream is [`archive`]; loading it
//! as pinned content, verified while read and resumable, is [`import`].

pub mod archive;
pub mod bundle;
pub mod create;
pub mod images;
pub mod import;
pub mod lock;
pub mod progress;
mod resolve;
pub mod verify;

pub use bundle::BundleError;
