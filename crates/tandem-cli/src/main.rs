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
        Command::Compare { .. } => {
            demo::write_line(format_args!(
                "tandem compare: will measure every row of the thread-vs-process table on this machine (not built yet)."
            ));
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
