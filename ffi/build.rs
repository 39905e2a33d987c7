//! Gives the shared library the SONAME `libgraft.so.<C ABI major>`, so applications
//! bind to an ABI, not to a file, and an incompatible release cannot be picked up by
//! accident.

fn main() {
    println!("cargo:rerun-if-changed=src/lib.rs");
    let lib = std::fs::read_to_string("src/lib.rs").unwrap_or_default();
    let major = lib
        .lines()
        .find_map(|l| l.strip_prefix("pub const GRAFT_ABI_MAJOR: u32 = "))
        .and_then(|v| v.trim_end_matches(';').trim().parse::<u32>().ok());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    match major {
        Some(major) if target_os == "linux" || target_os == "android" => {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgraft.so.{major}");
        }
        Some(_) => {}
        None => println!("cargo:warning=GRAFT_ABI_MAJOR not found in src/lib.rs; no SONAME set"),
    }
}
