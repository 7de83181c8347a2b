//! End-to-end tests of the `ferry-build` binary: build bundles from temporary trees and read
//! them back with the `bundle` crate the way the applier does.

use assert_cmd::Command;
use bundle::container::Reader;
use bundle::{Content, Kind, Limits, Manifest, Method, Op};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-build"));
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn keygen(dir: &Path, name: &str) -> R<PathBuf> {
    let base = dir.join(name);
    ferry().arg("keygen").arg("--unencrypted").arg("--out").arg(&base).assert().success();
    Ok(dir.join(format!("{name}.secret")))
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// OLD and NEW trees exercising every kind of change.
fn trees(root: &Path) -> R<(PathBuf, PathBuf)> {
    let old = root.join("old");
    let new = root.join("new");
    let big = pseudo_random(200_000, 7);
    for t in [&old, &new] {
        fs::create_dir_all(t.join("etc"))?;
        fs::create_dir_all(t.join("lib"))?;
        fs::write(t.join("etc/same.conf"), b"unchanged\n")?;
    }
    // OLD
    fs::write(old.join("etc/app.conf"), b"port = 1\n")?;
    fs::write(old.join("lib/libfoo.so.1.2.3"), &big)?;
    symlink("libfoo.so.1.2.3", old.join("lib/libfoo.so.1"))?;
    fs::write(old.join("moved-from"), b"this content moves")?;
    fs::create_dir_all(old.join("dir-to-file/sub"))?;
    fs::write(old.join("dir-to-file/sub/x"), b"x")?;
    fs::write(old.join("file-to-dir"), b"f")?;
    fs::create_dir_all(old.join("gone/deeper"))?;
    fs::write(old.join("gone/deeper/z"), b"z")?;
    // NEW
    fs::write(new.join("etc/app.conf"), b"port = 2\n")?;
    let mut big2 = big.clone();
    big2[5000..5010].copy_from_slice(b"0123456789");
    fs::write(new.join("lib/libfoo.so.1.2.4"), &big2)?;
    symlink("libfoo.so.1.2.4", new.join("lib/libfoo.so.1"))?;
    fs::write(new.join("moved-to"), b"this content moves")?;
    fs::write(new.join("dir-to-file"), b"now a file")?;
    fs::create_dir_all(new.join("file-to-dir"))?;
    fs::write(new.join("file-to-dir/child"), b"child")?;
    fs::write(new.join("empty"), b"")?;
    let dup = pseudo_random(3000, 9);
    fs::write(new.join("dup1"), &dup)?;
    fs::write(new.join("dup2"), &dup)?;
    fs::write(new.join("hl-a"), b"linked")?;
    fs::hard_link(new.join("hl-a"), new.join("hl-b"))?;
    Ok((old, new))
}

struct Read_ {
    manifest: Manifest,
    /// Key ids of the signers (every signature verified).
    signers: Vec<String>,
    frames: Vec<Vec<u8>>,
}

fn read_bundle(path: &Path) -> R<Read_> {
    let f = fs::File::open(path)?;
    let mut r = Reader::new(std::io::BufReader::new(f), Limits::default());
    let (mb, sb) = r.head()?;
    let keys = bundle::sig::verify_signatures(&mb, &sb, Limits::default().max_signatures)?;
    let manifest = Manifest::decode(&mb, &Limits::default())?;
    bundle::script::validate(&manifest)?;
    let mut frames = Vec::new();
    for i in 0..manifest.frames.len() {
        let mut rd = r.frame(&manifest.frames, i)?;
        let mut v = Vec::new();
        rd.read_to_end(&mut v)?;
        rd.finish()?;
        frames.push(v);
    }
    r.end()?;
    let signers = keys.into_iter().map(|k| k.id).collect();
    Ok(Read_ { manifest, signers, frames })
}

/// Reconstruct the content of every NEW file from OLD and the frames; compare with NEW.
fn check_contents(b: &Read_, old: &Path, new: &Path) -> R {
    let fsp = |root: &Path, p: &bundle::BundlePath| root.join(std::ffi::OsStr::from_bytes(p.as_bytes()));
    for e in &b.manifest.entries {
        let Kind::File { content, hash, .. } = &e.kind else {
            continue;
        };
        let data = match content {
            Content::Unchanged => fs::read(fsp(old, &e.path))?,
            Content::Empty => Vec::new(),
            Content::Copy { from } => fs::read(fsp(old, from))?,
            Content::Pieces(ps) => {
                let mut out = Vec::new();
                for p in ps {
                    let frame = &b.frames[p.frame as usize];
                    let decoded = match &p.method {
                        Method::Zstd => zstd::stream::decode_all(&frame[..])?,
                        Method::Patch { base, offset, len } => {
                            let o = fs::read(fsp(old, base))?;
                            let prefix = &o[*offset as usize..(*offset + *len) as usize];
                            let mut d = zstd::stream::read::Decoder::with_ref_prefix(&frame[..], prefix)?;
                            d.window_log_max(28)?;
                            let mut v = Vec::new();
                            d.read_to_end(&mut v)?;
                            v
                        }
                        Method::Bsdiff { base, offset, len } => {
                            let o = fs::read(fsp(old, base))?;
                            let patch = zstd::stream::decode_all(&frame[..])?;
                            let window = &o[*offset as usize..(*offset + *len) as usize];
                            let mut out = vec![0u8; p.offset as usize];
                            out.extend(bundle::bspatch::apply(window, &patch, p.len)?);
                            out
                        }
                        Method::BsdiffLzma { base, offset, len, dict_log } => {
                            let o = fs::read(fsp(old, base))?;
                            let decoded = b.manifest.frames[p.frame as usize].decoded;
                            let lim = bundle::Limits::default();
                            let patch = bundle::lzma::decode(frame, bundle::lzma::Bcj::None, *dict_log, decoded, &lim)?;
                            let window = &o[*offset as usize..(*offset + *len) as usize];
                            let mut out = vec![0u8; p.offset as usize];
                            out.extend(bundle::bspatch::apply(window, &patch, p.len)?);
                            out
                        }
                        Method::BsdiffSplit { base, offset, len, dict_log, control, copy, .. } => {
                            let o = fs::read(fsp(old, base))?;
                            let decoded = b.manifest.frames[p.frame as usize].decoded;
                            let lim = bundle::Limits::default();
                            let parts = p.method.split_parts().ok_or("split parts")?;
                            let mut d = bundle::lzma::SplitDecoder::new(&frame[..], *dict_log, parts, decoded, &lim)?;
                            let mut streams = Vec::new();
                            d.read_to_end(&mut streams)?;
                            let (c, rest) = streams.split_at(*control as usize);
                            let (l, diff) = rest.split_at(*copy as usize);
                            let window = &o[*offset as usize..(*offset + *len) as usize];
                            let mut out = vec![0u8; p.offset as usize];
                            bundle::bspatch::apply_split(window, c, l, diff, p.len, |_, chunk| {
                                out.extend_from_slice(chunk);
                                Ok(())
                            })?;
                            out
                        }
                        Method::Lzma { filter, dict_log } => {
                            let decoded = b.manifest.frames[p.frame as usize].decoded;
                            bundle::lzma::decode(frame, *filter, *dict_log, decoded, &bundle::Limits::default())?
                        }
                    };
                    out.extend_from_slice(&decoded[p.offset as usize..(p.offset + p.len) as usize]);
                }
                out
            }
        };
        // Unchanged content has no digest of its own (OLD's); the comparison with NEW covers it.
        assert_eq!(hash.is_none(), *content == Content::Unchanged, "{}", e.path);
        if let Some(h) = hash {
            assert_eq!(bundle::Hash::of(&data), *h, "{}", e.path);
        }
        assert_eq!(data, fs::read(fsp(new, &e.path))?, "{}", e.path);
    }
    Ok(())
}

#[test]
fn build_delta_bundle_and_read_it_back() -> R {
    let d = tempfile::tempdir()?;
    let key = keygen(d.path(), "k")?;
    let key2 = keygen(d.path(), "k2")?;
    let (old, new) = trees(d.path())?;
    let out = d.path().join("b.ferry");
    let o = ferry()
        .args(["build", "--version", "2", "--base-version", "1", "--level", "fast", "--json"])
        .arg("--new")
        .arg(&new)
        .arg("--old")
        .arg(&old)
        .arg("--key")
        .arg(&key)
        .arg("--key")
        .arg(&key2)
        .arg("--out")
        .arg(&out)
        .args(["--config-files", "etc/*.conf", "--hook", "lib/**=ldconfig", "--hook-timeout", "30"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(report["ferry_report"], 1);
    assert_eq!(report["command"], "build");
    assert_eq!(report["bytes"].as_u64(), Some(fs::metadata(&out)?.len()));
    assert!(!d.path().join("b.ferry.tmp").exists());

    let b = read_bundle(&out)?;
    let m = &b.manifest;
    assert_eq!(m.version, 2);
    assert_eq!(b.signers.len(), 2);
    assert_eq!(report["signers"].as_array().map(Vec::len), Some(2), "{report}");
    assert_eq!(report["bundle_id"].as_str().map(str::len), Some(64), "{report}");
    assert_eq!(m.created, 1_700_000_000);
    assert_eq!(m.base.as_ref().and_then(|b| b.version), Some(1));
    assert_eq!(m.hooks.len(), 1);
    assert_eq!(m.hooks[0].timeout_secs, 30);
    assert_eq!(report["entries"].as_u64(), Some(m.entries.len() as u64));
    assert_eq!(report["frames"].as_u64(), Some(m.frames.len() as u64));
    check_contents(&b, &old, &new)?;

    let by: BTreeMap<String, &bundle::Entry> = m.entries.iter().map(|e| (e.path.display(), e)).collect();
    let content = |p: &str| match &by[p].kind {
        Kind::File { content, .. } => content.clone(),
        k => panic!("{p}: {k:?}"),
    };
    // Unchanged content: listed only if its metadata changes (the trees are written at
    // different instants, so its mtime may differ); otherwise not listed at all.
    if by.contains_key("etc/same.conf") {
        assert_eq!(content("etc/same.conf"), Content::Unchanged);
        assert!(m.script.iter().any(|s| s.op == Op::SetMeta && s.path.display() == "etc/same.conf"));
    }
    let listed = report["entries"].as_u64().unwrap_or(0);
    assert!(report["tree_entries"].as_u64().is_some_and(|t| t >= listed), "{report}");
    assert!(matches!(content("moved-to"), Content::Copy { from } if from.display() == "moved-from"));
    assert_eq!(content("empty"), Content::Empty);
    assert!(matches!(&by["etc/app.conf"].kind, Kind::File { config: true, .. }));
    // The version-bumped library is a patch against the old one, and small.
    match content("lib/libfoo.so.1.2.4") {
        Content::Pieces(ps) => {
            assert_eq!(ps.len(), 1);
            assert!(matches!(&ps[0].method, Method::Patch { base, .. } if base.display() == "lib/libfoo.so.1.2.3"));
            assert!(m.frames[ps[0].frame as usize].size < 2000);
        }
        c => panic!("{c:?}"),
    }
    // Identical new content is encoded once.
    assert_eq!(content("dup1"), content("dup2"));
    assert_eq!(report["stats"]["dedup"]["files"], 1);
    assert!(matches!(&by["hl-b"].kind, Kind::Hardlink { primary } if primary.display() == "hl-a"));

    let script: Vec<String> = m.script.iter().map(|s| format!("{:?} {}", s.op, s.path)).collect();
    let pos = |s: &str| script.iter().position(|x| x == s).unwrap_or_else(|| panic!("{s} not in {script:?}"));
    assert!(pos("Place lib/libfoo.so.1.2.4") < pos("Place lib/libfoo.so.1"));
    assert!(pos("Place file-to-dir") < pos("Place file-to-dir/child"));
    assert!(pos("Delete gone/deeper/z") < pos("Delete gone/deeper"));
    assert!(pos("Delete gone/deeper") < pos("Delete gone"));
    assert!(!script.iter().any(|s| s.contains("dir-to-file/")));
    assert!(m.old.iter().any(|o| o.path.display() == "dir-to-file/sub/x"));
    assert!(m.script.iter().filter(|s| s.op == Op::DirMeta).all(|s| m.entry(&s.path).is_some()));
    Ok(())
}

#[test]
fn full_bundle_is_deterministic_and_chunked() -> R {
    let d = tempfile::tempdir()?;
    let key = keygen(d.path(), "k")?;
    let new = d.path().join("new");
    fs::create_dir_all(new.join("a/b"))?;
    fs::write(new.join("a/b/f"), pseudo_random(20_000, 3))?;
    fs::write(new.join("big"), pseudo_random(10_000, 4).repeat(3))?;
    symlink("a/b/f", new.join("l"))?;
    let build = |out: &Path| {
        ferry()
            .args(["build", "--version", "1", "--level", "3", "--chunk-size", "8K"])
            .arg("--new")
            .arg(&new)
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(out)
            .assert()
            .success();
    };
    let (o1, o2) = (d.path().join("1.ferry"), d.path().join("2.ferry"));
    build(&o1);
    build(&o2);
    assert_eq!(fs::read(&o1)?, fs::read(&o2)?);
    let b = read_bundle(&o1)?;
    assert!(b.manifest.base.is_none());
    match &b.manifest.entry(&bundle::BundlePath::new("big")?).ok_or("big")?.kind {
        Kind::File { content: Content::Pieces(ps), .. } => assert_eq!(ps.len(), 4),
        k => panic!("{k:?}"),
    }
    check_contents(&b, d.path(), &new)?;
    Ok(())
}

#[test]
fn dry_run_writes_nothing_and_usage_errors_exit_2() -> R {
    let d = tempfile::tempdir()?;
    let key = keygen(d.path(), "k")?;
    let new = d.path().join("new");
    fs::create_dir_all(new.join("d"))?;
    fs::write(new.join("d/f"), b"x")?;
    let out = d.path().join("b.ferry");
    let o = ferry()
        .args(["build", "--version", "1", "--dry-run"])
        .arg("--new")
        .arg(&new)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success());
    assert_eq!(String::from_utf8(o.stdout)?, "mkdir d\nplace d/f\ndirmeta d\n");
    assert!(!out.exists());

    let base = || {
        let mut c = ferry();
        c.args(["build", "--version", "1"]).arg("--new").arg(&new).arg("--key").arg(&key).arg("--out").arg(&out);
        c
    };
    base().args(["--level", "99"]).assert().code(2);
    base().args(["--hook", "no-equals-sign"]).assert().code(2);
    base().args(["--base-version", "3"]).assert().code(2);
    ferry()
        .args(["build", "--version", "1"])
        .arg("--new")
        .arg(d.path().join("missing"))
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(1);
    // keygen refuses to overwrite.
    ferry().arg("keygen").arg("--unencrypted").arg("--out").arg(d.path().join("k")).assert().code(1);
    assert!(!out.exists());
    Ok(())
}

#[test]
fn quiet_verbose_and_json_reports_of_every_command() -> R {
    let d = tempfile::tempdir()?;
    // keygen --json: one object on stdout, nothing on stderr.
    let o = ferry().arg("keygen").arg("--unencrypted").arg("--out").arg(d.path().join("k")).arg("--json").output()?;
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["ferry_report"], 1);
    assert_eq!(v["command"], "keygen");
    assert_eq!(v["key_id"].as_str().map(str::len), Some(16));
    assert!(o.stderr.is_empty());
    let key = d.path().join("k.secret");
    let new = d.path().join("new");
    fs::create_dir_all(&new)?;
    fs::write(new.join("data"), pseudo_random(300_000, 9))?;
    let build = |extra: &[&str], out: &str| {
        ferry()
            .args(["build", "--version", "1", "--level", "1"])
            .arg("--new")
            .arg(&new)
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(d.path().join(out))
            .args(extra)
            .output()
    };
    // -q: nothing at all on success.
    let o = build(&["-q"], "q.ferry")?;
    assert!(o.status.success());
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    // -v (not a terminal here): plain lines, one per phase with counts and durations; no bar.
    let o = build(&["-v"], "v.ferry")?;
    let err = String::from_utf8(o.stderr)?;
    for phase in ["scan new:", "hash new:", "diff and plan:", "compress:", "write:"] {
        assert!(err.lines().any(|l| l.starts_with(&format!("ferry-build: {phase}")) && l.ends_with(" s")), "{err}");
    }
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err}");
    // build --json --split-size lists the parts; split --json reports its own.
    let o = build(&["--json", "--split-size", "100K"], "s.ferry")?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["parts"].as_array().map(Vec::len), Some(3), "{v}");
    let o = ferry().arg("split").arg(d.path().join("q.ferry")).args(["--size", "128K", "--json"]).output()?;
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["command"], "split");
    assert_eq!(v["ferry_report"], 1);
    assert_eq!(v["parts"].as_array().map(Vec::len), Some(3), "{v}");
    // -q and -v together are a usage error.
    ferry().args(["-q", "-v", "keygen", "--out"]).arg(d.path().join("x")).assert().code(2);
    Ok(())
}
