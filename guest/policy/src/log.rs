//! The request log format Kata's agent writes and `kata-cc policy replay` reads: one request per
//! line, `["ep":"<RequestMessageName>",{<request as policy input JSON>}],`; blank lines between.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("request log line {line}: {message}")]
pub struct LogError {
    pub line: usize,
    pub message: String,
}

/// One logged request.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// 1-based line in the log.
    pub line: usize,
    /// The request message name (`ep`).
    pub name: String,
    pub input: Value,
}

/// Parses a whole log; the error names the line.
pub fn parse(text: &str) -> Result<Vec<LogEntry>, LogError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        // The line's start goes into the message: a log cut by other output shows where.
        let err = |message: &str| LogError {
            line: i + 1,
            message: format!("{message} (line starts {:?})", snippet(line)),
        };
        let body = line.strip_suffix(',').unwrap_or(line);
        let body = body
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix(']'))
            .ok_or_else(|| err("expected [\"ep\":\"<Name>\",{...}]"))?;
        let rest = body
            .strip_prefix("\"ep\":\"")
            .ok_or_else(|| err("expected \"ep\":\"<Name>\" first"))?;
        let end = rest
            .find('"')
            .ok_or_else(|| err("unterminated request name"))?;
        let name = &rest[..end];
        if name.is_empty() {
            return Err(err("empty request name"));
        }
        let json = rest[end + 1..]
            .trim_start()
            .strip_prefix(',')
            .ok_or_else(|| err("expected ',' after the request name"))?;
        let input: Value =
            serde_json::from_str(json).map_err(|e| err(&format!("request JSON: {e}")))?;
        out.push(LogEntry {
            line: i + 1,
            name: name.to_string(),
            input,
        });
    }
    Ok(out)
}

/// The first 80 characters of a line (at a character boundary).
fn snippet(line: &str) -> String {
    let mut s: String = line.chars().take(80).collect();
    if s.len() < line.len() {
        s.push_str("...");
    }
    s
}

/// Formats one request as a log line (without the blank line that follows).
pub fn format_entry(name: &str, input: &Value) -> String {
    format!("[\"ep\":\"{name}\",{input}],")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let text = "[\"ep\":\"A\",{}],\n\n[\"ep\":\"BRequest\",{\"x\":[1]}],\n";
        let e = parse(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "BRequest");
        assert_eq!(e[1].line, 3);
        assert_eq!(
            format_entry(&e[1].name, &e[1].input),
            "[\"ep\":\"BRequest\",{\"x\":[1]}],"
        );
        let bad = parse("[\"ep\":\"A\",{]\n").unwrap_err();
        assert_eq!(bad.line, 1);
        assert!(parse("{\"ep\":1}").is_err());
    }
}
