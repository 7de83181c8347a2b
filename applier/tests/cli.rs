//! Command-line contract of `ferry-apply` (in the manner of b3sum's `tests/cli_tests.rs`): help
//! texts, exit codes for bad usage, missing files and files that are not bundles. Scripts and
//! systemd units depend on these.

use applier::Exit;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry-apply"))
}

fn run(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .env_remove("FERRY_CRASH_AT")
        .env_remove("FERRY_FAIL_AT")
        .output()
        .expect("spawn ferry-apply")
}

fn run_path(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(exe()).args(args).args(paths).output().expect("spawn ferry-apply")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or_else(|| panic!("killed by a signal: {o:?}"))
}

/// The documented exit codes: every one must be listed in every help text.
const CODES: &[(u8, &str)] = &[
    (0, "success"),
    (1, "internal error"),
    (2, "usage error"),
    (3, "bad signature"),
    (4, "does not match the bundle's base"),
    (5, "version refused"),
    (6, "I/O failure"),
    (7, "lock"),
    (8, "hook failed"),
    (9, "pending"),
    (10, "policy"),
    (11, "free space"),
    (12, "inbox"),
    (13, "not trustworthy"),
    (14, "state directory corrupt"),
];

fn assert_lists_exit_codes(help: &str, what: &str) {
    assert!(help.contains("Exit codes:"), "{what}: no 'Exit codes:' section:\n{help}");
    let section = &help[help.find("Exit codes:").unwrap_or(0)..];
    for (n, words) in CODES {
        let line =
            section.lines().find(|l| l.trim_start().strip_prefix(&n.to_string()).is_some_and(|r| r.starts_with("  ")));
        let line = line.unwrap_or_else(|| panic!("{what}: exit code {n} is not listed:\n{section}"));
        assert!(line.contains(words), "{what}: exit code {n} line {line:?} does not mention {words:?}");
    }
    // And each code's whole description from the enum, however it is wrapped.
    let flat = section.split_whitespace().collect::<Vec<_>>().join(" ");
    for e in Exit::ALL {
        let want = format!("{} {}", e as u8, e.description());
        assert!(flat.contains(&want), "{what}: {want:?} is not in the help text:\n{section}");
    }
}

/// Subcommands named in the top-level help (`help` itself excluded).
fn subcommands() -> Vec<String> {
    let o = run(&["--help"]);
    assert_eq!(code(&o), 0);
    let h = out(&o);
    let start = h.find("Commands:").expect("Commands: section");
    h[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn top_level_help_lists_commands_and_exit_codes() {
    for flag in ["--help", "-h"] {
        let o = run(&[flag]);
        assert_eq!(code(&o), 0, "{flag}: {}", err(&o));
        assert!(out(&o).contains("Usage: ferry-apply"), "{}", out(&o));
        assert_lists_exit_codes(&out(&o), flag);
    }
    let subs = subcommands();
    for want in ["verify", "inspect", "apply", "resume", "rollback", "status", "inbox"] {
        assert!(subs.iter().any(|s| s == want), "subcommand {want} missing from --help: {subs:?}");
    }
}

#[test]
fn every_subcommand_help_exits_0_and_lists_exit_codes() {
    for sub in subcommands() {
        for args in [vec![sub.as_str(), "--help"], vec!["help", sub.as_str()]] {
            let o = run(&args);
            assert_eq!(code(&o), 0, "{args:?}: {}", err(&o));
            let h = out(&o);
            assert!(h.contains(&format!("Usage: ferry-apply {sub}")), "{args:?}:\n{h}");
            assert_lists_exit_codes(&h, &args.join(" "));
        }
    }
}

#[test]
fn version_exits_0() {
    let o = run(&["--version"]);
    assert_eq!(code(&o), 0);
    assert!(out(&o).starts_with("ferry-apply "), "{}", out(&o));
}

#[test]
fn bad_usage_exits_2() {
    let d = tempfile::tempdir().expect("tempdir");
    let target = d.path().to_str().expect("utf-8 temp path");
    let cases: &[&[&str]] = &[
        &[],
        &["no-such-command"],
        &["--no-such-flag"],
        &["apply"],
        &["apply", "b.ferry"],
        &["apply", "--target", target],
        &["apply", "b.ferry", "--target", target, "--max-entries", "many"],
        &["apply", "b.ferry", "--target", target, "--bogus"],
        &["verify", "b.ferry"],
        &["verify"],
        &["inspect"],
        &["inspect", "a.ferry", "b.ferry"],
        &["status"],
        &["rollback"],
        &["resume"],
        &["inbox", "--target", target],
        &["status", "--target"],
    ];
    for args in cases {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}: stdout {} stderr {}", out(&o), err(&o));
        assert!(!err(&o).trim().is_empty(), "{args:?}: no message on stderr");
        assert!(out(&o).is_empty(), "{args:?}: usage errors go to stderr, stdout was {}", out(&o));
    }
    // Usage errors found after parsing exit 2 as well: apply without --trust.
    fs::write(d.path().join("b.ferry"), b"whatever").expect("write");
    let o = run_path(&["apply", "--target", target], &[&d.path().join("b.ferry")]);
    assert_eq!(code(&o), 2, "apply without --trust: {}", err(&o));
    assert!(err(&o).contains("--trust"), "{}", err(&o));
}

/// A valid trust key file.
fn trust_key(dir: &Path) -> PathBuf {
    let k = bundle::sig::SecretKey::from_seed([7; 32]);
    let p = dir.join("trusted.pub");
    fs::write(&p, k.public().to_text()).expect("write key");
    p
}

#[test]
fn verify_of_a_missing_file_exits_6_naming_it() {
    let d = tempfile::tempdir().expect("tempdir");
    let key = trust_key(d.path());
    let missing = d.path().join("no-such-bundle.ferry");
    let o = run_path(&["verify", "--trust", key.to_str().expect("utf-8"), missing.to_str().expect("utf-8")], &[]);
    assert_eq!(code(&o), 6, "{}", err(&o));
    assert!(
        err(&o).contains(missing.to_str().expect("utf-8")),
        "message should name {}: {}",
        missing.display(),
        err(&o)
    );
    // The same in JSON: a report on stdout with the code.
    let o =
        run_path(&["verify", "--json", "--trust", key.to_str().expect("utf-8"), missing.to_str().expect("utf-8")], &[]);
    assert_eq!(code(&o), 6);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["exit_code"], 6);
    assert!(v["error"].as_str().is_some_and(|e| e.contains("no-such-bundle.ferry")), "{v}");
    // inspect and apply of a missing bundle: 6 too.
    let o = run_path(&["inspect"], &[&missing]);
    assert_eq!(code(&o), 6, "{}", err(&o));
    assert!(err(&o).contains("no-such-bundle.ferry"), "{}", err(&o));
    let t = d.path().join("target");
    fs::create_dir(&t).expect("mkdir");
    let o = run_path(
        &["apply", "--trust", key.to_str().expect("utf-8"), "--target", t.to_str().expect("utf-8")],
        &[&missing],
    );
    assert_eq!(code(&o), 6, "{}", err(&o));
}

#[test]
fn inspect_of_a_non_bundle_exits_3_not_a_ferry_bundle() {
    let d = tempfile::tempdir().expect("tempdir");
    let key = trust_key(d.path());
    let small = d.path().join("notes.txt");
    fs::write(&small, b"just some notes, not a bundle\n").expect("write");
    let big = d.path().join("data.tar");
    let mut tar = vec![0u8; 4096];
    tar[..9].copy_from_slice(b"some/file");
    fs::write(&big, &tar).expect("write");
    let elf = d.path().join("program");
    fs::write(&elf, [&b"\x7fELF\x02\x01\x01"[..], &[0u8; 2000][..]].concat()).expect("write");
    for f in [&small, &big, &elf] {
        let o = run_path(&["inspect"], &[f]);
        assert_eq!(code(&o), 3, "inspect {}: {}", f.display(), err(&o));
        assert!(err(&o).contains("not a ferry bundle"), "inspect {}: {}", f.display(), err(&o));
        let o = run_path(&["verify", "--trust", key.to_str().expect("utf-8")], &[f]);
        assert_eq!(code(&o), 3, "verify {}: {}", f.display(), err(&o));
        assert!(err(&o).contains("not a ferry bundle"), "verify {}: {}", f.display(), err(&o));
    }
    // A future format version is named as such.
    // A future format version, and past ones (format 5, before `BsdiffSplit`; format 4, before
    // `BsdiffLzma`; format 1, before extended attributes), are named as such.
    for v in ["7", "5", "4", "1"] {
        let mut b = vec![0u8; 2048];
        b[..22].copy_from_slice(format!("ferry-v{v}/manifest.cbor").as_bytes());
        let f = d.path().join(format!("v{v}.ferry"));
        fs::write(&f, &b).expect("write");
        let o = run_path(&["inspect"], &[&f]);
        assert_eq!(code(&o), 3, "{}", err(&o));
        assert!(err(&o).contains(&format!("unsupported bundle format version {v}")), "{}", err(&o));
    }
}

/// README.md's table of exit codes says what the `Exit` enum (and so `--help`) says.
#[test]
fn readme_exit_code_table_matches_the_enum() {
    let readme = include_str!("../../README.md");
    let start = readme.find("### Exit codes of ferry-apply").expect("README section 'Exit codes of ferry-apply'");
    let rows: Vec<(String, String)> = readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("|---"))
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 2, "README row {l:?} should have two cells");
            (cells[0].to_string(), cells[1].to_string())
        })
        .collect();
    let want: Vec<(String, String)> =
        Exit::ALL.iter().map(|e| ((*e as u8).to_string(), e.description().to_string())).collect();
    assert_eq!(rows, want, "README.md's exit-code table and applier::Exit disagree");
}

#[test]
fn exit_all_lists_every_code_once_in_order() {
    for (i, e) in Exit::ALL.into_iter().enumerate() {
        assert_eq!(e as usize, i, "{e:?} out of place in Exit::ALL");
        assert_eq!(Exit::from_code(e as u8), Some(e));
    }
    assert_eq!(Exit::from_code(Exit::ALL.len() as u8), None);
}
