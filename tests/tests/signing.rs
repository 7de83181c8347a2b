//! Detached, multi-party and offline signing with the real binaries (bundle-format.md §3, §15.2):
//! thresholds counted over trusted keys only, `build --unsigned` then `sign`, order-independent
//! signature members, the signing request round trip, SIGKILL during `sign`, and external signer
//! commands (real `openssl`, and commands that misbehave).

use ferry_tests::*;
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ferry-build sign FILE ARGS...`, expecting exit `code`.
fn sign(file: &Path, args: &[&str], code: i32) -> Output {
    run_expect(build_cmd().arg("sign").arg(file).args(args), code)
}

/// `ferry-apply verify FILE --trust TRUST`, expecting exit `code`.
fn verify(file: &Path, trust: &Path, code: i32) -> Output {
    run_expect(apply_cmd().arg("verify").arg(file).arg("--trust").arg(trust), code)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A key pair `NAME.secret`/`NAME.pub` in `dir`, and its key id.
struct Key {
    secret: PathBuf,
    public: PathBuf,
    id: String,
}

fn key(dir: &Path, name: &str) -> Key {
    let (secret, public) = keygen(dir, name);
    let id = bundle::sig::PublicKey::parse(&fs::read_to_string(&public).expect("pub")).expect("pub").id;
    Key { secret, public, id }
}

/// A trust directory holding `keys` and `policy`.
fn trust_dir(dir: &Path, keys: &[&Key], policy: &str) -> PathBuf {
    fs::create_dir(dir).expect("mkdir trust");
    for k in keys {
        fs::copy(&k.public, dir.join(format!("{}.pub", k.id))).expect("copy pub");
    }
    fs::write(dir.join("policy"), policy).expect("policy");
    dir.to_path_buf()
}

/// `ferry-build build` of NEW (a full bundle, version 1) with `extra` arguments (keys or
/// `--unsigned`), reproducibly.
fn build_with(new: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c = build_cmd();
    c.arg("build").arg("--new").arg(new).arg("--version").arg("1").arg("--out").arg(out).args(extra);
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    run_expect(&mut c, 0)
}

/// The bundle id of a bundle file (BLAKE3 of its manifest member).
fn bundle_id(file: &Path) -> bundle::Hash {
    let f = fs::File::open(file).expect("open bundle");
    let mut r = bundle::container::Reader::new(std::io::BufReader::new(f), bundle::Limits::default());
    let (mb, _) = r.head().expect("head");
    bundle::Manifest::id(&mb)
}

/// Temporary files `sign` may leave beside `file` when killed.
fn temps(file: &Path) -> Vec<String> {
    let name = file.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let dir = file.parent().expect("parent");
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{name}.sign-")))
        .collect();
    v.sort();
    v
}

fn small_tree(root: &Path) -> PathBuf {
    let new = root.join("new");
    gen_tree(&new, 14);
    new
}

/// A skip that shows even though the test harness captures `eprintln!` (written to fd 2).
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "\nSKIPPED (not passed): {why}");
}

#[test]
fn two_of_three_counts_only_trusted_keys_and_signing_is_order_independent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = small_tree(d);
    let (a, b, c, k4) = (key(d, "a"), key(d, "b"), key(d, "c"), key(d, "d"));
    // Trusted: A, B and D, two of them needed. C is a key nobody trusts.
    let trust = trust_dir(&d.join("trust"), &[&a, &b, &k4], "threshold 2\n");

    // Built with A alone: refused, naming the shortfall and every signer.
    let by_a = d.join("a.ferry");
    build_with(&new, &by_a, &["--key", s(&a.secret)]);
    let o = verify(&by_a, &trust, 3);
    let want = format!("bundle has 1 trusted signature, the policy needs 2 (short by 1): signed by {} (trusted)", a.id);
    assert!(err(&o).contains(&want), "{}", err(&o));
    let j = run_expect(apply_cmd().arg("verify").arg(&by_a).arg("--trust").arg(&trust).arg("--json"), 3);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("json");
    assert_eq!((v["exit_code"].as_u64(), v["trust"]["short_by"].as_u64()), (Some(3), Some(1)), "{v}");
    assert_eq!(v["trust"]["met"], false, "{v}");
    assert_eq!(v["trust"]["signers"][0]["key_id"], a.id.as_str(), "{v}");
    assert_eq!(v["trust"]["signers"][0]["status"], "trusted", "{v}");
    // apply refuses it the same way and writes nothing.
    let target = d.join("target");
    fs::create_dir(&target).expect("mkdir");
    let o = apply(&by_a, &target, &trust, 3, &[]);
    assert!(err(&o).contains("short by 1"), "{}", err(&o));
    let written: Vec<_> = fs::read_dir(&target).expect("ls").flatten().map(|e| e.file_name()).collect();
    assert!(written.iter().all(|n| n == ".ferry"), "nothing but the state directory may be written: {written:?}");

    // A + C: C's signature is valid but does not count.
    let ac = d.join("ac.ferry");
    fs::copy(&by_a, &ac).expect("copy");
    sign(&ac, &["--key", s(&c.secret)], 0);
    let o = verify(&ac, &trust, 3);
    assert!(err(&o).contains("short by 1"), "{}", err(&o));
    assert!(err(&o).contains(&format!("{} (not trusted)", c.id)), "{}", err(&o));
    let i = run_expect(apply_cmd().arg("inspect").arg(&ac).arg("--trust").arg(&trust).arg("--json"), 0);
    let v: serde_json::Value = serde_json::from_slice(&i.stdout).expect("json");
    let statuses: Vec<(String, String)> = v["trust"]["signers"]
        .as_array()
        .expect("signers")
        .iter()
        .map(|x| (x["key_id"].as_str().unwrap_or("").into(), x["status"].as_str().unwrap_or("").into()))
        .collect();
    assert!(statuses.contains(&(c.id.clone(), "unknown".into())), "{v}");
    assert_eq!(v["trust"]["short_by"], 1, "{v}");

    // A + B: accepted, and it applies.
    let ab = d.join("ab.ferry");
    fs::copy(&by_a, &ab).expect("copy");
    sign(&ab, &["--key", s(&b.secret)], 0);
    let o = verify(&ab, &trust, 0);
    assert!(out(&o).contains("threshold met: bundle has 2 trusted signatures, the policy needs 2"), "{}", out(&o));
    apply(&ab, &target, &trust, 0, &[]);
    assert_same(&snapshot(&target, true), &snapshot(&new, true), "A+B applied");

    // A retired key does not count, and is named as retired.
    let retired = trust_dir(&d.join("trust-retired"), &[&a, &b], &format!("threshold 2\nretire {}\n", b.id));
    let o = verify(&ab, &retired, 3);
    assert!(err(&o).contains(&format!("{} (retired)", b.id)) && err(&o).contains("short by 1"), "{}", err(&o));

    // Order does not matter: unsigned, then A then B, or B then A, or both at build time: the
    // same bytes.
    let (x, y, z) = (d.join("x.ferry"), d.join("y.ferry"), d.join("z.ferry"));
    build_with(&new, &x, &["--unsigned"]);
    fs::copy(&x, &y).expect("copy");
    sign(&x, &["--key", s(&a.secret)], 0);
    sign(&x, &["--key", s(&b.secret)], 0);
    sign(&y, &["--key", s(&b.secret)], 0);
    sign(&y, &["--key", s(&a.secret)], 0);
    build_with(&new, &z, &["--key", s(&b.secret), "--key", s(&a.secret)]);
    let xb = fs::read(&x).expect("x");
    assert_eq!(xb, fs::read(&y).expect("y"), "A then B differs from B then A");
    assert_eq!(xb, fs::read(&z).expect("z"), "signing later differs from signing at build time");
    assert_eq!(xb, fs::read(&ab).expect("ab"), "build --key A + sign B differs");
}

#[test]
fn unsigned_build_is_refused_until_signed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = small_tree(d);
    let (a, b) = (key(d, "a"), key(d, "b"));
    let trust = trust_dir(&d.join("trust"), &[&a, &b], "threshold 2\n");

    // Neither --key nor --unsigned: a usage error that names both.
    let f = d.join("u.ferry");
    let mut c = build_cmd();
    c.arg("build").arg("--new").arg(&new).arg("--version").arg("1").arg("--out").arg(&f);
    let o = run_expect(&mut c, 2);
    assert!(err(&o).contains("--key") && err(&o).contains("--unsigned"), "{}", err(&o));
    assert!(!f.exists());

    let o = build_with(&new, &f, &["--unsigned", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["signers"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["bundle_id"].as_str(), Some(bundle_id(&f).to_hex().as_str()), "{r}");
    let o = verify(&f, &trust, 3);
    assert!(err(&o).contains("bundle is unsigned (no signatures)"), "{}", err(&o));
    let o = run_expect(apply_cmd().arg("inspect").arg(&f), 0);
    assert!(out(&o).contains("the bundle is UNSIGNED"), "{}", out(&o));

    // Two separate signing runs, each rewriting the file.
    let o = sign(&f, &["--key", s(&a.secret), "--json"], 0);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!((r["rewritten"].as_bool(), r["added"][0].as_str()), (Some(true), Some(a.id.as_str())), "{r}");
    assert_eq!(r["bytes"].as_u64(), Some(fs::metadata(&f).expect("stat").len()), "{r}");
    assert!(err(&verify(&f, &trust, 3)).contains("short by 1"));
    sign(&f, &["--key", s(&b.secret)], 0);
    verify(&f, &trust, 0);

    // Signing again with a key that signed: a no-op with a note, the file untouched.
    let before = fs::read(&f).expect("read");
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&f).expect("stat"));
    let o = sign(&f, &["--key", s(&a.secret)], 0);
    assert!(err(&o).contains(&format!("key {} already signed", a.id)), "{}", err(&o));
    assert_eq!(fs::read(&f).expect("read"), before);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&f).expect("stat")), ino, "not rewritten");

    // `sign` without any source is a usage error.
    let o = sign(&f, &[], 2);
    assert!(err(&o).contains("--key") && err(&o).contains("--export-request"), "{}", err(&o));
}

#[test]
fn offline_request_round_trip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = small_tree(d);
    // Enough payload that the request is visibly small beside the bundle.
    fs::write(new.join("noise.bin"), noise(2 << 20, 7)).expect("noise");
    let (a, off, stranger) = (key(d, "a"), key(d, "offline"), key(d, "stranger"));
    let trust = trust_dir(&d.join("trust"), &[&a, &off], "threshold 2\n");
    let f = d.join("b.ferry");
    build_with(&new, &f, &["--key", s(&a.secret), "--level", "1", "--rotate-add", s(&stranger.public)]);
    let id = bundle_id(&f);
    let before = fs::read(&f).expect("read");

    // Export: the request is the manifest member plus ~150 bytes, never the payload.
    let req = d.join("b.req");
    let o = sign(&f, &["--export-request", s(&req), "--json"], 0);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let (rb, mb) = (r["request_bytes"].as_u64().unwrap_or(0), r["manifest_bytes"].as_u64().unwrap_or(0));
    assert_eq!(rb, fs::metadata(&req).expect("stat").len());
    assert!(rb > mb && rb <= mb + 157, "request {rb} bytes, manifest {mb}");
    assert!(rb * 100 < before.len() as u64, "request {rb} bytes for a bundle of {}", before.len());
    assert_eq!(fs::read(&f).expect("read"), before, "export changes nothing");
    // It refuses to overwrite.
    sign(&f, &["--export-request", s(&req)], 1);

    // The offline machine: summary derived from the manifest, then the signature file.
    let sig = d.join("b.sig");
    let o =
        run_expect(build_cmd().arg("sign-request").arg(&req).arg("--key").arg(&off.secret).arg("--out").arg(&sig), 0);
    let text = out(&o);
    assert!(text.contains(&format!("bundle {id}")), "{text}");
    assert!(text.contains("KEY ROTATION") && text.contains(&stranger.id), "{text}");
    assert!(text.contains("version 1, channel stable"), "{text}");
    assert!(text.contains("full bundle"), "{text}");
    let line = fs::read_to_string(&sig).expect("sig");
    assert!(line.starts_with(&format!("ferry-signature-v1 {id} ")) && line.ends_with('\n'), "{line}");
    // --summary-only signs nothing and needs no key.
    let o = run_expect(build_cmd().arg("sign-request").arg(&req).arg("--summary-only").arg("--json"), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["summary"]["version"], 1, "{v}");
    assert!(v["signed_by"].is_null(), "{v}");

    // Back on the build host: import, verify, apply.
    assert!(err(&verify(&f, &trust, 3)).contains("short by 1"));
    let o = sign(&f, &["--import", s(&sig)], 0);
    assert!(err(&o).contains(&format!("signed by {}", off.id)), "{}", err(&o));
    verify(&f, &trust, 0);
    let target = d.join("target");
    fs::create_dir(&target).expect("mkdir");
    apply(&f, &target, &trust, 0, &[]);

    // A signature made from another bundle's request is refused at import, naming both ids.
    let g = d.join("g.ferry");
    build_with(&new, &g, &["--unsigned", "--channel", "beta"]);
    let greq = d.join("g.req");
    sign(&g, &["--export-request", s(&greq)], 0);
    let gsig = d.join("g.sig");
    run_expect(build_cmd().arg("sign-request").arg(&greq).arg("--key").arg(&off.secret).arg("--out").arg(&gsig), 0);
    let f2 = d.join("b2.ferry");
    fs::write(&f2, &before).expect("write");
    let o = sign(&f2, &["--import", s(&gsig)], 1);
    let gid = bundle_id(&g);
    assert!(err(&o).contains(&format!("is a signature for bundle {gid}, not for")), "{}", err(&o));
    assert!(err(&o).contains(&id.to_hex()), "{}", err(&o));
    assert_eq!(fs::read(&f2).expect("read"), before, "a refused import changes nothing");
    // A signature file whose signature was altered is refused too.
    let mut bad = fs::read_to_string(&sig).expect("sig");
    let last = bad.len() - 2;
    let flipped = if &bad[last..last + 1] == "0" { "1" } else { "0" };
    bad.replace_range(last..last + 1, flipped);
    fs::write(d.join("bad.sig"), bad).expect("write");
    let o = sign(&f2, &["--import", s(&d.join("bad.sig"))], 1);
    assert!(err(&o).contains("does not verify"), "{}", err(&o));
    assert_eq!(fs::read(&f2).expect("read"), before);

    // A tampered request: a changed byte in the manifest it carries is refused by sign-request.
    let mut t = fs::read(&req).expect("req");
    let n = t.len();
    t[n - 10] ^= 0x01;
    let treq = d.join("t.req");
    fs::write(&treq, &t).expect("write");
    let tsig = d.join("t.sig");
    let o =
        run_expect(build_cmd().arg("sign-request").arg(&treq).arg("--key").arg(&off.secret).arg("--out").arg(&tsig), 1);
    assert!(err(&o).contains("the request was altered"), "{}", err(&o));
    assert!(!tsig.exists());
    // A request rebuilt around an edited manifest (id recomputed) is a request for another
    // bundle: sign-request shows the edited manifest (version 99, no rotation), and its signature
    // is refused by the real bundle.
    let orig = bundle::request::SigningRequest::decode(&fs::read(&req).expect("req"), &bundle::Limits::default())
        .expect("request");
    let mut m = bundle::Manifest::decode(&orig.manifest, &bundle::Limits::default()).expect("manifest");
    m.version = 99;
    m.rotation = None;
    fs::write(&treq, bundle::request::SigningRequest::new(m.encode()).encode()).expect("write");
    let o =
        run_expect(build_cmd().arg("sign-request").arg(&treq).arg("--key").arg(&off.secret).arg("--out").arg(&tsig), 0);
    assert!(out(&o).contains("version 99") && out(&o).contains("key rotation: none"), "{}", out(&o));
    let o = sign(&f2, &["--import", s(&tsig)], 1);
    assert!(err(&o).contains("is a signature for bundle"), "{}", err(&o));
    assert_eq!(fs::read(&f2).expect("read"), before);
}

#[test]
fn split_bundles_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = small_tree(d);
    fs::write(new.join("noise.bin"), noise(300_000, 3)).expect("noise");
    let a = key(d, "a");
    let f = d.join("s.ferry");
    build_with(&new, &f, &["--unsigned", "--level", "1", "--split-size", "64K"]);
    assert!(!f.exists());
    for target in [f.clone(), PathBuf::from(format!("{}.000", f.display()))] {
        let o = sign(&target, &["--key", s(&a.secret)], 1);
        assert!(err(&o).contains("sign the bundle before splitting it"), "{}", err(&o));
    }
}

/// A bundle of some tens of MB signed by A, with trust in A alone, and a second key B.
struct Big {
    _tmp: tempfile::TempDir,
    d: PathBuf,
    pristine: PathBuf,
    a: Key,
    b: Key,
}

fn big() -> Big {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path().to_path_buf();
    let new = d.join("new");
    fs::create_dir(&new).expect("mkdir");
    for i in 0..4 {
        fs::write(new.join(format!("blob{i}")), noise(10 << 20, 1001 + 2 * i)).expect("blob");
    }
    let (a, b) = (key(&d, "a"), key(&d, "b"));
    let pristine = d.join("pristine.ferry");
    build_with(&new, &pristine, &["--key", s(&a.secret), "--level", "1"]);
    assert!(fs::metadata(&pristine).expect("stat").len() > 40 << 20);
    Big { _tmp: tmp, d, pristine, a, b }
}

#[test]
fn sigkill_during_sign_leaves_a_valid_bundle() {
    let bg = big();
    let f = bg.d.join("f.ferry");
    let old = fs::read(&bg.pristine).expect("read");
    // The finished result, for comparison: A and B.
    let done = bg.d.join("done.ferry");
    fs::copy(&bg.pristine, &done).expect("copy");
    sign(&done, &["--key", s(&bg.b.secret)], 0);
    let new = fs::read(&done).expect("read");

    // A signer command that kills `sign` (its parent) while it signs.
    fs::write(&f, &old).expect("write");
    let o = build_cmd()
        .arg("sign")
        .arg(&f)
        .arg("--key")
        .arg(&bg.b.secret)
        .arg("--signer-command")
        .arg("kill -9 $PPID; sleep 5")
        .output()
        .expect("spawn");
    assert_eq!(o.status.signal(), Some(9), "{o:?}");
    assert!(fs::read(&f).expect("read") == old, "killed before writing: the old bundle");
    verify(&f, &bg.a.public, 0);
    assert_eq!(temps(&f), Vec::<String>::new());

    // SIGKILL at increasing delays while `sign` reads, copies and syncs; then, between the last
    // delay that left the old file and the first at which `sign` finished, a finer pass so that
    // some kills land while the temporary file is being written.
    let (mut olds, mut news, mut mid_write) = (0, 0, 0);
    let mut round = |delay_us: u64| -> (bool, bool) {
        fs::write(&f, &old).expect("restore");
        let mut child =
            build_cmd().arg("-q").arg("sign").arg(&f).arg("--key").arg(&bg.b.secret).spawn().expect("spawn");
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let st = child.wait().expect("wait");
        let now = fs::read(&f).expect("read");
        let is_old = now == old;
        assert!(is_old || now == new, "killed after {delay_us} us: FILE is neither the old nor the new bundle");
        // Either way it verifies (A's signature, and B's once the rename happened).
        verify(&f, &bg.a.public, 0);
        let left = temps(&f);
        mid_write += usize::from(!left.is_empty());
        if is_old {
            olds += 1;
        } else {
            news += 1;
        }
        eprintln!(
            "killed after {delay_us} us ({st:?}): {} bundle, temporary files left: {left:?}",
            if is_old { "old" } else { "new" }
        );
        (is_old, st.success())
    };
    let (mut last_old, mut first_done) = (0, None);
    let mut delay_us: u64 = 0;
    for _ in 0..40 {
        let (is_old, finished) = round(delay_us);
        if is_old {
            last_old = delay_us;
        }
        if finished {
            first_done = Some(delay_us);
            break;
        }
        delay_us = (delay_us * 3 / 2).max(delay_us + 2_000);
    }
    let first_done = first_done.expect("sign never finished within the delays tried");
    for i in 1..=12 {
        round(last_old + (first_done - last_old) * i / 13);
    }
    assert!(olds > 0, "no kill landed before the rename");
    assert!(news > 0, "no run completed");
    assert!(mid_write > 0, "no kill landed while the temporary file was written");
    // Whatever temporary files the kills left, the next `sign` removes them and succeeds.
    fs::write(&f, &old).expect("restore");
    let o = sign(&f, &["--key", s(&bg.b.secret)], 0);
    assert_eq!(fs::read(&f).expect("read"), new);
    assert_eq!(temps(&f), Vec::<String>::new(), "{}", err(&o));

    // Two `sign`s of the same file at once: the lock serialises them and neither signature is
    // lost (without it, the second rename would drop the first one's signature).
    let c = key(&bg.d, "c");
    fs::write(&f, &old).expect("restore");
    let spawn = |k: &Key| build_cmd().arg("-q").arg("sign").arg(&f).arg("--key").arg(&k.secret).spawn().expect("spawn");
    let (mut p1, mut p2) = (spawn(&bg.b), spawn(&c));
    assert!(p1.wait().expect("wait").success() && p2.wait().expect("wait").success());
    let trust = trust_dir(&bg.d.join("trust"), &[&bg.a, &bg.b, &c], "threshold 3\n");
    verify(&f, &trust, 0);
}

/// `ferry-build sign FILE --signer-command CMD [extra]` must fail with exit 1 naming `needle`
/// and leave FILE byte-identical, with no temporary file beside it.
fn refused_signer(f: &Path, cmd: &str, extra: &[&str], needle: &str) {
    let before = fs::read(f).expect("read");
    let mut args = vec!["--signer-command", cmd];
    args.extend_from_slice(extra);
    let o = sign(f, &args, 1);
    assert!(err(&o).contains(needle), "{cmd}: {}", err(&o));
    assert!(err(&o).contains("signer command"), "{cmd}: {}", err(&o));
    assert!(fs::read(f).expect("read") == before, "{cmd}: the bundle changed");
    assert_eq!(temps(f), Vec::<String>::new(), "{cmd}");
}

#[test]
fn misbehaving_signer_commands_change_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = small_tree(d);
    let (a, b) = (key(d, "a"), key(d, "b"));
    let f = d.join("b.ferry");
    build_with(&new, &f, &["--unsigned"]);
    let id = bundle_id(&f);
    let sk = |k: &Key| bundle::sig::SecretKey::parse(&fs::read_to_string(&k.secret).expect("secret")).expect("secret");
    // A's valid answer (public key and signature) and its bare signature, precomputed.
    let answer = d.join("answer.bin");
    let sa = sk(&a);
    fs::write(&answer, [&sa.public().bytes[..], &sa.sign_id(&id)[..]].concat()).expect("write");
    let bare = d.join("bare.bin");
    fs::write(&bare, sa.sign_id(&id)).expect("write");
    let other_bundle = d.join("other.bin");
    let wrong_id = bundle::Hash::of(b"another bundle");
    fs::write(&other_bundle, [&sa.public().bytes[..], &sa.sign_id(&wrong_id)[..]].concat()).expect("write");

    let cat = |p: &Path| format!("cat >/dev/null; cat '{}'", p.display());
    refused_signer(&f, "head -c 96 /dev/urandom", &[], "does not verify");
    refused_signer(&f, "cat >/dev/null; echo not a signature", &[], "wrote 16 bytes");
    refused_signer(&f, "cat >/dev/null", &[], "wrote nothing");
    refused_signer(&f, "cat >/dev/null; exit 7", &[], "exited with status 7");
    refused_signer(&f, &cat(&other_bundle), &[], "does not verify");
    refused_signer(&f, &cat(&bare), &[], "--signer-pub");
    refused_signer(&f, &cat(&answer), &["--signer-pub", s(&b.public)], &format!("signed with key {}", a.id));
    refused_signer(&f, &cat(&bare), &["--signer-pub", s(&b.public)], "does not verify");
    refused_signer(&f, "sleep 30", &["--signer-timeout", "1"], "no answer within 1 s");
    // A failing command among good sources: nothing is added at all.
    refused_signer(&f, "exit 1", &["--key", s(&b.secret)], "exited with status 1");

    // The same precomputed answers, well-formed, are accepted.
    sign(&f, &["--signer-command", &cat(&bare), "--signer-pub", s(&a.public)], 0);
    verify(&f, &a.public, 0);
    let o = sign(&f, &["--signer-command", &cat(&answer)], 0);
    assert!(err(&o).contains("already signed"), "{}", err(&o));
}

#[test]
fn openssl_external_signer() {
    if Command::new("openssl").arg("version").output().map(|o| !o.status.success()).unwrap_or(true) {
        skip("openssl_external_signer: `openssl` is not installed (CI installs it)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = small_tree(d);
    let pem = d.join("hsm.pem");
    let st = Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&pem).status();
    assert!(st.is_ok_and(|s| s.success()), "openssl genpkey");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/signers/openssl-signer.sh");
    let cmd = format!("'{}' '{}'", script.display(), pem.display());

    // `openssl pkeyutl -rawin` does not sign an ed25519 message read from stdin: the script
    // spools it to a file. Check the premise so that the script's workaround stays needed.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!("printf abc | openssl pkeyutl -sign -rawin -inkey '{}' 2>/dev/null | wc -c", pem.display()))
        .output()
        .expect("sh");
    assert_eq!(out(&piped).trim(), "0", "openssl now signs from stdin; the example script could be simpler");

    // pubkey: a ferry public-key file for the external key, checked by a test signature.
    let pubf = d.join("hsm.pub");
    let o = run_expect(build_cmd().arg("pubkey").arg("--signer-command").arg(&cmd).arg("--out").arg(&pubf), 0);
    let pk = bundle::sig::PublicKey::parse(&fs::read_to_string(&pubf).expect("pub")).expect("pub");
    assert!(err(&o).contains(&pk.id), "{}", err(&o));
    // It agrees with openssl's own view of the key.
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .expect("openssl");
    assert_eq!(&der.stdout[der.stdout.len() - 32..], &pk.bytes[..]);

    let a = key(d, "a");
    let trust = trust_dir(&d.join("trust"), &[&a], "threshold 2\n");
    fs::copy(&pubf, trust.join("hsm.pub")).expect("copy");
    let f = d.join("b.ferry");
    build_with(&new, &f, &["--key", s(&a.secret)]);
    assert!(err(&verify(&f, &trust, 3)).contains("short by 1"));
    let o = sign(&f, &["--signer-command", &cmd], 0);
    assert!(err(&o).contains(&format!("signed by {}", pk.id)), "{}", err(&o));
    verify(&f, &trust, 0);

    // The same key through --signer-pub, the command writing the bare signature; and through
    // an offline request signed by openssl.
    let g = d.join("g.ferry");
    build_with(&new, &g, &["--key", s(&a.secret), "--channel", "beta"]);
    let bare = format!("{cmd} | tail -c 64");
    sign(&g, &["--signer-command", &bare, "--signer-pub", s(&pubf)], 0);
    verify(&g, &trust, 0);
    let h = d.join("h.ferry");
    build_with(&new, &h, &["--unsigned", "--channel", "gamma"]);
    let (req, sig) = (d.join("h.req"), d.join("h.sig"));
    sign(&h, &["--export-request", s(&req)], 0);
    run_expect(build_cmd().arg("sign-request").arg(&req).arg("--signer-command").arg(&cmd).arg("--out").arg(&sig), 0);
    sign(&h, &["--import", s(&sig), "--key", s(&a.secret)], 0);
    verify(&h, &trust, 0);
}

#[test]
fn pubkey_of_a_secret_key_matches_keygen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let a = key(d, "a");
    let p = d.join("again.pub");
    run_expect(build_cmd().arg("pubkey").arg("--key").arg(&a.secret).arg("--out").arg(&p), 0);
    assert_eq!(fs::read(&p).expect("read"), fs::read(&a.public).expect("read"));
    // It never overwrites.
    run_expect(build_cmd().arg("pubkey").arg("--key").arg(&a.secret).arg("--out").arg(&p), 1);
}
