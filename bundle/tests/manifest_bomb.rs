//! A manifest member of a few KB whose CBOR holds 15.7 million steps (267 MB): decoding it must
//! be refused at the steps' array header, quickly and without allocating memory in proportion
//! to the steps (bundle-format.md §4.6, §8). Alone in its test binary, so the process's peak
//! resident size (`VmHWM`) measures this test only.

use bundle::{BundlePath, Error, Limits, Manifest, Op, Step, FORMAT_VERSION};
use std::io::Write;
use std::time::{Duration, Instant};

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The manifest member of an otherwise empty manifest whose `script` is `n` `Place` steps of the
/// path `a` (17 bytes of CBOR each), compressed while it is generated.
fn steps_bomb(n: u32) -> Vec<u8> {
    let path = BundlePath::new(b"a".to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let mut m = Manifest {
        format: FORMAT_VERSION,
        version: 1,
        base: None,
        channel: "stable".into(),
        created: 0,
        expires: None,
        entries: vec![],
        old: vec![],
        frames: vec![],
        script: vec![Step { op: Op::Place, path }],
        hooks: vec![],
        rotation: None,
        xattr_namespaces: vec![],
        xattr_sets: vec![],
        tagged_digest: None,
        sealed: None,
    };
    let enc = m.to_cbor();
    let step = m.script.pop().map(|s| {
        let mut v = Vec::new();
        ciborium::into_writer(&s, &mut v).unwrap_or_else(|e| panic!("{e}"));
        v
    });
    let step = step.unwrap_or_default();
    assert_eq!(step.len(), 17);
    let mut field = b"\x66script\x81".to_vec();
    field.extend_from_slice(&step);
    let at = enc.windows(field.len()).position(|w| w == field).unwrap_or_else(|| panic!("no script"));
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap_or_else(|e| panic!("{e}"));
    let mut put = |b: &[u8]| z.write_all(b).unwrap_or_else(|e| panic!("{e}"));
    put(&enc[..at]);
    put(b"\x66script\x9a");
    put(&n.to_be_bytes());
    let chunk = step.repeat(4096);
    for _ in 0..n / 4096 {
        put(&chunk);
    }
    for _ in 0..n % 4096 {
        put(&step);
    }
    put(&enc[at + field.len()..]);
    z.finish().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn millions_of_steps_are_refused_at_their_array_header() {
    let n = 15_700_000;
    let member = steps_bomb(n);
    assert!(member.len() < 64 * 1024, "{} bytes", member.len());
    let before = peak_kib();
    let t = Instant::now();
    let got = Manifest::decode(&member, &Limits::default());
    let took = t.elapsed();
    let grew = peak_kib().saturating_sub(before);
    eprintln!("{} byte member refused in {took:?}, peak RSS grew by {grew} KiB: {got:?}", member.len());
    match got {
        Err(Error::TooMany { what, count, limit }) => {
            assert_eq!((what.as_str(), count, limit), ("script steps", u64::from(n), 500_000));
        }
        other => panic!("expected TooMany script steps, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Without the pre-pass: 267 MB of CBOR, then 1.5 GB of steps.
    assert!(grew < 16 * 1024, "peak RSS grew by {grew} KiB");

    // The same CBOR through `unpack` (which returns it) and `from_cbor` stops at the same place.
    let got = bundle::manifest::unpack(&member, &Limits::default());
    assert!(matches!(got, Err(Error::TooMany { .. })), "{got:?}");
    assert!(peak_kib().saturating_sub(before) < 16 * 1024);
}
