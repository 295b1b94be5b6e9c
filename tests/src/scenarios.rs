//! Test bodies shared by the kata-cc end-to-end tests and the harness's self-tests: the
//! self-tests run them on runc, which proves the checks themselves (expected exit codes, tty
//! handling, stream comparisons) before a VM is involved.

use std::time::Duration;

use crate::containerd::Containerd;
use crate::{paths, TestImage};

/// `sh -c 'exit 3'` -> ctr exits 3, output before the exit arrives.
pub fn exit_code(cd: &Containerd) {
    let id = cd.id("exit3");
    let out = cd.run(
        &id,
        &[],
        &TestImage::busybox(),
        &["sh", "-c", "echo before-exit; exit 3"],
    );
    assert_eq!(out.code, Some(3), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout_str(), "before-exit\n");
}

/// `ctr task exec` with and without `-t`, with stdin, exit codes; `kernel` is what `uname -r`
/// must print inside the container.
pub fn exec_with_and_without_tty(cd: &Containerd, kernel: &str) {
    let id = cd.id("exec");
    let img = TestImage::busybox();
    let t = paths::run_timeout();
    let mut main = cd.spawn_run(&id, &[], &img, &["sh", "-c", "echo ready; exec sleep 3600"]);
    main.wait_for_stdout("ready", t);

    // Plain exec: separate stdout and stderr, its own exit code.
    let out = cd.ctr_with(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "plain",
            &id,
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; uname -r; exit 7",
        ],
        None,
        t,
    );
    assert_eq!(out.code, Some(7), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(
        out.stdout_str(),
        format!("to-stdout\n{kernel}\n"),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr_str(), "to-stderr\n", "{}", out.describe());

    // Exec with stdin: cat echoes it, then exits at EOF.
    let input = b"through exec stdin\n";
    let mut cat = cd.spawn_ctr_interactive(&["tasks", "exec", "--exec-id", "stdin", &id, "cat"]);
    cat.write_stdin(input);
    cat.wait_for_stdout_len(input.len(), t);
    cat.close_stdin();
    let out = cat.wait(Duration::from_secs(60));
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout, input.to_vec(), "{}", out.describe());

    // Exec with a terminal (ctr -t needs a terminal of its own: a pty, 24x80). ctr sends the
    // window size just after the start, so the script waits for it to arrive.
    let out = cd.ctr_pty(
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "tty",
            &id,
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty; tty; \
             i=0; while [ \"$(stty size 2>/dev/null)\" != '24 80' ] && [ $i -lt 100 ]; do \
             sleep 0.1; i=$((i+1)); done; stty size; exit 5",
        ],
        b"",
        t,
    );
    let text = out.stdout_str();
    assert_eq!(out.code, Some(5), "{}\n{}", out.describe(), cd.log_tail());
    assert!(
        text.contains("is-a-tty"),
        "no tty in the exec: {}",
        out.describe()
    );
    assert!(
        text.contains("/dev/pts/"),
        "the tty is not a pts: {}",
        out.describe()
    );
    assert!(
        text.contains("24 80"),
        "the window size did not arrive: {}",
        out.describe()
    );

    // Without -t the same test says no terminal.
    let out = cd.ctr_with(
        &[
            "tasks",
            "exec",
            "--exec-id",
            "notty",
            &id,
            "sh",
            "-c",
            "test -t 1 && echo is-a-tty || echo not-a-tty",
        ],
        None,
        t,
    );
    assert_eq!(out.stdout_str(), "not-a-tty\n", "{}", out.describe());

    // PID 1 (sleep) has no handler: SIGKILL ends it and `ctr run --rm` cleans up.
    cd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id])
        .assert_success();
    let out = main.wait(t);
    assert_eq!(out.code, Some(137), "{}\n{}", out.describe(), cd.log_tail());
}

/// Bytes on ctr's stdin reach `cat` unchanged, and EOF (closing stdin) ends it.
pub fn stdin_reaches_cat(cd: &Containerd) {
    let id = cd.id("cat");
    let input = b"line one\nline two\n\x01binary\xff bytes\n";
    let mut cat = cd.spawn_run_interactive(&id, &[], &TestImage::busybox(), &["cat"]);
    cat.write_stdin(input);
    cat.wait_for_stdout_len(input.len(), paths::run_timeout());
    cat.close_stdin();
    let out = cat.wait(Duration::from_secs(60));
    assert!(out.success(), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout, input.to_vec(), "cat echoed something else");
}

/// The expected output of `seq 1 n`.
fn seq_output(n: u32) -> Vec<u8> {
    let mut expected = Vec::new();
    for i in 1..=n {
        expected.extend_from_slice(format!("{i}\n").as_bytes());
    }
    expected
}

/// 1..1500000, one per line: 10.4 MiB.
const SEQ_N: u32 = 1_500_000;

fn assert_stream(cd: &Containerd, what: &str, out: &crate::CmdOutput, expected: &[u8]) {
    assert!(expected.len() >= 10 << 20, "the check must cover 10 MiB");
    assert!(
        out.success(),
        "{what} failed: exit {:?} after {:.0}s, {} of {} bytes of stdout arrived, stderr: {}\n{}",
        out.code,
        out.elapsed.as_secs_f64(),
        out.stdout.len(),
        expected.len(),
        out.stderr_str(),
        cd.log_tail()
    );
    if out.stdout != expected {
        let at = out
            .stdout
            .iter()
            .zip(expected.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(out.stdout.len().min(expected.len()));
        panic!(
            "{what}: stdout differs: got {} bytes, expected {}; first difference at byte {at}",
            out.stdout.len(),
            expected.len()
        );
    }
    eprintln!(
        "{what}: {} bytes in {:.1}s",
        expected.len(),
        out.elapsed.as_secs_f64()
    );
}

/// `seq 1 1500000` straight to stdout (many small writes) arrives byte for byte, in order.
pub fn ten_mib_of_stdout(cd: &Containerd) {
    let id = cd.id("seq");
    let out = cd.run(
        &id,
        &[],
        &TestImage::busybox(),
        &["seq", "1", &SEQ_N.to_string()],
    );
    assert_stream(cd, "seq to stdout", &out, &seq_output(SEQ_N));
}

/// The same 10.4 MiB written in 64 KiB blocks (a full pipe per write) arrives byte for byte.
pub fn ten_mib_of_stdout_in_large_writes(cd: &Containerd) {
    let id = cd.id("dd");
    let script = format!("seq 1 {SEQ_N} > /tmp/seq && dd if=/tmp/seq bs=65536 2>/dev/null");
    let out = cd.run(&id, &[], &TestImage::busybox(), &["sh", "-c", &script]);
    assert_stream(cd, "64 KiB writes to stdout", &out, &seq_output(SEQ_N));
}

/// SIGUSR1 and SIGTERM from `ctr task kill` reach the container's PID 1 (traps in sh).
pub fn signals_arrive(cd: &Containerd) {
    let id = cd.id("trap");
    let script = "trap 'echo got-USR1' USR1; trap 'echo got-TERM; exit 43' TERM; echo ready; \
                  while :; do sleep 0.2; done";
    let mut main = cd.spawn_run(&id, &[], &TestImage::busybox(), &["sh", "-c", script]);
    main.wait_for_stdout("ready", paths::run_timeout());
    cd.ctr(&["tasks", "kill", "-s", "SIGUSR1", &id])
        .assert_success();
    main.wait_for_stdout("got-USR1", Duration::from_secs(60));
    // SIGTERM is `ctr task kill`'s default signal.
    cd.ctr(&["tasks", "kill", &id]).assert_success();
    let out = main.wait(Duration::from_secs(60));
    assert_eq!(out.code, Some(43), "{}\n{}", out.describe(), cd.log_tail());
    assert_eq!(out.stdout_str(), "ready\ngot-USR1\ngot-TERM\n");
}
