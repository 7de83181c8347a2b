//! `ferry-build`: command-line shim over the `builder` library. Exit codes: 0 ok, 1 error,
//! 2 usage.

use builder::cli::{BuildArgs, Cli, Cmd, PubkeyArgs, PublishArgs, SignArgs, SignRequestArgs};
use builder::progress::{Progress, Verbosity};
use builder::signer::Signer;
use builder::{BuildOptions, BuildReport};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `println!` that ignores a closed stdout (`ferry-build publish --json | head`): the work is
/// done and the exit code stands; `println!` would panic.
macro_rules! out {
    ($($a:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($a)*);
    }};
}

fn run(cli: Cli) -> Result<(), builder::Error> {
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let say = |line: String| {
        if verbosity > Verbosity::Quiet {
            eprintln!("{line}");
        }
    };
    match cli.cmd {
        Cmd::Keygen { out, unencrypted, json } => {
            let protection = if unencrypted {
                builder::keys::Protection::Unencrypted
            } else {
                builder::keys::Protection::Passphrase
            };
            let (s, p, id) = builder::keygen(&out, protection)?;
            if json {
                let v = serde_json::json!({
                    "ferry_report": 1,
                    "command": "keygen",
                    "key_id": id,
                    "secret": s.display().to_string(),
                    "public": p.display().to_string(),
                    "encrypted": !unencrypted,
                });
                out!("{v}");
            } else {
                say(format!("key {id}: secret {}, public {}", s.display(), p.display()));
            }
            Ok(())
        }
        Cmd::ProtectKey { key } => {
            let id = builder::keys::protect_key(&key)?;
            say(format!("key {id}: {} is now protected by the new passphrase", key.display()));
            Ok(())
        }
        Cmd::Build(a) => build(&a, verbosity),
        Cmd::Sign(a) => sign(&a, verbosity),
        Cmd::SignRequest(a) => sign_request(&a, verbosity),
        Cmd::Pubkey(a) => pubkey(&a, verbosity),
        Cmd::Publish(a) => publish(&a, verbosity),
        Cmd::RecipientGen { out, json } => {
            let (i, r, id) = builder::seal::recipient_gen(&out)?;
            if json {
                let v = serde_json::json!({
                    "ferry_report": 1,
                    "command": "recipient-gen",
                    "recipient_id": id,
                    "identity": i.display().to_string(),
                    "recipient": r.display().to_string(),
                });
                out!("{v}");
            } else {
                say(format!("recipient {id}: identity {} (secret), recipient {}", i.display(), r.display()));
            }
            Ok(())
        }
        Cmd::Split { file, size, json } => {
            let parts = split(&file, size)?;
            if json {
                let v = serde_json::json!({
                    "ferry_report": 1,
                    "command": "split",
                    "bundle": file.display().to_string(),
                    "part_size": size,
                    "parts": parts.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    // The parts replace the bundle: `split` deletes it.
                    "removed": file.display().to_string(),
                });
                out!("{v}");
            } else {
                say(split_line(&file, &parts));
            }
            Ok(())
        }
    }
}

/// `ferry-build build`: the library builds, the shim prints warnings and the report and cuts
/// the parts.
fn build(a: &BuildArgs, verbosity: Verbosity) -> Result<(), builder::Error> {
    let opts = BuildOptions::try_from(a)?;
    let progress = Progress::new(verbosity);
    let r = builder::build(&opts, &progress)?;
    drop(progress);
    if verbosity > Verbosity::Quiet {
        for w in &r.warnings {
            eprintln!("ferry-build: warning: {w}");
        }
    }
    let parts = match (a.split_size, a.dry_run) {
        (Some(size), false) => split(&opts.out, size)?,
        _ => Vec::new(),
    };
    report(&r, a.json, verbosity, &parts);
    Ok(())
}

/// Print one JSON report on stdout.
fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => out!("{s}"),
        Err(e) => eprintln!("ferry-build: cannot encode report: {e}"),
    }
}

/// The signers `--key` and `--signer-command` name, in that order.
fn signers(
    keys: &[PathBuf],
    commands: &[String],
    public: Option<&Path>,
    timeout: u64,
) -> Result<Vec<Signer>, builder::Error> {
    if public.is_some() && commands.len() != 1 {
        return Err(builder::Error::Usage("--signer-pub names the key of exactly one --signer-command".into()));
    }
    let mut v = keys.iter().map(|k| Signer::key_file(k)).collect::<Result<Vec<_>, _>>()?;
    for c in commands {
        v.push(Signer::command(c, public, timeout)?);
    }
    Ok(v)
}

/// `ferry-build sign`: add signatures, or export a signing request.
fn sign(a: &SignArgs, verbosity: Verbosity) -> Result<(), builder::Error> {
    let say = |line: String| {
        if verbosity > Verbosity::Quiet {
            eprintln!("{line}");
        }
    };
    if let Some(req) = &a.export_request {
        let r = builder::sign::export_request(&a.file, req)?;
        if a.json {
            print_json(&r);
        } else {
            say(format!(
                "{}: signing request for bundle {} (version {}): {} bytes, of which {} are the manifest (the \
                 bundle is {} bytes){}",
                r.request,
                r.bundle_id,
                r.version,
                r.request_bytes,
                r.manifest_bytes,
                r.bundle_bytes,
                if r.signers.is_empty() {
                    String::new()
                } else {
                    format!("; signed so far by {}", r.signers.join(", "))
                }
            ));
            say(format!(
                "carry it to the signer, run `ferry-build sign-request {} --key K.secret --out SIG` there, and bring \
                 SIG back: `ferry-build sign {} --import SIG`",
                r.request, r.bundle
            ));
        }
        return Ok(());
    }
    if a.keys.is_empty() && a.signer_commands.is_empty() && a.imports.is_empty() {
        return Err(builder::Error::Usage(
            "nothing to sign with: give --key, --signer-command or --import (or --export-request REQ)".into(),
        ));
    }
    let o = builder::sign::SignOptions {
        file: a.file.clone(),
        signers: signers(&a.keys, &a.signer_commands, a.signer_pub.as_deref(), a.signer_timeout)?,
        imports: a.imports.clone(),
    };
    let r = builder::sign::sign(&o, &mut |n| say(format!("ferry-build: note: {n}")))?;
    if a.json {
        print_json(&r);
    } else {
        for id in &r.added {
            say(format!("{}: signed by {id}", r.bundle));
        }
        say(format!(
            "{}: bundle {} version {}: {} signature{} ({}){}",
            r.bundle,
            r.bundle_id,
            r.version,
            r.signers.len(),
            if r.signers.len() == 1 { "" } else { "s" },
            r.signers.join(", "),
            if r.rewritten { "" } else { "; file unchanged" }
        ));
    }
    Ok(())
}

/// `ferry-build sign-request`: summary first (before any signer runs, which may ask for a PIN),
/// then sign and write the signature file.
fn sign_request(a: &SignRequestArgs, verbosity: Verbosity) -> Result<(), builder::Error> {
    let (req, _m, summary) = builder::offline::read_request(&a.request)?;
    if !a.json {
        out!("{}", builder::offline::summary_text(&summary));
    }
    let signed = if a.summary_only {
        None
    } else {
        let (signer, out) = match (&a.key, &a.signer_command, &a.out) {
            (_, _, None) => return Err(builder::Error::Usage("--out SIG is needed (or --summary-only)".into())),
            (Some(k), None, Some(o)) => (Signer::key_file(k)?, o),
            (None, Some(c), Some(o)) => (Signer::command(c, a.signer_pub.as_deref(), a.signer_timeout)?, o),
            _ => {
                return Err(builder::Error::Usage(
                    "give --key K.secret or --signer-command CMD to sign with (or --summary-only)".into(),
                ))
            }
        };
        let (_, pk) = builder::offline::sign_request(&req, &signer, out)?;
        Some((pk, out.clone()))
    };
    if a.json {
        let v = serde_json::json!({
            "ferry_report": 1,
            "command": "sign-request",
            "request": a.request.display().to_string(),
            "summary": summary,
            "signed_by": signed.as_ref().map(|(pk, _)| pk.id.clone()),
            "signature_file": signed.as_ref().map(|(_, o)| o.display().to_string()),
        });
        out!("{v}");
    } else if verbosity > Verbosity::Quiet {
        if let Some((pk, out)) = &signed {
            eprintln!("{}: signature by key {} for bundle {}", out.display(), pk.id, summary.bundle_id);
        }
    }
    Ok(())
}

/// `ferry-build publish` (and `--refresh`, `--prune`).
fn publish(a: &PublishArgs, verbosity: Verbosity) -> Result<(), builder::Error> {
    use builder::publish as p;
    let say = |line: String| {
        if verbosity > Verbosity::Quiet {
            eprintln!("{line}");
        }
    };
    let store = a.store.clone().unwrap_or_else(|| p::default_store(&a.repo));
    if a.prune {
        let r = p::prune(&a.repo, &store, &a.channel, a.deltas_from)?;
        if a.json {
            print_json(&r);
        } else {
            for f in &r.removed {
                say(format!("removed {f}"));
            }
            say(format!(
                "channel {}: {} removed ({} bytes); store keeps the trees of versions {:?}",
                r.channel,
                r.removed.len(),
                r.removed_bytes,
                r.kept_trees
            ));
        }
        return Ok(());
    }
    let mut keys = publish_keys(a)?;
    let now = builder::created_from_env()?;
    if a.refresh {
        let r = p::refresh(&a.repo, &store, &a.channel, &mut keys, a.expires, now)?;
        if a.json {
            print_json(&r);
        } else {
            say(format!(
                "{}: freshness {} of release {} (latest version {}), expires {}, signed by {}{}",
                r.index,
                r.fresh_seq,
                r.release_seq,
                r.latest,
                r.fresh_expires,
                r.signed_by.join(", "),
                if r.by_timestamp_key { " (timestamp key)" } else { "" }
            ));
        }
        return Ok(());
    }
    publish_version(a, store, keys, now, verbosity, &say)
}

/// The release signers (keys and signer commands) with their public keys, and the timestamp key.
fn publish_keys(a: &PublishArgs) -> Result<builder::publish::Keys, builder::Error> {
    let release = signers(&a.keys, &a.signer_commands, a.signer_pub.as_deref(), a.signer_timeout)?;
    let mut release_public = Vec::new();
    for s in &release {
        if let Signer::Key(k) = s {
            release_public.push(k.public());
        }
    }
    if let Some(pk) = &a.signer_pub {
        release_public.push(builder::keys::load_public(pk)?);
    }
    let (timestamp, timestamp_public) =
        builder::publish::load_timestamp_keys(a.timestamp_key.as_deref(), &a.timestamp_pubs)?;
    Ok(builder::publish::Keys { release, release_public, timestamp, timestamp_public })
}

/// `ferry-build publish --new NEW --version V`: add a version and report it.
fn publish_version(
    a: &PublishArgs,
    store: PathBuf,
    mut keys: builder::publish::Keys,
    now: u64,
    verbosity: Verbosity,
    say: &dyn Fn(String),
) -> Result<(), builder::Error> {
    let (Some(new), Some(version)) = (&a.new, a.version) else {
        return Err(builder::Error::Usage("publish needs --new NEW and --version V".into()));
    };
    let o = builder::publish::PublishOptions {
        repo: a.repo.clone(),
        channel: a.channel.clone(),
        store,
        new: new.clone(),
        version,
        deltas_from: a.deltas_from,
        jobs: a.jobs,
        keep_versions: a.keep_versions,
        expires: a.expires,
        release_expires: a.release_expires,
        no_full: a.no_full,
        build: a.build_options()?,
        now,
    };
    let progress = Progress::new(verbosity);
    let r = builder::publish::publish(&o, &mut keys, &progress)?;
    drop(progress);
    for w in &r.warnings {
        say(format!("ferry-build: warning: {w}"));
    }
    if a.json {
        print_json(&r);
    } else {
        for b in &r.bundles {
            say(format!("  {} ({} bytes, {:.1} s)", b.file, b.size, b.build_seconds));
        }
        say(format!(
            "{}: version {} published: {} bundles written ({} bytes), index names {} (release {}, freshness {}){}, \
             {:.1} s",
            r.index,
            r.version,
            r.bundles.len(),
            r.total_bytes,
            r.index_bundles,
            r.release_seq,
            r.fresh_seq,
            if r.dropped.is_empty() { String::new() } else { format!(", {} dropped", r.dropped.len()) },
            r.wall_seconds
        ));
    }
    Ok(())
}

/// `ferry-build pubkey`.
fn pubkey(a: &PubkeyArgs, verbosity: Verbosity) -> Result<(), builder::Error> {
    let signer = match (&a.key, &a.signer_command) {
        (Some(k), _) => Signer::key_file(k)?,
        (None, Some(c)) => Signer::command(c, None, a.signer_timeout)?,
        (None, None) => return Err(builder::Error::Usage("give --key K.secret or --signer-command CMD".into())),
    };
    let pk = builder::offline::pubkey(&signer, &a.out)?;
    if a.json {
        let v = serde_json::json!({
            "ferry_report": 1,
            "command": "pubkey",
            "key_id": pk.id,
            "public": a.out.display().to_string(),
        });
        out!("{v}");
    } else if verbosity > Verbosity::Quiet {
        eprintln!("{}: public key {} ({}; test signature checked)", a.out.display(), pk.id, signer.describe());
    }
    Ok(())
}

fn split(file: &Path, size: u64) -> Result<Vec<PathBuf>, builder::Error> {
    builder::split::split(file, size).map_err(|e| builder::Error::Io { path: file.to_path_buf(), source: e })
}

fn split_line(file: &Path, parts: &[PathBuf]) -> String {
    match (parts.first(), parts.last()) {
        (Some(a), Some(b)) => format!(
            "{}: {} parts ({} .. {}); {} removed",
            file.display(),
            parts.len(),
            a.display(),
            b.display(),
            file.display()
        ),
        _ => format!("{}: no parts", file.display()),
    }
}

fn report(r: &BuildReport, json: bool, verbosity: Verbosity, parts: &[PathBuf]) {
    let lines: Vec<String> = r.script.iter().map(|s| format!("{} {}", builder::op_name(s.op), s.path)).collect();
    if json {
        // One JSON object on stdout; a dry run carries its script in it.
        let mut v = match serde_json::to_value(r) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("ferry-build: cannot encode report: {e}");
                return;
            }
        };
        if let Some(o) = v.as_object_mut() {
            if r.dry_run {
                o.insert("script".into(), lines.into());
            }
            if !parts.is_empty() {
                let names: Vec<String> = parts.iter().map(|p| p.display().to_string()).collect();
                o.insert("parts".into(), names.into());
                o.insert("removed".into(), r.bundle.clone().into());
            }
        }
        out!("{v}");
        return;
    }
    if r.dry_run {
        for l in &lines {
            out!("{l}");
        }
        if verbosity > Verbosity::Quiet {
            eprintln!(
                "dry run: {} of {} entries listed, {} steps; nothing written",
                r.entries, r.tree_entries, r.steps
            );
        }
        return;
    }
    if verbosity == Verbosity::Quiet {
        return;
    }
    eprintln!(
        "{}: {} bytes, version {}, {} of {} entries listed, {} steps, {} frames, {} ms",
        r.bundle, r.bytes, r.version, r.entries, r.tree_entries, r.steps, r.frames, r.duration_ms
    );
    if r.encrypted {
        eprintln!("  encrypted to {} recipient(s): {}", r.recipients.len(), r.recipients.join(", "));
    }
    for (k, s) in &r.stats {
        let frames = if s.frames > 0 { format!(" {:>7} frames", s.frames) } else { String::new() };
        eprintln!("  {k:<9} {:>7} files {:>14} bytes in {:>14} bytes out{frames}", s.files, s.bytes_in, s.bytes_out);
    }
    if !parts.is_empty() {
        eprintln!("{}", split_line(Path::new(&r.bundle), parts));
    }
}

/// Make glibc give every allocation of a MiB or more its own mapping, returned to the system
/// when freed. By default glibc raises that threshold up to 32 MiB after the first large free,
/// and from then on the compress threads' buffers of a few to 30 MiB (a solid group's bytes,
/// zstd's window, frames) come from per-thread heaps that keep freed memory: on a root-filesystem
/// update that was 50-60 MB of peak RSS for nothing (518 -> 462 MB measured).
fn return_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two integers and passes no memory; glibc documents it as safe to
    // call at any time (it takes the arena locks itself), and it runs here before any thread of
    // ours exists. A failure (return 0) only leaves glibc's default in place.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    return_large_frees();
    let cli = Cli::parse(); // exits 2 on usage errors, 0 for --help/--version
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.is_usage() { 2 } else { 1 };
            eprintln!("ferry-build: {}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}
