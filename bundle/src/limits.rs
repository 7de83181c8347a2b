//! Bounds on every size and count the applier reads from untrusted input, checked before it
//! allocates. Defaults are documented in bundle-format.md §8 ("Limits"); this struct is the one
//! home of every such bound: the decoders, [`crate::Manifest::check`] and the builder read them
//! from here.

/// Upper bounds enforced while reading a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of the manifest member as received (the compressed bytes that are signed).
    pub max_manifest_bytes: u64,
    /// Size of the decoded manifest (the CBOR inside the member's zstd frame), refused while
    /// decompressing.
    pub max_manifest_decoded: u64,
    /// CBOR data items in the decoded manifest (every integer, string, array and map counts one).
    pub max_manifest_items: u64,
    /// Nesting levels of the manifest's CBOR (the document itself is level 1).
    pub max_manifest_depth: usize,
    /// Bytes of any one text or byte string in the manifest's CBOR: the CBOR pre-pass's memory
    /// bound ([`crate::scan`]), above every string field's own bound (`max_path_len`,
    /// `max_symlink_len`, `max_hook_command`, ...), which [`crate::Manifest::check`] and
    /// [`crate::BundlePath`] check after decoding with messages naming the field.
    pub max_manifest_string: usize,
    /// Signatures in the signature member (0 to this many).
    pub max_signatures: usize,
    /// Entries of NEW, expected OLD entries, and apply-script steps, each.
    pub max_entries: usize,
    /// Bytes in one path.
    pub max_path_len: usize,
    /// Components in one path.
    pub max_path_depth: usize,
    /// Number of payload frames.
    pub max_frames: usize,
    /// Pieces of all files together (so also of one file).
    pub max_pieces: usize,
    /// Data extents of one sparse file (bundle-format.md §4.2).
    pub max_extents_per_file: usize,
    /// Data extents of all sparse files together.
    pub max_extents: usize,
    /// Compressed size of one frame.
    pub max_frame_bytes: u64,
    /// Decoded size of one frame.
    pub max_frame_decoded: u64,
    /// zstd window log the decoder accepts, for the manifest member and every frame (memory per
    /// frame is about 2^window_log).
    pub max_window_log: u32,
    /// LZMA2 dictionary log a `Lzma` frame may declare (bundle-format.md §5.2); the decoder's
    /// dictionary is at most 2^this, and at most the frame's decoded size.
    pub max_lzma_dict_log: u8,
    /// Uncompressed bytes of one re-created gzip file (bundle-format.md §5.3).
    pub max_regzip_raw: u64,
    /// Bytes in one symlink target.
    pub max_symlink_len: usize,
    /// Number of hooks.
    pub max_hooks: usize,
    /// Bytes in a hook's glob.
    pub max_hook_glob: usize,
    /// Bytes in a hook's command.
    pub max_hook_command: usize,
    /// Bytes in the channel name.
    pub max_channel_len: usize,
    /// Keys a rotation adds, and key ids it retires, each.
    pub max_rotation_keys: usize,
    /// Distinct extended-attribute sets ([`crate::Manifest::xattr_sets`]).
    pub max_xattr_sets: usize,
    /// Attributes in one set (so on one entry).
    pub max_xattrs_per_set: usize,
    /// Bytes in one attribute name, namespace included (Linux: 255).
    pub max_xattr_name: usize,
    /// Bytes in one attribute value (Linux: 65536).
    pub max_xattr_value: usize,
    /// Bytes of all names and values of all sets together.
    pub max_xattr_bytes: u64,
    /// Recipients of an encrypted bundle (stanzas in its outer manifest, bundle-format.md §4.10).
    pub max_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 256 << 20,
            max_manifest_decoded: 256 << 20,
            max_manifest_items: 64 << 20,
            max_manifest_depth: 16,
            max_manifest_string: 64 << 10,
            max_signatures: 16,
            max_entries: 500_000,
            max_path_len: crate::path::MAX_PATH_LEN,
            max_path_depth: crate::path::MAX_PATH_DEPTH,
            max_frames: 1 << 20,
            max_pieces: 1 << 21,
            max_extents_per_file: 1 << 16,
            max_extents: 1 << 21,
            max_frame_bytes: 1 << 30,
            max_frame_decoded: 1 << 30,
            max_window_log: 28,
            max_lzma_dict_log: 26,
            max_regzip_raw: 64 << 20,
            max_symlink_len: 4096,
            max_hooks: 64,
            max_hook_glob: 256,
            max_hook_command: 4096,
            max_channel_len: 128,
            max_rotation_keys: 64,
            max_xattr_sets: 500_000,
            max_xattrs_per_set: 128,
            max_xattr_name: 255,
            max_xattr_value: 65536,
            max_xattr_bytes: 64 << 20,
            max_recipients: 64,
        }
    }
}

impl Limits {
    /// The default limits, with `max_entries` set to `n` and the bounds on the manifest's size
    /// that go with a count (its member, decoded bytes and CBOR items) raised in proportion when
    /// `n` is above the default, so that a larger legal manifest is not refused by its bytes.
    pub fn with_max_entries(n: usize) -> Limits {
        let d = Limits::default();
        let scale = (n as u64).div_ceil(d.max_entries as u64).max(1);
        Limits {
            max_entries: n,
            max_manifest_bytes: d.max_manifest_bytes.saturating_mul(scale),
            max_manifest_decoded: d.max_manifest_decoded.saturating_mul(scale),
            max_manifest_items: d.max_manifest_items.saturating_mul(scale),
            max_pieces: d.max_pieces.saturating_mul(scale as usize),
            max_xattr_sets: d.max_xattr_sets.saturating_mul(scale as usize),
            max_xattr_bytes: d.max_xattr_bytes.saturating_mul(scale),
            max_extents: d.max_extents.saturating_mul(scale as usize),
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_entries_scales_the_manifest_bounds() {
        assert_eq!(Limits::with_max_entries(500_000), Limits::default());
        let small = Limits::with_max_entries(1000);
        assert_eq!((small.max_entries, small.max_manifest_decoded), (1000, Limits::default().max_manifest_decoded));
        let big = Limits::with_max_entries(1_200_000);
        assert_eq!(big.max_manifest_decoded, 3 * Limits::default().max_manifest_decoded);
        assert_eq!(big.max_manifest_items, 3 * Limits::default().max_manifest_items);
    }
}
