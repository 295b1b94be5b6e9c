//! Picking the lines of a guest console log (or a QEMU log) that explain a failure.

use std::path::Path;

/// Lines that explain a boot failure: every `kata-cc:` line from our init/agent, kernel panics
/// and errors; if none, the last lines of the log. At most `max` lines, newest kept.
pub fn relevant_lines(log: &str, max: usize) -> Vec<String> {
    const MARKERS: &[&str] = &[
        "kata-cc",
        "Kernel panic",
        "panic",
        "error",
        "fail",
        "not syncing",
        "verity",
        "No such",
        "can't",
        "cannot",
    ];
    let mut clean: Vec<String> = log
        .lines()
        .map(|l| strip_controls(l).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    clean.dedup();
    let mut picked: Vec<String> = clean
        .iter()
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            MARKERS
                .iter()
                .any(|m| low.contains(&m.to_ascii_lowercase()))
        })
        .cloned()
        .collect();
    if picked.is_empty() {
        picked = clean;
    }
    let skip = picked.len().saturating_sub(max);
    picked.split_off(skip)
}

/// Drops terminal escape sequences (SeaBIOS clears the screen) and other control characters.
fn strip_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI (ESC [ ... final byte in '@'..='~'); any other escape is two characters
            // (e.g. ESC c, reset), the second consumed here.
            if chars.next() == Some('[') {
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// `relevant_lines` of a file; an unreadable/absent file gives a note instead.
pub fn relevant_lines_of(path: &Path, max: usize) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => relevant_lines(&String::from_utf8_lossy(&bytes), max),
        Err(e) => vec![format!("({}: {e})", path.display())],
    }
}

/// The last `max` non-empty lines of a log file, escapes stripped (what a guest printed last
/// before it died); an unreadable/absent file gives a note instead.
pub fn tail_of(path: &Path, max: usize) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<String> = text
                .lines()
                .map(|l| strip_controls(l).trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            let skip = lines.len().saturating_sub(max);
            lines[skip..].to_vec()
        }
        Err(e) => vec![format!("({}: {e})", path.display())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_verity_line() {
        let log = "[    0.000000] Linux version 6.12\r\n[    1.0] virtio_blk virtio1: [vda]\n\
                   kata-cc: rootfs did not verify\n[    2.0] reboot: Power down\n";
        let l = relevant_lines(log, 10);
        assert_eq!(l, vec!["kata-cc: rootfs did not verify".to_string()]);
    }

    #[test]
    fn strips_escapes_and_dedups() {
        let log = "\u{1b}c\u{1b}[?7l\u{1b}[2Jkata-cc: up\r\nx failed\nx failed\n";
        assert_eq!(
            relevant_lines(log, 10),
            vec!["kata-cc: up".to_string(), "x failed".to_string()]
        );
    }

    #[test]
    fn tail_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        std::fs::write(&p, "a\n\u{1b}[2Jb\n\nc\n").unwrap();
        assert_eq!(tail_of(&p, 2), vec!["b".to_string(), "c".to_string()]);
        assert!(tail_of(&dir.path().join("absent"), 2)[0].contains("absent"));
    }

    #[test]
    fn falls_back_to_tail() {
        let log = "a\nb\nc\nd\n";
        assert_eq!(
            relevant_lines(log, 2),
            vec!["c".to_string(), "d".to_string()]
        );
        assert!(relevant_lines("", 5).is_empty());
    }
}
