//! Compiles the in-container launcher of long-lived sandboxes (launcher/launcher.c) into a
//! static executable that the library embeds and installs in its shared root filesystem.

use std::path::PathBuf;

fn main() {
    for source in [
        "launcher/launcher.c",
        "launcher/files.c",
        "launcher/files.h",
        "launcher/net.c",
        "launcher/net.h",
    ] {
        println!("cargo::rerun-if-changed={source}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("osb-launcher");
    let compiler = cc::Build::new().opt_level(2).get_compiler();
    let compile = |extra: &[&str]| {
        compiler
            .to_command()
            .args(["-Wall", "-Wextra", "-o"])
            .arg(&out)
            .args(["launcher/launcher.c", "launcher/files.c", "launcher/net.c"])
            .args(extra)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    // Static, so that it runs whatever the container's /usr holds; dynamic if this toolchain
    // has no static libc.
    if compile(&["-static"]) {
        return;
    }
    if compile(&[]) {
        // It then needs the container's /usr to hold a libc like the host's: a custom root
        // without one fails every command with only "exit code 1".
        println!(
            "cargo::warning=the in-container launcher is linked dynamically (no static libc: \
             Debian's libc6-dev has one); containers whose /usr lacks the host's libc cannot run it"
        );
        return;
    }
    panic!(
        "compiling the in-container launcher (launcher/launcher.c) failed: a C compiler is \
         needed (Debian: apt-get install gcc libc6-dev)"
    );
}
