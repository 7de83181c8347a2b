//! Verification, in the order bundle-format.md ("Verification order") fixes: canonical framing of
//! the head, the bundle id (BLAKE3 of the manifest member's bytes), every signature over it, the
//! trust policy, then the manifest is parsed and checked, the apply script validated, every
//! frame's hash checked, and the end of the archive. Nothing is written anywhere until this
//! succeeds.

use crate::error::{Error, Result};
use crate::source;
use bundle::container::Reader;
use bundle::sig::{self, PublicKey, TrustPolicy, TrustStatus};
use bundle::{Hash, Limits, Manifest};
use std::io::Read;
use std::path::Path;

/// A bundle whose head passed verification.
#[derive(Clone, Debug)]
pub struct Head {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub sig_bytes: Vec<u8>,
    /// BLAKE3 of the manifest bytes: the bundle's identity.
    pub id: Hash,
    /// Every key that signed, sorted by key bytes (all verified).
    pub signers: Vec<PublicKey>,
    /// What the trust policy made of them, when there was one (met: a refusal is an error).
    pub trust: Option<TrustStatus>,
    /// Set once an encrypted bundle is opened ([`crate::unseal::open`]): `manifest` is then the
    /// inner manifest, and frames are decrypted with this key.
    pub opened: Option<crate::unseal::Opened>,
}

/// Check the head (signatures first, then trust, then parse) read from `r`.
pub fn head<R: Read>(r: &mut Reader<R>, trust: Option<&TrustPolicy>, limits: &Limits) -> Result<Head> {
    let SignedHead { manifest_bytes, sig_bytes, id, signers, trust } = signed_head(r, trust, limits)?;
    let manifest = Manifest::decode(&manifest_bytes, limits)?;
    bundle::script::validate(&manifest)?;
    Ok(Head { id, manifest, manifest_bytes, sig_bytes, signers, trust, opened: None })
}

/// The head of a bundle whose signatures (and trust) are checked but whose manifest is not
/// decoded yet.
pub struct SignedHead {
    pub manifest_bytes: Vec<u8>,
    pub sig_bytes: Vec<u8>,
    /// BLAKE3 of the manifest bytes: the bundle's identity, which the signatures cover.
    pub id: Hash,
    pub signers: Vec<PublicKey>,
    pub trust: Option<TrustStatus>,
}

/// The manifest and signature members read from `r`, the bundle id, every signature checked over
/// it and, with `trust`, the trust policy (§7 steps 1–4); nothing decoded yet.
pub fn signed_head<R: Read>(r: &mut Reader<R>, trust: Option<&TrustPolicy>, limits: &Limits) -> Result<SignedHead> {
    let (manifest_bytes, sig_bytes) = r.head()?;
    let id = Manifest::id(&manifest_bytes);
    let signers = sig::Signatures::decode(&sig_bytes, limits.max_signatures)?.verify(&id)?;
    let trust = trust.map(|t| t.check(&signers)).transpose()?;
    Ok(SignedHead { manifest_bytes, sig_bytes, id, signers, trust })
}

/// Verify a whole bundle file: head, trust, every frame hash and the end of the archive. With
/// `decode`, also decode every plain-zstd frame to check its exact decoded size. With `keys`, an
/// encrypted bundle is opened after its head is verified ([`crate::unseal::open`]; no matching
/// identity is an error) and its frames are decrypted to be decoded; without, only what is
/// public is checked (signatures, trust, every stored frame's hash).
pub fn bundle(
    path: &Path,
    trust: Option<&TrustPolicy>,
    keys: Option<&crate::unseal::Keyring>,
    limits: &Limits,
    decode: bool,
) -> Result<Head> {
    bundle_with_progress(path, trust, keys, limits, decode, false)
}

/// [`bundle`], showing progress over the frames ([`crate::progress`]).
pub fn bundle_with_progress(
    path: &Path,
    trust: Option<&TrustPolicy>,
    keys: Option<&crate::unseal::Keyring>,
    limits: &Limits,
    decode: bool,
    progress: bool,
) -> Result<Head> {
    let src = source::open(path)?;
    let mut r = Reader::new(src.reader, limits.clone());
    let h = head(&mut r, trust, limits).map_err(source::explain)?;
    let h = match keys {
        Some(k) => crate::unseal::open(h, k, limits)?,
        None => h,
    };
    let patch: Vec<bool> = frame_is_patch(&h.manifest);
    let total: u64 = h.manifest.frames.iter().map(|f| f.size).sum();
    let mut prog = crate::progress::Progress::new("verify", "frames", h.manifest.frames.len() as u64, total, progress);
    let mut read = 0u64;
    for (i, f) in h.manifest.frames.iter().enumerate() {
        prog.tick(i as u64, read);
        read += f.size;
        let res = if decode && !patch[i] {
            let mut fr = r.frame(&h.manifest.frames, i).map_err(|e| source::explain(e.into()))?;
            // A read error inside a frame (a missing last part) names the part too.
            let n = decode_count(crate::unseal::frame_reader(&mut fr, &h, i), limits, f.decoded, i)
                .map_err(source::explain)?;
            if n != f.decoded {
                return Err(bundle::Error::FrameDecode {
                    index: i as u32,
                    what: format!("decodes to {n} bytes, declared {}", f.decoded),
                }
                .into());
            }
            fr.finish()
        } else {
            r.check_frame(&h.manifest.frames, i)
        };
        res.map_err(|e| source::explain(e.into()))?;
    }
    r.end().map_err(|e| source::explain(e.into()))?;
    prog.finish(h.manifest.frames.len() as u64, read);
    Ok(h)
}

/// Which frames cannot be decoded from the bundle alone: patch frames (they need an OLD base),
/// and every frame of an encrypted bundle that is not opened (its outer manifest lists no
/// pieces, and its frames are ciphertext).
pub fn frame_is_patch(m: &Manifest) -> Vec<bool> {
    let mut v = vec![m.sealed.is_some(); m.frames.len()];
    for e in &m.entries {
        if let bundle::Kind::File { content: bundle::Content::Pieces(ps), .. } = &e.kind {
            for p in ps {
                if matches!(p.method, bundle::Method::Patch { .. }) {
                    if let Some(x) = v.get_mut(p.frame as usize) {
                        *x = true;
                    }
                }
            }
        }
    }
    v
}

/// A zstd decoder over `r` bounded by the limits' window, optionally with a reference prefix.
pub fn decoder<'a, R: Read>(
    r: R,
    prefix: Option<&'a [u8]>,
    limits: &Limits,
    index: usize,
) -> Result<zstd::stream::read::Decoder<'a, std::io::BufReader<R>>> {
    let fe = |e: std::io::Error| Error::Bundle(bundle::Error::FrameDecode { index: index as u32, what: e.to_string() });
    let mut d = match prefix {
        Some(p) => zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(r), p).map_err(fe)?,
        None => zstd::stream::read::Decoder::new(r).map_err(fe)?,
    };
    d.window_log_max(limits.max_window_log).map_err(fe)?;
    Ok(d.single_frame())
}

/// Decode a frame to nowhere, counting at most `declared + 1` bytes: a frame that decodes to more
/// than declared is cut off there (decompression bombs cost at most the declared size).
fn decode_count<R: Read>(r: R, limits: &Limits, declared: u64, index: usize) -> Result<u64> {
    let d = decoder(r, None, limits, index)?;
    let mut lim = d.take(declared + 1);
    std::io::copy(&mut lim, &mut std::io::sink())
        .map_err(|e| Error::Bundle(bundle::Error::FrameDecode { index: index as u32, what: e.to_string() }))
}
