//! Renders kdbusd(8) from the command line's definition (`src/cli.rs`), into
//! `OUT_DIR` and `target/<profile>/man/` where packagers find it.

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    let cmd = <cli::Args as clap::CommandFactory>::command().name("kdbusd");
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).section("8").render(&mut page)?;
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    std::fs::write(out.join("kdbusd.8"), &page)?;
    // OUT_DIR is target/<profile>/build/<crate>-<hash>/out.
    if let Some(profile_dir) = out.ancestors().nth(3) {
        let man = profile_dir.join("man");
        std::fs::create_dir_all(&man)?;
        std::fs::write(man.join("kdbusd.8"), &page)?;
    }
    Ok(())
}
