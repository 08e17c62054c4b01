//! `cocoon image`: the guest images of ARCHITECTURE D14. `measure-config` is the boot step
//! that measures a role's configuration into the TEE before the role starts.

use std::path::PathBuf;

use clap::Subcommand;
use cocoon_service::identity::TeeChoice;
use cocoon_service::measured::{Extended, SimRegisters, extend_config};

#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Measure a role's configuration file into this TEE (the guest's boot runs it once,
    /// before the role): extends RTMR3 on TDX and on the sim backend's emulated register;
    /// on SEV-SNP prints the host data the launcher must have passed. The role then refuses
    /// to start with any other configuration.
    MeasureConfig {
        /// The role's configuration file, exactly as the role will read it.
        file: PathBuf,
        /// auto, tdx, sev-snp or sim.
        #[arg(long, default_value = "auto")]
        tee: String,
    },
}

pub(crate) fn run(cmd: ImageCmd) -> Result<(), String> {
    match cmd {
        ImageCmd::MeasureConfig { file, tee } => {
            let backend = tee.parse::<TeeChoice>()?.resolve()?;
            match extend_config(backend, &file, &SimRegisters::from_env())? {
                Extended::Rtmr3(r) => println!("rtmr3 {}", hex::encode(r)),
                Extended::HostData(d) => println!("host_data {}", hex::encode(d)),
            }
            Ok(())
        }
    }
}
