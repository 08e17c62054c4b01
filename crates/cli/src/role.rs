//! What every role command (`worker`, `proxy`, `client`) does the same way before the role
//! crate takes over: its common flags, its layered settings (exit 64 with one line on a bad
//! one), logging, and a tokio runtime for the role's `run`.

use std::path::PathBuf;

pub use cocoon_service::process::default_state_dir;

/// A role's setting check as a configuration error naming the key and where its value
/// came from (exit 64).
pub fn checked(
    l: &crate::config::Layers,
    r: Result<(), cocoon_service::SettingError>,
) -> Result<(), crate::config::ConfigError> {
    r.map_err(|e| l.invalid(&e.key, e.reason))
}

/// Whether a key was set by the operator (file, environment, flag) rather than defaulted.
pub fn given(l: &crate::config::Layers) -> impl Fn(&str) -> bool + '_ {
    move |k| l.origin(k) != "default"
}

/// The common life of a role command: print the defaults or the layered configuration if
/// asked, build and check the settings (config errors exit 64 with one line), start
/// logging, run `run` on a tokio runtime, and turn its error into exit code 1.
pub fn main_with<S, F>(
    defaults: &str,
    print_defaults: bool,
    print_config: bool,
    layers: Result<crate::config::Layers, crate::config::ConfigError>,
    check: impl FnOnce(&S, &crate::config::Layers) -> Result<(), crate::config::ConfigError>,
    log: impl FnOnce(&S) -> String,
    run: impl FnOnce(S) -> F,
) -> std::process::ExitCode
where
    S: serde::de::DeserializeOwned,
    F: std::future::Future<Output = Result<(), String>>,
{
    use std::process::ExitCode;
    if print_defaults {
        print!("{defaults}");
        return ExitCode::SUCCESS;
    }
    let layered = layers.and_then(|l| {
        let s: S = l.build()?;
        check(&s, &l)?;
        Ok((l, s))
    });
    let (l, s) = match layered {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(crate::config::EXIT_CONFIG);
        }
    };
    if print_config {
        print!("{}", l.render());
        return ExitCode::SUCCESS;
    }
    cocoon_service::process::init_logging(&log(&s));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Flags every role command takes.
#[derive(clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (keys under the role's table, e.g. [worker]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any key: --set key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// auto, tdx, sev-snp or sim.
    #[arg(long)]
    pub tee: Option<String>,
    /// Test network.
    #[arg(long)]
    pub test: bool,
    /// State directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Admin HTTP listen address ("" for none).
    #[arg(long)]
    pub admin: Option<String>,
    /// Print the effective configuration (with where each value came from) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Print the documented defaults file and exit.
    #[arg(long)]
    pub print_defaults: bool,
}

impl CommonArgs {
    /// Defaults, the file, `COCOON_<ROLE>_*`, `--set`, the common flags, then `flags`
    /// (`(key, value, flag name)`, applied when given).
    pub fn layers(
        &self,
        role: &'static str,
        defaults: &str,
        env: Vec<(String, String)>,
        flags: Vec<(&'static str, Option<String>, &'static str)>,
    ) -> Result<crate::config::Layers, crate::config::ConfigError> {
        let mut l = crate::config::Layers::new(role, defaults);
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
