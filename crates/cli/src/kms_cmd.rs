//! `cocoon kms`: `serve` runs the key-release role (`cocoon_kms::run`, layered settings as
//! every role has them: `cocoon kms serve --print-defaults`); `fetch` asks a KMS for one key of
//! a proxy or worker and prints it as hex on stdout, for an image's init
//! (`cocoon kms fetch --purpose disk | cryptsetup open --key-file=- …`).

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use cocoon_service::SettingError;
use cocoon_service::kms::{KmsRole, Purpose, role_keys};
use cocoon_service::process::stop_signal;
use cocoon_service::setting::Common;

use crate::config::{ConfigError, EXIT_CONFIG, Layers};
use crate::role::{self, Role};

impl Role for cocoon_kms::Settings {
    const NAME: &'static str = "kms";
    const DEFAULTS: &'static str = cocoon_kms::DEFAULTS;
    const MEASURED: bool = true;
    fn tee(&self) -> Result<cocoon_service::identity::TeeChoice, String> {
        self.tee.parse()
    }
    fn check_given(&self, given: &dyn Fn(&str) -> bool) -> Result<(), SettingError> {
        self.check(given)
    }
    fn log(&self) -> &str {
        &self.log
    }
    fn run(self) -> impl Future<Output = Result<(), String>> {
        cocoon_kms::run(self, stop_signal())
    }
}

#[derive(Subcommand)]
pub(crate) enum KmsCommand {
    /// Release keys to attested proxies and workers whose image the root allows.
    Serve(Box<ServeArgs>),
    /// Fetch one key of this machine's proxy or worker from a KMS; print it as hex.
    Fetch(FetchArgs),
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    common: role::CommonArgs,
    /// Where peers connect (ip:port).
    #[arg(long)]
    listen: Option<String>,
    /// Another KMS (host:port) to get the master from when none is sealed here.
    #[arg(long)]
    peer: Option<String>,
}

#[derive(Args)]
pub(crate) struct FetchArgs {
    /// The KMS, host:port (else the role's `kms` setting).
    #[arg(long)]
    kms: Option<String>,
    /// proxy or worker.
    #[arg(long)]
    role: String,
    /// signing, wallet or disk.
    #[arg(long)]
    purpose: String,
    /// The role's TOML configuration (its [proxy] or [worker] table: owner_address, tee,
    /// kms_policy, kms_image_hashes, state_dir).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set any of the role's keys: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// auto, tdx, sev-snp or sim.
    #[arg(long)]
    tee: Option<String>,
    /// Test network.
    #[arg(long)]
    test: bool,
    /// The role's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The role's owner address (the identity its keys are bound to).
    #[arg(long)]
    owner: Option<String>,
}

/// Runs `cocoon kms …`.
pub(crate) fn main(command: KmsCommand) -> ExitCode {
    match command {
        KmsCommand::Serve(args) => role::main::<cocoon_kms::Settings>(
            &args.common,
            vec![
                ("listen", args.listen, "--listen"),
                ("peer", args.peer, "--peer"),
            ],
        ),
        KmsCommand::Fetch(args) => fetch(args),
    }
}

/// What `fetch` needs of the role's settings.
struct FetchSettings {
    common: Common,
    kms: String,
    kms_policy: String,
    kms_image_hashes: Vec<String>,
    kms_instance: String,
}

fn layers(args: &FetchArgs, role: KmsRole) -> Result<FetchSettings, ConfigError> {
    let (name, defaults) = match role {
        KmsRole::Proxy => ("proxy", cocoon_proxy::DEFAULTS),
        _ => ("worker", cocoon_worker::DEFAULTS),
    };
    let mut l = Layers::new(name, defaults);
    if let Some(p) = &args.config {
        l.file(p)?;
    }
    l.env(std::env::vars())?;
    l.sets(&args.sets)?;
    let flags = [
        ("tee", args.tee.clone(), "--tee"),
        (
            "state_dir",
            args.state_dir.as_ref().map(|p| p.display().to_string()),
            "--state-dir",
        ),
        ("owner_address", args.owner.clone(), "--owner"),
        ("kms", args.kms.clone(), "--kms"),
    ];
    for (key, v, flag) in flags {
        if let Some(v) = v {
            l.set(key, &v, flag)?;
        }
    }
    if args.test {
        l.set("is_test", "true", "--test")?;
    }
    let s = match role {
        KmsRole::Proxy => {
            let s: cocoon_proxy::Settings = l.build()?;
            FetchSettings {
                common: s.common,
                kms: s.kms,
                kms_policy: s.kms_policy,
                kms_image_hashes: s.kms_image_hashes,
                kms_instance: s.kms_instance,
            }
        }
        _ => {
            let s: cocoon_worker::Settings = l.build()?;
            FetchSettings {
                common: s.common,
                kms: s.kms,
                kms_policy: s.kms_policy,
                kms_image_hashes: s.kms_image_hashes,
                kms_instance: s.kms_instance,
            }
        }
    };
    if s.kms.is_empty() {
        return Err(l.invalid("kms", "required (--kms host:port)"));
    }
    cocoon_service::kms::identity_of(&s.common.owner_address, "")
        .map_err(|e| l.invalid("owner_address", e))?;
    client(&s)
        .check()
        .map_err(|e| l.invalid(&e.key, e.reason))?;
    s.common.tee().map_err(|e| l.invalid(&e.key, e.reason))?;
    Ok(s)
}

fn client(s: &FetchSettings) -> cocoon_service::kms::KmsClientSettings<'_> {
    cocoon_service::kms::KmsClientSettings {
        addr: &s.kms,
        policy: &s.kms_policy,
        image_hashes: &s.kms_image_hashes,
        instance: &s.kms_instance,
    }
}

fn fetch(args: FetchArgs) -> ExitCode {
    let parsed = (|| {
        let role: KmsRole = args.role.parse().map_err(ConfigError)?;
        let purpose: Purpose = args.purpose.parse().map_err(ConfigError)?;
        Ok::<_, ConfigError>((role, purpose, layers(&args, role)?))
    })();
    let (role, purpose, s) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    cocoon_service::process::init_logging("warn");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let keys = rt.block_on(async {
        let start = s.common.start(role.name())?;
        role_keys(&s.common, &start, client(&s), role, &[purpose]).await
    });
    match keys.as_deref() {
        Ok([key]) => {
            println!("{}", hex::encode(key.0));
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("error: the kms sent the wrong number of keys");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
