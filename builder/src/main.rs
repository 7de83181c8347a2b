//! `ferry-build`: command-line shim over the `builder` library. Exit codes: 0 ok, 1 error,
//! 2 usage.

use builder::cli::{BuildArgs, Cli, Cmd};
use builder::progress::{Progress, Verbosity};
use builder::{BuildOptions, BuildReport};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
        Cmd::Keygen { out, json } => {
            let (s, p, id) = builder::keygen(&out)?;
            if json {
                let v = serde_json::json!({
                    "ferry_report": 1,
                    "command": "keygen",
                    "key_id": id,
                    "secret": s.display().to_string(),
                    "public": p.display().to_string(),
                });
                println!("{v}");
            } else {
                say(format!("key {id}: secret {}, public {}", s.display(), p.display()));
            }
            Ok(())
        }
        Cmd::Build(a) => build(&a, verbosity),
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
                println!("{v}");
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
                println!("{v}");
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
        println!("{v}");
        return;
    }
    if r.dry_run {
        for l in &lines {
            println!("{l}");
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

fn main() -> ExitCode {
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
