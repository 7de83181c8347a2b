//! Split bundles: `ferry-build build --split-size` writes numbered parts; `ferry-apply` applies and
//! verifies from the first part without joining them, and names a missing or corrupt part.

use ferry_tests::*;
use std::fs;
use std::path::{Path, PathBuf};

fn part(b: &Path, i: usize) -> PathBuf {
    PathBuf::from(format!("{}.{i:03}", b.display()))
}

#[test]
fn apply_from_parts_and_name_bad_parts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (old, new) = (d.join("old"), d.join("new"));
    gen_tree(&old, 11);
    mutate(&old, &new, 11);
    // Enough incompressible new content for several parts.
    let noise = noise(200_000, 0x9e3779b97f4a7c15);
    fs::write(new.join("noise.bin"), noise).expect("w");
    let (secret, public) = keygen(d, "k");
    let b = d.join("b.ferry");
    build(Some(&old), &new, &secret, 2, &b, &["--split-size", "64K"]);
    assert!(!b.exists(), "the unsplit bundle should be replaced by its parts");
    let n = (0..).take_while(|&i| part(&b, i).exists()).count();
    assert!(n >= 3, "expected several parts, got {n}");
    for i in 0..n {
        assert!(fs::metadata(part(&b, i)).expect("part").len() <= 64 * 1024);
    }
    run_expect(apply_cmd().arg("verify").arg(part(&b, 0)).arg("--trust").arg(&public), 0);

    // A missing part is named.
    let hidden = d.join("hidden");
    fs::rename(part(&b, 1), &hidden).expect("mv");
    let t = d.join("t");
    copy_tree(&old, &t);
    let before = snapshot(&t, true);
    let o = apply(&part(&b, 0), &t, &public, 3, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}", part(&b, 1).display())) && err.contains("missing"), "{err}");
    assert_same(&snapshot(&t, true), &before, "missing part");
    fs::rename(&hidden, part(&b, 1)).expect("mv back");

    // A corrupt byte in a part is named.
    let p2 = part(&b, 1);
    let mut bytes = fs::read(&p2).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&p2, &bytes).expect("write");
    let o = apply(&part(&b, 0), &t, &public, 3, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{}", p2.display())), "{err}");
    assert_same(&snapshot(&t, true), &before, "corrupt part");
    bytes[mid] ^= 0x40;
    fs::write(&p2, &bytes).expect("write");

    // Intact parts apply, given the first part or the bundle's name.
    apply(&b, &t, &public, 0, &[]);
    assert_same(&snapshot(&t, true), &snapshot(&new, true), "applied from parts");
}
