//! `cargo run -p xtask [OUT_DIR]`: writes man pages (`man/ferry-apply.1`, one page per
//! subcommand too) and bash, zsh and fish completions (`completions/`) for both binaries,
//! generated from their clap definitions, into OUT_DIR (default `target/assets`). The Debian
//! package of ferry-apply (`cargo deb -p ferry-applier`) ships them.

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn write_man(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd.clone(), dir)
}

fn write_completions(mut cmd: clap::Command, name: &str, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, name, dir)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let out = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/assets"));
    let cmds = [(applier::cli::Cli::command(), "ferry-apply"), (builder::cli::Cli::command(), "ferry-build")];
    for (cmd, name) in cmds {
        write_man(&cmd, &out.join("man"))?;
        write_completions(cmd, name, &out.join("completions"))?;
    }
    eprintln!("wrote man pages and completions to {}", out.display());
    Ok(())
}
