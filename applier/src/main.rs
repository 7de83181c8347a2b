//! `ferry-apply`: thin command-line shim over the `applier` library.

use applier::apply::{self, Options};
use applier::cli::{ApplyArgs, Cli, Cmd, TargetArgs};
use applier::error::{Error, Exit};
use bundle::Limits;
use clap::Parser;
use serde_json::json;
use std::process::ExitCode;

fn opts(t: &TargetArgs, a: Option<&ApplyArgs>, quiet: bool) -> Options {
    let verbose = VERBOSE.load(std::sync::atomic::Ordering::Relaxed);
    let progress = applier::progress::wanted(quiet, verbose);
    let mut o =
        Options { target: t.target.clone(), state_dir: t.state_dir.clone(), quiet, progress, ..Default::default() };
    if let Some(a) = a {
        o.trust = a.trust.clone();
        o.channel = a.channel.clone();
        o.no_hooks = a.no_hooks;
        o.allow_expired = a.allow_expired;
        o.allow_network_fs = a.allow_network_fs;
        o.limits.max_entries = a.max_entries;
    }
    o
}

fn report(command: &str, json: bool, body: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        let mut v = json!({"ferry_report": 1, "command": command, "exit_code": 0, "exit_meaning": Exit::Ok.meaning()});
        if let (Some(m), serde_json::Value::Object(b)) = (v.as_object_mut(), body) {
            m.extend(b);
        }
        println!("{v}");
    } else {
        let s = human();
        if !s.is_empty() {
            println!("{}", applier::text::escape(&s));
        }
    }
}

fn fail(command: &str, json: bool, e: &Error) -> ExitCode {
    let code = e.exit();
    eprintln!("ferry-apply {command}: error: {}", applier::text::escape(&e.to_string()));
    if json {
        println!(
            "{}",
            json!({"ferry_report": 1, "command": command, "exit_code": code as u8, "exit_meaning": code.meaning(), "error": e.to_string()})
        );
    }
    ExitCode::from(code as u8)
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { 0 });
        }
    };
    let q = cli.quiet;
    VERBOSE.store(cli.verbose && !cli.quiet, std::sync::atomic::Ordering::Relaxed);
    match cli.cmd {
        Cmd::Verify { file, trust, json } => {
            let r = applier::trust::load(&trust, None).and_then(|t| {
                let progress = applier::progress::wanted(q || json, VERBOSE.load(std::sync::atomic::Ordering::Relaxed));
                applier::verify::bundle_with_progress(&file, Some(&t), &Limits::default(), true, progress)
            });
            match r {
                Ok(h) => {
                    let signers: Vec<&str> = h.signers.iter().map(|k| k.id.as_str()).collect();
                    report(
                        "verify",
                        json,
                        json!({"verified": true, "version": h.manifest.version, "bundle_id": h.id.to_hex(), "signers": signers}),
                        || {
                            format!(
                                "OK: {} version {} signed by {} ({} frames verified)",
                                file.display(),
                                h.manifest.version,
                                signers.join(","),
                                h.manifest.frames.len()
                            )
                        },
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail("verify", json, &e),
            }
        }
        Cmd::Inspect { file, json } => match applier_inspect(&file) {
            Ok(v) => {
                let human = inspect_human(&v);
                report("inspect", json, v, || human);
                ExitCode::SUCCESS
            }
            Err(e) => fail("inspect", json, &e),
        },
        Cmd::Apply { file, t, a, json } => {
            let o = opts(&t, Some(&a), q || json);
            match apply::apply(&o, &file) {
                Ok(r) => {
                    let v = serde_json::to_value(&r).unwrap_or_default();
                    report("apply", json, v, || {
                        format!("{}: version {}", r.result, r.version.map(|v| v.to_string()).unwrap_or_default())
                    });
                    ExitCode::SUCCESS
                }
                Err(e) => fail("apply", json, &e),
            }
        }
        Cmd::Plan { file, t, a, json } => {
            let o = opts(&t, Some(&a), q || json);
            match applier::plan::plan(&o, &file) {
                Ok(p) => {
                    let code = p.refusal_exit_code.unwrap_or(0);
                    let human = plan_human(&p);
                    let mut v = serde_json::to_value(&p).unwrap_or_default();
                    if json {
                        if let Some(m) = v.as_object_mut() {
                            m.insert("ferry_report".into(), json!(1));
                            m.insert("command".into(), json!("plan"));
                            m.insert("exit_code".into(), json!(code));
                        }
                        println!("{v}");
                    } else {
                        println!("{}", applier::text::escape(&human));
                    }
                    ExitCode::from(code)
                }
                Err(e) => fail("plan", json, &e),
            }
        }
        Cmd::Resume { t, trust, bundle, no_hooks, json } => {
            let mut o = opts(&t, None, q || json);
            o.trust = trust;
            o.bundle = bundle;
            o.no_hooks = no_hooks;
            match apply::resume(&o) {
                Ok(r) => {
                    let v = serde_json::to_value(&r).unwrap_or_default();
                    report("resume", json, v, || r.result.clone());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("resume", json, &e),
            }
        }
        Cmd::Rollback { t, trust, json } => {
            let mut o = opts(&t, None, q || json);
            o.trust = trust;
            match apply::rollback(&o) {
                Ok(r) => {
                    let v = serde_json::to_value(&r).unwrap_or_default();
                    report("rollback", json, v, || {
                        format!(
                            "rolled back; installed version now {}",
                            r.version.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
                        )
                    });
                    ExitCode::SUCCESS
                }
                Err(e) => fail("rollback", json, &e),
            }
        }
        Cmd::Status { t, json } => {
            let o = opts(&t, None, q);
            match applier::status::status(&o) {
                Ok(s) => {
                    let v = serde_json::to_value(&s).unwrap_or_default();
                    report("status", json, v, || status_human(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => fail("status", json, &e),
            }
        }
        Cmd::Inbox { dir, t, a, json } => {
            let o = opts(&t, Some(&a), q || json);
            match applier::inbox::inbox(&o, &dir) {
                Ok(r) => {
                    let failed = r.failed;
                    let v = serde_json::to_value(&r).unwrap_or_default();
                    if json {
                        let code = if failed > 0 { Exit::InboxFailed } else { Exit::Ok };
                        let mut v = v;
                        if let Some(m) = v.as_object_mut() {
                            m.insert("ferry_report".into(), json!(1));
                            m.insert("command".into(), json!("inbox"));
                            m.insert("exit_code".into(), json!(code as u8));
                            m.insert("exit_meaning".into(), json!(code.meaning()));
                        }
                        println!("{v}");
                    } else {
                        for i in &r.items {
                            let line = format!("{:8} {} {}", i.outcome, i.bundle, i.reason);
                            println!("{}", applier::text::escape_line(&line));
                        }
                    }
                    if failed > 0 {
                        ExitCode::from(Exit::InboxFailed as u8)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail("inbox", json, &e),
            }
        }
        Cmd::Fetch { url, into, trust, json, retries, retry_wait_ms, timeout, deadline } => {
            let o = applier::fetch::Options {
                url,
                into,
                trust,
                retries,
                retry_wait: std::time::Duration::from_millis(retry_wait_ms),
                timeout: std::time::Duration::from_secs(timeout.max(1)),
                deadline: std::time::Duration::from_secs(deadline.max(1)),
                quiet: q,
            };
            match applier::fetch::fetch(&o) {
                Ok(r) => {
                    let v = serde_json::to_value(&r).unwrap_or_default();
                    report("fetch", json, v, || {
                        format!(
                            "OK: {} version {} ({} bytes, {} frames; {} bytes received, {} resumed{})",
                            r.file,
                            r.version,
                            r.size,
                            r.frames,
                            r.bytes,
                            r.resumed_from_bytes,
                            if r.trusted { "" } else { "; signer not checked: no --trust" }
                        )
                    });
                    ExitCode::SUCCESS
                }
                Err(e) => fail("fetch", json, &e),
            }
        }
    }
}

fn plan_human(p: &applier::plan::Plan) -> String {
    let mut s = format!(
        "plan: version {} (channel {}) onto a target at version {}\n",
        p.version,
        p.channel,
        p.installed_version.map(|v| v.to_string()).unwrap_or_else(|| "none".into())
    );
    match &p.refusal {
        None => s.push_str("would apply: yes\n"),
        Some(r) => s.push_str(&format!("would apply: NO (exit {}): {r}\n", p.refusal_exit_code.unwrap_or(1))),
    }
    for f in &p.filesystems {
        s.push_str(&format!(
            "stage {} bytes on the filesystem of {}: {} available{}\n",
            f.stage_bytes,
            f.example_dir,
            f.available_bytes,
            if f.fits { "" } else { " — DOES NOT FIT" }
        ));
    }
    for c in &p.conffiles_kept {
        s.push_str(&format!("config file {c} has local edits: kept, new version to {c}.ferry-new\n"));
    }
    for h in &p.hooks {
        s.push_str(&format!("hook: {h}\n"));
    }
    s.push_str(&format!("{} steps:", p.steps.len()));
    for st in &p.steps {
        s.push_str(&format!("\n  {:8} {}", st.op, applier::text::escape_line(&st.path)));
    }
    s
}

fn status_human(s: &applier::status::Status) -> String {
    let i = &s.installed;
    let mut out = match i.version {
        Some(v) => format!(
            "installed: version {v} channel {} bundle {} at {} (owners {})",
            i.channel.clone().unwrap_or_default(),
            i.bundle_id.clone().unwrap_or_default().get(..16).unwrap_or(""),
            i.applied_at.unwrap_or(0),
            if i.owners_applied { "applied" } else { "left as they were: not root" }
        ),
        None => "installed: nothing applied by ferry yet".into(),
    };
    if let Some(p) = &s.pending {
        out.push_str(&format!(
            "\npending: version {} interrupted while {}; resume will {}",
            p.version, p.phase, p.resume_will
        ));
    }
    if let Some(k) = &s.rollback {
        out.push_str(&format!(
            "\nrollback: backups of version {} kept; rollback restores {}",
            k.version, k.rollback_restores
        ));
    }
    for c in &i.conffiles_kept {
        out.push_str(&format!("\nconfig file kept with local edits; new version at {c}"));
    }
    for h in &i.hooks {
        out.push_str(&format!("\nhook {} ({}): {}", h.command, h.glob, h.result));
    }
    if let Some(e) = &i.last_error {
        out.push_str(&format!("\nlast error: {e}"));
    }
    out
}

fn applier_inspect(file: &std::path::Path) -> Result<serde_json::Value, Error> {
    use bundle::{Content, Kind, Method};
    let limits = Limits::default();
    let src = applier::source::open(file)?;
    let mut r = bundle::container::Reader::new(src.reader, limits.clone());
    let (mb, sb) = r.head().map_err(|e| applier::source::explain(e.into()))?;
    let sig = bundle::sig::verify_signatures(&mb, &sb, limits.max_signatures);
    let m = bundle::Manifest::decode(&mb, &limits)?;
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let (mut new_bytes, mut zstd_pieces, mut patch_pieces, mut copies) = (0u64, 0u64, 0u64, 0u64);
    for e in &m.entries {
        *counts.entry(e.kind.name()).or_default() += 1;
        if let Kind::File { size, content, .. } = &e.kind {
            new_bytes += size;
            match content {
                Content::Pieces(ps) => {
                    for p in ps {
                        match p.method {
                            Method::Zstd => zstd_pieces += 1,
                            Method::Patch { .. } | Method::Bsdiff { .. } => patch_pieces += 1,
                        }
                    }
                }
                Content::Copy { .. } => copies += 1,
                _ => {}
            }
        }
    }
    let payload: u64 = m.frames.iter().map(|f| f.size).sum();
    let decoded: u64 = m.frames.iter().map(|f| f.decoded).sum();
    let script: Vec<serde_json::Value> =
        m.script.iter().map(|s| json!({"op": format!("{:?}", s.op), "path": s.path.display()})).collect();
    Ok(json!({
        "verified": false,
        "note": "unverified: inspect checks that the signatures are well-formed and match, not that a trusted key made them; use `verify --trust`",
        "signatures_valid": sig.is_ok(),
        "signers": sig.as_ref().map(|k| k.iter().map(|k| k.id.clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "bundle_id": bundle::Manifest::id(&mb).to_hex(),
        "format": m.format,
        "version": m.version,
        "base": m.base.as_ref().map(|b| json!({"version": b.version, "tree": b.tree.to_hex()})),
        "channel": m.channel,
        "created": m.created,
        "expires": m.expires,
        "entries_note": if m.base.is_some() {
            "a delta bundle lists only the NEW entries it changes or needs; unchanged paths are not listed, so counts and new_file_bytes cover the listed entries"
        } else {
            "a full bundle lists every entry of NEW"
        },
        "counts": {"entries": m.entries.len(), "by_type": counts, "old": m.old.len(), "frames": m.frames.len(), "steps": m.script.len(), "zstd_pieces": zstd_pieces, "patch_pieces": patch_pieces, "copies": copies},
        "sizes": {"new_file_bytes": new_bytes, "payload_bytes": payload, "decoded_bytes": decoded, "manifest_bytes": mb.len()},
        "hooks": m.hooks.iter().map(|h| json!({"glob": h.glob, "command": h.command, "timeout_secs": h.timeout_secs})).collect::<Vec<_>>(),
        "rotation": m.rotation.as_ref().map(|r| json!({"add": r.add.iter().map(|k| bundle::sig::key_id(&k.0)).collect::<Vec<_>>(), "retire": r.retire, "threshold": r.threshold})),
        "script": script,
    }))
}

fn inspect_human(v: &serde_json::Value) -> String {
    let mut s = format!(
        "UNVERIFIED bundle (no key checked; signatures {})\nversion {} channel {} base {}\nsigners {}\ncounts (of entries listed) {}\n  ({})\nsizes {}\napply script:",
        if v["signatures_valid"].as_bool() == Some(true) { "well-formed and matching" } else { "INVALID" },
        v["version"],
        v["channel"],
        v["base"],
        v["signers"],
        v["counts"],
        v["entries_note"].as_str().unwrap_or(""),
        v["sizes"],
    );
    if let Some(steps) = v["script"].as_array() {
        for st in steps {
            s.push_str(&format!(
                "\n  {:8} {}",
                st["op"].as_str().unwrap_or(""),
                applier::text::escape_line(st["path"].as_str().unwrap_or(""))
            ));
        }
    }
    s
}
