//! `ferry-build`: command-line shim over the `builder` library. Exit codes: 0 ok, 1 error,
//! 2 usage.

use builder::{BuildOptions, BuildReport};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferry-build",
    version,
    about = "Build signed delta bundles for ferry"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a signing key pair: NAME.secret (mode 0600) and NAME.pub.
    Keygen {
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
    },
    /// Diff OLD and NEW into a signed bundle.
    Build(Box<BuildArgs>),
    /// Cut a bundle into numbered parts FILE.000, FILE.001, ... (e.g. for a FAT32 stick).
    Split {
        file: PathBuf,
        /// Largest part (K/M/G suffixes; default fits FAT32).
        #[arg(long, value_name = "BYTES", default_value = "4294967295", value_parser = builder::parse_size)]
        size: u64,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// The tree the target should have after applying.
    #[arg(long, value_name = "DIR")]
    new: PathBuf,
    /// The tree the target has now (omit for a full bundle).
    #[arg(long, value_name = "DIR")]
    old: Option<PathBuf>,
    /// Secret key to sign with (repeat for several signatures).
    #[arg(long = "key", value_name = "KEY.secret", required = true)]
    keys: Vec<PathBuf>,
    /// Version the target is at after applying.
    #[arg(long)]
    version: u64,
    /// Version the target must be at (needs --old).
    #[arg(long, value_name = "N")]
    base_version: Option<u64>,
    #[arg(long, default_value = "stable")]
    channel: String,
    /// Output bundle file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Post-commit hook 'GLOB=COMMAND' (repeatable).
    #[arg(long = "hook", value_name = "GLOB=COMMAND")]
    hooks: Vec<String>,
    #[arg(long, value_name = "SECS", default_value_t = builder::DEFAULT_HOOK_TIMEOUT)]
    hook_timeout: u32,
    /// Expiry time, seconds since the Unix epoch.
    #[arg(long, value_name = "UNIX_SECONDS")]
    expires: Option<u64>,
    /// Compression level: fast, default, max, or 1..22.
    #[arg(long, default_value = "default", value_parser = builder::parse_level)]
    level: i32,
    /// Files larger than this are split into pieces of this size (K/M/G suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = builder::parse_size)]
    chunk_size: u64,
    /// Mark NEW files matching GLOB as configuration files.
    #[arg(long = "config-files", value_name = "GLOB", num_args = 1..)]
    config_files: Vec<String>,
    /// Public key file the target trusts from now on.
    #[arg(long = "rotate-add", value_name = "KEY.pub", num_args = 1..)]
    rotate_add: Vec<PathBuf>,
    /// Key id the target refuses from now on.
    #[arg(long = "rotate-retire", value_name = "KEYID", num_args = 1..)]
    rotate_retire: Vec<String>,
    /// New signature threshold of the target.
    #[arg(long = "rotate-threshold", value_name = "N")]
    rotate_threshold: Option<u32>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// Print the apply script and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the bundle as parts FILE.000, FILE.001, ... of at most this size (K/M/G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = builder::parse_size)]
    split_size: Option<u64>,
}

fn run(cli: Cli) -> Result<(), builder::Error> {
    match cli.cmd {
        Cmd::Keygen { out } => {
            let (s, p, id) = builder::keygen(&out)?;
            eprintln!("key {id}: secret {}, public {}", s.display(), p.display());
            Ok(())
        }
        Cmd::Build(a) => {
            let hooks = a
                .hooks
                .iter()
                .map(|h| builder::parse_hook(h, a.hook_timeout))
                .collect::<Result<Vec<_>, _>>()?;
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
    let parts = builder::split::split(file, size).map_err(|e| builder::Error::Io { path: file.to_path_buf(), source: e })?;
    eprintln!("{}: {} parts ({} .. {})", file.display(), parts.len(), parts[0].display(), parts[parts.len() - 1].display());
    Ok(())
}

fn report(r: &BuildReport, json: bool) {
    let lines: Vec<String> = r
        .script
        .iter()
        .map(|s| format!("{} {}", builder::op_name(s.op), s.path))
        .collect();
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
        eprintln!(
            "dry run: {} entries, {} steps; nothing written",
            r.entries, r.steps
        );
        return;
    }
    eprintln!(
        "{}: {} bytes, version {}, {} entries, {} steps, {} frames, {} ms",
        r.bundle, r.bytes, r.version, r.entries, r.steps, r.frames, r.duration_ms
    );
    for (k, s) in &r.stats {
        eprintln!(
            "  {k:<9} {:>7} files {:>14} bytes in {:>14} bytes out",
            s.files, s.bytes_in, s.bytes_out
        );
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
