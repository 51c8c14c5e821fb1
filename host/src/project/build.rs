//! `nodemanager build`: an app project to a component, with the toolchain, world and
//! flags the node expects, then compiled into the node's cache.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use super::templates::{self, COMPONENTIZE_PY_VERSION, WORLD};
use super::{validate_project_name, Lang};
use crate::runtime::{content_hash, inspect, Runtime};

/// What a build made.
#[derive(Debug)]
pub struct Built {
    /// The app's name (the project's).
    pub name: String,
    /// The project's language.
    pub lang: Lang,
    /// The component.
    pub wasm: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Whether it exports `snapshot` and `restore` (carries its state across replace).
    pub carries_state: bool,
    /// Whether the node's cache already held its compiled code.
    pub was_cached: bool,
    /// Compiled-code cache entries of the previous build removed.
    pub replaced_cache_entries: usize,
}

/// Builds the project in `dir` into `dir/build/NAME.wasm` and compiles it into
/// `runtime`'s cache, removing the previous build's entry.
pub fn build(dir: &Path, runtime: &Runtime) -> Result<Built> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    let (lang, name) = if dir.join("Cargo.toml").is_file() {
        (Lang::Rust, crate_name(dir)?)
    } else if dir.join("app.py").is_file() {
        let name = std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        (Lang::Python, name)
    } else {
        bail!(
            "{} holds neither a Cargo.toml (a Rust app) nor an app.py (a Python app): \
             make a project with `nodemanager new --lang python|rust NAME`",
            dir.display()
        );
    };
    validate_project_name(&name)?;
    let out_dir = dir.join("build");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    let partial = out_dir.join(format!(".{name}.wasm.partial"));
    match lang {
        Lang::Python => build_python(dir, &partial)?,
        Lang::Rust => {
            let artifact = build_rust(dir, &name)?;
            std::fs::copy(&artifact, &partial)
                .with_context(|| format!("cannot copy {}", artifact.display()))?;
        }
    }
    std::fs::rename(&partial, &wasm).with_context(|| format!("cannot write {}", wasm.display()))?;
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let hash = content_hash(&bytes);
    let was_cached = runtime.has_compiled(&hash);
    let report = inspect(runtime, &wasm)?;
    if !report.fits() {
        bail!(
            "{} does not fit the world nodemanager:app/app@0.1.0:\n{}",
            wasm.display(),
            report.problems().trim_end()
        );
    }
    runtime.prepare(&bytes)?;
    let replaced_cache_entries = replace_cache_entry(runtime, &out_dir, &name, &hash)?;
    Ok(Built {
        bytes: bytes.len() as u64,
        carries_state: report.carries_state(),
        was_cached,
        name,
        lang,
        wasm,
        replaced_cache_entries,
    })
}

/// Forgets the compiled code of the project's previous build (its hash is kept in
/// `build/.NAME.hash`) when this build differs; returns the entries removed.
fn replace_cache_entry(runtime: &Runtime, out_dir: &Path, name: &str, hash: &str) -> Result<usize> {
    let record = out_dir.join(format!(".{name}.hash"));
    let previous = std::fs::read_to_string(&record).unwrap_or_default();
    let previous = previous.trim();
    let removed = if !previous.is_empty() && previous != hash {
        runtime.forget_compiled(previous)?
    } else {
        0
    };
    std::fs::write(&record, hash).with_context(|| format!("cannot write {}", record.display()))?;
    Ok(removed)
}

/// The `[package] name` of `dir/Cargo.toml`.
fn crate_name(dir: &Path) -> Result<String> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(String::from)
        .with_context(|| format!("{} has no [package] name", path.display()))
}

/// `program` as found on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// `$VAR` if set, else `default`, which must exist.
fn tool(var: &str, default: Option<PathBuf>, missing: &str) -> Result<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("${var} is {}, which is not a file", path.display());
            }
            Ok(path)
        }
        None => default
            .filter(|p| p.is_file())
            .with_context(|| missing.to_string()),
    }
}

/// Runs componentize-py on the project with the SDK and the WIT supplied.
fn build_python(dir: &Path, out: &Path) -> Result<()> {
    let componentize = tool(
        "NODEMANAGER_COMPONENTIZE_PY",
        on_path("componentize-py"),
        &format!(
            "componentize-py is not on PATH: install it (python3 -m venv ~/.componentize-py && \
             ~/.componentize-py/bin/pip install componentize-py=={COMPONENTIZE_PY_VERSION}) and put \
             its bin folder on PATH, or set $NODEMANAGER_COMPONENTIZE_PY to it \
             (the nodemanager repository's scripts/setup installs one in .venv/bin)"
        ),
    )?;
    let version = Command::new(&componentize)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", componentize.display()))?;
    let version = String::from_utf8_lossy(&version.stdout);
    if !version.contains(COMPONENTIZE_PY_VERSION) {
        tracing::warn!(
            "{} is {}, not the {COMPONENTIZE_PY_VERSION} the SDK is tested with",
            componentize.display(),
            version.trim()
        );
    }
    let supplied = tempfile::tempdir().context("cannot create a temporary folder")?;
    let sdk = supplied.path().join("sdk");
    let wit = supplied.path().join("wit");
    std::fs::create_dir_all(&sdk)?;
    std::fs::create_dir_all(&wit)?;
    std::fs::write(sdk.join("nodemanager_app.py"), templates::PYTHON_SDK)?;
    std::fs::write(wit.join("nodemanager.wit"), templates::WIT)?;
    let output = Command::new(&componentize)
        .arg("-d")
        .arg(&wit)
        .args(["-w", WORLD, "componentize", "-p"])
        .arg(&sdk)
        .arg("-p")
        .arg(dir)
        .arg("app")
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", componentize.display()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(out);
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{} does not build:\n{}",
            dir.join("app.py").display(),
            python_error(&stderr, dir)
        );
    }
    Ok(())
}

/// The part of componentize-py's error output that concerns the user's code, with
/// its paths (`/1/app.py`: the second `-p` folder) shown as the project's files.
fn python_error(stderr: &str, dir: &Path) -> String {
    let start = stderr
        .find("AssertionError:")
        .map_or(0, |i| i + "AssertionError:".len());
    let end = ["\n\nCaused by:", "\nStack backtrace:"]
        .iter()
        .filter_map(|marker| stderr[start..].find(marker))
        .min()
        .map_or(stderr.len(), |i| start + i);
    let text = stderr[start..end].trim();
    let project = format!("File \"{}/", dir.display());
    text.replace("File \"/1/", &project)
        .replace("File \"/0/", "File \"(the nodemanager SDK) ")
        .lines()
        .map(|line| format!("  {}", line.trim_start_matches("  ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds the crate in `dir` for wasm32-wasip2 with Debian's rustc-web and `-Zbuild-std`;
/// returns the component cargo made.
fn build_rust(dir: &Path, name: &str) -> Result<PathBuf> {
    const PACKAGES: &str = "Debian's rustc-web, cargo-web, rust-web-src, lld and wasi-libc \
                            (the nodemanager repository's scripts/setup installs them)";
    let cargo = tool(
        "NODEMANAGER_CARGO",
        Some("/usr/bin/cargo".into()),
        &format!("/usr/bin/cargo is missing: a Rust app is built with {PACKAGES}"),
    )?;
    let rustc = tool(
        "NODEMANAGER_RUSTC",
        Some("/usr/bin/rustc".into()),
        &format!("/usr/bin/rustc is missing: a Rust app is built with {PACKAGES}"),
    )?;
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("cannot run {}", rustc.display()))?;
    let library = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib/src/rust/library");
    if !library.is_dir() {
        bail!(
            "{} has no standard library sources ({} is missing) to build std for wasm32-wasip2: install {PACKAGES}",
            rustc.display(),
            library.display()
        );
    }
    let wasi_libc = Path::new("/usr/lib/wasm32-wasi");
    if !wasi_libc.is_dir() {
        bail!("{} is missing: install {PACKAGES}", wasi_libc.display());
    }
    // rustc's wasm-component-ld runs `wasm-ld`; Debian names it wasm-ld-NN.
    let shims = tempfile::tempdir().context("cannot create a temporary folder")?;
    if on_path("wasm-ld").is_none() {
        let linker = newest_wasm_ld().with_context(|| {
            format!("no wasm-ld on PATH nor /usr/bin/wasm-ld-NN: install {PACKAGES}")
        })?;
        let shim = shims.path().join("wasm-ld");
        std::fs::write(
            &shim,
            format!("#!/bin/sh\nexec {} \"$@\"\n", linker.display()),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut path = OsString::from(shims.path());
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    let output = Command::new(&cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-Zbuild-std=std,panic_abort",
            "--message-format=json-render-diagnostics",
        ])
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", format!("-L {}", wasi_libc.display()))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", cargo.display()))?;
    if !output.status.success() {
        bail!(
            "cargo could not build {} (its errors are above)",
            dir.display()
        );
    }
    // Cargo names a library target with underscores.
    let target = name.replace('-', "_");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == target.as_str())
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        .with_context(|| {
            format!("cargo built {name} but made no .wasm: is it a `crate-type = [\"cdylib\"]` library?")
        })
}

/// The newest `/usr/bin/wasm-ld-NN`.
fn newest_wasm_ld() -> Option<PathBuf> {
    std::fs::read_dir("/usr/bin")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: u32 = name.strip_prefix("wasm-ld-")?.parse().ok()?;
            Some((version, e.path()))
        })
        .max()
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_syntax_error_names_the_users_file_and_line() {
        let stderr = "Traceback (most recent call last):\n  File \"/x/bin/componentize-py\", line 8, in <module>\n    sys.exit(script())\n             ^^^^^^^^\nAssertionError:   File \"/1/app.py\", line 4\n    def periodic_run(self, view, node_id)\n                                         ^\nSyntaxError: expected ':'\n\n\nCaused by:\n    SyntaxError: expected ':' (app.py, line 4)\n\nStack backtrace:\n   0: <anyhow::Error>::msg\n";
        let text = python_error(stderr, Path::new("/home/me/gossip"));
        assert!(
            text.starts_with("  File \"/home/me/gossip/app.py\", line 4\n"),
            "{text}"
        );
        assert!(text.contains("SyntaxError: expected ':'"), "{text}");
        assert!(
            !text.contains("Stack backtrace") && !text.contains("componentize-py"),
            "{text}"
        );
    }
}
