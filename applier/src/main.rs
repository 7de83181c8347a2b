//! `ferry-apply`: thin command-line shim over the `applier` library. Parse the command line,
//! run the one subcommand, print its report (`applier::report`), exit with its code.

use applier::apply;
use applier::cli::{ApplyArgs, Cli, Cmd, FetchArgs, TargetArgs};
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
        Cmd::Verify { file, trust, json } => verify(g, &file, &trust, json),
        Cmd::Inspect { file, trust, json } => inspect(&file, trust.as_deref(), json),
        Cmd::Apply { file, t, a, json } => apply(g, &file, &t, &a, json),
        Cmd::Plan { file, t, a, json } => plan(g, &file, &t, &a, json),
        Cmd::Resume { t, trust, bundle, no_hooks, json } => resume(g, &t, trust, bundle, no_hooks, json),
        Cmd::Rollback { t, trust, json } => rollback(g, &t, trust, json),
        Cmd::Status { t, json } => status(g, &t, json),
        Cmd::Inbox { dir, t, a, json } => inbox(g, &dir, &t, &a, json),
        Cmd::Fetch(f) => fetch(g, &f),
    }
}

fn verify(g: &Global, file: &Path, trust: &Path, json: bool) -> Result<Exit> {
    let trust = applier::trust::load(trust, None)?;
    let progress = applier::progress::wanted(g.quiet || json, g.verbose);
    let h = applier::verify::bundle_with_progress(file, Some(&trust), &bundle::Limits::default(), true, progress)?;
    let v = Verified {
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

fn inspect(file: &Path, trust: Option<&Path>, json: bool) -> Result<Exit> {
    let trust = trust.map(|t| applier::trust::load(t, None)).transpose()?;
    let i = applier::inspect::inspect(file, trust.as_ref())?;
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

fn resume(
    g: &Global,
    t: &TargetArgs,
    trust: Option<PathBuf>,
    bundle: Option<PathBuf>,
    no_hooks: bool,
    json: bool,
) -> Result<Exit> {
    let mut o = t.options(None, g.quiet || json, g.verbose);
    (o.trust, o.bundle, o.no_hooks) = (trust, bundle, no_hooks);
    let r = apply::resume(&o)?;
    Ok(report::print("resume", json, Exit::Ok, &r, report::resume_text))
}

fn rollback(g: &Global, t: &TargetArgs, trust: Option<PathBuf>, json: bool) -> Result<Exit> {
    let mut o = t.options(None, g.quiet || json, g.verbose);
    o.trust = trust;
    let r = apply::rollback(&o)?;
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
