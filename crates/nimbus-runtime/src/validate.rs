//! Deploy-time checks, so a bad upload is refused with a message that names the problem instead of
//! failing on its first request.

use wasmtime::Engine;
use wasmtime::component::Component;

/// Why an upload cannot be deployed. Every variant but `Internal` is the developer's to fix (400).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the upload is not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm,
    #[error(
        "the upload is a core WebAssembly module, not a component: build for the wasm32-wasip2 \
         target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("the component is invalid: {0}")]
    Invalid(String),
    #[error(
        "the component does not export wasi:http/incoming-handler (the wasi:http/proxy world); \
         it exports: {0}"
    )]
    NoHandler(String),
    #[error("the component imports {0}, which Nimbus does not provide")]
    UnsupportedImport(String),
    #[error("internal error while compiling: {0}")]
    Internal(String),
}

const MAGIC: &[u8; 4] = b"\0asm";
/// Core modules are version 1, layer 0; components are a later version with layer 1.
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];

pub(crate) fn check_header(wasm: &[u8]) -> Result<(), DeployError> {
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err(DeployError::NotWasm);
    }
    if wasm[4..8] == CORE_VERSION {
        return Err(DeployError::CoreModule);
    }
    Ok(())
}

pub(crate) fn check_exports(engine: &Engine, component: &Component) -> Result<(), DeployError> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    if names.iter().any(|n| n.starts_with("wasi:http/incoming-handler@0.2.")) {
        return Ok(());
    }
    let list = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
    Err(DeployError::NoHandler(list))
}

/// Turn the linker's "component imports instance `x`, but a matching implementation was not
/// found" into a one-line answer naming the import.
pub(crate) fn explain_link_error(e: wasmtime::Error) -> DeployError {
    let msg = format!("{e:#}");
    let named =
        msg.split('`').nth(1).filter(|_| msg.contains("matching implementation was not found"));
    match named {
        Some(import) => DeployError::UnsupportedImport(format!("`{import}`: {msg}")),
        None => DeployError::Invalid(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(matches!(check_header(b"hello world"), Err(DeployError::NotWasm)));
        assert!(matches!(check_header(b""), Err(DeployError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(DeployError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
