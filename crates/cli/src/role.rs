//! What every role command (`worker`, `proxy`, `client`) does the same way before the role
//! crate takes over: its common flags, its layered settings (exit 64 with one line on a bad
//! one), logging, and a tokio runtime for the role's `run`.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use cocoon_service::SettingError;
use cocoon_service::process::stop_signal;

use crate::config::{ConfigError, EXIT_CONFIG, Layers};

/// A role crate's settings and process, as its command runs them.
pub(crate) trait Role: serde::de::DeserializeOwned {
    /// Its table in TOML files and its `COCOON_<ROLE>_` prefix.
    const NAME: &'static str;
    /// Its documented defaults file.
    const DEFAULTS: &'static str;
    /// The role's own checks; `given` says whether the operator set a key.
    fn check_given(&self, given: &dyn Fn(&str) -> bool) -> Result<(), SettingError>;
    /// The log filter.
    fn log(&self) -> &str;
    /// Whether the role runs in a TEE and so only with the configuration the TEE measured.
    const MEASURED: bool;
    /// The `tee` setting (which TEE the measured configuration is read from).
    fn tee(&self) -> Result<cocoon_service::identity::TeeChoice, String>;
    /// The role's process until SIGINT or SIGTERM.
    fn run(self) -> impl Future<Output = Result<(), String>>;
}

/// The three roles: the same calls into each role crate.
macro_rules! role {
    ($settings:ty, $name:literal, $defaults:expr, $run:path, $measured:literal) => {
        impl Role for $settings {
            const NAME: &'static str = $name;
            const DEFAULTS: &'static str = $defaults;
            const MEASURED: bool = $measured;
            fn tee(&self) -> Result<cocoon_service::identity::TeeChoice, String> {
                self.common.tee().map_err(|e| e.to_string())
            }
            fn check_given(&self, given: &dyn Fn(&str) -> bool) -> Result<(), SettingError> {
                self.check(given)
            }
            fn log(&self) -> &str {
                &self.log
            }
            fn run(self) -> impl Future<Output = Result<(), String>> {
                $run(self, stop_signal())
            }
        }
    };
}
role!(
    cocoon_proxy::Settings,
    "proxy",
    cocoon_proxy::DEFAULTS,
    cocoon_proxy::run,
    true
);
role!(
    cocoon_worker::Settings,
    "worker",
    cocoon_worker::DEFAULTS,
    cocoon_worker::run,
    true
);
role!(
    cocoon_client::Settings,
    "client",
    cocoon_client::DEFAULTS,
    cocoon_client::run,
    false
);

/// The common life of a role command: print the defaults or the layered configuration if
/// asked, build and check the settings (config errors exit 64 with one line), start
/// logging, run the role on a tokio runtime, and turn its error into exit code 1. `flags`
/// are the role's own (`(key, value, flag name)`, applied when given).
pub(crate) fn main<S: Role>(
    common: &CommonArgs,
    flags: Vec<(&'static str, Option<String>, &'static str)>,
) -> ExitCode {
    if common.print_defaults {
        print!("{}", S::DEFAULTS);
        return ExitCode::SUCCESS;
    }
    let layered = common
        .layers(S::NAME, S::DEFAULTS, std::env::vars(), flags)
        .and_then(|l| {
            let s: S = l.build()?;
            s.check_given(&|k| l.origin(k) != "default")
                .map_err(|e| l.invalid(&e.key, e.reason))?;
            Ok((l, s))
        });
    let (l, s) = match layered {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if common.print_config {
        print!("{}", l.render());
        return ExitCode::SUCCESS;
    }
    cocoon_service::process::init_logging(s.log());
    if S::MEASURED
        && let Err(e) = s
            .tee()
            .and_then(|t| check_measured(common.config.as_deref(), t))
    {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(s.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Refuses a configuration other than the one this machine's TEE measured at boot
/// (`cocoon_service::measured`): the bytes of `--config` against RTMR3 or the SNP host data.
fn check_measured(
    config: Option<&std::path::Path>,
    tee: cocoon_service::identity::TeeChoice,
) -> Result<(), String> {
    use cocoon_service::measured::{Measured, SimRegisters, check, read_register};
    let backend = tee.resolve()?;
    let bytes = match config {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let register = read_register(backend, &SimRegisters::from_env()).map_err(|e| e.to_string())?;
    match check(&register, &bytes).map_err(|e| e.to_string())? {
        Measured::Matches(v) => {
            eprintln!("the configuration is the one this TEE measured at boot ({v})")
        }
        Measured::NotMeasured => {}
    }
    Ok(())
}

/// Flags every role command takes.
#[derive(clap::Args)]
pub(crate) struct CommonArgs {
    /// TOML configuration file (keys under the role's table, e.g. [worker]).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set any key: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// auto, tdx, sev-snp or sim.
    #[arg(long)]
    tee: Option<String>,
    /// Test network.
    #[arg(long)]
    test: bool,
    /// State directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Admin HTTP listen address ("" for none).
    #[arg(long)]
    admin: Option<String>,
    /// Root contract address.
    #[arg(long)]
    root: Option<String>,
    /// toncenter v2 API URL.
    #[arg(long)]
    ton: Option<String>,
    /// Write the bound listen addresses (JSON) to this file once serving.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Print the effective configuration (with where each value came from) and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the documented defaults file and exit.
    #[arg(long)]
    print_defaults: bool,
}

impl CommonArgs {
    /// Defaults, the file, `COCOON_<ROLE>_*`, `--set`, the common flags, then `flags`.
    fn layers(
        &self,
        role: &'static str,
        defaults: &str,
        env: impl IntoIterator<Item = (String, String)>,
        flags: Vec<(&'static str, Option<String>, &'static str)>,
    ) -> Result<Layers, ConfigError> {
        let mut l = Layers::new(role, defaults);
        if let Some(p) = &self.config {
            l.file(p)?;
        }
        l.env(env)?;
        l.sets(&self.sets)?;
        let common = [
            ("tee", self.tee.clone(), "--tee"),
            (
                "state_dir",
                self.state_dir.as_ref().map(|p| p.display().to_string()),
                "--state-dir",
            ),
            ("admin_listen", self.admin.clone(), "--admin"),
            ("root_address", self.root.clone(), "--root"),
            ("ton_url", self.ton.clone(), "--ton"),
            (
                "ready_file",
                self.ready_file.as_ref().map(|p| p.display().to_string()),
                "--ready-file",
            ),
        ];
        for (key, v, flag) in common.into_iter().chain(flags) {
            if let Some(v) = v {
                l.set(key, &v, flag)?;
            }
        }
        if self.test {
            l.set("is_test", "true", "--test")?;
        }
        Ok(l)
    }
}
