//! `ferry-apply`: thin command-line shim over the `applier` library. Parse the command line,
//! run the one subcommand, print its report (`applier::report`), exit with its code.

use applier::apply;
use applier::cli::{ApplyArgs, Cli, Cmd, FetchArgs, TargetArgs, UpdateArgs};
use applier::error::{Exit, Result};
use applier::report::{self, Verified};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The global flags every subcommand sees.
struct Global {
    quiet: bool,
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { Exit::Ok as u8 });
        }
    };
    let g = Global { quiet: cli.quiet, verbose: cli.verbose && !cli.quiet };
    let (command, json) = (cli.cmd.name(), cli.cmd.json());
    let exit = run(cli.cmd, &g).unwrap_or_else(|e| report::print_error(command, json, &e));
    ExitCode::from(exit as u8)
}

/// One function per subcommand.
fn run(cmd: Cmd, g: &Global) -> Result<Exit> {
    match cmd {
        Cmd::Verify { file, trust, identity, json } => verify(g, &file, &trust, &identity, json),
        Cmd::Inspect { file, trust, identity, json } => inspect(&file, trust.as_deref(), &identity, json),
        Cmd::Apply { file, t, a, json } => apply(g, &file, &t, &a, json),
        Cmd::Plan { file, t, a, json } => plan(g, &file, &t, &a, json),
        Cmd::Resume { t, trust, bundle, identity, no_hooks, json } => {
            let mut o = t.options(None, g.quiet || json, g.verbose);
            (o.trust, o.bundle, o.no_hooks, o.identities) = (trust, bundle, no_hooks, identity);
            resume(&o, json)
        }
        Cmd::Rollback { t, trust, identity, json } => {
            let mut o = t.options(None, g.quiet || json, g.verbose);
            (o.trust, o.identities) = (trust, identity);
            rollback(&o, json)
        }
        Cmd::Status { t, json } => status(g, &t, json),
        Cmd::Inbox { dir, t, a, json } => inbox(g, &dir, &t, &a, json),
        Cmd::Fetch(f) => fetch(g, &f),
        Cmd::Update(u) => update(g, &u),
        Cmd::Identity { t, out, json } => identity(&t.options(None, true, false), out.as_deref(), json),
    }
}

fn verify(g: &Global, file: &Path, trust: &Path, identities: &[PathBuf], json: bool) -> Result<Exit> {
    let trust = applier::trust::load(trust, None)?;
    let progress = applier::progress::wanted(g.quiet || json, g.verbose);
    // Without an identity an encrypted bundle is verified as far as it is public.
    let keys = applier::unseal::Keyring::load(identities, None)?;
    let keys = (!identities.is_empty()).then_some(&keys);
    let limits = bundle::Limits::default();
    let h = applier::verify::bundle_with_progress(file, Some(&trust), keys, &limits, true, progress)?;
    let v = Verified {
        encrypted: applier::unseal::recipients(&h).is_some(),
        recipients: applier::unseal::recipients(&h),
        decrypted: h.opened.is_some(),
        verified: true,
        version: h.manifest.version,
        bundle_id: h.id.to_hex(),
        signers: h.signers.iter().map(|k| k.id.clone()).collect(),
        trust: h.trust,
        file: file.display().to_string(),
        frames: h.manifest.frames.len(),
    };
    Ok(report::print("verify", json, Exit::Ok, &v, report::verify_text))
}

fn inspect(file: &Path, trust: Option<&Path>, identities: &[PathBuf], json: bool) -> Result<Exit> {
    let trust = trust.map(|t| applier::trust::load(t, None)).transpose()?;
    let i = applier::inspect::inspect(file, trust.as_ref(), identities)?;
    Ok(report::print("inspect", json, Exit::Ok, &i, report::inspect_text))
}

fn apply(g: &Global, file: &Path, t: &TargetArgs, a: &ApplyArgs, json: bool) -> Result<Exit> {
    let r = apply::apply(&t.options(Some(a), g.quiet || json, g.verbose), file)?;
    Ok(report::print("apply", json, Exit::Ok, &r, report::apply_text))
}

/// Exits with the code apply would have: a refusal is the plan's answer, not its failure.
fn plan(g: &Global, file: &Path, t: &TargetArgs, a: &ApplyArgs, json: bool) -> Result<Exit> {
    let p = applier::plan::plan(&t.options(Some(a), g.quiet || json, g.verbose), file)?;
    let exit = p.refusal_exit_code.map_or(Exit::Ok, |c| Exit::from_code(c).unwrap_or(Exit::Failure));
    Ok(report::print("plan", json, exit, &p, report::plan_text))
}

fn resume(o: &apply::Options, json: bool) -> Result<Exit> {
    let r = apply::resume(o)?;
    Ok(report::print("resume", json, Exit::Ok, &r, report::resume_text))
}

fn rollback(o: &apply::Options, json: bool) -> Result<Exit> {
    let r = apply::rollback(o)?;
    Ok(report::print("rollback", json, Exit::Ok, &r, report::rollback_text))
}

fn status(g: &Global, t: &TargetArgs, json: bool) -> Result<Exit> {
    let s = applier::status::status(&t.options(None, g.quiet, g.verbose))?;
    Ok(report::print("status", json, Exit::Ok, &s, report::status_text))
}

fn inbox(g: &Global, dir: &Path, t: &TargetArgs, a: &ApplyArgs, json: bool) -> Result<Exit> {
    let r = applier::inbox::inbox(&t.options(Some(a), g.quiet || json, g.verbose), dir)?;
    let exit = if r.failed > 0 { Exit::InboxFailed } else { Exit::Ok };
    Ok(report::print("inbox", json, exit, &r, report::inbox_text))
}

fn fetch(g: &Global, f: &FetchArgs) -> Result<Exit> {
    let r = applier::fetch::fetch(&f.options(g.quiet))?;
    Ok(report::print("fetch", f.json, Exit::Ok, &r, report::fetch_text))
}

fn update(g: &Global, u: &UpdateArgs) -> Result<Exit> {
    let r = applier::update::update(&u.options(g.quiet || u.json, g.verbose))?;
    Ok(report::print("update", u.json, Exit::Ok, &r, report::update_text))
}

/// `ferry-apply identity`: create the target's identity if it has none, print its recipient.
fn identity(o: &apply::Options, out: Option<&Path>, json: bool) -> Result<Exit> {
    let r = applier::unseal::identity_command(o, out)?;
    Ok(report::print("identity", json, Exit::Ok, &r, report::identity_text))
}
