//! `xenblk-front`: the xenblk frontend as a domU tool (attach to a vbd, verified I/O, a small
//! IOPS benchmark). **Stub**: it parses its arguments and reports the vbd's xenstore state;
//! the frontend platform (gntalloc grants) is not wired to the driver yet, see NOTES.md.

use std::process::ExitCode;

use xenblk::platform::Tx;
use xenblk_linux::xenstore::XsClient;

const USAGE: &str = "usage: xenblk-front [--vbd DEVID] [--verify MIB] [--iops SECONDS]
  --vbd DEVID      virtual device (default 51712 = xvda)
  --verify MIB     write MIB MiB of random data, read back, compare
  --iops SECONDS   4 KiB random reads for SECONDS
Run in a domU without xen-blkfront loaded, with /dev/xen/{xenbus,evtchn,gntalloc}.";

#[derive(Debug, PartialEq, Eq)]
struct Args {
    vbd: u32,
    verify_mib: Option<u64>,
    iops_secs: Option<u64>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args { vbd: 51712, verify_mib: None, iops_secs: None };
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?.parse().map_err(|_| format!("bad {what}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--vbd" => a.vbd = num(it.next(), "--vbd")? as u32,
            "--verify" => a.verify_mib = Some(num(it.next(), "--verify")?),
            "--iops" => a.iops_secs = Some(num(it.next(), "--iops")?),
            "-h" | "--help" => return Err(String::new()),
            o => return Err(format!("unknown argument {o}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("xenblk-front: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    let mut xs = match XsClient::connect_default() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xenblk-front: no xenstore: {e:?}");
            return ExitCode::from(1);
        }
    };
    let dir = format!("device/vbd/{}", args.vbd);
    let be = xs.read_string(Tx::NONE, &format!("{dir}/backend"));
    let state = xs.read_string(Tx::NONE, &format!("{dir}/state"));
    println!("xenblk-front: domid {:?} {dir}: backend {be:?} state {state:?}", xs.domid());
    eprintln!("xenblk-front: attaching is not implemented yet (see boards/linux/NOTES.md)");
    ExitCode::from(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let p = |v: &[&str]| parse(v.iter().map(|s| s.to_string()));
        assert_eq!(p(&[]).unwrap(), Args { vbd: 51712, verify_mib: None, iops_secs: None });
        assert_eq!(p(&["--verify", "64", "--vbd", "51728"]).unwrap().verify_mib, Some(64));
        assert!(p(&["--iops", "x"]).is_err());
    }
}
