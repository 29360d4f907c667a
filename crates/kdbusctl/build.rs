//! Renders kdbusctl(1) and a page per subcommand (kdbusctl-bench(1), ...) from the
//! command line's definition (`src/cli.rs`), into `OUT_DIR` and
//! `target/<profile>/man/` where packagers find them.

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    let cmd = <cli::Cli as clap::CommandFactory>::command().name("kdbusctl");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    // OUT_DIR is target/<profile>/build/<crate>-<hash>/out.
    let mut dirs = vec![out.clone()];
    if let Some(profile_dir) = out.ancestors().nth(3) {
        dirs.push(profile_dir.join("man"));
    }
    let mut pages = vec![("kdbusctl.1".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        // A build script runs once: leaking the names clap wants `'static` is fine.
        let name: &'static str = Box::leak(format!("kdbusctl-{}", sub.get_name()).into_boxed_str());
        pages.push((format!("{name}.1"), sub.clone().name(name)));
    }
    for (file, cmd) in pages {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        for d in &dirs {
            std::fs::create_dir_all(d)?;
            std::fs::write(d.join(&file), &page)?;
        }
    }
    Ok(())
}
