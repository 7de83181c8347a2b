//! What `ferry-apply` prints: one versioned JSON contract for `--json`, and the text for humans.
//!
//! Every `--json` report of every subcommand, errors included, is a [`Report`]: one JSON object
//! on stdout holding `"ferry_report": 1` (the contract's version), `"command"`, `"exit_code"`
//! and `"exit_meaning"`, then the command's own fields (its body). Scripts depend on these
//! names; add fields freely, rename none without bumping [`REPORT_VERSION`].
//!
//! Human text holds untrusted strings (paths and channels from bundles, names planted in the
//! target), so [`print`] passes it through [`text::escape`], and the renderers escape each path
//! with [`text::escape_line`] where a newline in it could fake a line of output (§15).

use crate::error::{Error, Exit};
use crate::text;
use bundle::sig::TrustStatus;
use serde::Serialize;

/// Version of the JSON report contract (`"ferry_report"`).
pub const REPORT_VERSION: u8 = 1;

/// The envelope of every `--json` report.
#[derive(Debug, Serialize)]
pub struct Report<'a, T: Serialize> {
    pub ferry_report: u8,
    pub command: &'a str,
    pub exit_code: u8,
    pub exit_meaning: &'static str,
    #[serde(flatten)]
    pub body: T,
}

impl<'a, T: Serialize> Report<'a, T> {
    pub fn new(command: &'a str, exit: Exit, body: T) -> Self {
        Report { ferry_report: REPORT_VERSION, command, exit_code: exit as u8, exit_meaning: exit.meaning(), body }
    }
}

/// The body of a failed command's report. A bundle refused by the trust policy also carries the
/// policy's view of its signers (`trust`: each key id and its status, the threshold, whether it
/// is met and by how many signatures it falls short).
#[derive(Debug, Serialize)]
pub struct Failure {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustStatus>,
}

/// The body of `verify`'s report; `file` and `frames` are for the human text only.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub verified: bool,
    /// The bundle is encrypted (bundle-format.md §4.10), to `recipients` recipients.
    pub encrypted: bool,
    pub recipients: Option<usize>,
    /// An `--identity` opened it: its manifest and decoded frames were checked too (else only
    /// what is public: signatures, trust, the outer manifest, every stored frame's hash).
    pub decrypted: bool,
    pub version: u64,
    pub bundle_id: String,
    /// Key ids of every signer (all signatures verified), sorted by key bytes.
    pub signers: Vec<String>,
    /// The trust policy's view: each signer's status (`trusted`, `retired`, `unknown`), the
    /// number of trusted signatures, the threshold, `met`, `short_by`.
    pub trust: Option<TrustStatus>,
    #[serde(skip)]
    pub file: String,
    #[serde(skip)]
    pub frames: usize,
}

/// Print a command's outcome on stdout: with `json`, its [`Report`]; otherwise `human(&body)`,
/// escaped (nothing when it is empty). Returns `exit` for the caller to exit with.
pub fn print<T: Serialize>(command: &str, json: bool, exit: Exit, body: &T, human: impl FnOnce(&T) -> String) -> Exit {
    if json {
        print_json(&Report::new(command, exit, body));
    } else {
        let s = human(body);
        if !s.is_empty() {
            out_line(&text::escape(&s));
        }
    }
    exit
}

/// Report a failed command: the message on stderr (escaped), and with `json` its [`Report`] on
/// stdout too. Returns the error's exit code.
pub fn print_error(command: &str, json: bool, e: &Error) -> Exit {
    let exit = e.exit();
    eprintln!("ferry-apply {command}: error: {}", text::escape(&e.to_string()));
    if json {
        let trust = match e {
            Error::Bundle(bundle::Error::Untrusted { status }) => Some((**status).clone()),
            _ => None,
        };
        print_json(&Report::new(command, exit, Failure { error: e.to_string(), trust }));
    }
    exit
}

/// One line on stdout. A reader that went away (`ferry-apply status --json | head -c 10`, a
/// closed pipe) is its own business: the command's work is done and its exit code stands, so a
/// write error is ignored rather than a panic (`println!`).
fn out_line(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}").and_then(|()| o.flush());
}

fn print_json<T: Serialize>(r: &Report<'_, T>) {
    match serde_json::to_string(r) {
        Ok(s) => out_line(&s),
        // Unreachable for our bodies (string keys only); say so rather than print nothing.
        Err(e) => eprintln!("ferry-apply {}: error: cannot encode the JSON report: {e}", r.command),
    }
}

/// `verify`'s human text.
pub fn verify_text(v: &Verified) -> String {
    let enc = match (v.recipients, v.decrypted) {
        (None, _) => String::new(),
        (Some(n), true) => format!("; encrypted to {n} recipient(s), opened and checked"),
        (Some(n), false) => format!("; encrypted to {n} recipient(s), contents not checked (no --identity)"),
    };
    let mut s = format!("OK: {} version {} ({} frames verified{enc})", v.file, v.version, v.frames);
    if let Some(t) = &v.trust {
        s.push_str(&format!("\n{}", trust_line(t)));
    }
    s
}

/// The trust policy's view of a bundle's signers, as one line.
pub fn trust_line(t: &TrustStatus) -> String {
    format!("threshold {}: {t}", if t.met { "met" } else { "NOT met" })
}

/// `identity`'s human text: the recipient line, for `ferry-build build --encrypt-to`.
pub fn identity_text(r: &crate::unseal::IdentityReport) -> String {
    r.recipient.clone()
}

/// `apply`'s human text.
pub fn apply_text(r: &crate::apply::Report) -> String {
    format!("{}: version {}", r.result, r.version.map(|v| v.to_string()).unwrap_or_default())
}

/// `resume`'s human text.
pub fn resume_text(r: &crate::apply::Report) -> String {
    r.result.clone()
}

/// `rollback`'s human text.
pub fn rollback_text(r: &crate::apply::Report) -> String {
    format!("rolled back; installed version now {}", r.version.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))
}

/// `fetch`'s human text.
pub fn fetch_text(r: &crate::fetch::Report) -> String {
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
}

/// `update`'s human text: the path, then what was applied.
pub fn update_text(r: &crate::update::Report) -> String {
    let v = |x: Option<u64>| x.map_or("none (empty target)".to_string(), |v| v.to_string());
    if r.up_to_date {
        return format!("up to date: version {} (channel {})", v(r.from), r.channel);
    }
    let path: Vec<String> = r.path.iter().map(|s| format!("{} ({} bytes)", s.file, s.size)).collect();
    let head = format!(
        "channel {}: version {} -> {}: {} ({} bytes planned)",
        r.channel,
        v(r.from),
        r.to,
        path.join(" -> "),
        r.bytes_planned
    );
    if r.dry_run {
        format!("{head}\ndry run: nothing changed")
    } else {
        let applied: Vec<String> = r.applied.iter().map(u64::to_string).collect();
        format!("{head}\napplied versions {}; {} bytes downloaded", applied.join(", "), r.bytes_downloaded)
    }
}

/// `inbox`'s human text: one line per bundle, each escaped as a single line (a bundle's name
/// or a reason holding a newline cannot fake another bundle's line).
pub fn inbox_text(r: &crate::inbox::InboxReport) -> String {
    let lines: Vec<String> =
        r.items.iter().map(|i| text::escape_line(&format!("{:8} {} {}", i.outcome, i.bundle, i.reason))).collect();
    lines.join("\n")
}

/// `plan`'s human text.
pub fn plan_text(p: &crate::plan::Plan) -> String {
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
        s.push_str(&format!("\n  {:8} {}", st.op, text::escape_line(&st.path)));
    }
    s
}

/// `status`'s human text.
pub fn status_text(s: &crate::status::Status) -> String {
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

/// `inspect`'s human text. The composite fields are shown as the JSON values they are in the
/// report (keys sorted, strings quoted and JSON-escaped).
pub fn inspect_text(v: &crate::inspect::Inspection) -> String {
    let signatures = match (v.signatures_valid, v.signers.len()) {
        (false, _) => "INVALID",
        (true, 0) => "none: the bundle is UNSIGNED",
        (true, _) => "well-formed and matching",
    };
    let trust = match (&v.trust, v.signatures_valid) {
        (Some(t), _) => trust_line(t),
        (None, false) => "trust not checked (the signatures are invalid)".into(),
        (None, true) => "trust not checked (no --trust)".into(),
    };
    let mut s = format!(
        "UNVERIFIED bundle (payload not checked; signatures {})\nversion {} channel {} base {}\nsigners {}\n{}\ncounts (of entries listed) {}\n  ({})\nsizes {}",
        signatures,
        v.version,
        as_json(&v.channel),
        as_json(&v.base),
        as_json(&v.signers),
        trust,
        as_json(&v.counts),
        v.entries_note,
        as_json(&v.sizes),
    );
    match (v.recipients, &v.recipient_id) {
        (Some(n), Some(id)) => s.push_str(&format!("\nencrypted to {n} recipient(s); opened by identity {id}")),
        (Some(n), None) => s.push_str(&format!("\nencrypted to {n} recipient(s); contents hidden (no --identity)")),
        (None, _) => {}
    }
    s.push_str("\napply script:");
    for st in &v.script {
        s.push_str(&format!("\n  {:8} {}", st.op, text::escape_line(&st.path)));
    }
    s
}

/// `v` as compact JSON with the keys of its objects sorted (through `serde_json::Value`, whose
/// maps are ordered), as `inspect` has always shown them.
fn as_json<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).map(|v| v.to_string()).unwrap_or_default()
}
