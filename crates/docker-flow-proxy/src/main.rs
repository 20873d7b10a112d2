//! `docker-flow-proxy`: the binary. Parses the command line, sets up logging and wires the
//! crates together; the only place that uses `anyhow`.

mod cli;
mod client;
mod memory;
mod render;
mod server;
mod state_file;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use crate::cli::{AdminArgs, Cli, Command, ShowArgs};

/// mimalloc's per-thread heaps make the many small, short-lived allocations of each request
/// (header maps, channels, futures) cheaper than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the whole process (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Server(args) => {
            init_logging(&args.log_format);
            server::run(args)
        }
        Command::Reconfigure(args) => run_client(&args.admin, "reconfigure", args.query()),
        Command::Remove(args) => run_client(
            &args.admin,
            "remove",
            vec![("serviceName".to_owned(), args.service_name.clone())],
        ),
        Command::Ping(args) => run_client(&args, "ping", Vec::new()),
        Command::Config(args) => show(&args, "config", render::config),
        Command::Routes(args) => show(&args, "routes", render::routes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("docker-flow-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Calls the admin API and prints its JSON answer.
fn run_client(
    admin: &AdminArgs,
    endpoint: &str,
    query: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let body = fetch(admin, endpoint, &query)?;
    print(body.trim_end());
    Ok(())
}

/// `config` and `routes`: the JSON answer with `--json`, else `render`'s text of it.
fn show(
    args: &ShowArgs,
    endpoint: &str,
    render: fn(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let body = fetch(&args.admin, endpoint, &[])?;
    if args.json {
        print(body.trim_end());
    } else {
        let answer = serde_json::from_str(&body).with_context(|| {
            format!("the admin API's {endpoint} answer is not JSON; is --admin (DFP_ADMIN) a docker-flow-proxy?")
        })?;
        print(render(&answer).trim_end());
    }
    Ok(())
}

fn fetch(admin: &AdminArgs, endpoint: &str, query: &[(String, String)]) -> anyhow::Result<String> {
    let credentials = admin.credentials.credentials()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(client::call(&admin.admin, &credentials, endpoint, query))
}

#[allow(clippy::print_stdout, reason = "the CLI prints the server's answer, as documented")]
fn print(text: &str) {
    println!("{text}");
}

fn init_logging(format: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
