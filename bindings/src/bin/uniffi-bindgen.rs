//! Writes the Kotlin and Swift bindings from the built library:
//! `uniffi-bindgen generate target/release/libmoe_edge_ffi.so -l kotlin -l swift -o OUT`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
