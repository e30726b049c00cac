//! The crate's error type.

/// What can go wrong talking nf_tables.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A socket operation failed (opening, sending, receiving).
    #[error("netfilter netlink: {op}")]
    Io {
        /// What was being done.
        op: String,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the transaction; nothing of it was applied.
    #[error("nftables refused {what} ({errors} error(s) in the transaction)")]
    Rejected {
        /// The first message the kernel refused, as described when it was added.
        what: String,
        /// How many messages the kernel refused.
        errors: usize,
        /// The kernel's answer to the first refused message.
        #[source]
        source: std::io::Error,
    },
    /// A name that cannot be sent (it has a NUL byte).
    #[error("nftables name {name:?} has a NUL byte")]
    BadName {
        /// The name.
        name: String,
    },
}

impl NftError {
    /// The errno of the kernel's (first) answer, if the kernel or the system answered.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Io { source, .. } | NftError::Rejected { source, .. } => {
                source.raw_os_error()
            }
            NftError::BadName { .. } => None,
        }
    }
}
