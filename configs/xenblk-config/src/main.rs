//! `xenblk-config`: explain a xenblk config file, or print the reference.
//!
//! Exit status: 0 success, 1 invalid config (diagnostics on stderr),
//! 2 usage error.

use std::path::Path;
use std::process::ExitCode;

use xenblk_config::Profile;

const USAGE: &str = "\
usage: xenblk-config explain FILE [--profile linux|netbsd]
       xenblk-config reference
       xenblk-config help

explain    validate FILE (relative paths are relative to the current
           directory) and print every value, where it came from, the
           derived sizes and the static memory footprint
reference  print the Markdown reference of the language and its keys";

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("xenblk-config: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

fn explain(args: &[String]) -> ExitCode {
    let mut file: Option<&str> = None;
    let mut profile = Profile::Linux;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let value = if a == "--profile" {
            i += 1;
            match args.get(i) {
                Some(v) => Some(v.as_str()),
                None => return usage_error("`--profile` needs a value: linux or netbsd"),
            }
        } else {
            a.strip_prefix("--profile=")
        };
        if let Some(v) = value {
            match v.parse() {
                Ok(p) => profile = p,
                Err(e) => return usage_error(&e),
            }
        } else if a.starts_with('-') && a != "-" {
            return usage_error(&format!("unknown option `{a}`"));
        } else if file.is_some() {
            return usage_error("explain takes one FILE");
        } else {
            file = Some(a);
        }
        i += 1;
    }
    let Some(file) = file else {
        return usage_error("explain needs a FILE");
    };
    match xenblk_config::load(Path::new(file), profile) {
        Ok(config) => {
            print!("{}", xenblk_config::explain(&config));
            ExitCode::SUCCESS
        }
        Err(diags) => {
            eprintln!("{diags}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("explain") => explain(&args[1..]),
        Some("reference") if args.len() == 1 => {
            print!("{}", xenblk_config::reference_markdown());
            ExitCode::SUCCESS
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("reference") => usage_error("reference takes no arguments"),
        Some(other) => usage_error(&format!("unknown command `{other}`")),
        None => usage_error("missing command"),
    }
}
