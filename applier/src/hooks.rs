//! Post-commit hooks: declared in the bundle (`--hook GLOB=COMMAND` at build time), run after the
//! commit only if a path matching GLOB changed, once each, in order, with a timeout; output goes to
//! `STATE/hooks.log`. A failed hook is reported and does not undo the commit.

use crate::state::HookResult;
use bundle::{Manifest, Op};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Hooks whose glob matches a changed path (directory metadata alone does not count).
pub fn matching(m: &Manifest) -> Vec<&bundle::Hook> {
    m.hooks
        .iter()
        .filter(|h| {
            m.script
                .iter()
                .filter(|s| s.op != Op::DirMeta)
                .any(|s| bundle::glob::matches(h.glob.as_bytes(), s.path.as_bytes()))
        })
        .collect()
}

/// Run the matching hooks, appending their output to `log` (`STATE/hooks.log`, opened by the
/// caller through the checked state directory).
pub fn run(m: &Manifest, target: &Path, log: std::fs::File, skip: bool) -> Vec<HookResult> {
    let mut out = Vec::new();
    for h in matching(m) {
        let mut r = HookResult { glob: h.glob.clone(), command: h.command.clone(), result: String::new(), ok: false };
        if skip {
            r.result = "skipped (--no-hooks)".into();
            r.ok = true;
            out.push(r);
            continue;
        }
        let logf = log.try_clone();
        let (o, e) = match &logf {
            Ok(f) => match (f.try_clone(), f.try_clone()) {
                (Ok(a), Ok(b)) => (Stdio::from(a), Stdio::from(b)),
                _ => (Stdio::null(), Stdio::null()),
            },
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        if let Ok(mut f) = logf {
            let _ = writeln!(f, "--- ferry hook for {} (version {}): {}", h.glob, m.version, h.command);
        }
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&h.command)
            .current_dir(target)
            .env("FERRY_TARGET", target)
            .env("FERRY_VERSION", m.version.to_string())
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .spawn();
        match child {
            Err(e) => r.result = format!("failed to start: {e}"),
            Ok(mut c) => {
                let deadline = Instant::now() + Duration::from_secs(h.timeout_secs as u64);
                loop {
                    match c.try_wait() {
                        Ok(Some(st)) if st.success() => {
                            r.result = "ok".into();
                            r.ok = true;
                            break;
                        }
                        Ok(Some(st)) => {
                            r.result = format!("failed ({st})");
                            break;
                        }
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            r.result = format!("timed out after {} s", h.timeout_secs);
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                        Err(e) => {
                            r.result = format!("wait failed: {e}");
                            break;
                        }
                    }
                }
            }
        }
        out.push(r);
    }
    out
}
