//! The `ferry-apply` command line (clap derive), in the library so that man pages and shell
//! completions can be generated from it (`xtask`) and tests can parse it in-process.

use crate::apply::Options;
use crate::error::Exit;
use bundle::Limits;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

/// The "Exit codes:" section of every help text, generated once from [`Exit::ALL`].
pub fn exit_codes() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(Exit::help);
    &TEXT
}

/// Verify and apply ferry bundles to a live tree, crash-safely.
#[derive(Parser)]
#[command(name = "ferry-apply", version, after_help = exit_codes())]
pub struct Cli {
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct TargetArgs {
    /// The tree to update.
    #[arg(long)]
    pub target: PathBuf,
    /// Where the applier keeps its state (default TARGET/.ferry). It must be a directory only
    /// the applier's user can write, below directories only root can write: use it outside the
    /// target when a non-root account owns the target's root.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ApplyArgs {
    /// A trusted key (NAME.pub) or a directory of keys with an optional `policy` file.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Expected channel for a target that has not recorded one yet.
    #[arg(long)]
    pub channel: Option<bundle::Channel>,
    /// Do not run the bundle's post-commit hooks.
    #[arg(long)]
    pub no_hooks: bool,
    /// Apply a bundle even if it has expired.
    #[arg(long)]
    pub allow_expired: bool,
    /// Most entries a manifest may have (above the default, the bounds on the manifest's bytes
    /// and CBOR items are raised in proportion).
    #[arg(long, default_value_t = Limits::default().max_entries)]
    pub max_entries: usize,
    /// Apply even where the target is on a network or FUSE filesystem (NFS, SMB/CIFS, FUSE,
    /// Ceph, AFS, 9p, ...), where open files are not kept alive by rename-over and durability is
    /// the server's (bundle-format.md §12); otherwise refused with exit 10.
    #[arg(long)]
    pub allow_network_fs: bool,
    /// Drop an extended-attribute namespace (`security`, `system`, `trusted`, `user`) or one
    /// attribute name (`security.selinux`) the bundle carries: it is neither set, removed nor
    /// checked. Repeatable, or comma-separated. Without it a target that cannot hold an attribute
    /// the bundle sets is refused with exit 15 before anything is written.
    #[arg(long = "skip-xattrs", value_name = "NAMESPACE", value_delimiter = ',', value_parser = parse_xattr_prefix)]
    pub skip_xattrs: Vec<String>,
    /// An identity file (`ferry-identity-v1`) that may open encrypted bundles, besides
    /// STATE/identity and STATE/identities/*.identity. Repeatable.
    #[arg(long = "identity", value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    #[command(flatten)]
    pub replace: ReplaceArgs,
}

/// Replace mode (bundle-format.md §10.4), for `apply`, `plan`, `inbox` and `update`.
#[derive(Args, Clone, Default)]
pub struct ReplaceArgs {
    /// Apply a full bundle to a target that is not empty: the target becomes the bundle's tree.
    /// What differs is replaced, what is equal stays untouched, and every path the bundle lacks
    /// is removed (into the transaction's backup, so `rollback` brings it back) — except what
    /// `--keep` names, mount points and the state directory. For `update`: a full bundle may be
    /// used from any installed version.
    #[arg(long)]
    pub replace: bool,
    /// With --replace: a path the bundle lacks that matches GLOB stays, with everything under it
    /// (`*` within a name, `**` across directories, as hook globs). Repeatable.
    #[arg(long = "keep", value_name = "GLOB", requires = "replace")]
    pub keep: Vec<String>,
}

/// A namespace or attribute name for `--skip-xattrs`.
fn parse_xattr_prefix(s: &str) -> Result<String, String> {
    if bundle::xattr::valid_prefix(s, 255) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a namespace ({}) or an attribute name in one", bundle::xattr::NAMESPACES.join(", ")))
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Check the signature and every payload of a bundle; changes nothing.
    #[command(after_help = exit_codes())]
    Verify {
        file: PathBuf,
        #[arg(long)]
        trust: PathBuf,
        /// An identity that opens the bundle if it is encrypted: its manifest and frames are then
        /// checked too (without one, what is public is: signatures, trust, every frame's hash).
        /// Repeatable.
        #[arg(long = "identity", value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show what a bundle holds (works without a key; the bundle is then unverified). With
    /// --trust, also how the policy counts each signer and whether its threshold is met. An
    /// encrypted bundle shows only its public fields unless an --identity opens it.
    #[command(after_help = exit_codes())]
    Inspect {
        file: PathBuf,
        /// A trusted key or directory of keys (with its `policy`) to count the signers against;
        /// the payload is still not checked (use `verify`).
        #[arg(long)]
        trust: Option<PathBuf>,
        /// An identity that may open an encrypted bundle. Repeatable.
        #[arg(long = "identity", value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Update a target from a bundle (resumes if this bundle's apply was interrupted).
    #[command(after_help = exit_codes())]
    Apply {
        file: PathBuf,
        #[command(flatten)]
        t: TargetArgs,
        #[command(flatten)]
        a: ApplyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Dry run against the real target: steps, space, drift, hooks; changes nothing.
    #[command(after_help = exit_codes())]
    Plan {
        file: PathBuf,
        #[command(flatten)]
        t: TargetArgs,
        #[command(flatten)]
        a: ApplyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Finish an interrupted apply or rollback. The pending transaction is verified again against
    /// --trust, or else against the trust policy recorded when it was started.
    #[command(after_help = exit_codes())]
    Resume {
        #[command(flatten)]
        t: TargetArgs,
        /// Trusted key(s) to verify the pending transaction against (default: those recorded by
        /// the apply that started it).
        #[arg(long)]
        trust: Option<PathBuf>,
        /// The bundle, if staging was interrupted and it moved.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// An identity that opens the pending transaction's encrypted bundle, if it is not in
        /// the state directory. Repeatable.
        #[arg(long = "identity", value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[arg(long)]
        no_hooks: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore the version before the last completed apply (one level).
    #[command(after_help = exit_codes())]
    Rollback {
        #[command(flatten)]
        t: TargetArgs,
        /// Trusted key(s) to verify the kept transaction against (default: those recorded).
        #[arg(long)]
        trust: Option<PathBuf>,
        /// An identity that opens the kept transaction's encrypted bundle, if it is not in the
        /// state directory. Repeatable.
        #[arg(long = "identity", value_name = "FILE")]
        identity: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Installed version, pending work, rollback availability, hooks.
    #[command(after_help = exit_codes())]
    Status {
        #[command(flatten)]
        t: TargetArgs,
        #[arg(long)]
        json: bool,
    },
    /// Resume, then apply every applicable bundle in DIR in version order.
    #[command(after_help = exit_codes())]
    Inbox {
        dir: PathBuf,
        #[command(flatten)]
        t: TargetArgs,
        #[command(flatten)]
        a: ApplyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download a bundle over HTTP(S) into DIR, resumably, checking the signatures first and every
    /// frame as it arrives (a corrupt frame is fetched again, not the whole file).
    #[command(after_help = exit_codes())]
    Fetch(FetchArgs),
    /// Bring the target to the newest version of its channel (or --to VERSION) from a channel
    /// repository: SOURCE is an http(s):// URL of the repository root or a local directory (a
    /// mounted stick). Reads and verifies the channel's signed index (freeze and rollback
    /// refused), chooses the cheapest chain of bundles, downloads each resumably and applies it.
    #[command(after_help = exit_codes())]
    Update(UpdateArgs),
    /// Print this target's recipient line for `ferry-build build --encrypt-to`, creating the
    /// target's identity (STATE/identity, mode 0600) first if it has none: the secret never
    /// leaves the target.
    #[command(after_help = exit_codes())]
    Identity {
        #[command(flatten)]
        t: TargetArgs,
        /// Also write the recipient line to FILE (NAME.recipient).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    /// The subcommand's name, as `--json` reports and error messages give it.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Verify { .. } => "verify",
            Cmd::Inspect { .. } => "inspect",
            Cmd::Apply { .. } => "apply",
            Cmd::Plan { .. } => "plan",
            Cmd::Resume { .. } => "resume",
            Cmd::Rollback { .. } => "rollback",
            Cmd::Status { .. } => "status",
            Cmd::Inbox { .. } => "inbox",
            Cmd::Fetch(_) => "fetch",
            Cmd::Update(_) => "update",
            Cmd::Identity { .. } => "identity",
        }
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        match self {
            Cmd::Verify { json, .. }
            | Cmd::Inspect { json, .. }
            | Cmd::Apply { json, .. }
            | Cmd::Plan { json, .. }
            | Cmd::Resume { json, .. }
            | Cmd::Rollback { json, .. }
            | Cmd::Status { json, .. }
            | Cmd::Inbox { json, .. }
            | Cmd::Identity { json, .. } => *json,
            Cmd::Fetch(f) => f.json,
            Cmd::Update(u) => u.json,
        }
    }
}

impl TargetArgs {
    /// Options for a command on this target; `a` for the commands that take a bundle. `quiet`
    /// also silences the progress display, which `verbose` asks for.
    pub fn options(&self, a: Option<&ApplyArgs>, quiet: bool, verbose: bool) -> Options {
        let progress = crate::progress::wanted(quiet, verbose);
        let mut o = Options {
            target: self.target.clone(),
            state_dir: self.state_dir.clone(),
            quiet,
            progress,
            ..Default::default()
        };
        if let Some(a) = a {
            o.trust = a.trust.clone();
            o.channel = a.channel.clone().map(bundle::Channel::into_string);
            o.no_hooks = a.no_hooks;
            o.allow_expired = a.allow_expired;
            o.allow_network_fs = a.allow_network_fs;
            o.skip_xattrs = a.skip_xattrs.clone();
            o.identities = a.identity.clone();
            o.replace = a.replace.replace;
            o.keep = a.replace.keep.clone();
            o.limits = bundle::Limits::with_max_entries(a.max_entries);
        }
        o
    }
}

impl FetchArgs {
    /// The options of `fetch`.
    pub fn options(&self, quiet: bool) -> crate::fetch::Options {
        crate::fetch::Options {
            url: self.url.clone(),
            into: self.into.clone(),
            trust: self.trust.clone(),
            ..self.net.options(quiet)
        }
    }
}

/// The network flags `fetch` and `update` share: one definition, one constructor of
/// [`crate::fetch::Options`].
#[derive(Args, Clone)]
pub struct NetArgs {
    /// Re-fetches of one corrupt frame, and failed requests in a row, before giving up.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// First wait after a network error, in milliseconds (doubles each time, up to 30 s).
    #[arg(long, alias = "retry-wait", default_value_t = 500)]
    pub retry_wait_ms: u64,
    /// Idle timeout in seconds: of a connect, and of every read (no byte for this long).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Each download (with `update`: the index, every bundle), retries and waits included, gives
    /// up after this many seconds (a server dripping bytes never trips the idle timeout).
    #[arg(long, default_value_t = 3600)]
    pub deadline: u64,
    /// A PEM file of CA certificates trusted for https besides the public (webpki) roots, e.g. a
    /// private CA. Repeatable. Proxies come from the environment (https_proxy, http_proxy,
    /// all_proxy, no_proxy; http:// proxies only, CONNECT for https).
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
}

impl NetArgs {
    /// [`crate::fetch::Options`] with these flags; what they do not set (URL, directory, trust,
    /// expected bundle id) at its default.
    pub fn options(&self, quiet: bool) -> crate::fetch::Options {
        crate::fetch::Options {
            retries: self.retries,
            retry_wait: Duration::from_millis(self.retry_wait_ms),
            timeout: Duration::from_secs(self.timeout.max(1)),
            deadline: Duration::from_secs(self.deadline.max(1)),
            quiet,
            ca_certs: self.ca_cert.clone(),
            ..Default::default()
        }
    }
}

/// The arguments of `fetch`.
#[derive(Args, Clone)]
pub struct FetchArgs {
    pub url: String,
    /// Directory to download into: DIR/NAME (NAME = the URL's last path segment), with
    /// NAME.part and NAME.fetch while in progress.
    #[arg(long)]
    pub into: PathBuf,
    /// A trusted key (NAME.pub) or a directory of keys; without it, signatures are only
    /// checked for validity, not against a trusted key.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// The arguments of `update`.
#[derive(Args, Clone)]
pub struct UpdateArgs {
    /// The repository root: an http:// or https:// URL, or a local directory. The index is
    /// SOURCE/CHANNEL/index.ferry-index, the bundles SOURCE/CHANNEL/bundles/FILE.
    pub source: String,
    #[command(flatten)]
    pub t: TargetArgs,
    /// A trusted key (NAME.pub) or a directory of keys with an optional `policy` file: the
    /// index's release part and every bundle must meet it.
    #[arg(long)]
    pub trust: PathBuf,
    /// The channel to follow (default: the one the target has pinned; required for an empty
    /// target).
    #[arg(long)]
    pub channel: Option<String>,
    /// Stop at this version (one the index reaches) instead of the newest.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<u64>,
    /// Print the chosen path and its bytes; change nothing (not even the state directory).
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
    /// Where bundles are downloaded to (default STATE/updates); each is removed once applied.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Seconds this machine's clock may be behind the publisher's: the index is refused as
    /// expired only once now > expires + SECS.
    #[arg(long, value_name = "SECS", default_value_t = bundle::index::DEFAULT_CLOCK_ALLOWANCE)]
    pub clock_allowance: u64,
    /// Do not run the bundles' post-commit hooks.
    #[arg(long)]
    pub no_hooks: bool,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub replace: ReplaceArgs,
}

impl UpdateArgs {
    /// The options of `update`.
    pub fn options(&self, quiet: bool, verbose: bool) -> crate::update::Options {
        let mut a = self.t.options(None, quiet, verbose);
        a.trust = Some(self.trust.clone());
        a.no_hooks = self.no_hooks;
        a.replace = self.replace.replace;
        a.keep = self.replace.keep.clone();
        crate::update::Options {
            apply: a,
            source: self.source.clone(),
            channel: self.channel.clone(),
            to: self.to,
            dry_run: self.dry_run,
            cache: self.cache.clone(),
            clock_allowance: self.clock_allowance,
            net: self.net.options(quiet),
        }
    }
}
