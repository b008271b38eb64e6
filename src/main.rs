//! `dnsteer --config FILE` serves; `dnsteer check-config FILE` validates and exits 0 or 1;
//! `dnsteer generate-key` makes a key for `[dnssec.own_key]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dnsteer::app::App;
use dnsteer::config::{Config, LogFormat};

const USAGE: &str = "usage:
  dnsteer --config FILE          serve DNS as configured in FILE
  dnsteer check-config FILE      validate FILE (records compiled too); exit 0 if valid, 1 if not
  dnsteer generate-key --zone ZONE --out PATH
                                 write a new ECDSAP256SHA256 ZSK for [dnssec.own_key] (mode 0600);
                                 PATH is a file, or a directory to get ZONE-<tag>.private in it
  dnsteer --version";

enum Command {
    Serve(PathBuf),
    Check(PathBuf),
    GenerateKey { zone: String, out: PathBuf },
    Version,
}

fn parse_args() -> Result<Command, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--config" | "-c", f] => Ok(Command::Serve(PathBuf::from(f))),
        ["check-config", f] => Ok(Command::Check(PathBuf::from(f))),
        ["generate-key", "--zone", z, "--out", o] | ["generate-key", "--out", o, "--zone", z] => {
            Ok(Command::GenerateKey {
                zone: z.to_string(),
                out: PathBuf::from(o),
            })
        }
        ["--version" | "-V"] => Ok(Command::Version),
        _ => Err(USAGE.to_string()),
    }
}

fn main() -> ExitCode {
    match parse_args() {
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
        Ok(Command::Version) => {
            println!("dnsteer {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::GenerateKey { zone, out }) => match generate_key(&zone, &out) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dnsteer generate-key: {e}");
                ExitCode::from(1)
            }
        },
        Ok(Command::Check(path)) => match check(&path) {
            Ok(summary) => {
                println!("{}: ok ({summary})", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Ok(Command::Serve(path)) => match serve(&path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dnsteer: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// Everything a load does except probing and binding: parse, validate, compile, open GeoIP,
/// read and check the DNSSEC key files, the cookie secrets and the admin token file.
fn check(path: &std::path::Path) -> Result<String, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    dnsteer::steer::records::compile(&config).map_err(|e| e.to_string())?;
    if let Some(g) = &config.geoip {
        let db = dnsteer::steer::geo::GeoDb::open(&g.database)
            .map_err(|e| format!("{}: geoip.database: {e}", path.display()))?;
        if let Some(asn) = &g.asn_database {
            db.with_asn(asn)
                .map_err(|e| format!("{}: geoip.asn_database: {e}", path.display()))?;
        }
    }
    // Key files are read and self-checked as at load (never printed).
    dnsteer::control::build::load_keys(&config.dnssec)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let own = dnsteer::control::own_key::check(&config.dnssec)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Secret files too (never printed): a typo in a mounted path fails here, not at start.
    let cookies = dnsteer::control::build::check_cookie_secrets(&config)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut summary = format!(
        "{} records, {} upstream servers, listen {:?}",
        config.records.len(),
        config.upstream.servers.len(),
        config.restart.listen
    );
    if cookies {
        summary.push_str("; cookie secrets read");
    }
    // Config::load has read and checked it already.
    if config.has_admin_token() {
        summary.push_str("; admin token read");
    }
    for line in own {
        summary.push_str("; ");
        summary.push_str(&line);
    }
    Ok(summary)
}

/// A key made once and shared by every replica (e.g. stored in a Kubernetes Secret). Prints the
/// file, key tag and DNSKEY (public half only).
fn generate_key(zone: &str, out: &std::path::Path) -> Result<String, String> {
    use dnsteer::control::own_key;
    use dnsteer::dnssec::{Algorithm, FLAGS_ZSK, SigningKey};
    let zone = dnsteer::config::normalize_name(zone).map_err(|e| format!("--zone: {e}"))?;
    let key = SigningKey::generate(Algorithm::EcdsaP256Sha256).map_err(|e| e.to_string())?;
    let tag = key.key_tag(FLAGS_ZSK);
    let path = if out.is_dir() {
        out.join(own_key::file_name(&zone, tag))
    } else {
        out.to_path_buf()
    };
    let created = own_key::created_stamp(dnsteer::control::unix_now());
    own_key::write_key_file(&path, &key, &created)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    use base64::Engine as _;
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
    // key_dir only reads files named ZONE-<tag>.private (e.g. the Secret's key name).
    Ok(format!(
        "{}\nkey tag {tag}\nname in key_dir: {}\n{zone} IN DNSKEY 256 3 13 {public}",
        path.display(),
        own_key::file_name(&zone, tag)
    ))
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .or_else(|| config.logging.level.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    match config.logging.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false),
            )
            .init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_tracing(&config);
    let drain = config.restart.shutdown_drain;
    let grace = config.restart.shutdown_grace;
    let app = App::start(config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    let signal = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => Ok::<_, std::io::Error>("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    })?;
    tracing::info!(signal, "stopping");
    // `shutdown_grace` is the hard limit for the whole shutdown, drain included: exit before
    // the orchestrator's grace period ends, whatever is still in flight.
    std::thread::spawn(move || {
        std::thread::sleep(grace);
        tracing::error!("shutdown did not finish within the grace period; exiting");
        std::process::exit(0);
    });
    app.shutdown(drain);
    tracing::info!("stopped");
    Ok(())
}
