//! Bounds on every size and count the applier reads from untrusted input, checked before it
//! allocates. Defaults are documented in bundle-format.md ("Limits").

/// Upper bounds enforced while reading a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of the CBOR manifest member.
    pub max_manifest_bytes: u64,
    /// Number of signatures (and signers).
    pub max_signatures: usize,
    /// Entries of NEW, expected OLD entries, and apply-script steps, each.
    pub max_entries: usize,
    /// Bytes in one path.
    pub max_path_len: usize,
    /// Components in one path.
    pub max_path_depth: usize,
    /// Number of payload frames.
    pub max_frames: usize,
    /// Compressed size of one frame.
    pub max_frame_bytes: u64,
    /// Decoded size of one frame.
    pub max_frame_decoded: u64,
    /// zstd window log the decoder accepts (memory per frame is about 2^window_log).
    pub max_window_log: u32,
    /// Bytes in one symlink target.
    pub max_symlink_len: usize,
    /// Number of hooks.
    pub max_hooks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 256 << 20,
            max_signatures: 16,
            max_entries: 500_000,
            max_path_len: 4096,
            max_path_depth: 256,
            max_frames: 1 << 20,
            max_frame_bytes: 1 << 30,
            max_frame_decoded: 1 << 30,
            max_window_log: 28,
            max_symlink_len: 4096,
            max_hooks: 64,
        }
    }
}
