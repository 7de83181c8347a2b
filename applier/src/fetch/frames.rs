//! Assembling frames from range responses and checking each as its last byte arrives; the
//! streamed fallback for servers without ranges; the final verification of `NAME.part`.
//!
//! It exists to keep the bundle-format checks of a download (member header, BLAKE3, padding,
//! §7 verification) apart from the transport: whatever the server sends, only bytes at the
//! offsets asked for are written, each frame is judged only on its own complete bytes, and the
//! finished file is verified through the open handle (never by path, which someone else could
//! change under us).

use super::http::{net_error, Body};
use super::retry::Backoff;
use super::{Fail, Fetcher};
use crate::error::{Ctx, Error, Result};
use crate::verify::{self, Head};
use bundle::container::{self, Reader, Span};
use bundle::sig::TrustPolicy;
use bundle::{Hash, Limits};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Most bytes asked for in one range request (a run of consecutive frames).
const BATCH: u64 = 8 << 20;

/// A frame being received: header bytes, running hashes, padding check, and the next offset.
pub struct Job {
    pub pos: u64,
    hdr: [u8; 512],
    data: blake3::Hasher,
    /// Every byte of the span: tells a repeated identical corruption from a transfer error.
    whole: blake3::Hasher,
    pad_ok: bool,
}

impl Job {
    pub fn new(s: &Span) -> Job {
        Job { pos: s.start, hdr: [0; 512], data: blake3::Hasher::new(), whole: blake3::Hasher::new(), pad_ok: true }
    }

    /// Take the bytes at `self.pos` (at most up to the span's end); returns how many were taken.
    pub fn feed(&mut self, s: &Span, mut bytes: &[u8]) -> usize {
        let mut taken = 0;
        while !bytes.is_empty() && self.pos < s.end {
            let at = self.pos;
            let (k, region) = if at < s.data {
                ((s.data - at) as usize, 0)
            } else if at < s.data + s.size {
                ((s.data + s.size - at) as usize, 1)
            } else {
                ((s.end - at) as usize, 2)
            };
            let k = k.min(bytes.len());
            let b = &bytes[..k];
            match region {
                0 => {
                    let o = (at - s.start) as usize;
                    if let Some(h) = self.hdr.get_mut(o..o + k) {
                        h.copy_from_slice(b);
                    }
                }
                1 => {
                    self.data.update(b);
                }
                _ => self.pad_ok &= b.iter().all(|&x| x == 0),
            }
            self.whole.update(b);
            self.pos += k as u64;
            taken += k;
            bytes = &bytes[k..];
        }
        taken
    }

    /// Check a complete frame; on failure, why, and the digest of what was received.
    pub fn check(&self, s: &Span, f: &bundle::Frame) -> std::result::Result<(), (String, Hash)> {
        let header_ok = match s.member {
            Some((k, size)) => self.hdr == container::header(&container::payload_name(k), size),
            None => true,
        };
        let why = if !header_ok {
            "its tar header is not the canonical one"
        } else if Hash::from(self.data.finalize()) != f.hash {
            "hash mismatch"
        } else if !self.pad_ok {
            "non-zero padding"
        } else {
            return Ok(());
        };
        Err((why.to_string(), Hash::from(self.whole.finalize())))
    }
}

/// Where step 2 stands: frames still missing, frames partly received, failed frames.
struct Todo {
    pending: BTreeSet<usize>,
    jobs: BTreeMap<usize, Job>,
    /// Per failed frame: failures so far and the digest of the last failed bytes.
    bad: BTreeMap<usize, (u32, Hash)>,
}

impl Todo {
    /// The next run of consecutive missing frames: (first, last, from byte, to byte). A frame
    /// already partly received (a dropped connection) starts a run of its own, at the byte where
    /// it stopped.
    fn next_run(&mut self, spans: &[Span]) -> Option<(usize, u64, u64)> {
        let &first = self.pending.first()?;
        let from = self.jobs.entry(first).or_insert_with(|| Job::new(&spans[first])).pos;
        let mut last = first;
        while last + 1 < spans.len()
            && self.pending.contains(&(last + 1))
            && !self.jobs.contains_key(&(last + 1))
            && spans[last + 1].end - from <= BATCH
        {
            last += 1;
        }
        Some((first, from, spans[last].end))
    }
}

impl Fetcher<'_> {
    /// Step 2: every frame not verified yet.
    pub(super) fn frames(&mut self, spans: &[Span], frames: &[bundle::Frame]) -> Result<(), Fail> {
        let n = frames.len();
        let mut todo = Todo {
            pending: (0..n).filter(|i| !self.verified.contains(i)).collect(),
            jobs: BTreeMap::new(),
            bad: BTreeMap::new(),
        };
        let mut backoff = Backoff::default();
        let mut buf = vec![0u8; 256 << 10];
        while let Some((first, from, to)) = todo.next_run(spans) {
            let before = self.http.bytes;
            match self.run(&mut todo, &mut buf, (first, from, to), spans, frames) {
                Ok(()) => {}
                Err(Fail::Net(m)) => {
                    let _ = self.save(true);
                    let progress = self.http.bytes > before;
                    self.retry(&mut backoff, &format!("frames from byte {from}"), m, progress)?;
                }
                Err(e) => return Err(e),
            }
        }
        self.save(true)?;
        Ok(())
    }

    /// One range request for bytes `from..to`, starting in frame `first`.
    fn run(
        &mut self,
        todo: &mut Todo,
        buf: &mut [u8],
        (first, from, to): (usize, u64, u64),
        spans: &[Span],
        frames: &[bundle::Frame],
    ) -> Result<(), Fail> {
        let (mut body, len) = self.http.range(from, to)?;
        let (mut at, end) = (from, from + len);
        let mut cur = first;
        while at < end {
            let want = buf.len().min((end - at) as usize);
            let got = match body.read(&mut buf[..want]) {
                Ok(0) => return Err(Fail::Net(format!("connection closed after {} of {len} bytes", at - from))),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Net(format!("{e} (after {} of {len} bytes)", at - from))),
            };
            self.http.bytes += got as u64;
            self.write_at(&buf[..got], at)?;
            let mut chunk = &buf[..got];
            while !chunk.is_empty() && cur < spans.len() {
                let s = &spans[cur];
                let job = todo.jobs.entry(cur).or_insert_with(|| Job::new(s));
                let k = job.feed(s, chunk);
                chunk = &chunk[k..];
                at += k as u64;
                if job.pos == s.end {
                    if let Some(job) = todo.jobs.remove(&cur) {
                        self.frame_done(todo, cur, &job, s, &frames[cur])?;
                    }
                    cur += 1;
                }
            }
            if !chunk.is_empty() {
                return Err(Fail::Net("the server sent bytes past the last frame".into()));
            }
        }
        Ok(())
    }

    /// A frame's last byte arrived: record it as verified, or count the failure.
    fn frame_done(&mut self, todo: &mut Todo, i: usize, job: &Job, s: &Span, f: &bundle::Frame) -> Result<(), Fail> {
        let n = todo.pending.len() + self.verified.len();
        match job.check(s, f) {
            Ok(()) => {
                todo.pending.remove(&i);
                self.verified.insert(i);
                self.report.frames_fetched += 1;
                self.say(format_args!("fetched frame {i}/{n} ({} bytes)", f.size));
                self.save(false)?;
            }
            Err((why, digest)) => {
                let e = todo.bad.entry(i).or_insert((0, Hash([0; 32])));
                e.0 += 1;
                let again = e.1 == digest;
                e.1 = digest;
                if again || e.0 > self.o.retries {
                    return Err(Fail::Stop(Error::BadPart(format!(
                        "frame {i} (bytes {}..{}) of {}: {why}, {} — the file on the server is corrupt or not what its manifest was signed with",
                        s.start,
                        s.end,
                        self.o.url,
                        if again { "the same wrong bytes came twice".to_string() } else { format!("still after {} re-fetches", e.0 - 1) }
                    ))));
                }
                self.say(format_args!("re-fetching frame {i}: {why}"));
                self.report.refetched_frames.push(i);
            }
        }
        Ok(())
    }

    /// A body for the streamed mode: `first` if given, else a new plain GET.
    fn whole_body(&mut self, first: &mut Option<Body>, backoff: &mut Backoff) -> Result<Option<Body>, Fail> {
        if let Some(b) = first.take() {
            return Ok(Some(b));
        }
        match self.http.call("GET", None) {
            Ok((r, b)) if r.status == 200 => Ok(Some(b)),
            Ok((r, _)) => {
                Err(Fail::Stop(net_error(&self.o.url, format!("unexpected HTTP {} to a plain GET", r.status))))
            }
            Err(Fail::Net(m)) => {
                self.retry(backoff, "whole file", m, false)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Without range requests: stream the whole body through the same checks, from byte 0.
    pub(super) fn stream(&mut self, mut first: Option<Body>) -> Result<Head, Fail> {
        self.state = None;
        self.drop_state()?;
        let mut backoff = Backoff::default();
        let mut bad: BTreeMap<usize, u32> = BTreeMap::new();
        loop {
            let Some(body) = self.whole_body(&mut first, &mut backoff)? else { continue };
            self.part.set_len(0).ctx("truncate", self.dir.show(&self.dir.part))?;
            let before = self.http.bytes;
            let (mut net, mut disk) = (None, None);
            let res = {
                let tee = Tee {
                    inner: body,
                    file: &self.part,
                    at: 0,
                    count: &mut self.http.bytes,
                    net: &mut net,
                    disk: &mut disk,
                };
                let mut r = Reader::new(tee, self.limits.clone());
                stream_checks(&mut r, self.trust.as_ref(), &self.limits, self.o.quiet)
            };
            if let Some(e) = disk {
                return Err(Fail::Stop(Error::Io { op: "write", path: self.dir.show(&self.dir.part), source: e }));
            }
            match res {
                Ok(h) => {
                    self.report.frames = h.manifest.frames.len();
                    self.report.frames_fetched = h.manifest.frames.len();
                    return Ok(h);
                }
                Err(_) if net.is_some() => {
                    let m = net.unwrap_or_default();
                    self.retry(&mut backoff, "whole file", m, self.http.bytes > before)?;
                }
                Err(Error::Bundle(bundle::Error::FrameHash { index, .. })) => self.stream_bad(&mut bad, index)?,
                Err(e) => return Err(Fail::Stop(e)),
            }
        }
    }

    /// Streamed mode: frame `index` failed its hash; allow `--retries` whole re-fetches.
    fn stream_bad(&mut self, bad: &mut BTreeMap<usize, u32>, index: u32) -> Result<(), Fail> {
        let c = bad.entry(index as usize).or_insert(0);
        *c += 1;
        if *c > self.o.retries {
            return Err(Fail::Stop(Error::BadPart(format!(
                "frame {index} of {}: hash mismatch, still after {} re-fetches",
                self.o.url,
                *c - 1
            ))));
        }
        self.say(format_args!(
            "re-fetching frame {index}: hash mismatch (the whole file again: the server ignores ranges)"
        ));
        self.report.refetched_frames.push(index as usize);
        Ok(())
    }

    pub(super) fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.part.write_all_at(bytes, at).ctx("write", self.dir.show(&self.dir.part))
    }
}

/// The checks of [`verify::bundle`] on a stream, printing progress.
fn stream_checks<R: Read>(
    r: &mut Reader<R>,
    trust: Option<&TrustPolicy>,
    limits: &Limits,
    quiet: bool,
) -> Result<Head> {
    let h = verify::head(r, trust, limits)?;
    let n = h.manifest.frames.len();
    for (i, f) in h.manifest.frames.iter().enumerate() {
        r.check_frame(&h.manifest.frames, i)?;
        if !quiet {
            eprintln!("fetched frame {i}/{n} ({} bytes)", f.size);
        }
    }
    r.end()?;
    Ok(h)
}

/// Copies what is read to the `.part` file, and remembers a network error.
struct Tee<'a> {
    inner: Body,
    file: &'a File,
    at: u64,
    count: &'a mut u64,
    /// The server's connection failed.
    net: &'a mut Option<String>,
    /// Writing `.part` failed.
    disk: &'a mut Option<io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| *self.net = Some(e.to_string()))?;
        if let Err(e) = self.file.write_all_at(&buf[..n], self.at) {
            let r = io::Error::new(e.kind(), e.to_string());
            *self.disk = Some(e);
            return Err(r);
        }
        self.at += n as u64;
        *self.count += n as u64;
        Ok(n)
    }
}

/// Reads an open file from its start, by offset (the handle's own position is not used), and
/// hashes every byte it returns: read in order from byte 0 to the end of the file, the digest is
/// the whole file's.
struct ReadAt<'a> {
    file: &'a File,
    at: u64,
    whole: &'a mut blake3::Hasher,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.whole.update(&buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

/// [`verify::bundle`] with decoding, on an open file: head, trust, every frame's hash and
/// (for frames that need no OLD base) decoded size, the end of the archive. Also returns the
/// BLAKE3 of the whole file, computed by the same single read (the checks read it in order
/// from byte 0 to its end, which [`Reader::end`] requires to be the end of the file).
pub fn verify_file(file: &File, trust: Option<&TrustPolicy>, limits: &Limits) -> Result<(Head, Hash)> {
    let mut whole = blake3::Hasher::new();
    let src = io::BufReader::with_capacity(1 << 20, ReadAt { file, at: 0, whole: &mut whole });
    let mut r = Reader::new(src, limits.clone());
    let h = verify::head(&mut r, trust, limits)?;
    let codecs = verify::frame_codecs(&h.manifest);
    for (i, f) in h.manifest.frames.iter().enumerate() {
        let Some(codec) = codecs.get(i).copied().flatten() else {
            r.check_frame(&h.manifest.frames, i)?;
            continue;
        };
        let mut fr = r.frame(&h.manifest.frames, i)?;
        let fe = |e: io::Error| Error::Bundle(bundle::Error::FrameDecode { index: i as u32, what: e.to_string() });
        let d = verify::decoder(&mut fr, codec, None, limits, i, f.decoded)?;
        let n = io::copy(&mut d.take(f.decoded.saturating_add(1)), &mut io::sink()).map_err(fe)?;
        if n != f.decoded {
            let what = format!("decodes to {n} bytes, declared {}", f.decoded);
            return Err(bundle::Error::FrameDecode { index: i as u32, what }.into());
        }
        fr.finish()?;
    }
    r.end()?;
    drop(r);
    Ok((h, Hash::from(whole.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bundle::container::BLOCK;

    #[test]
    fn job_checks_header_hash_padding() {
        let data = b"frame bytes".to_vec();
        let f = bundle::Frame { size: data.len() as u64, hash: Hash::from(blake3::hash(&data)), decoded: 0 };
        let mut member = container::header(&container::payload_name(3), f.size).to_vec();
        member.extend_from_slice(&data);
        member.resize(1024, 0);
        let s = Span { start: 1000, data: 1000 + BLOCK, size: f.size, end: 2024, member: Some((3, f.size)) };
        let mut j = Job::new(&s);
        for c in member.chunks(100) {
            assert_eq!(j.feed(&s, c), c.len());
        }
        assert!(j.check(&s, &f).is_ok());
        let other = Span { member: Some((4, f.size)), ..s };
        assert!(j.check(&other, &f).is_err(), "header names another member");
        // A frame in the middle of a member has neither header nor padding.
        let mid = Span { start: 1000, data: 1000, size: f.size, end: 1000 + f.size, member: None };
        let mut jm = Job::new(&mid);
        assert_eq!(jm.feed(&mid, &member[512..]), data.len());
        assert!(jm.check(&mid, &f).is_ok());
        let check = |m: &[u8]| {
            let mut j = Job::new(&s);
            j.feed(&s, m);
            j.check(&s, &f).err().map(|e| e.0)
        };
        let mut bad = member.clone();
        bad[515] ^= 1; // data
        assert_eq!(check(&bad).as_deref(), Some("hash mismatch"));
        let mut bad = member.clone();
        bad[600] ^= 1; // padding
        assert_eq!(check(&bad).as_deref(), Some("non-zero padding"));
        let mut bad = member;
        bad[130] ^= 1; // size field of the header
        assert_eq!(check(&bad).as_deref(), Some("its tar header is not the canonical one"));
    }
}
