//! The `tandem` command: a thin shell over the library and its reports.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tandem", version, about = "Threads or processes, measured on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure threads against processes on this machine.
    Compare {
        /// Fewer samples, same rows (under 30 s).
        #[arg(long)]
        quick: bool,
        /// Write every figure as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Write a self-contained HTML page with charts to this file.
        #[arg(long)]
        html: Option<std::path::PathBuf>,
    },
    /// Run the classic textbook examples for real.
    Demo {
        /// Which demo; none lists them.
        name: Option<String>,
    },
}

fn main() {
    tandem::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Compare { quick, json, html } => {
            let plan = tandem_compare::Plan::from_env_or(quick);
            let report = tandem_compare::run(&plan, true);
            // A closed stdout (`tandem compare | head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(
                &mut std::io::stdout().lock(),
                tandem_compare::text::render(&report).as_bytes(),
            );
            let write = |path: &std::path::Path, what: &str, text: String| {
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("tandem compare: could not write the {what} report to {}: {e}", path.display());
                    std::process::exit(1);
                }
            };
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("a report serializes");
                write(&path, "JSON", text);
            }
            if let Some(path) = html {
                write(&path, "HTML", tandem_compare::html::render(&report));
            }
        }
        Command::Demo { name } => {
            let code = demo::main(name.as_deref());
            if code != 0 {
                std::io::Write::flush(&mut std::io::stdout()).ok();
                std::process::exit(code);
            }
        }
    }
}
