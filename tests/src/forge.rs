//! A test-only bundle forger: writes validly framed and signed bundles from hand-built manifests,
//! bypassing every check `ferry-build` makes, so adversarial tests can hand the real applier
//! exactly the hostile bundle they mean to.
//!
//! - [`write_bundle`] / [`bundle_bytes`]: a [`Manifest`] signed by the given keys (the signature
//!   member sorted, as the format requires), framed with the given payload frames.
//! - [`write_raw`] / [`raw_bundle_bytes`]: the same around arbitrary manifest bytes, for manifests
//!   the Rust types cannot hold (unsafe paths, numbers out of range, wrong CBOR types). Such bytes
//!   are made by editing the manifest's CBOR as a [`Value`] ([`to_value`], [`get`], [`encode_value`])
//!   or by patching a same-length placeholder in the encoded bytes ([`replace_unique`]).
//! - Small constructors for entries, frames and steps, and [`minimal`], a valid full bundle.
//! - [`rle_bomb`]: a tiny zstd frame that decodes to gigabytes.
//! - [`regions`]: the byte ranges of every region of a bundle file, for bit-flip tests.

use bundle::container::{self, finish, write_member, write_payload, MANIFEST_NAME, SIGNATURES_NAME};
use bundle::sig::{encode_signatures, SecretKey, Signatures};
use bundle::{BundlePath, Content, Entry, Frame, Hash, Kind, Manifest, Meta, Method, Op, Piece, Step, FORMAT_VERSION};
pub use ciborium::Value;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A deterministic secret key.
pub fn secret(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

/// Write `k`'s public key in its text form to `path` (a `--trust` file).
pub fn write_pub(path: &Path, k: &SecretKey) -> PathBuf {
    std::fs::write(path, k.public().to_text()).expect("write .pub");
    path.to_path_buf()
}

/// A bundle path; panics on an unsafe one (use the raw-bytes route for those).
pub fn path(p: impl AsRef<[u8]>) -> BundlePath {
    BundlePath::new(p.as_ref().to_vec()).expect("safe bundle path")
}

/// Metadata with `mode`, owner root, a fixed mtime.
pub fn meta(mode: u32) -> Meta {
    Meta { mode, mtime_ns: 1_700_000_000_000_000_000, ..Meta::default() }
}

/// zstd-compress `data` as one frame.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// The manifest's description of a compressed frame that decodes to `decoded` bytes.
pub fn frame(compressed: &[u8], decoded: u64) -> Frame {
    Frame { size: compressed.len() as u64, hash: Hash::of(compressed), decoded }
}

pub fn dir(p: &str, mode: u32) -> Entry {
    Entry { path: path(p), meta: meta(mode), kind: Kind::Dir }
}

/// A file (mode 0644, not a config file) with content `data` coming from `content` (its digest
/// listed unless the content is `Unchanged`, as the format requires).
pub fn file_with(p: &str, data: &[u8], content: Content) -> Entry {
    let hash = (content != Content::Unchanged).then(|| Hash::of(data));
    Entry {
        path: path(p),
        meta: meta(0o644),
        kind: Kind::File { size: data.len() as u64, hash, content, config: false, extents: None, gzip: None },
    }
}

/// A file with content `data`, copied locally from the OLD file `from`.
pub fn copy(p: &str, from: &str, data: &[u8]) -> Entry {
    file_with(p, data, Content::Copy { from: path(from) })
}

/// A file whose content `data` is one piece `[offset, offset+len)` of frame `frame`.
pub fn file(p: &str, data: &[u8], frame: u32, offset: u64) -> Entry {
    let piece = Piece { frame, offset, len: data.len() as u64, method: Method::Zstd };
    file_with(p, data, Content::Pieces(vec![piece]))
}

pub fn symlink(p: &str, target: &[u8]) -> Entry {
    Entry { path: path(p), meta: meta(0o777), kind: Kind::Symlink { target: target.to_vec() } }
}

pub fn step(op: Op, p: &str) -> Step {
    Step { op, path: path(p) }
}

/// An empty manifest (no entries, frames or steps) of `version` on channel `stable`.
pub fn empty(version: u64) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        version,
        base: None,
        channel: "stable".into(),
        created: 1_700_000_000,
        expires: None,
        entries: Vec::new(),
        old: Vec::new(),
        frames: Vec::new(),
        script: Vec::new(),
        hooks: Vec::new(),
        rotation: None,
        xattr_namespaces: vec![],
        xattr_sets: vec![],
        tagged_digest: None,
        sealed: None,
    }
}

/// A manifest and its payload frames.
#[derive(Clone, Debug)]
pub struct Forged {
    pub manifest: Manifest,
    pub frames: Vec<Vec<u8>>,
}

/// A valid full bundle that creates directory `d` (mode 0755) holding `d/f` with `content`.
pub fn minimal(version: u64, d: &str, content: &[u8]) -> Forged {
    let z = zstd(content);
    let mut m = empty(version);
    let f = format!("{d}/f");
    m.frames = vec![frame(&z, content.len() as u64)];
    m.entries = vec![dir(d, 0o755), file(&f, content, 0, 0)];
    m.script = vec![step(Op::Mkdir, d), step(Op::Place, &f), step(Op::DirMeta, d)];
    Forged { manifest: m, frames: vec![z] }
}

/// The valid signature member for `manifest_bytes` signed by each of `keys`: sorted by public
/// key, a key given twice signing once.
pub fn signatures(manifest_bytes: &[u8], keys: &[&SecretKey]) -> Vec<u8> {
    let id = Manifest::id(manifest_bytes);
    let mut s = Signatures::new();
    for k in keys {
        s.insert(k.public().bytes, k.sign_id(&id));
    }
    s.encode()
}

/// A signature member holding exactly these signatures in this order, valid or not (unsorted,
/// a key twice): for refusal tests.
pub fn raw_signatures(manifest_bytes: &[u8], keys: &[&SecretKey]) -> Vec<u8> {
    let id = Manifest::id(manifest_bytes);
    let sigs: Vec<([u8; 32], [u8; 64])> = keys.iter().map(|k| (k.public().bytes, k.sign_id(&id))).collect();
    encode_signatures(&sigs)
}

/// A complete bundle around `manifest_bytes` (taken as is).
pub fn raw_bundle_bytes(manifest_bytes: &[u8], keys: &[&SecretKey], frames: &[Vec<u8>]) -> Vec<u8> {
    // Hand-made CBOR is packed into the manifest member's zstd frame as the builder does; bytes
    // that already are a zstd frame (from `Manifest::encode`) are used as they are.
    let packed = if manifest_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        manifest_bytes.to_vec()
    } else {
        bundle::manifest::pack(manifest_bytes)
    };
    framed(&packed, &signatures(&packed, keys), frames)
}

/// Frame the given manifest, signature member and payload frames canonically.
pub fn framed(manifest_bytes: &[u8], sig_bytes: &[u8], frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(manifest_bytes.len() + frames.iter().map(|f| f.len() + 1024).sum::<usize>() + 4096);
    write_member(&mut out, MANIFEST_NAME, manifest_bytes).expect("write");
    write_member(&mut out, SIGNATURES_NAME, sig_bytes).expect("write");
    let sizes: Vec<u64> = frames.iter().map(|f| f.len() as u64).collect();
    write_payload(&mut out, &sizes, |w, i| w.write_all(&frames[i])).expect("write");
    finish(&mut out).expect("write");
    out
}

/// A complete bundle: `m` encoded, signed by `keys`, framed.
pub fn bundle_bytes(m: &Manifest, keys: &[&SecretKey], frames: &[Vec<u8>]) -> Vec<u8> {
    raw_bundle_bytes(&m.encode(), keys, frames)
}

pub fn write_bundle(path: &Path, m: &Manifest, keys: &[&SecretKey], frames: &[Vec<u8>]) {
    std::fs::write(path, bundle_bytes(m, keys, frames)).expect("write bundle");
}

pub fn write_raw(path: &Path, manifest_bytes: &[u8], keys: &[&SecretKey], frames: &[Vec<u8>]) {
    std::fs::write(path, raw_bundle_bytes(manifest_bytes, keys, frames)).expect("write bundle");
}

/// The manifest as a CBOR value tree, to edit into shapes the types refuse. Encoding it
/// unchanged with [`encode_value`] gives exactly `Manifest::to_cbor`.
pub fn to_value(m: &Manifest) -> Value {
    Value::serialized(m).expect("to cbor value")
}

pub fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encode cbor value");
    out
}

/// Map field `key` of `v` (a CBOR map with text keys), or element `key` (decimal) of an array.
pub fn get<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    match v {
        Value::Map(m) => {
            &mut m
                .iter_mut()
                .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
                .unwrap_or_else(|| panic!("no field {key}"))
                .1
        }
        Value::Array(a) => &mut a[key.parse::<usize>().expect("array index")],
        _ => panic!("{key}: not a map or array"),
    }
}

/// Follow a `/`-separated chain of [`get`]s, e.g. `"entries/1/meta/mode"`.
pub fn at<'a>(v: &'a mut Value, chain: &str) -> &'a mut Value {
    chain.split('/').fold(v, |v, k| get(v, k))
}

/// Rewrite every CBOR byte string in `v` that is the path `from` or lies under it (`from/...`) to
/// start with `to` instead; returns how many were rewritten. Lets a test build a valid manifest
/// with a placeholder directory and then move it to `..`, an absolute path or `.ferry`.
pub fn retarget_paths(v: &mut Value, from: &[u8], to: &[u8]) -> usize {
    match v {
        Value::Bytes(b) if b.starts_with(from) && (b.len() == from.len() || b[from.len()] == b'/') => {
            let mut n = to.to_vec();
            n.extend_from_slice(&b[from.len()..]);
            *b = n;
            1
        }
        Value::Array(a) => a.iter_mut().map(|x| retarget_paths(x, from, to)).sum(),
        Value::Map(m) => m.iter_mut().map(|(k, x)| retarget_paths(k, from, to) + retarget_paths(x, from, to)).sum(),
        Value::Tag(_, x) => retarget_paths(x, from, to),
        _ => 0,
    }
}

/// Replace the one occurrence of `from` in `bytes` by `to` (same length). Panics unless `from`
/// occurs exactly once.
pub fn replace_unique(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len(), "replace_unique needs equal lengths");
    let hits: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| *w == from).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "{:?} occurs {} times", String::from_utf8_lossy(from), hits.len());
    bytes[hits[0]..hits[0] + to.len()].copy_from_slice(to);
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB zero bytes each (4 bytes per block, no content
/// size in the header): `blocks * 131072` decoded bytes from about `4 * blocks` compressed ones.
pub fn rle_bomb(blocks: u32) -> Vec<u8> {
    assert!(blocks > 0);
    let mut v = vec![0x28, 0xB5, 0x2F, 0xFD]; // magic
    v.push(0x00); // descriptor: no content size, not single-segment, no checksum, no dictionary
    v.push(7 << 3); // window descriptor: 2^(10+7) = 128 KiB
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let h = last | (1 << 1) | (131_072 << 3); // RLE block regenerating 128 KiB
        v.extend_from_slice(&h.to_le_bytes()[..3]);
        v.push(0);
    }
    v
}

/// Byte ranges of every region of a bundle whose manifest, signature member and frames have the
/// given sizes: headers, data and padding of each member, each frame's data within its payload
/// member, and the end-of-archive marker.
pub fn regions(manifest_len: usize, sig_len: usize, frame_lens: &[usize]) -> Vec<(String, Range<usize>)> {
    let b = container::BLOCK as usize;
    let mut out = Vec::new();
    let mut at = 0;
    let mut member = |name: String, len: usize, out: &mut Vec<(String, Range<usize>)>| {
        out.push((format!("{name} header"), at..at + b));
        out.push((format!("{name} data"), at + b..at + b + len));
        let padded = len.div_ceil(b) * b;
        if padded > len {
            out.push((format!("{name} padding"), at + b + len..at + b + padded));
        }
        at += b + padded;
    };
    member("manifest".into(), manifest_len, &mut out);
    member("signatures".into(), sig_len, &mut out);
    for (k, p) in container::packs(frame_lens.iter().map(|&l| l as u64)).into_iter().enumerate() {
        out.push((format!("payload {k} header"), at..at + b));
        at += b;
        for (i, &l) in frame_lens.iter().enumerate().take(p.end).skip(p.first) {
            out.push((format!("frame {i} data"), at..at + l));
            at += l;
        }
        let pad = (p.size as usize).div_ceil(b) * b - p.size as usize;
        if pad > 0 {
            out.push((format!("payload {k} padding"), at..at + pad));
            at += pad;
        }
    }
    let end = out.last().map(|r| r.1.end).unwrap_or(0);
    out.push(("end-of-archive marker".into(), end..end + 2 * b));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_roundtrip_is_exact() {
        let f = minimal(1, "d", b"hello");
        assert_eq!(encode_value(&to_value(&f.manifest)), f.manifest.to_cbor());
    }

    #[test]
    fn bomb_decodes() {
        let bomb = rle_bomb(10);
        let mut d = zstd::stream::read::Decoder::new(&bomb[..]).expect("decoder");
        let n = std::io::copy(&mut d, &mut std::io::sink()).expect("decode");
        assert_eq!(n, 10 * 131_072);
    }

    #[test]
    fn regions_tile_the_bundle() {
        let k = secret(1);
        let f = minimal(1, "d", b"hello");
        let m = f.manifest.encode();
        let s = signatures(&m, &[&k]);
        let b = framed(&m, &s, &f.frames);
        let r = regions(m.len(), s.len(), &[f.frames[0].len()]);
        assert_eq!(r.last().map(|x| x.1.end), Some(b.len()));
        for w in r.windows(2) {
            assert_eq!(w[0].1.end, w[1].1.start);
        }
    }
}
