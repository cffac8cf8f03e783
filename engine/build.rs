//! libtorch's link set-up (`build_link.rs`), and the C++ shim to libtorch's c10d
//! (`src/dist/shim/`), compiled against the headers of the libtorch oxrl links.

use std::path::Path;

include!("build_link.rs");

fn main() {
    if let Some(lib) = link_libtorch() {
        compile_c10d_shim(&lib);
    }
}

/// `src/dist/shim/c10d.cpp` against the headers beside libtorch's `lib/`, with the flags
/// torch-sys builds its own C++ with (torch >= 2.7 wheels use the C++11 ABI).
fn compile_c10d_shim(lib: &Path) {
    let shim = Path::new("src/dist/shim");
    println!("cargo:rerun-if-changed={}", shim.display());
    let include = lib
        .parent()
        .expect("libtorch's lib dir has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(shim) // the Gloo stand-ins (src/dist/shim/gloo/README.md)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .file(shim.join("c10d.cpp"))
        .compile("oxrl_c10d");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
