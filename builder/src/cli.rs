//! The `ferry-build` command line (clap derive), in the library so that man pages and shell
//! completions can be generated from it (`xtask`).

use crate::{BuildOptions, Error};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ferry-build", version, about = "Build and sign delta bundles for ferry")]
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
    /// Generate a signing key pair: NAME.secret (mode 0600, encrypted with a passphrase unless
    /// --unencrypted) and NAME.pub. The passphrase comes from FERRY_PASSPHRASE_FD (a file
    /// descriptor), FERRY_PASSPHRASE_FILE or FERRY_PASSPHRASE, else it is asked for twice on the
    /// terminal.
    Keygen {
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Write the secret key without a passphrase (for automation; keep it on a protected
        /// machine).
        #[arg(long)]
        unencrypted: bool,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Encrypt a secret key file with a passphrase, or change its passphrase, in place.
    /// The current passphrase (if any) as for keygen; the new one from FERRY_NEW_PASSPHRASE or
    /// asked twice on the terminal.
    ProtectKey {
        #[arg(value_name = "KEY.secret")]
        key: PathBuf,
    },
    /// Diff OLD and NEW into a signed bundle.
    Build(Box<BuildArgs>),
    /// Add signatures to a bundle without rebuilding it (key files, external signer commands,
    /// imported signature files), or write a signing request for an offline signer.
    Sign(Box<SignArgs>),
    /// On the offline machine: check a signing request, print what the bundle does (derived
    /// from the manifest it carries), sign it and write a signature file.
    SignRequest(Box<SignRequestArgs>),
    /// Write a ferry public-key file (KEY.pub, for targets' trust directories) for a secret key
    /// or an external signer (which signs a fixed test message; the result is checked).
    Pubkey(Box<PubkeyArgs>),
    /// Generate an encryption identity: NAME.identity (the X25519 secret, mode 0600, for the
    /// targets) and NAME.recipient (for `build --encrypt-to`). For a fleet sharing one identity;
    /// a single target is better served by `ferry-apply identity`, which never lets its secret
    /// leave the target.
    RecipientGen {
        #[arg(long, value_name = "NAME")]
        out: PathBuf,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Add a version to a channel repository (deltas from the last versions and a full bundle,
    /// then the signed index, written last and atomically); or re-sign the index's freshness
    /// (--refresh); or remove files the index no longer names (--prune). bundle-format.md §18.4.
    Publish(Box<PublishArgs>),
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
    /// Secret key to sign with (repeat for several signatures). Other signers can add theirs
    /// later with `ferry-build sign`.
    #[arg(long = "key", value_name = "KEY.secret")]
    pub keys: Vec<PathBuf>,
    /// Allow a bundle without --key: it is written with no signatures (every target refuses it
    /// until `ferry-build sign` has added enough).
    #[arg(long)]
    pub unsigned: bool,
    /// Version the target is at after applying.
    #[arg(long)]
    pub version: u64,
    /// Version the target must be at (needs --old).
    #[arg(long, value_name = "N")]
    pub base_version: Option<u64>,
    /// Release channel (1 to 128 printable ASCII characters).
    #[arg(long, default_value = "stable")]
    pub channel: bundle::Channel,
    /// Output bundle file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Expiry time, seconds since the Unix epoch.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub expires: Option<u64>,
    /// How the bundle is encoded and what it carries (shared with `publish`).
    #[command(flatten)]
    pub encode: EncodeArgs,
    /// Public key file the target trusts from now on.
    #[arg(long = "rotate-add", value_name = "KEY.pub", num_args = 1..)]
    pub rotate_add: Vec<PathBuf>,
    /// Key id the target refuses from now on.
    #[arg(long = "rotate-retire", value_name = "KEYID", num_args = 1..)]
    pub rotate_retire: Vec<bundle::KeyId>,
    /// New signature threshold of the target.
    #[arg(long = "rotate-threshold", value_name = "N")]
    pub rotate_threshold: Option<u32>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the apply script and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the bundle as parts FILE.000, FILE.001, ... of at most this size (K/M/G suffixes).
    #[arg(long, value_name = "BYTES", value_parser = crate::parse_size)]
    pub split_size: Option<u64>,
    /// Encrypt the bundle to this recipient (a NAME.recipient file from `recipient-gen` or
    /// `ferry-apply identity`); repeatable, at most 64. Only a target holding a matching identity
    /// can read the paths, metadata, script and contents; anyone can still verify the signatures.
    #[arg(long = "encrypt-to", value_name = "RECIPIENT_FILE")]
    pub encrypt_to: Vec<PathBuf>,
}

/// Build options that `build` and `publish` share: encoding, hooks, config files, what the
/// trees carry.
#[derive(Args, Clone)]
pub struct EncodeArgs {
    /// Post-commit hook 'GLOB=COMMAND' (repeatable).
    #[arg(long = "hook", value_name = "GLOB=COMMAND")]
    pub hooks: Vec<String>,
    #[arg(long, value_name = "SECS", default_value_t = crate::DEFAULT_HOOK_TIMEOUT)]
    pub hook_timeout: u32,
    /// Compression level: fast, default, max, or 1..22.
    #[arg(long, default_value = "default", value_parser = crate::parse_level)]
    pub level: i32,
    /// Files larger than this are split into pieces of this size (K/M/G suffixes allowed).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = crate::parse_size)]
    pub chunk_size: u64,
    /// Files under 16 MiB whose best encoding is plain zstd are compressed together in
    /// "solid" frames of at most this many decoded bytes, similar files side by side (0: one
    /// frame per file).
    #[arg(long, value_name = "BYTES", default_value = "32M", value_parser = crate::parse_solid_size)]
    pub solid_size: u64,
    /// Ship gzip files as they are, not as their uncompressed data that the applier deflates
    /// again (bundle-format.md §5.3). For appliers older than that section.
    #[arg(long)]
    pub no_regzip: bool,
    /// Mark NEW files matching GLOB as configuration files.
    #[arg(long = "config-files", value_name = "GLOB", num_args = 1..)]
    pub config_files: Vec<String>,
    /// A file or symlink whose content, mode and owner are unchanged keeps the target's mtime
    /// instead of taking NEW's (no step, not listed): smaller bundles when a rebuild or package
    /// reinstall touched every mtime. The target then differs from NEW in those mtimes.
    #[arg(long)]
    pub keep_unchanged_mtimes: bool,
    /// Refuse an input holding a Unix socket instead of skipping it with a warning (a bundle
    /// cannot carry sockets; tar and rsync skip them too).
    #[arg(long)]
    pub fail_on_sockets: bool,
    /// Extended attributes to carry: `auto` (default: each `security.*` attribute name, e.g.
    /// `security.capability`, and each other namespace in which the bundle's entries hold an
    /// attribute), `all` (security, system, trusted and user, even where nothing
    /// holds one: the target's attributes there are then removed), `none`, or a comma-separated
    /// list of namespaces and attribute names (`security.capability,user`). In a carried
    /// namespace an entry's attributes are exactly NEW's on the target; others are left alone.
    #[arg(long, value_name = "WHICH", default_value = "auto", value_parser = crate::xattr::Carry::parse)]
    pub xattrs: crate::xattr::Carry,
}

/// `ferry-build publish` (bundle-format.md §18.4).
#[derive(Args)]
pub struct PublishArgs {
    /// The repository: a directory served as it is (HTTP root, bucket, stick).
    #[arg(long, value_name = "REPO")]
    pub repo: PathBuf,
    /// The channel (its directory in REPO and the bundles' manifest channel).
    #[arg(long, value_name = "C")]
    pub channel: String,
    /// Re-sign only the freshness part of the current index (with --timestamp-key, which the
    /// index must list, or with the release keys).
    #[arg(long, conflicts_with_all = ["prune", "new", "version", "no_full", "keep_versions"])]
    pub refresh: bool,
    /// Remove files of REPO/C/bundles the index does not name, stale temporary files, and the
    /// store's trees no future delta needs (all but the newest --deltas-from versions).
    #[arg(long, conflicts_with_all = ["new", "version", "keys", "signer_commands", "timestamp_key"])]
    pub prune: bool,
    /// The new version's tree: a directory, a .tar or a .tar.zst (as for `build --new`).
    #[arg(long, value_name = "DIR|TAR", required_unless_present_any = ["refresh", "prune"])]
    pub new: Option<PathBuf>,
    /// The new version: above the index's latest.
    #[arg(long, value_name = "V", required_unless_present_any = ["refresh", "prune"])]
    pub version: Option<u64>,
    /// Release key: signs the bundles and the index's release part (repeatable).
    #[arg(long = "key", value_name = "KEY.secret")]
    pub keys: Vec<PathBuf>,
    /// External release signer (as for `sign --signer-command`; it is given the 51-byte bundle
    /// messages and the 55- and 53-byte index messages). Repeatable.
    #[arg(long = "signer-command", value_name = "CMD")]
    pub signer_commands: Vec<String>,
    /// Public key of the one --signer-command.
    #[arg(long, value_name = "KEY.pub")]
    pub signer_pub: Option<PathBuf>,
    /// Seconds a signer command may take before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = crate::signer::DEFAULT_TIMEOUT_SECS)]
    pub signer_timeout: u64,
    /// Timestamp key: signs the freshness part, and the release part lists it.
    #[arg(long, value_name = "T.secret")]
    pub timestamp_key: Option<PathBuf>,
    /// Another timestamp key the release part lists (repeatable), e.g. a standby one.
    #[arg(long = "timestamp-pub", value_name = "T.pub")]
    pub timestamp_pubs: Vec<PathBuf>,
    /// Build deltas from each of the newest K earlier versions.
    #[arg(long, value_name = "K", default_value_t = crate::publish::DEFAULT_DELTAS_FROM)]
    pub deltas_from: usize,
    /// Bundles built at a time.
    #[arg(long, value_name = "N", default_value_t = crate::publish::DEFAULT_JOBS)]
    pub jobs: usize,
    /// The publisher's store of past trees and its lock (not served; default: REPO.store).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Keep only the bundles leading to the newest N versions in the index.
    #[arg(long, value_name = "N")]
    pub keep_versions: Option<usize>,
    /// Freshness lifetime: seconds, or with s, m, h, d, w (e.g. 90m, 12h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = crate::publish::parse_duration)]
    pub expires: u64,
    /// Release part lifetime (bounds the freeze a stolen timestamp key can hold); default none.
    #[arg(long, value_name = "DURATION", value_parser = crate::publish::parse_duration)]
    pub release_expires: Option<u64>,
    /// Publish no full bundle (deltas only).
    #[arg(long)]
    pub no_full: bool,
    /// How the bundles are encoded and what they carry (as for `build`).
    #[command(flatten)]
    pub encode: EncodeArgs,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

impl PublishArgs {
    /// The options every bundle of the publish is built with (input, output, version and base
    /// are set per bundle).
    pub fn build_options(&self) -> Result<BuildOptions, Error> {
        let e = &self.encode;
        let hooks = e.hooks.iter().map(|h| crate::parse_hook(h, e.hook_timeout)).collect::<Result<Vec<_>, _>>()?;
        let channel: bundle::Channel =
            self.channel.parse().map_err(|err| Error::Usage(format!("--channel {:?}: {err}", self.channel)))?;
        Ok(BuildOptions {
            new: self.new.clone().unwrap_or_default(),
            old: None,
            keys: Vec::new(),
            unsigned: true,
            version: self.version.unwrap_or(0),
            base_version: None,
            channel,
            out: PathBuf::new(),
            hooks,
            expires: None,
            level: e.level,
            chunk_size: e.chunk_size,
            solid_size: e.solid_size,
            regzip: !e.no_regzip,
            config_files: e.config_files.clone(),
            rotate_add: Vec::new(),
            rotate_retire: Vec::new(),
            rotate_threshold: None,
            dry_run: false,
            keep_unchanged_mtimes: e.keep_unchanged_mtimes,
            fail_on_sockets: e.fail_on_sockets,
            xattrs: e.xattrs.clone(),
            created: crate::created_from_env()?,
            encrypt_to: Vec::new(),
        })
    }
}

#[derive(Args)]
pub struct SignArgs {
    /// The bundle to sign (a whole bundle: sign before splitting).
    pub file: PathBuf,
    /// Secret key to sign with (repeatable).
    #[arg(long = "key", value_name = "KEY.secret")]
    pub keys: Vec<PathBuf>,
    /// External signer, run with `sh -c`: gets the 51-byte message on stdin, writes the 32-byte
    /// public key and the 64-byte signature on stdout (or the signature alone with --signer-pub).
    /// Repeatable.
    #[arg(long = "signer-command", value_name = "CMD")]
    pub signer_commands: Vec<String>,
    /// Public key of the one --signer-command (then it may write the 64-byte signature alone;
    /// a signature by any other key is refused).
    #[arg(long, value_name = "KEY.pub")]
    pub signer_pub: Option<PathBuf>,
    /// Seconds a signer command may take before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = crate::signer::DEFAULT_TIMEOUT_SECS)]
    pub signer_timeout: u64,
    /// Signature file written by `ferry-build sign-request` on an offline machine (repeatable).
    #[arg(long = "import", value_name = "SIG")]
    pub imports: Vec<PathBuf>,
    /// Write a signing request for an offline signer to REQ instead of signing (the bundle id,
    /// the message, the manifest member; no payload).
    #[arg(long, value_name = "REQ", conflicts_with_all = ["keys", "signer_commands", "signer_pub", "imports"])]
    pub export_request: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SignRequestArgs {
    /// The signing request (from `ferry-build sign --export-request`).
    pub request: PathBuf,
    /// Secret key to sign with.
    #[arg(long, value_name = "KEY.secret", conflicts_with = "signer_command")]
    pub key: Option<PathBuf>,
    /// External signer (as for `sign --signer-command`).
    #[arg(long, value_name = "CMD")]
    pub signer_command: Option<String>,
    /// Public key of the --signer-command.
    #[arg(long, value_name = "KEY.pub", requires = "signer_command")]
    pub signer_pub: Option<PathBuf>,
    /// Seconds the signer command may take before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = crate::signer::DEFAULT_TIMEOUT_SECS)]
    pub signer_timeout: u64,
    /// Signature file to write (one line; carry it back and `ferry-build sign FILE --import SIG`).
    #[arg(long, value_name = "SIG")]
    pub out: Option<PathBuf>,
    /// Check the request and print the summary; sign nothing.
    #[arg(long, conflicts_with_all = ["key", "signer_command", "out"])]
    pub summary_only: bool,
    /// Print a JSON report (with the summary) on stdout instead of the text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PubkeyArgs {
    /// A ferry secret key file.
    #[arg(
        long,
        value_name = "KEY.secret",
        conflicts_with = "signer_command",
        required_unless_present = "signer_command"
    )]
    pub key: Option<PathBuf>,
    /// An external signer (as for `sign --signer-command`); it must write the public key and
    /// the signature (96 bytes).
    #[arg(long, value_name = "CMD")]
    pub signer_command: Option<String>,
    /// Seconds the signer command may take before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = crate::signer::DEFAULT_TIMEOUT_SECS)]
    pub signer_timeout: u64,
    /// Public key file to write (must not exist).
    #[arg(long, value_name = "KEY.pub")]
    pub out: PathBuf,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The one place command-line arguments become [`BuildOptions`]: hooks are parsed with
/// `--hook-timeout`, and the creation time comes from [`crate::created_from_env`] (the hooks are
/// checked first). Output-only flags (`--json`, `--split-size`) are not build options.
impl TryFrom<&BuildArgs> for BuildOptions {
    type Error = Error;

    fn try_from(a: &BuildArgs) -> Result<BuildOptions, Error> {
        let e = &a.encode;
        let hooks = e.hooks.iter().map(|h| crate::parse_hook(h, e.hook_timeout)).collect::<Result<Vec<_>, _>>()?;
        Ok(BuildOptions {
            new: a.new.clone(),
            old: a.old.clone(),
            keys: a.keys.clone(),
            unsigned: a.unsigned,
            version: a.version,
            base_version: a.base_version,
            channel: a.channel.clone(),
            out: a.out.clone(),
            hooks,
            expires: a.expires,
            level: e.level,
            chunk_size: e.chunk_size,
            solid_size: e.solid_size,
            regzip: !e.no_regzip,
            config_files: e.config_files.clone(),
            rotate_add: a.rotate_add.clone(),
            rotate_retire: a.rotate_retire.clone(),
            rotate_threshold: a.rotate_threshold,
            dry_run: a.dry_run,
            keep_unchanged_mtimes: e.keep_unchanged_mtimes,
            fail_on_sockets: e.fail_on_sockets,
            xattrs: e.xattrs.clone(),
            created: crate::created_from_env()?,
            encrypt_to: a.encrypt_to.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_become_build_options() -> Result<(), Box<dyn std::error::Error>> {
        let cli = Cli::try_parse_from([
            "ferry-build",
            "build",
            "--new",
            "n",
            "--old",
            "o",
            "--key",
            "k1",
            "--key",
            "k2",
            "--version",
            "3",
            "--base-version",
            "2",
            "--channel",
            "beta",
            "--out",
            "b.ferry",
            "--hook",
            "bin/*=true",
            "--hook-timeout",
            "9",
            "--expires",
            "4000000000",
            "--level",
            "fast",
            "--chunk-size",
            "1M",
            "--solid-size",
            "0",
            "--config-files",
            "etc/*",
            "--rotate-add",
            "r.pub",
            "--rotate-retire",
            "0123456789abcdef",
            "--rotate-threshold",
            "2",
            "--dry-run",
            "--keep-unchanged-mtimes",
            "--fail-on-sockets",
            "--json",
            "--split-size",
            "1M",
        ])?;
        let Cmd::Build(a) = cli.cmd else { return Err("not build".into()) };
        let o = BuildOptions::try_from(&*a)?;
        assert_eq!((o.new, o.old), (PathBuf::from("n"), Some(PathBuf::from("o"))));
        assert_eq!(o.keys, [PathBuf::from("k1"), PathBuf::from("k2")]);
        assert_eq!((o.version, o.base_version, o.channel.as_str()), (3, Some(2), "beta"));
        assert_eq!(o.out, PathBuf::from("b.ferry"));
        assert_eq!(o.hooks.len(), 1);
        assert_eq!(
            (o.hooks[0].glob.as_str(), o.hooks[0].command.as_str(), o.hooks[0].timeout_secs),
            ("bin/*", "true", 9)
        );
        assert_eq!((o.expires, o.level, o.chunk_size, o.solid_size), (Some(4_000_000_000), 3, 1 << 20, 0));
        assert_eq!(o.config_files, ["etc/*"]);
        assert_eq!(
            (o.rotate_add, o.rotate_retire),
            (vec![PathBuf::from("r.pub")], vec!["0123456789abcdef".parse::<bundle::KeyId>()?])
        );
        assert_eq!(o.rotate_threshold, Some(2));
        assert!(o.dry_run && o.keep_unchanged_mtimes && o.fail_on_sockets);
        Ok(())
    }

    #[test]
    fn a_bad_hook_is_a_usage_error() -> Result<(), Box<dyn std::error::Error>> {
        let cli = Cli::try_parse_from([
            "ferry-build",
            "build",
            "--new",
            "n",
            "--key",
            "k",
            "--version",
            "1",
            "--out",
            "b",
            "--hook",
            "nocommand",
        ])?;
        let Cmd::Build(a) = cli.cmd else { return Err("not build".into()) };
        assert!(BuildOptions::try_from(&*a).is_err_and(|e| e.is_usage()));
        Ok(())
    }
}
