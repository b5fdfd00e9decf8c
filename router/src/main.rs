use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = wick_router::cli::Cli::parse();
    match wick_router::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wick: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
