//! Air-gapped sites: images carried in as OCI image layout archives.
//!
//! A bundle is made where the upstreams are reachable (`bundle create`,
//! resolving every image the way `serve` would), checked on either side of
//! the gap (`bundle verify`), and loaded into the site's mirror there
//! (`bundle import`). The archive format and its lock file are in
//! [`bundle`] and [`lock`]; which images travel is [`images`].

pub mod bundle;
pub mod create;
pub mod images;
pub mod lock;
pub mod progress;
mod resolve;
pub mod verify;

pub use bundle::BundleError;
