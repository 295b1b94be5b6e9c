//! `Checks`: several independent checks on one expensive set-up (a pod booted under TCG takes
//! many seconds). Each check runs to its first failed assertion; the others still run, and
//! [`Checks::finish`] fails the test listing every failed check, after the test has torn the
//! pod down (so a failed check still gets its leak check).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

#[derive(Default)]
pub struct Checks {
    failed: Vec<String>,
    passed: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Runs one check; a panic in it is recorded (and printed by the panic hook), not raised.
    pub fn run(&mut self, name: &str, f: impl FnOnce()) {
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(()) => {
                eprintln!("check {name}: ok ({:.1}s)", started.elapsed().as_secs_f64());
                self.passed.push(name.to_string());
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".to_string());
                eprintln!("check {name}: FAILED");
                self.failed.push(format!("{name}: {msg}"));
            }
        }
    }

    /// Whether every check so far passed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Panics listing the failed checks, if any.
    pub fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} checks failed (passed: {}):\n\n{}",
            self.failed.len(),
            self.failed.len() + self.passed.len(),
            self.passed.join(", "),
            self.failed.join("\n\n")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_failures() {
        let mut c = Checks::new();
        c.run("good", || {});
        c.run("bad", || panic!("boom {}", 1));
        c.run("worse", || panic!("static"));
        assert!(!c.ok());
        let r = catch_unwind(AssertUnwindSafe(|| c.finish()));
        let msg = r.unwrap_err().downcast_ref::<String>().cloned().unwrap();
        assert!(msg.contains("2 of 3 checks failed"), "{msg}");
        assert!(
            msg.contains("bad: boom 1") && msg.contains("worse: static"),
            "{msg}"
        );
    }
}
