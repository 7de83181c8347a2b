//! The `ferry-build` command line (clap derive), in the library so that man pages and shell
//! completions can be generated from it (`xtask`).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ferry-build", version, about = "Build signed delta bundles for ferry")]
pub struct Cli {
    /// Print errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print a line per phase with counts and durations.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Generate a signing key pair: NAME.secret (mode 0600) and NAME.pub.
    Keygen {
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Diff OLD and NEW into a signed bundle.
    Build(Box<BuildArgs>),
    /// Cut a bundle into numbered parts FILE.000, FILE.001, ... (e.g. for a FAT32 stick).
    Split {
        file: PathBuf,
        /// Largest part (K/M/G suffixes; default fits FAT32).
        #[arg(long, value_name = "BYTES", default_value = "4294967295", value_parser = crate::parse_size)]
        size: u64,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct BuildArgs {
    /// The tree the target should have after applying: a directory, a .tar or a .tar.zst
    /// (owners, modes and times taken from the archive).
    #[arg(long, value_name = "DIR|TAR")]
    pub new: PathBuf,
    /// The tree the target has now, as for --new (omit for a full bundle).
    #[arg(long, value_name = "DIR|TAR")]
    pub old: Option<PathBuf>,
    /// Secret key to sign with (repeat for several signatures).
    #[arg(long = "key", value_name = "KEY.secret", required = true)]
    pub keys: Vec<PathBuf>,
    /// Version the target is at after applying.
    #[arg(long)]
    pub version: u64,
    /// Version the target must be at (needs --old).
    #[arg(long, value_name = "N")]
    pub base_version: Option<u64>,
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// Output bundle file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Post-commit hook 'GLOB=COMMAND' (repeatable).
    #[arg(long = "hook", value_name = "GLOB=COMMAND")]
    pub hooks: Vec<String>,
    #[arg(long, value_name = "SECS", default_value_t = crate::DEFAULT_HOOK_TIMEOUT)]
    pub hook_timeout: u32,
    /// Expiry time, seconds since the Unix epoch.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub expires: Option<u64>,
    /// Compression level: fast, default, max, or 1..22.
    #[arg(long, default_value = "default", value_parser = crate::parse_level)]
    pub level: i32,
    /// Files larger than this are split into pieces of this size (K/M/G suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = crate::parse_size)]
    pub chunk_size: u64,
    /// Small files (under 1 MiB) whose best encoding is plain zstd are compressed together in
    /// "solid" frames of at most this many decoded bytes, similar files side by side (0: one
    /// frame per file).
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = crate::parse_solid_size)]
    pub solid_size: u64,
    /// Mark NEW files matching GLOB as configuration files.
    #[arg(long = "config-files", value_name = "GLOB", num_args = 1..)]
    pub config_files: Vec<String>,
    /// Public key file the target trusts from now on.
    #[arg(long = "rotate-add", value_name = "KEY.pub", num_args = 1..)]
    pub rotate_add: Vec<PathBuf>,
    /// Key id the target refuses from now on.
    #[arg(long = "rotate-retire", value_name = "KEYID", num_args = 1..)]
    pub rotate_retire: Vec<String>,
    /// New signature threshold of the target.
    #[arg(long = "rotate-threshold", value_name = "N")]
    pub rotate_threshold: Option<u32>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the apply script and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A file or symlink whose content, mode and owner are unchanged keeps the target's mtime
    /// instead of taking NEW's (no step, not listed): smaller bundles when a rebuild or package
    /// reinstall touched every mtime. The target then differs from NEW in those mtimes.
    #[arg(long)]
    pub keep_unchanged_mtimes: bool,
    /// Write the bundle as parts FILE.000, FILE.001, ... of at most this size (K/M/G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = crate::parse_size)]
    pub split_size: Option<u64>,
}
