//! `cocoon tl decode|encode|ids`.

use clap::Subcommand;
use cocoon_tl::capture::{decode, encode, parse_hex};
use serde_json::Value;
use std::io::Read;

#[derive(Subcommand)]
pub(crate) enum TlCommand {
    /// Decode hex: one or more frames (`len ‖ seqno ‖ payload`) or one boxed object, as JSON.
    Decode {
        /// Hex bytes (whitespace and a `0x` prefix are allowed); `-` or nothing reads stdin.
        input: Option<String>,
    },
    /// Encode JSON as printed by `decode` back to hex.
    Encode {
        /// JSON text; `-` or nothing reads stdin.
        input: Option<String>,
    },
    /// List every constructor of the scheme with its id.
    Ids,
}

pub(crate) fn run(command: TlCommand) -> Result<(), String> {
    match command {
        TlCommand::Decode { input } => {
            let text = read_input(input)?;
            let bytes = parse_hex(&text).map_err(|e| e.to_string())?;
            let value = decode(&bytes).map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        TlCommand::Encode { input } => {
            let text = read_input(input)?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| format!("input is not JSON: {e}"))?;
            let bytes = encode(&value).map_err(|e| e.to_string())?;
            println!("{}", hex::encode(bytes));
            Ok(())
        }
        TlCommand::Ids => {
            for c in cocoon_tl::CONSTRUCTORS {
                let kind = if c.is_function { "function" } else { "type" };
                println!(
                    "{:08x}  v{}  {kind:8}  {}",
                    c.id, c.since_proto, c.canonical
                );
            }
            Ok(())
        }
    }
}

fn read_input(arg: Option<String>) -> Result<String, String> {
    match arg.as_deref() {
        Some("-") | None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok(text)
        }
        Some(text) => Ok(text.to_string()),
    }
}
