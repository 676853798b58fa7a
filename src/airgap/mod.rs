//! Air-gapped sites: images carried in as bundles, never fetched.
//!
//! - [`archive`]: reading a bundle archive (plain, gzip or zstd tar) as a
//!   stream of entries, without a temporary copy.
//! - [`import`]: `bundle import`: an archive's images into the store as
//!   pinned content, verified while read, resumable.

pub mod archive;
pub mod import;
