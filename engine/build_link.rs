// Shared by the build scripts of the crates whose binaries and tests use libtorch (included
// with `include!`): an rpath to libtorch's lib dir, so nothing needs LD_LIBRARY_PATH, and a
// forced link of `libtorch_cuda` when present (the linker's --as-needed would drop it, and
// CUDA would then report unavailable).

/// Emits the link arguments; returns libtorch's lib dir (torch-sys's `DEP_TCH_LIBTORCH_LIB`).
fn link_libtorch() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::path::PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    Some(lib)
}
