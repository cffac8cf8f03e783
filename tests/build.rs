//! libtorch's link set-up for the end-to-end tests (`engine/build_link.rs`).

include!("../engine/build_link.rs");

fn main() {
    link_libtorch();
}
