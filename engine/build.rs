//! Link-time set-up for binaries and tests that use libtorch: an rpath to libtorch's lib dir
//! (so nothing needs LD_LIBRARY_PATH) and a forced link of `libtorch_cuda` when present (the
//! linker's --as-needed would drop it, and CUDA would then report unavailable).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
