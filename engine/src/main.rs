//! The `oxrl` binary.

fn main() -> std::process::ExitCode {
    match oxrl::cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
