//! Writes `testvectors/ton/rust/*.boc` and `vectors.json` from `contracts/build/*.code.boc`.
//!
//! Usage: `cargo run -p cocoon-ton --example make-vectors [OUT_DIR]`. The output is
//! deterministic; the test `tests/vectors.rs` fails when the committed files differ.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("testvectors/ton/rust"));
    let codes = cocoon_ton::vectors::Codes::load(&root.join("contracts/build"))?;
    let set = cocoon_ton::vectors::generate(&codes)?;
    if out.exists() {
        // remove stale files written by an earlier layout
        for e in std::fs::read_dir(&out)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "boc" || x == "json") {
                std::fs::remove_file(p)?;
            }
        }
    }
    std::fs::create_dir_all(&out)?;
    for (name, bytes) in &set.files {
        std::fs::write(out.join(name), bytes)?;
    }
    std::fs::write(out.join("vectors.json"), set.json_text())?;
    println!(
        "wrote {} files and vectors.json to {}",
        set.files.len(),
        out.display()
    );
    Ok(())
}
