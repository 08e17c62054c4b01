//! `cocoon model`: the worker's model store (pull, list, verify).

use clap::{Args, Subcommand};
use cocoon_engine::store::{self, ModelStore, default_dir, progress_printer};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Store directory (default: $COCOON_MODELS_DIR, else $XDG_DATA_HOME/cocoon/models,
    /// else ~/.local/share/cocoon/models).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download and pin a model: a known alias (smollm2-135m; all-minilm-l6-v2, converted to GGUF
    /// on pull), a URL or a local GGUF file.
    Pull {
        /// Alias, http(s) URL, or path.
        source: String,
        /// Model name (required for URLs and files).
        #[arg(long)]
        name: Option<String>,
        /// Revision recorded in the identity (default: "local" for files, "url" for URLs).
        #[arg(long)]
        rev: Option<String>,
        /// Expected SHA-256 of the weights file; the pull fails if it differs.
        #[arg(long)]
        sha256: Option<String>,
        /// Fetch a known model's archive from this URL instead (a mirror); the pins still apply.
        #[arg(long)]
        mirror: Option<String>,
        /// Print only the model's path when done.
        #[arg(long)]
        quiet: bool,
    },
    /// List the models in the store.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash model files against their recorded SHA-256 (all when no name is given).
    Verify {
        /// Alias, name or full id.
        name: Option<String>,
    },
}

/// The default store directory.
pub(crate) fn run(args: ModelArgs) -> Result<(), String> {
    let dir = args.dir.unwrap_or_else(default_dir);
    let store = ModelStore::open(&dir).map_err(|e| e.to_string())?;
    match args.command {
        ModelCommand::Pull {
            source,
            name,
            rev,
            sha256,
            mirror,
            quiet,
        } => {
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let mut progress = progress_printer(quiet);
            let rec = if let Some(known) = store::known(&source) {
                rt.block_on(store.pull_known(known, mirror.as_deref(), &mut progress))
            } else if source.starts_with("http://") || source.starts_with("https://") {
                let name = name.ok_or("--name is required when pulling from a URL")?;
                let rev = rev.unwrap_or_else(|| "url".into());
                rt.block_on(store.add_url(&source, &name, &rev, sha256.as_deref(), &mut progress))
            } else {
                let path = PathBuf::from(&source);
                if !path.is_file() {
                    let known: Vec<&str> = store::KNOWN_MODELS.iter().map(|m| m.alias).collect();
                    return Err(format!(
                        "'{source}' is not a known model ({}), a URL or a file",
                        known.join(", ")
                    ));
                }
                let name = name.ok_or("--name is required when adding a file")?;
                let rev = rev.unwrap_or_else(|| "local".into());
                store.add_file(&path, &name, &rev, sha256.as_deref())
            }
            .map_err(|e| e.to_string())?;
            if quiet {
                println!("{}", store.path_of(&rec).display());
            } else {
                println!("{}", rec.id());
                println!("  file   {}", store.path_of(&rec).display());
                println!("  size   {} bytes", rec.size);
                println!("  source {}", rec.source);
                println!(
                    "  hash of id (root contract model hash) {}",
                    hex::encode(rec.id_hash())
                );
            }
            Ok(())
        }
        ModelCommand::List { json } => {
            let all = store.list().map_err(|e| e.to_string())?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.id(), "name": r.name, "rev": r.rev, "sha256": r.sha256,
                            "size": r.size, "source": r.source, "alias": r.alias,
                            "path": store.path_of(r), "id_hash": hex::encode(r.id_hash()),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else if all.is_empty() {
                println!(
                    "no models in {} (try `cocoon model pull smollm2-135m`)",
                    dir.display()
                );
            } else {
                for r in all {
                    println!("{}  {} bytes  {}", r.id(), r.size, r.source);
                }
            }
            Ok(())
        }
        ModelCommand::Verify { name } => {
            let names: Vec<String> = match name {
                Some(n) => vec![n],
                None => store
                    .list()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|r| r.id())
                    .collect(),
            };
            let mut bad = 0;
            for n in &names {
                let rep = store.verify(n).map_err(|e| e.to_string())?;
                if rep.ok {
                    println!("ok       {}", rep.record.id());
                } else {
                    bad += 1;
                    println!(
                        "MISMATCH {} (file hashes to {})",
                        rep.record.id(),
                        rep.actual_sha256
                    );
                }
            }
            if bad > 0 {
                Err(format!("{bad} model file(s) do not match their pins"))
            } else {
                Ok(())
            }
        }
    }
}
