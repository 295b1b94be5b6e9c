//! `make bench` helper that runs inside a pod's container (static binary, copied into a bench
//! image): listens on a guest AF_VSOCK port, and for the first connection writes `--bytes` zero
//! bytes in 1 MiB writes, then closes. The bench reads them on the host through the sandbox's
//! hybrid-vsock socket: the raw throughput of the vsock path that the container's stdout takes
//! through the agent.
//!
//!   kata-cc-vsock-blast --port N --bytes N

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

fn arg(args: &[String], name: &str) -> Result<u64, String> {
    let at = args
        .iter()
        .position(|a| a == name)
        .ok_or(format!("{name} is required"))?;
    let v = args.get(at + 1).ok_or(format!("{name} needs a value"))?;
    v.parse().map_err(|_| format!("{name} {v}: not a number"))
}

fn run(args: &[String]) -> Result<(), String> {
    let port = u32::try_from(arg(args, "--port")?).map_err(|_| "--port: too large".to_string())?;
    let bytes = arg(args, "--bytes")?;
    let s = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket(AF_VSOCK): {e}"))?;
    bind(s.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
        .map_err(|e| format!("bind vsock port {port}: {e}"))?;
    listen(&s, Backlog::new(1).map_err(|e| e.to_string())?).map_err(|e| format!("listen: {e}"))?;
    println!("kata-cc-vsock-blast: listening on vsock port {port}");
    let _ = std::io::stdout().flush();
    let c = accept(s.as_raw_fd()).map_err(|e| format!("accept: {e}"))?;
    // SAFETY: accept returned a new descriptor that nothing else owns.
    let mut conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(c) });
    let buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        conn.write_all(&buf[..n])
            .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
        left -= n as u64;
    }
    drop(conn);
    println!("kata-cc-vsock-blast: sent {bytes} bytes");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kata-cc-vsock-blast: {e}");
            ExitCode::FAILURE
        }
    }
}
