//! Protocol vocabulary of the OCI distribution spec. No I/O here.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod media;
pub mod name;
pub mod referrers;
pub mod route;

pub use digest::{Algorithm, Digest, Verifier};
pub use error::ErrorCode;
pub use name::{Reference, RepoKey, RepoName, Tag};
