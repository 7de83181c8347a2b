//! `ferry-build`: command-line shim over the `builder` library. Exit codes: 0 ok, 1 error,
//! 2 usage.

use builder::cli::{Cli, Cmd};
use builder::{BuildOptions, BuildReport};
use clap::Parser;
use std::process::ExitCode;

fn run(cli: Cli) -> Result<(), builder::Error> {
    match cli.cmd {
        Cmd::Keygen { out } => {
            let (s, p, id) = builder::keygen(&out)?;
            eprintln!("key {id}: secret {}, public {}", s.display(), p.display());
            Ok(())
        }
        Cmd::Build(a) => {
            let hooks =
                a.hooks.iter().map(|h| builder::parse_hook(h, a.hook_timeout)).collect::<Result<Vec<_>, _>>()?;
            let opts = BuildOptions {
                new: a.new,
                old: a.old,
                keys: a.keys,
                version: a.version,
                base_version: a.base_version,
                channel: a.channel,
                out: a.out,
                hooks,
                expires: a.expires,
                level: a.level,
                chunk_size: a.chunk_size,
                solid_size: a.solid_size,
                config_files: a.config_files,
                rotate_add: a.rotate_add,
                rotate_retire: a.rotate_retire,
                rotate_threshold: a.rotate_threshold,
                dry_run: a.dry_run,
                created: builder::created_from_env()?,
            };
            let r = builder::build(&opts)?;
            for w in &r.warnings {
                eprintln!("ferry-build: warning: {w}");
            }
            report(&r, a.json);
            if let (Some(size), false) = (a.split_size, a.dry_run) {
                split_report(&opts.out, size)?;
            }
            Ok(())
        }
        Cmd::Split { file, size } => split_report(&file, size),
    }
}

fn split_report(file: &std::path::Path, size: u64) -> Result<(), builder::Error> {
    let parts =
        builder::split::split(file, size).map_err(|e| builder::Error::Io { path: file.to_path_buf(), source: e })?;
    eprintln!(
        "{}: {} parts ({} .. {})",
        file.display(),
        parts.len(),
        parts[0].display(),
        parts[parts.len() - 1].display()
    );
    Ok(())
}

fn report(r: &BuildReport, json: bool) {
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
        if let (true, Some(o)) = (r.dry_run, v.as_object_mut()) {
            o.insert("script".into(), lines.into());
        }
        println!("{v}");
        return;
    }
    if r.dry_run {
        for l in &lines {
            println!("{l}");
        }
        eprintln!("dry run: {} entries, {} steps; nothing written", r.entries, r.steps);
        return;
    }
    eprintln!(
        "{}: {} bytes, version {}, {} entries, {} steps, {} frames, {} ms",
        r.bundle, r.bytes, r.version, r.entries, r.steps, r.frames, r.duration_ms
    );
    for (k, s) in &r.stats {
        eprintln!("  {k:<9} {:>7} files {:>14} bytes in {:>14} bytes out", s.files, s.bytes_in, s.bytes_out);
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
