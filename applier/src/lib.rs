//! ferry-apply: verify a ferry bundle, check the target is its base, stage the new content on the
//! destination's filesystem, and commit it by renames in dependency order, crash-safely and
//! resumably. The format is specified in bundle-format.md.
//!
//! Phases and the modules that own them:
//! - [`verify`]: signatures, trust policy, manifest, script, frames — before the commit changes
//!   anything (apply checks the frames as staging reads them, each byte read once).
//! - [`base`]: the target matches the bundle's base (drift check).
//! - [`stage`]: new objects in per-filesystem work directories, verified and synced.
//! - [`journal`] and [`txn`]: the durable record of where a transaction stands.
//! - [`commit`]: the apply script's steps forward, and their inverses for rollback.
//! - [`apply`]: the commands that drive a transaction (apply, resume, rollback).
//! - [`plan`]: a dry run against the real target.
//! - [`netfs`]: refusing network and FUSE filesystems (bundle-format.md §12).
//! - [`xattrs`]: extended attributes: scope, base check, setting them, support probe (§4.9).
//! - [`hooks`], [`inbox`], [`status`], [`trust`], [`state`], [`source`] (split bundles).
//! - [`inspect`]: what a bundle holds, read without a key (unverified).
//! - [`cli`] and [`report`]: the command line, and what it prints (the `--json` contract).
//! - [`fetch`]: resumable download over HTTP(S), verified frame by frame.
//! - [`update`] and [`path`]: updating from a channel repository (bundle-format.md §18.5).
//! - [`fsx`]: all target I/O through directory handles, never following symlinks.
//! - [`sparse`]: hashing files without reading their holes, copying data extents only.
//! - [`par`]: parallel hashing of the base and of staged files.
//! - [`unseal`]: encrypted bundles: identities, opening the sealed manifest, frame decryption.
//! - [`text`]: escaping untrusted text before it reaches a terminal.

pub mod apply;
pub mod base;
pub mod cli;
pub mod commit;
pub mod error;
pub mod failpoint;
pub mod fetch;
pub mod fsx;
pub mod hooks;
pub mod inbox;
pub mod inspect;
pub mod journal;
pub mod netfs;
pub mod par;
pub mod path;
pub mod plan;
pub mod progress;
pub mod replace;
pub mod report;
pub mod source;
pub mod sparse;
pub mod stage;
pub mod state;
pub mod status;
pub mod text;
pub mod trust;
pub mod txn;
pub mod unseal;
pub mod update;
pub mod verify;
pub mod xattrs;

pub use error::{Error, Exit, VersionRefusal};
