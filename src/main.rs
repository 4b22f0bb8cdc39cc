use std::process::ExitCode;

use system_upgrade_controller::config::{Cli, Command};
use system_upgrade_controller::{
    api, check, preview, run, shutdown_on_signals, switchback, telemetry,
};

/// Runs a command-line tool that reads the cluster: prints its text, and fails when it says so
/// (`false`) or cannot run.
fn tool(
    work: impl std::future::Future<
        Output = Result<(String, bool), system_upgrade_controller::error::Error>,
    >,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok((text, success)) => {
            print!("{text}");
            if success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn main() -> ExitCode {
    // One crypto provider for every TLS user in the process (server, kube client).
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("a rustls crypto provider was already installed");
    }
    let cli = Cli::from_env();
    match cli.command {
        Command::Crd => match api::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check(config) => {
            let report = check::run(&config.files, &config.served.namespace, config.recursive);
            print!("{}", config.output.render(&report, || report.text()));
            ExitCode::from(report.exit_code())
        }
        Command::Preview(config) => tool(preview::run(&config)),
        Command::SwitchBackCheck(config) => tool(switchback::run(&config)),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                shell,
                &mut command,
                "system-upgrade-controller",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Run(config) => {
            telemetry::init(config.debug, config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let stop = shutdown_on_signals();
                run(*config, stop).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "exiting");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
