//! Verification, in the order bundle-format.md ("Verification order") fixes: canonical framing of
//! the head, the bundle id (BLAKE3 of the manifest member's bytes), every signature over it, the
//! trust policy, then the manifest is parsed and checked, the apply script validated, every
//! frame's hash checked, and the end of the archive.
//!
//! `verify` and `plan` do all of it here. `apply` verifies the head here ([`OpenBundle`]: read
//! once, signatures checked once) and leaves the reader at the first payload member: staging
//! checks every frame's hash and the end of the archive as it reads them, writing only into
//! ferry's work directories, and the commit (the first change to the live tree) starts only
//! after all of it passed (bundle-format.md §7).

use crate::error::{Error, Result};
use crate::source;
use bundle::container::Reader;
use bundle::lzma::Bcj;
use bundle::sig::{self, PublicKey, TrustPolicy, TrustStatus};
use bundle::{Hash, Limits, Manifest, Method};
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

/// A bundle's reader, from a file or a split bundle's parts.
pub type BundleReader = Reader<Box<dyn Read + Send>>;

/// A bundle opened to be applied: its head read once and every signature verified over it,
/// the reader left at the first payload member so that staging reads each frame once. The trust
/// policy is checked on the verified signers ([`OpenBundle::trust`]) — again, cheaply, under the
/// target's lock with the policy loaded there — and the manifest is decoded once, after it.
pub struct OpenBundle {
    pub reader: BundleReader,
    pub signed: SignedHead,
    manifest: Option<Manifest>,
}

impl OpenBundle {
    /// Open `path` (a file or split bundle) and read and check its head (§7 steps 1–3).
    pub fn open(path: &Path, limits: &Limits) -> Result<OpenBundle> {
        let src = source::open(path)?;
        let mut reader = Reader::new(src.reader, limits.clone());
        let signed = signed_head(&mut reader, None, limits).map_err(source::explain)?;
        Ok(OpenBundle { reader, signed, manifest: None })
    }

    /// The bundle id (BLAKE3 of the manifest member; the signatures cover it).
    pub fn id(&self) -> Hash {
        self.signed.id
    }

    /// Check the trust policy on the signers (§7 step 4); recorded in the head.
    pub fn trust(&mut self, trust: &TrustPolicy) -> Result<()> {
        self.signed.trust = Some(trust.check(&self.signed.signers)?);
        Ok(())
    }

    /// The manifest, decoded on first use (§7 step 5), once the trust policy was met. A decoding
    /// error is returned and nothing kept.
    pub fn manifest(&mut self, limits: &Limits) -> Result<&Manifest> {
        if self.signed.trust.is_none() {
            return Err(Error::Internal("manifest decoded before the trust policy was checked".into()));
        }
        let m = match self.manifest.take() {
            Some(m) => m,
            None => {
                let m = Manifest::decode(&self.signed.manifest_bytes, limits)?;
                bundle::script::validate(&m)?;
                m
            }
        };
        Ok(self.manifest.insert(m))
    }

    /// The verified head and the reader at its first payload member.
    pub fn into_head(mut self, limits: &Limits) -> Result<(Head, BundleReader)> {
        self.manifest(limits)?;
        let manifest = self.manifest.ok_or_else(|| Error::Internal("manifest not decoded".into()))?;
        let SignedHead { manifest_bytes, sig_bytes, id, signers, trust } = self.signed;
        Ok((Head { manifest, manifest_bytes, sig_bytes, id, signers, trust, opened: None }, self.reader))
    }
}

/// Verify a whole bundle file: head, trust, every frame hash and the end of the archive. With
/// `decode`, also decode every frame that needs no OLD base (plain zstd, bsdiff and LZMA2
/// frames) to check its exact decoded size. With `keys`, an
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
    frames(&mut r, &h, limits, decode, progress)?;
    Ok(h)
}

/// §7 steps 7–8 on `r`, a bundle's reader left after the head `h`: every frame's framing and
/// hash (with `decode`, every frame that needs no OLD base also decoded to check its exact
/// decoded size), then the end of the archive.
pub fn frames<R: Read>(r: &mut Reader<R>, h: &Head, limits: &Limits, decode: bool, progress: bool) -> Result<()> {
    let codecs = frame_codecs(&h.manifest);
    let total: u64 = h.manifest.frames.iter().map(|f| f.size).sum();
    let mut prog = crate::progress::Progress::new("verify", "frames", h.manifest.frames.len() as u64, total, progress);
    let mut read = 0u64;
    for (i, f) in h.manifest.frames.iter().enumerate() {
        prog.tick(i as u64, read);
        read += f.size;
        let res = if let Some(codec) = codecs[i].filter(|_| decode) {
            // As in staging (§7), the frame is read whole and its hash checked before any byte
            // of it is decrypted or decoded: in memory up to [`SPOOL_ABOVE`] bytes, else in an
            // unnamed scratch file. A corrupt frame is reported as one, never by the decoding
            // error it may also cause; a read error inside a frame (a missing last part) names
            // the part too.
            let explain = |e: std::io::Error| source::explain(bundle::container::unwrap_io(e, i).into());
            let mut fr = r.frame(&h.manifest.frames, i).map_err(|e| source::explain(e.into()))?;
            let n = if f.size <= SPOOL_ABOVE {
                let mut bytes = Vec::with_capacity(f.size as usize);
                fr.read_to_end(&mut bytes).map_err(explain)?;
                fr.finish().map_err(|e| source::explain(e.into()))?;
                decode_count(crate::unseal::frame_reader(&bytes[..], h, i), codec, limits, f.decoded, i)
            } else {
                let mut spool = scratch_file().map_err(|e| Error::Io {
                    op: "create a scratch file in",
                    path: std::env::temp_dir().display().to_string(),
                    source: e,
                })?;
                std::io::copy(&mut fr, &mut spool).map_err(explain)?;
                fr.finish().map_err(|e| source::explain(e.into()))?;
                std::io::Seek::rewind(&mut spool).map_err(|e| Error::Io {
                    op: "rewind a scratch file in",
                    path: std::env::temp_dir().display().to_string(),
                    source: e,
                })?;
                let spool = std::io::BufReader::new(spool);
                decode_count(crate::unseal::frame_reader(spool, h, i), codec, limits, f.decoded, i)
            };
            let n = n.map_err(source::explain)?;
            if n != f.decoded {
                return Err(bundle::Error::FrameDecode {
                    index: i as u32,
                    what: format!("decodes to {n} bytes, declared {}", f.decoded),
                }
                .into());
            }
            Ok(())
        } else {
            r.check_frame(&h.manifest.frames, i)
        };
        res.map_err(|e| source::explain(e.into()))?;
    }
    r.end().map_err(|e| source::explain(e.into()))?;
    prog.finish(h.manifest.frames.len() as u64, read);
    Ok(())
}

/// Frames above this many bytes are checked in a scratch file rather than in memory before
/// `verify --decode` decodes them (the bound staging uses too).
const SPOOL_ABOVE: u64 = 8 << 20;

/// An unnamed scratch file in the temporary directory (`O_TMPFILE`: no name another user could
/// open, replace or plant), gone when closed; where the filesystem lacks `O_TMPFILE`, a file
/// created exclusively under a random name and unlinked at once.
fn scratch_file() -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let dir = std::env::temp_dir();
    match rustix::fs::open(&dir, OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            let d = rustix::fs::open(&dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
            let name = format!(".ferry-verify-{}-{}", std::process::id(), crate::state::now());
            crate::fsx::scratch_file_at(std::os::fd::AsFd::as_fd(&d), name.as_bytes())
        }
        Err(e) => Err(e.into()),
    }
}

/// How each frame decodes without an OLD base: `None` for patch frames (they need their base)
/// and for every frame of an encrypted bundle that is not opened (its outer manifest lists no
/// pieces, and its frames are ciphertext); a bsdiff frame decodes to its patch (zstd, or LZMA2
/// for `BsdiffLzma`, or three LZMA2 streams for `BsdiffSplit`).
pub fn frame_codecs(m: &Manifest) -> Vec<Option<Codec>> {
    let mut v = vec![None; m.frames.len()];
    if m.sealed.is_some() {
        return v;
    }
    let mut patch = vec![false; m.frames.len()];
    for e in &m.entries {
        if let bundle::Kind::File { content: bundle::Content::Pieces(ps), .. } = &e.kind {
            for p in ps {
                let i = p.frame as usize;
                if let (Some(c), Some(is_patch)) = (v.get_mut(i), patch.get_mut(i)) {
                    *is_patch |= matches!(p.method, Method::Patch { .. });
                    *c = Some(Codec::of(&p.method));
                }
            }
        }
    }
    v.into_iter().zip(patch).map(|(c, p)| c.filter(|_| !p)).collect()
}

/// How a frame is decoded, from its pieces' method: zstd (plain, with a reference prefix, or to a
/// bsdiff patch), or raw LZMA2 behind a filter (or, to a bsdiff patch, without one)
/// (bundle-format.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Lzma {
        filter: Bcj,
        dict_log: u8,
    },
    /// A `BsdiffSplit` frame's three LZMA2 streams, decoded one after the other.
    LzmaSplit {
        dict_log: u8,
        parts: bundle::lzma::SplitParts,
    },
}

impl Codec {
    pub fn of(m: &Method) -> Codec {
        match m {
            Method::Lzma { filter, dict_log } => Codec::Lzma { filter: *filter, dict_log: *dict_log },
            Method::BsdiffLzma { dict_log, .. } => Codec::Lzma { filter: Bcj::None, dict_log: *dict_log },
            Method::BsdiffSplit { dict_log, .. } => {
                Codec::LzmaSplit { dict_log: *dict_log, parts: m.split_parts().unwrap_or_default() }
            }
            Method::Zstd | Method::Patch { .. } | Method::Bsdiff { .. } => Codec::Zstd,
        }
    }
}

/// A frame's decoder: zstd, or LZMA2 behind its filter (or a split bsdiff frame's streams).
pub enum FrameDecoder<'a, R: Read> {
    Zstd(zstd::stream::read::Decoder<'a, std::io::BufReader<R>>),
    Lzma(bundle::lzma::Decoder<R>),
    LzmaSplit(Box<bundle::lzma::SplitDecoder<R>>),
}

impl<R: Read> Read for FrameDecoder<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            FrameDecoder::Zstd(d) => d.read(buf),
            FrameDecoder::Lzma(d) => d.read(buf),
            FrameDecoder::LzmaSplit(d) => d.read(buf),
        }
    }
}

/// The decoder of frame `index` (`decoded` bytes declared) over `r`: zstd bounded by the limits'
/// window, with `prefix` as reference prefix for a patch; or LZMA2 with a dictionary bounded by
/// the limits and by `decoded` ([`bundle::lzma::Decoder`]). Either yields more than `decoded`
/// bytes for a frame that decodes to more: the caller reads at most `decoded + 1`.
pub fn decoder<'a, R: Read>(
    r: R,
    codec: Codec,
    prefix: Option<&'a [u8]>,
    limits: &Limits,
    index: usize,
    decoded: u64,
) -> Result<FrameDecoder<'a, R>> {
    let fe = |e: std::io::Error| Error::Bundle(bundle::Error::FrameDecode { index: index as u32, what: e.to_string() });
    match codec {
        Codec::Lzma { filter, dict_log } => {
            return Ok(FrameDecoder::Lzma(
                bundle::lzma::Decoder::new(r, filter, dict_log, decoded, limits).map_err(fe)?,
            ));
        }
        Codec::LzmaSplit { dict_log, parts } => {
            let d = bundle::lzma::SplitDecoder::new(r, dict_log, parts, decoded, limits).map_err(fe)?;
            return Ok(FrameDecoder::LzmaSplit(Box::new(d)));
        }
        Codec::Zstd => {}
    }
    let mut d = match prefix {
        Some(p) => zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(r), p).map_err(fe)?,
        None => zstd::stream::read::Decoder::new(r).map_err(fe)?,
    };
    d.window_log_max(limits.max_window_log).map_err(fe)?;
    Ok(FrameDecoder::Zstd(d.single_frame()))
}

/// Decode a frame to nowhere, counting at most `declared + 1` bytes: a frame that decodes to more
/// than declared is cut off there (decompression bombs cost at most the declared size).
fn decode_count<R: Read>(r: R, codec: Codec, limits: &Limits, declared: u64, index: usize) -> Result<u64> {
    let d = decoder(r, codec, None, limits, index, declared)?;
    let mut lim = d.take(declared + 1);
    std::io::copy(&mut lim, &mut std::io::sink())
        .map_err(|e| Error::Bundle(bundle::Error::FrameDecode { index: index as u32, what: e.to_string() }))
}
