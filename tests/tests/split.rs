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

/// A full bundle of incompressible files, split into four or more parts of 64 KiB.
fn split_bundle(d: &Path) -> (PathBuf, PathBuf, usize) {
    let new = d.join("new");
    fs::create_dir_all(&new).expect("mkdir");
    // Several plain-zstd frames, so that a missing part cuts one a decoder is reading.
    for i in 0..4u64 {
        fs::write(new.join(format!("n{i}.bin")), noise(100_000, 0x9e3779b97f4a7c15 ^ i)).expect("w");
    }
    let (secret, public) = keygen(d, "k");
    let b = d.join("b.ferry");
    build(None, &new, &secret, 1, &b, &["--split-size", "64K"]);
    let n = (0..).take_while(|&i| part(&b, i).exists()).count();
    assert!(n >= 4, "expected several parts, got {n}");
    (b, public, n)
}

/// Issue 16: `verify` decodes each frame, and a middle part missing under a decoder was
/// reported as "frame N: bundle is truncated at byte …" without the part's name. A missing
/// middle part is certain (a later part exists), so the reader names it whoever is reading.
#[test]
fn verify_and_apply_name_a_missing_middle_part() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (b, public, n) = split_bundle(d);
    run_expect(apply_cmd().arg("verify").arg(part(&b, 0)).arg("--trust").arg(&public), 0);
    for i in [1, n / 2] {
        let hidden = d.join("hidden");
        fs::rename(part(&b, i), &hidden).expect("mv");
        let name = part(&b, i).display().to_string();
        for first in [part(&b, 0), b.clone()] {
            let o = run_expect(apply_cmd().arg("verify").arg(&first).arg("--trust").arg(&public), 3);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(&format!("split bundle part {name} is missing")), "part {i}: {err}");
            let t = d.join("t");
            fs::create_dir_all(&t).expect("mkdir");
            let o = apply(&first, &t, &public, 3, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains(&name) && err.contains("missing"), "apply, part {i}: {err}");
            assert_eq!(
                fs::read_dir(&t).expect("ls").filter_map(|e| e.ok()).filter(|e| e.file_name() != ".ferry").count(),
                0
            );
        }
        fs::rename(&hidden, part(&b, i)).expect("mv back");
    }
}

/// `split` deletes the file it cuts, and says so on stderr and in `--json`.
#[test]
fn split_says_it_removes_the_bundle() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let new = d.join("new");
    fs::create_dir_all(&new).expect("mkdir");
    fs::write(new.join("n.bin"), noise(150_000, 7)).expect("w");
    let (secret, _) = keygen(d, "k");
    let b = d.join("b.ferry");
    build(None, &new, &secret, 1, &b, &[]);
    let o = run_expect(build_cmd().arg("split").arg(&b).arg("--size").arg("64K"), 0);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("{} removed", b.display())), "{err}");
    assert!(!b.exists() && part(&b, 2).exists());

    let c = d.join("c.ferry");
    build(None, &new, &secret, 1, &c, &[]);
    let o = run_expect(build_cmd().arg("split").arg(&c).arg("--size").arg("64K").arg("--json"), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["removed"], c.display().to_string(), "{v}");
    assert_eq!(v["parts"].as_array().map(Vec::len), Some(3), "{v}");
    assert!(!c.exists());
}
