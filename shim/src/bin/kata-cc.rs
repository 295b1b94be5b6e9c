//! `kata-cc`: the host tool: `config` (validate the runtime configuration), `policy`
//! (replay/check/bench with the agent's own engine), `measure`, `attest`, `check`,
//! `boot-check` (boot the guest through the shim's VM builder and report its console),
//! `install`/`uninstall` (the runtime handler in containerd's config).

use std::process::ExitCode;

use kata_cc_shim::config::Config;

#[path = "../agent_cli.rs"]
mod agent_cli;
#[path = "../install_cli.rs"]
mod install_cli;
#[path = "../policy_cli.rs"]
mod policy_cli;
#[path = "../snp_cli.rs"]
mod snp_cli;

const USAGE: &str = "usage: kata-cc <command>\n\ncommands:\n  config [--config PATH]   load and validate the runtime configuration (default: $KATA_CC_CONFIG_PATH, else /etc/kata-cc/configuration.toml)\n  version                  print the version\n";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") => {
            println!("kata-cc {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("config") => config(&args[1..]),
        Some("policy") => policy_cli::main(&args[1..]),
        Some("agent") => agent_cli::main(&args[1..]),
        Some("measure") => snp_cli::measure(&args[1..]),
        Some("attest") => snp_cli::attest(&args[1..]),
        Some("check") => snp_cli::check(&args[1..]),
        Some("boot-check") => kata_cc_shim::boot_cli::main(&args[1..]),
        Some("install") => install_cli::install(&args[1..]),
        Some("uninstall") => install_cli::uninstall(&args[1..]),
        Some("help") | Some("--help") | Some("-h") => {
            print!(
                "{USAGE}{}{}{}{}{}{}",
                policy_cli::USAGE,
                policy_cli::GEN_USAGE,
                agent_cli::USAGE,
                snp_cli::USAGE,
                kata_cc_shim::boot_cli::USAGE,
                install_cli::USAGE
            );
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("kata-cc: unknown command '{other}'\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn config(args: &[String]) -> ExitCode {
    let explicit = match args {
        [] => None,
        [flag, path] if flag == "--config" => Some(path.as_str()),
        _ => {
            eprintln!("kata-cc config: expected [--config PATH]");
            return ExitCode::from(2);
        }
    };
    let path = Config::locate(explicit);
    let checked = Config::load(&path).and_then(|c| {
        c.check_paths()?;
        Ok(c)
    });
    match checked {
        Ok(c) => {
            let q = &c.hypervisor.qemu;
            println!("config:   {}", path.display());
            println!("qemu:     {}", q.path.display());
            println!("kernel:   {}", q.kernel.display());
            println!("initrd:   {}", q.initrd.display());
            println!("image:    {}", q.image.display());
            println!(
                "memory:   {} MiB base, {} vCPU base",
                q.default_memory, q.default_vcpus
            );
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kata-cc config: {e}");
            ExitCode::FAILURE
        }
    }
}
