//! The command line: every subcommand's flags, each with an
//! `APPSYNC_RELAY_*` (or `APPSYNC_EMULATOR_*`) environment variable.
//!
//! This is only the surface clap parses. What the values mean, and whether
//! they are acceptable together, is decided once, in the `config` module.

//!
//! - [`serve`]: `serve`'s flags (which `check` takes too) and their enums.
//! - [`tools`]: `emulate`, `demo` and `check`.

pub mod serve;
pub mod tools;

pub use serve::{LogFormat, OnOff, ServeArgs, SharedCheck};
pub use tools::{CheckArgs, CheckOutput, DemoArgs, EmulateArgs};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "appsync-relay",
    version,
    about = "Relay browser WebSockets to AWS AppSync Events with the Cognito token from HTTP-only cookies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Run the built-in strict AppSync Events emulator (for local development and tests).
    Emulate(EmulateArgs),
    /// Run everything locally: relay, emulator and a development identity provider, with a demo page.
    Demo(DemoArgs),
    /// Check a deployment's settings before users do: the same flags as
    /// `serve`, each verified against the real Cognito and AppSync, then
    /// (given a sign-in) a real round trip. Prints a ✓/✗ line per check
    /// with a fix; exits 0 when all pass, 1 otherwise.
    Check(Box<CheckArgs>),
}
