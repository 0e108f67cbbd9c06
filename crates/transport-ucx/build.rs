//! Link against the UCX that pkg-config finds (`PKG_CONFIG_PATH` selects a site build, for
//! example one configured `--with-cuda`). The bindings themselves are pre-generated in
//! `src/sys.rs` (see `regen-bindings.sh`), so no libclang is needed here.

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if let Err(e) = pkg_config::Config::new()
        .atleast_version("1.13")
        .probe("ucx")
    {
        panic!(
            "taskwire-transport-ucx needs UCX >= 1.13 found through pkg-config (`ucx.pc`).\n\
             On Debian/Ubuntu: apt-get install libucx-dev pkg-config\n\
             For a site UCX (e.g. built with CUDA): PKG_CONFIG_PATH=/path/to/ucx/lib/pkgconfig\n\
             pkg-config said: {e}"
        );
    }
}
