//! The errors of the image store: each names the image, layer, entry or file it concerns.

use std::path::PathBuf;

use node_core::RuntimeError;

/// An error of the native image store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {message}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is invalid.
        message: String,
    },
    /// The image is not in the store (local lookups) or not in any registry host tried (pulls).
    #[error("image {reference:?} not found")]
    NotFound {
        /// The reference or id asked for.
        reference: String,
    },
    /// An image index has no manifest for the platform we run on.
    #[error("image {reference:?} has no manifest for {platform} (it has: {available})")]
    NoMatchingPlatform {
        /// The reference pulled.
        reference: String,
        /// The platform wanted (`linux/amd64`).
        platform: String,
        /// The platforms the index offers.
        available: String,
    },
    /// Content did not hash to the digest it was fetched or stored by.
    #[error("{what}: digest mismatch, expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was verified (`blob sha256:...`, `layer ... diff_id`).
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// A digest string is malformed or uses an unsupported algorithm.
    #[error("invalid digest {digest:?}: only sha256:<64 hex> is supported")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// The registry answered with an error (or could not be reached) on every host tried.
    #[error("pull {reference}: {message}")]
    Registry {
        /// The reference pulled.
        reference: String,
        /// What each host tried answered.
        message: String,
    },
    /// The registry refused our credentials.
    #[error("pull {reference}: unauthorized at {host}: {message}")]
    Unauthorized {
        /// The reference pulled.
        reference: String,
        /// The registry host.
        host: String,
        /// The registry's answer.
        message: String,
    },
    /// The CRI `AuthConfig` cannot be used.
    #[error("auth config for {reference}: {message}")]
    Auth {
        /// The reference pulled.
        reference: String,
        /// What is wrong (names the field).
        message: String,
    },
    /// A manifest, index or layer has a media type or schema we cannot use.
    #[error("{what}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The object (`manifest of ...`, `layer sha256:...`).
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// A manifest, index or config does not parse.
    #[error("{what}: {message}")]
    Malformed {
        /// The object (`manifest sha256:...`, `config sha256:...`, a file).
        what: String,
        /// The parse error.
        message: String,
    },
    /// A layer holds an entry that would write outside the layer root or is otherwise unsafe; the
    /// partly extracted layer has been removed.
    #[error("layer {layer}: unsafe entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        /// The layer's digest.
        layer: String,
        /// The entry's name as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// Extracting a layer entry failed.
    #[error("layer {layer}: entry {entry:?}: {source}")]
    Extract {
        /// The layer's digest.
        layer: String,
        /// The entry's name (empty when reading the archive itself failed).
        entry: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A `certs.d/<host>/hosts.toml` file is invalid.
    #[error("registry hosts config {path}: {message}")]
    HostsConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Mounting or unmounting an overlay failed.
    #[error("overlay {target}: {message}")]
    Overlay {
        /// The mount point.
        target: PathBuf,
        /// What failed.
        message: String,
    },
    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether this error means the image does not exist (locally or in the registry).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ImageError::NotFound { .. })
    }
}

impl From<ImageError> for RuntimeError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NotFound { reference } => RuntimeError::NotFound {
                kind: "image",
                id: reference,
            },
            ImageError::InvalidReference { .. } | ImageError::Auth { .. } => {
                RuntimeError::InvalidArgument(e.to_string())
            }
            ImageError::Registry { ref reference, .. }
            | ImageError::Unauthorized { ref reference, .. }
            | ImageError::NoMatchingPlatform { ref reference, .. } => RuntimeError::ImagePull {
                image: reference.clone(),
                message: e.to_string(),
            },
            ImageError::Io { path, source } => RuntimeError::Io { path, source },
            other => RuntimeError::Internal(other.to_string()),
        }
    }
}
