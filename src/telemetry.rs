//! Logging: text or JSON lines on stderr, level from `--debug` unless `RUST_LOG` says otherwise.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(debug: bool, format: LogFormat) {
    let default = if debug {
        "debug,h2=info,hyper=info,hyper_util=info,rustls=info,tower=info,kube_client=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already initialised: {e}");
    }
}
