//! `hbmesh`: the operator binary. `up` runs the whole mesh in one process;
//! `simulate` is the load generator; `sessionize` the offline sessionizer;
//! `token` mints bearer tokens; `catalog import` loads the content catalog;
//! `erase` removes one user's data.

use clap::{Parser, Subcommand};
use hbmesh::{catalog, erase, sessionize, simulate, token, up};

#[derive(Parser)]
#[command(
    name = "hbmesh",
    version,
    about = "The heartbeat mesh: exact viewing sessions from playback heartbeats"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest, stream and query in one process (embedded default unless cluster settings are given).
    Up(up::UpArgs),
    /// Stream realistic heartbeats from a fleet of simulated players.
    Simulate(simulate::SimulateArgs),
    /// Sessionize a heartbeat JSON Lines file offline (exact, whatever the line order).
    Sessionize(sessionize::SessionizeArgs),
    /// Mint a bearer token signed with HB_AUTH_SECRET.
    Token(token::TokenArgs),
    /// Manage the content catalog.
    Catalog(catalog::CatalogArgs),
    /// Erase a user: raw heartbeats, sessions and ad links, audited (in the store directly).
    Erase(erase::EraseArgs),
}

#[tokio::main]
async fn main() {
    hb_common::install_crypto_provider();
    // `up --help` lists every service setting it routes (built at run time
    // from the services' own configs, so it cannot drift from them).
    let command = <Cli as clap::CommandFactory>::command().mut_subcommand("up", |up_command| {
        up_command.after_long_help(up::settings_help())
    });
    let parsed = command
        .try_get_matches()
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            let _ = err.print();
            std::process::exit(hb_common::EXIT_CONFIG);
        }
        Err(err) => {
            let _ = err.print();
            return;
        }
    };
    if matches!(cli.command, Command::Sessionize(_) | Command::Catalog(_)) {
        // Their progress is logged when stderr is no terminal.
        hb_common::telemetry::init();
    }
    let result = match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Sessionize(args) => sessionize::run(args),
        Command::Token(args) => token::run(args),
        Command::Catalog(args) => catalog::run(args).await,
        Command::Erase(args) => erase::run(args).await,
    };
    if let Err(err) = result {
        eprintln!("hbmesh: {err:#}");
        std::process::exit(1);
    }
}
