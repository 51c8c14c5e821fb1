//! What a component imports and exports, and whether it fits the `app` world.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::cache::check_is_component;
use super::Runtime;

/// The exports the `app` world requires.
pub const REQUIRED_EXPORTS: [&str; 4] =
    ["init", "periodic-run", "handle-message", "delivery-report"];

/// The host interface, by name without its version.
const HOST_INTERFACE: &str = "nodemanager:app/host";

/// A component's imports and exports, and what keeps it from fitting the world.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// Import names with their kind.
    pub imports: Vec<String>,
    /// Export names with their kind.
    pub exports: Vec<String>,
    /// Required exports the component lacks (or exports as something else).
    pub missing_exports: Vec<String>,
    /// Imports the host does not provide.
    pub unsupported_imports: Vec<String>,
}

impl Inspection {
    /// Whether the component fits the `app` world.
    pub fn fits(&self) -> bool {
        self.missing_exports.is_empty() && self.unsupported_imports.is_empty()
    }

    /// Whether the component exports `snapshot` and `restore` (the `stateful-app`
    /// world), so its state is carried across `apps replace`.
    pub fn carries_state(&self) -> bool {
        ["func snapshot", "func restore"]
            .iter()
            .all(|export| self.exports.iter().any(|e| e == export))
    }

    /// One line per problem.
    pub fn problems(&self) -> String {
        let mut out = String::new();
        for name in &self.missing_exports {
            let _ = writeln!(out, "  missing export: function `{name}`");
        }
        for name in &self.unsupported_imports {
            let _ = writeln!(out, "  unsupported import: `{name}` (the host offers {HOST_INTERFACE}@0.1.x and WASI 0.2)");
        }
        out
    }
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

fn host_supports(import: &str) -> bool {
    if import.starts_with("wasi:") {
        return true;
    }
    match import.strip_prefix(HOST_INTERFACE) {
        Some(version) => version.starts_with("@0.1."),
        None => false,
    }
}

/// Lists `component`'s imports and exports and checks them against the world.
pub fn check_component(engine: &Engine, component: &Component) -> Inspection {
    let ty = component.component_type();
    let imports: Vec<(String, &'static str)> = ty
        .imports(engine)
        .map(|(name, item)| (name.to_string(), kind(&item.ty)))
        .collect();
    let exports: Vec<(String, &'static str)> = ty
        .exports(engine)
        .map(|(name, item)| (name.to_string(), kind(&item.ty)))
        .collect();
    let missing_exports = REQUIRED_EXPORTS
        .iter()
        .filter(|want| {
            !exports
                .iter()
                .any(|(name, kind)| name == *want && *kind == "func")
        })
        .map(|s| s.to_string())
        .collect();
    let unsupported_imports = imports
        .iter()
        .filter(|(name, _)| !host_supports(name))
        .map(|(name, _)| name.clone())
        .collect();
    let show =
        |items: Vec<(String, &str)>| items.into_iter().map(|(n, k)| format!("{k} {n}")).collect();
    Inspection {
        imports: show(imports),
        exports: show(exports),
        missing_exports,
        unsupported_imports,
    }
}

/// Reads, compiles (or loads from the cache) and inspects the component at `path`.
pub fn inspect(runtime: &Runtime, path: &Path) -> Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    check_is_component(&bytes)
        .with_context(|| format!("{} cannot be inspected", path.display()))?;
    let hash = super::cache::content_hash(&bytes);
    let (component, _) = runtime
        .cache
        .get_or_compile(runtime.engine(), &bytes, &hash)?;
    Ok(check_component(runtime.engine(), &component))
}
