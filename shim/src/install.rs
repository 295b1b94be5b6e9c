//! `kata-cc install|uninstall`: the `kata-cc` runtime handler in containerd 1.6's config
//! (`version = 2`), which Kubernetes' RuntimeClass `kata-cc-isolation` names.
//!
//! The config is edited with toml_edit, so everything but the handler stays byte for byte:
//! uninstall after install gives back the original file. Every check is made before anything is
//! written, and files are replaced by rename, so an error leaves the files as they were.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use toml_edit::{Array, Decor, DocumentMut, Item, Table, Value};

/// The runtime handler name (CRI's `runtimeHandler`, the RuntimeClass's `handler`).
pub const HANDLER: &str = "kata-cc";
pub const RUNTIME_TYPE: &str = "io.containerd.kata-cc.v2";
pub const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const BACKUP_SUFFIX: &str = ".kata-cc.bak";

/// What `kubectl apply -f -` takes to offer the handler to pods (`runtimeClassName`).
pub const RUNTIME_CLASS: &str = "apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: kata-cc-isolation
handler: kata-cc
";

/// Put in front of a config with no settings (missing, empty, only comments), which containerd
/// would read as version 1; uninstall takes it off again when nothing else was added.
const VERSION_LINE: &str = "version = 2 # added by kata-cc install\n";

/// Where CRI looks for runtime handlers, from the document root.
const RUNTIMES: [&str; 4] = ["plugins", CRI_PLUGIN, "containerd", "runtimes"];

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}: not valid TOML: {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}: no key `version`: containerd 1.6 reads it as a version 1 config, whose plugin names \
         differ; kata-cc install edits only `version = 2` configs: convert it first",
        .path.display()
    )]
    NoVersion { path: PathBuf },
    #[error(
        "{}: key `version` is {found}: kata-cc install edits only containerd 1.6's \
         `version = 2` configs",
        .path.display()
    )]
    Version { path: PathBuf, found: String },
    #[error(
        "{}: `disabled_plugins` lists \"{CRI_PLUGIN}\": with containerd's CRI plugin disabled \
         Kubernetes can never use the {HANDLER} handler; remove it from the list first",
        .path.display()
    )]
    CriDisabled { path: PathBuf },
    #[error(
        "{}: `{key}` is not a [table] (an inline table, dotted keys or a value): kata-cc install \
         edits only tables written with a [header]",
        .path.display()
    )]
    NotTable { path: PathBuf, key: String },
    #[error(
        "{}: toml_edit does not write this file back unchanged, so kata-cc install cannot edit \
         it without touching the rest",
        .path.display()
    )]
    RoundTrip { path: PathBuf },
    #[error("{flag} {}: must be an absolute path", .path.display())]
    NotAbsolute { flag: &'static str, path: PathBuf },
}

/// The values of the handler: the shim's config file and, optionally, the shim binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// `options.ConfigPath`, which containerd hands to the shim.
    pub config_path: PathBuf,
    /// `runtime_path`; None: containerd finds `containerd-shim-kata-cc-v2` on its PATH.
    pub runtime_path: Option<PathBuf>,
}

impl Handler {
    /// Both paths must be absolute: the shim does not run in the caller's directory.
    pub fn new(config_path: PathBuf, runtime_path: Option<PathBuf>) -> Result<Self, InstallError> {
        for (flag, p) in [
            ("--config", Some(&config_path)),
            ("--shim", runtime_path.as_ref()),
        ] {
            if let Some(p) = p.filter(|p| !p.is_absolute()) {
                return Err(InstallError::NotAbsolute {
                    flag,
                    path: p.clone(),
                });
            }
        }
        Ok(Handler {
            config_path,
            runtime_path,
        })
    }

    /// The handler's keys as research/cri.md §1 gives them (kata-deploy writes the same): the
    /// pod annotations carry the policy and init-data to the shim; without
    /// privileged_without_host_devices a privileged pod would get every host device.
    fn keys(&self) -> Vec<(&'static str, Want)> {
        let mut keys = vec![("runtime_type", Want::Str(RUNTIME_TYPE.into()))];
        if let Some(p) = &self.runtime_path {
            keys.push(("runtime_path", Want::Str(p.display().to_string())));
        }
        keys.extend([
            ("privileged_without_host_devices", Want::Bool(true)),
            ("pod_annotations", Want::List(&["io.katacontainers.*"])),
            (
                "container_annotations",
                Want::List(&[
                    "io.katacontainers.*",
                    "io.kubernetes.container.terminationMessage*",
                ]),
            ),
        ]);
        keys
    }

    fn options(&self) -> Vec<(&'static str, Want)> {
        vec![(
            "ConfigPath",
            Want::Str(self.config_path.display().to_string()),
        )]
    }
}

/// One value the handler must have.
enum Want {
    Str(String),
    Bool(bool),
    List(&'static [&'static str]),
}

impl Want {
    fn value(&self) -> Value {
        match self {
            Want::Str(s) => Value::from(s.as_str()),
            Want::Bool(b) => Value::from(*b),
            Want::List(l) => Value::Array(l.iter().copied().collect::<Array>()),
        }
    }

    /// Same value, however it is written (quotes, spacing, comments).
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Want::Str(s), Value::String(f)) => f.value() == s,
            (Want::Bool(b), Value::Boolean(f)) => f.value() == b,
            (Want::List(l), Value::Array(a)) => {
                a.len() == l.len() && a.iter().zip(l.iter()).all(|(v, w)| v.as_str() == Some(w))
            }
            _ => false,
        }
    }
}

/// A config file's new text and what changed, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    pub changes: Vec<String>,
}

/// `text` (None: no file) with the handler added or brought to `h`'s values. `path` is for
/// messages only.
pub fn add_handler(path: &Path, text: Option<&str>, h: &Handler) -> Result<Edit, InstallError> {
    let mut changes = Vec::new();
    let mut file = parse(path, text.unwrap_or(""))?;
    if file.doc.as_table().is_empty() {
        // Nothing in it yet, so nothing of version 1 to misread.
        file = parse(path, &format!("{VERSION_LINE}{}", text.unwrap_or("")))?;
        changes.push("added `version = 2`".to_string());
    }
    let doc = &mut file.doc;
    check_version(path, doc)?;
    if let Some(list) = doc.get("disabled_plugins").and_then(Item::as_array) {
        if list.iter().any(|p| p.as_str() == Some(CRI_PLUGIN)) {
            return Err(InstallError::CriDisabled { path: path.into() });
        }
    }

    let style = Style::of(doc);
    let (runtimes, indent) = tables_to(path, doc.as_table_mut(), &RUNTIMES, style)?;
    let handler_key = format!("{}.{HANDLER}", key_path(&RUNTIMES));
    match runtimes.get_mut(HANDLER) {
        None => {
            // A sibling's indentation, else one step under the nearest [header] above.
            let header = runtimes
                .iter()
                .find_map(|(_, i)| i.as_table().and_then(|t| header_indent(t.decor())))
                .unwrap_or(indent.map_or(0, |i| i + style.step));
            runtimes.insert(HANDLER, Item::Table(new_handler(h, header, style.step)));
            changes.push(format!("added [{handler_key}]"));
        }
        Some(Item::Table(t)) if !t.is_dotted() => {
            let changed =
                update_handler(t, h, style.step).map_err(|key| InstallError::NotTable {
                    path: path.into(),
                    key: format!("{handler_key}.{key}"),
                })?;
            changes.extend(changed.into_iter().map(|c| format!("[{handler_key}] {c}")));
        }
        Some(_) => {
            return Err(InstallError::NotTable {
                path: path.into(),
                key: handler_key,
            })
        }
    }
    Ok(Edit {
        text: file.text(),
        changes,
    })
}

/// The handler table, its [header] at column `header`.
fn new_handler(h: &Handler, header: usize, step: usize) -> Table {
    let mut t = new_table(header);
    set_keys(&mut t, &h.keys(), header + step, "", &mut Vec::new());
    let mut o = new_table(header + step);
    set_keys(&mut o, &h.options(), header + 2 * step, "", &mut Vec::new());
    t.insert("options", Item::Table(o));
    t
}

/// An existing handler table brought to `h`'s values; the changes in words, or Err: the key
/// under the handler that is not a [table].
fn update_handler(t: &mut Table, h: &Handler, step: usize) -> Result<Vec<String>, &'static str> {
    let header = header_indent(t.decor()).unwrap_or(0);
    let keys = key_indent(t).unwrap_or(header + step);
    let mut changes = Vec::new();
    set_keys(t, &h.keys(), keys, "", &mut changes);
    match t.get_mut("options") {
        None => {
            let mut o = new_table(keys);
            set_keys(&mut o, &h.options(), keys + step, "options.", &mut changes);
            t.insert("options", Item::Table(o));
        }
        Some(Item::Table(o)) if !o.is_dotted() => {
            let keys = key_indent(o).unwrap_or(keys + step);
            set_keys(o, &h.options(), keys, "options.", &mut changes);
        }
        Some(_) => return Err("options"),
    }
    Ok(changes)
}

/// `text` without the handler (None: there was none); parents that only held it go too, and so
/// does the version line install put in front of a config without settings.
pub fn remove_handler(path: &Path, text: &str) -> Result<Option<String>, InstallError> {
    let mut file = parse(path, text)?;
    let path_to_handler: Vec<&str> = RUNTIMES.iter().copied().chain([HANDLER]).collect();
    if !remove_at(file.doc.as_table_mut(), &path_to_handler) {
        return Ok(None);
    }
    let only_version = file.doc.as_table().len() == 1 && file.doc.contains_key("version");
    let out = file.text();
    Ok(Some(match out.strip_prefix(VERSION_LINE) {
        Some(rest) if only_version => rest.to_string(),
        _ => out,
    }))
}

/// Removes the item at `path` under `t`, and the tables on the way that are then empty and
/// have no [header] of their own (install made them). True if there was one.
fn remove_at(t: &mut Table, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return t.remove(first).is_some();
    }
    let Some(Item::Table(child)) = t.get_mut(first) else {
        return false;
    };
    let removed = remove_at(child, rest);
    if removed && child.is_empty() && child.is_implicit() {
        t.remove(first);
    }
    removed
}

/// A parsed config and what toml_edit does not keep by itself: toml_edit ends every key-value
/// line with "\n", so a file with CRLF line ends or without a final line break would otherwise
/// change where nobody touched it.
struct File {
    doc: DocumentMut,
    crlf: bool,
    no_final_newline: bool,
}

impl File {
    fn text(&self) -> String {
        let mut out = self.doc.to_string();
        if self.no_final_newline && out.ends_with('\n') {
            out.pop();
        }
        if self.crlf {
            out = out.replace('\n', "\r\n");
        }
        out
    }
}

fn parse(path: &Path, text: &str) -> Result<File, InstallError> {
    let lf = text.replace("\r\n", "\n");
    // Only a file with CRLF everywhere gets CRLF back; a mixed one is refused below.
    let crlf = lf.len() < text.len() && lf.replace('\n', "\r\n") == text;
    let text = if crlf { lf.as_str() } else { text };
    let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let at = e.span().map_or(0, |s| s.start).min(text.len());
        InstallError::Syntax {
            path: path.into(),
            line: text.as_bytes()[..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
            message: e.message().trim().to_string(),
        }
    })?;
    let out = doc.to_string();
    let no_final_newline = out.len() == text.len() + 1 && out.starts_with(text);
    // Refuse what the editor would rewrite: the promise is the rest of the file unchanged.
    if out != text && !no_final_newline {
        return Err(InstallError::RoundTrip { path: path.into() });
    }
    Ok(File {
        doc,
        crlf,
        no_final_newline,
    })
}

fn check_version(path: &Path, doc: &DocumentMut) -> Result<(), InstallError> {
    match doc.get("version") {
        None => Err(InstallError::NoVersion { path: path.into() }),
        Some(v) if v.as_integer() == Some(2) => Ok(()),
        Some(v) => Err(InstallError::Version {
            path: path.into(),
            found: v.to_string().trim().to_string(),
        }),
    }
}

/// How the file indents: containerd's own `config default` indents each nested [header] by
/// two spaces; a file whose headers all start at column 0 gets none.
#[derive(Clone, Copy)]
struct Style {
    step: usize,
}

impl Style {
    fn of(doc: &DocumentMut) -> Style {
        let mut headers = Vec::new();
        collect_headers(doc.as_table(), &mut headers);
        let flat = !headers.is_empty() && headers.iter().all(|&i| i == 0);
        Style {
            step: if flat { 0 } else { 2 },
        }
    }
}

fn collect_headers(t: &Table, out: &mut Vec<usize>) {
    for (_, item) in t.iter() {
        if let Item::Table(c) = item {
            if !c.is_implicit() && !c.is_dotted() {
                out.extend(header_indent(c.decor()));
            }
            collect_headers(c, out);
        }
    }
}

/// The tables along `path` under `root`, made (without a header of their own) where missing;
/// returns the last one and the indentation its [header] has or would have (None: no [header]
/// above it, so a new table under it starts at column 0).
fn tables_to<'a>(
    file: &Path,
    root: &'a mut Table,
    path: &[&str],
    style: Style,
) -> Result<(&'a mut Table, Option<usize>), InstallError> {
    let mut t = root;
    let mut indent: Option<usize> = None;
    for (i, k) in path.iter().enumerate() {
        let item = t.entry(k).or_insert_with(|| {
            let mut n = Table::new();
            n.set_implicit(true);
            Item::Table(n)
        });
        t = match item {
            Item::Table(c) if !c.is_dotted() => c,
            _ => {
                return Err(InstallError::NotTable {
                    path: file.into(),
                    key: key_path(&path[..=i]),
                })
            }
        };
        indent = match header_indent(t.decor()).filter(|_| !t.is_implicit()) {
            Some(own) => Some(own),
            None => indent.map(|i| i + style.step),
        };
    }
    Ok((t, indent))
}

fn new_table(indent: usize) -> Table {
    let mut t = Table::new();
    t.decor_mut()
        .set_prefix(format!("\n{}", " ".repeat(indent)));
    t
}

/// Sets each key to its value, keeping how an existing value is written around it (comment,
/// spacing); `changes` gets one line per key added or changed (`prefix` + key).
fn set_keys(
    t: &mut Table,
    keys: &[(&str, Want)],
    indent: usize,
    prefix: &str,
    changes: &mut Vec<String>,
) {
    for (k, want) in keys {
        let mut v = want.value();
        let new = v.to_string();
        match t.get_mut(k) {
            Some(Item::Value(old)) if want.matches(old) => {}
            Some(Item::Value(old)) => {
                let mut was = old.clone();
                was.decor_mut().clear();
                changes.push(format!("{prefix}{k}: {was} -> {new}"));
                *v.decor_mut() = old.decor().clone();
                *old = v;
            }
            found => {
                changes.push(match found {
                    None => format!("added {prefix}{k} = {new}"),
                    Some(_) => format!("{prefix}{k}: a table -> {new}"),
                });
                v.decor_mut().set_prefix(" ");
                t.insert(k, Item::Value(v));
                if let Some(mut key) = t.key_mut(k) {
                    key.leaf_decor_mut().set_prefix(" ".repeat(indent));
                }
            }
        }
    }
}

/// The column of a [header]: what follows the last line break before it, if only blanks.
fn header_indent(d: &Decor) -> Option<usize> {
    let prefix = d.prefix()?.as_str()?;
    let last = prefix.rsplit('\n').next().unwrap_or(prefix);
    last.chars().all(|c| c == ' ').then_some(last.len())
}

/// The column of a table's first key, if it has one written with only blanks before it.
fn key_indent(t: &Table) -> Option<usize> {
    let (k, _) = t.iter().find(|(_, i)| i.is_value())?;
    header_indent(t.key(k)?.leaf_decor())
}

/// A key path as TOML writes it: `plugins."io.containerd.grpc.v1.cri".containerd`.
pub fn key_path(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            if p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                p.to_string()
            } else {
                format!("\"{p}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// What `install` or `uninstall` did, for the user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One line per change; empty: the file already was as wanted.
    pub changes: Vec<String>,
    /// The backup of the file as it was before kata-cc first changed it, if there is one now.
    pub backup: Option<PathBuf>,
    /// The shim's config file, when install copied it from `--from-config`.
    pub config_copied: Option<PathBuf>,
}

/// `kata-cc install`: the handler in `containerd_config`, and the shim's config copied from
/// `from_config` to the handler's ConfigPath if nothing is there yet.
pub fn install(
    containerd_config: &Path,
    h: &Handler,
    from_config: Option<&Path>,
) -> Result<Outcome, InstallError> {
    // Everything read and checked before the first write.
    let old = read_if_exists(containerd_config)?;
    let edit = add_handler(containerd_config, old.as_deref(), h)?;
    let copy = match from_config {
        Some(from) if !h.config_path.exists() => {
            Some(fs::read(from).map_err(|source| InstallError::Read {
                path: from.into(),
                source,
            })?)
        }
        _ => None,
    };

    let mut out = Outcome::default();
    if let Some(bytes) = copy {
        write_atomic(&h.config_path, &bytes, None)?;
        out.config_copied = Some(h.config_path.clone());
    }
    if old.as_deref() != Some(edit.text.as_str()) {
        if let Some(old) = &old {
            backup_once(containerd_config, old)?;
        }
        write_atomic(
            containerd_config,
            edit.text.as_bytes(),
            Some(containerd_config),
        )?;
        out.changes = edit.changes;
    }
    out.backup = Some(backup_path(containerd_config)).filter(|b| b.exists());
    Ok(out)
}

/// `kata-cc uninstall`: the handler out of `containerd_config` again. A file install created is
/// removed; the backup goes when the file is back to it.
pub fn uninstall(containerd_config: &Path) -> Result<Outcome, InstallError> {
    let mut out = Outcome::default();
    let Some(old) = read_if_exists(containerd_config)? else {
        return Ok(out);
    };
    let Some(text) = remove_handler(containerd_config, &old)? else {
        out.backup = Some(backup_path(containerd_config)).filter(|b| b.exists());
        return Ok(out);
    };
    let backup = backup_path(containerd_config);
    out.changes
        .push(format!("removed [{}.{HANDLER}]", key_path(&RUNTIMES)));
    if text.trim().is_empty() && !backup.exists() {
        // Install made the file: no file is what was there.
        fs::remove_file(containerd_config).map_err(|source| InstallError::Write {
            path: containerd_config.into(),
            source,
        })?;
        out.changes
            .push("removed the file (kata-cc install made it)".to_string());
        return Ok(out);
    }
    backup_once(containerd_config, &old)?;
    write_atomic(containerd_config, text.as_bytes(), Some(containerd_config))?;
    if fs::read(&backup).is_ok_and(|b| b == text.as_bytes()) {
        // The file is as before kata-cc: a later install is to back up what is there then.
        fs::remove_file(&backup).map_err(|source| InstallError::Write {
            path: backup.clone(),
            source,
        })?;
        out.changes.push(format!(
            "back as before kata-cc: removed {}",
            backup.display()
        ));
    } else {
        out.backup = Some(backup);
    }
    Ok(out)
}

/// `<config>.kata-cc.bak`.
pub fn backup_path(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_owned();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

/// The file as it was before kata-cc first changed it: written once, never overwritten.
fn backup_once(config: &Path, text: &str) -> Result<(), InstallError> {
    let backup = backup_path(config);
    if backup.exists() {
        return Ok(());
    }
    write_atomic(&backup, text.as_bytes(), Some(config))
}

fn read_if_exists(path: &Path) -> Result<Option<String>, InstallError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// Replaces `path` by rename from a temporary file beside it, so that a reader (or a crash)
/// sees the old or the new file, never half of one. A symlink is followed: its target is
/// replaced. `mode_of`: a file whose permissions the new one gets, if it exists.
fn write_atomic(path: &Path, bytes: &[u8], mode_of: Option<&Path>) -> Result<(), InstallError> {
    let err = |source| InstallError::Write {
        path: path.into(),
        source,
    };
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(err)?;
    let name = target.file_name().unwrap_or(target.as_os_str());
    let tmp = dir.join(format!(".{}.kata-cc.tmp", name.to_string_lossy()));
    let perms = mode_of
        .and_then(|m| fs::metadata(m).ok())
        .map(|m| m.permissions());
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(p) = perms {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        fs::rename(&tmp, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../tests/data/containerd-config.toml");

    /// Debian bookworm's /etc/containerd/config.toml: the parents are [headers] down to the
    /// CRI plugin only.
    const DEBIAN: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

    /// The handler install adds to SAMPLE, after the runc runtime.
    const SAMPLE_HANDLER: &str = r#"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc]
          runtime_type = "io.containerd.kata-cc.v2"
          privileged_without_host_devices = true
          pod_annotations = ["io.katacontainers.*"]
          container_annotations = ["io.katacontainers.*", "io.kubernetes.container.terminationMessage*"]

          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc.options]
            ConfigPath = "/etc/kata-cc/configuration.toml"
"#;

    /// What install writes where there was no file.
    const MINIMAL: &str = r#"version = 2 # added by kata-cc install

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc]
  runtime_type = "io.containerd.kata-cc.v2"
  privileged_without_host_devices = true
  pod_annotations = ["io.katacontainers.*"]
  container_annotations = ["io.katacontainers.*", "io.kubernetes.container.terminationMessage*"]

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc.options]
    ConfigPath = "/etc/kata-cc/configuration.toml"
"#;

    fn handler() -> Handler {
        Handler::new("/etc/kata-cc/configuration.toml".into(), None).unwrap()
    }

    fn add(text: Option<&str>) -> Result<Edit, InstallError> {
        add_handler(Path::new("config.toml"), text, &handler())
    }

    fn remove(text: &str) -> Option<String> {
        remove_handler(Path::new("config.toml"), text).unwrap()
    }

    /// The handler's values as containerd would read them (through the plain TOML parser).
    fn handler_values(text: &str) -> toml::Table {
        let doc: toml::Table = toml::from_str(text).unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));
        doc["plugins"][CRI_PLUGIN]["containerd"]["runtimes"][HANDLER]
            .as_table()
            .unwrap()
            .clone()
    }

    #[test]
    fn sample_gets_the_handler_after_runc_and_nothing_else_changes() {
        let edit = add(Some(SAMPLE)).unwrap();
        let runc_options = "            SystemdCgroup = true\n";
        let expected = SAMPLE.replacen(runc_options, &format!("{runc_options}{SAMPLE_HANDLER}"), 1);
        assert_eq!(edit.text, expected);
        assert_eq!(
            edit.changes,
            [r#"added [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc]"#]
        );
        let h = handler_values(&edit.text);
        assert_eq!(h["runtime_type"].as_str(), Some(RUNTIME_TYPE));
        assert_eq!(h["privileged_without_host_devices"].as_bool(), Some(true));
        assert_eq!(
            h["options"]["ConfigPath"].as_str(),
            Some("/etc/kata-cc/configuration.toml")
        );
        assert!(!h.contains_key("runtime_path"));
    }

    #[test]
    fn missing_file_becomes_a_minimal_version_2_config() {
        let edit = add(None).unwrap();
        assert_eq!(edit.text, MINIMAL);
        assert_eq!(edit.changes.len(), 2, "{:?}", edit.changes);
        assert_eq!(remove(&edit.text).as_deref(), Some(""));
    }

    #[test]
    fn empty_and_comment_only_files_get_version_2_and_lose_it_again() {
        for original in ["", "\n", "# managed by hand\n\n# more\n"] {
            let edit = add(Some(original)).unwrap();
            assert!(edit.text.starts_with(VERSION_LINE), "{}", edit.text);
            handler_values(&edit.text);
            assert_eq!(remove(&edit.text).as_deref(), Some(original));
        }
    }

    #[test]
    fn debian_config_gets_the_handler_under_the_cri_plugin() {
        let edit = add(Some(DEBIAN)).unwrap();
        let cni = "      conf_dir = \"/etc/cni/net.d\"\n";
        assert!(
            edit.text.contains(&format!("{cni}\n        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-cc]\n          runtime_type")),
            "{}",
            edit.text
        );
        handler_values(&edit.text);
        assert_eq!(remove(&edit.text).as_deref(), Some(DEBIAN));
    }

    #[test]
    fn install_twice_is_install_once() {
        for original in [Some(SAMPLE), Some(DEBIAN), None, Some("")] {
            let once = add(original).unwrap().text;
            let twice = add(Some(&once)).unwrap();
            assert_eq!(twice.text, once);
            assert!(twice.changes.is_empty(), "{:?}", twice.changes);
        }
    }

    #[test]
    fn uninstall_after_install_gives_the_original_bytes() {
        for original in [SAMPLE, DEBIAN] {
            let installed = add(Some(original)).unwrap().text;
            assert_eq!(remove(&installed).as_deref(), Some(original));
        }
        // Without a trailing newline, with CRLF line ends: still byte for byte.
        for original in [
            "version = 2\nroot = \"/var/lib/containerd\"",
            "version = 2\r\n[plugins.\"io.containerd.grpc.v1.cri\"]\r\n  sandbox_image = \"p\"\r\n",
        ] {
            let installed = add(Some(original)).unwrap().text;
            assert!(!installed.ends_with('\n') || original.ends_with('\n'));
            if original.contains('\r') {
                assert!(
                    !installed.replace("\r\n", "").contains('\n'),
                    "{installed:?}"
                );
            }
            assert_eq!(remove(&installed).as_deref(), Some(original));
        }
    }

    #[test]
    fn uninstall_without_a_handler_changes_nothing() {
        assert_eq!(remove(SAMPLE), None);
        assert_eq!(remove(""), None);
    }

    #[test]
    fn existing_handler_gets_our_values_and_keeps_the_rest() {
        let original = r#"version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc]
  runtime_type = "io.containerd.kata.v2"
  snapshotter = "overlayfs"
  pod_annotations = [] # was empty
  privileged_without_host_devices = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc.options]
    ConfigPath = "/opt/kata/configuration.toml"
    BinaryName = "x"
"#;
        let h = Handler::new(
            "/etc/kata-cc/configuration.toml".into(),
            Some("/usr/local/bin/containerd-shim-kata-cc-v2".into()),
        )
        .unwrap();
        let edit = add_handler(Path::new("config.toml"), Some(original), &h).unwrap();
        let t = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata-cc]"#;
        assert_eq!(
            edit.changes,
            [
                format!(
                    r#"{t} runtime_type: "io.containerd.kata.v2" -> "io.containerd.kata-cc.v2""#
                ),
                format!(r#"{t} added runtime_path = "/usr/local/bin/containerd-shim-kata-cc-v2""#),
                format!(r#"{t} pod_annotations: [] -> ["io.katacontainers.*"]"#),
                format!(
                    r#"{t} added container_annotations = ["io.katacontainers.*", "io.kubernetes.container.terminationMessage*"]"#
                ),
                format!(
                    r#"{t} options.ConfigPath: "/opt/kata/configuration.toml" -> "/etc/kata-cc/configuration.toml""#
                ),
            ]
        );
        // Changed in place (the comment stays), added keys at the table's indentation.
        assert!(edit
            .text
            .contains("  pod_annotations = [\"io.katacontainers.*\"] # was empty\n"));
        assert!(edit
            .text
            .contains("  runtime_path = \"/usr/local/bin/containerd-shim-kata-cc-v2\"\n"));
        let v = handler_values(&edit.text);
        assert_eq!(v["snapshotter"].as_str(), Some("overlayfs"));
        assert_eq!(v["options"]["BinaryName"].as_str(), Some("x"));
        assert_eq!(
            v["runtime_path"].as_str(),
            Some("/usr/local/bin/containerd-shim-kata-cc-v2")
        );
        let again = add_handler(Path::new("config.toml"), Some(&edit.text), &h).unwrap();
        assert_eq!(again.text, edit.text);
        assert!(again.changes.is_empty());
    }

    #[test]
    fn flat_file_gets_a_flat_handler() {
        let flat = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/usr/lib/cni\"\n";
        let edit = add(Some(flat)).unwrap();
        assert!(
            edit.text.contains("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-cc]\nruntime_type = "),
            "{}",
            edit.text
        );
        assert!(edit.text.contains("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-cc.options]\nConfigPath = "));
    }

    #[test]
    fn version_1_and_no_version_are_refused_naming_the_key() {
        let e = add(Some(
            "version = 1\n[plugins.cri]\n  sandbox_image = \"p\"\n",
        ))
        .unwrap_err();
        assert!(matches!(e, InstallError::Version { ref found, .. } if found == "1"));
        assert!(
            e.to_string()
                .starts_with("config.toml: key `version` is 1:"),
            "{e}"
        );
        let e = add(Some("[plugins.cri]\n  sandbox_image = \"p\"\n")).unwrap_err();
        assert!(matches!(e, InstallError::NoVersion { .. }));
        assert!(
            e.to_string().starts_with("config.toml: no key `version`:"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_is_refused_naming_file_and_line() {
        let e = add(Some("version = 2\n\n[plugins\nx = 1\n")).unwrap_err();
        assert!(matches!(e, InstallError::Syntax { line: 3, .. }), "{e:?}");
        assert!(
            e.to_string().starts_with("config.toml:3: not valid TOML: "),
            "{e}"
        );
        assert!(remove_handler(Path::new("c.toml"), "a = [\n").is_err());
    }

    #[test]
    fn disabled_cri_plugin_is_refused() {
        let e = add(Some(
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
        ))
        .unwrap_err();
        assert!(matches!(e, InstallError::CriDisabled { .. }));
        assert!(e.to_string().contains("disabled_plugins"), "{e}");
    }

    #[test]
    fn tables_not_written_with_headers_are_refused_naming_the_key() {
        let e = add(Some(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n",
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string().split(" is not").next(),
            Some(r#"config.toml: `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`"#)
        );
        let e = add(Some("version = 2\nplugins = 3\n")).unwrap_err();
        assert!(matches!(e, InstallError::NotTable { ref key, .. } if key == "plugins"));
    }

    #[test]
    fn relative_paths_are_refused() {
        let e = Handler::new("configuration.toml".into(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--config configuration.toml: must be an absolute path"
        );
        assert!(Handler::new("/c".into(), Some("bin/shim".into())).is_err());
    }

    #[test]
    fn files_backup_written_once_and_uninstall_restores() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let backup = backup_path(&config);
        fs::write(&config, SAMPLE).unwrap();

        let out = install(&config, &handler(), None).unwrap();
        assert_eq!(out.backup.as_deref(), Some(backup.as_path()));
        assert_eq!(fs::read_to_string(&backup).unwrap(), SAMPLE);
        let once = fs::read_to_string(&config).unwrap();

        // A second install with other values changes the file, not the backup.
        let other = Handler::new("/opt/kata-cc.toml".into(), None).unwrap();
        let out = install(&config, &other, None).unwrap();
        assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
        assert_eq!(fs::read_to_string(&backup).unwrap(), SAMPLE);
        install(&config, &handler(), None).unwrap();
        assert_eq!(fs::read_to_string(&config).unwrap(), once);

        let out = uninstall(&config).unwrap();
        assert_eq!(out.backup, None);
        assert_eq!(fs::read_to_string(&config).unwrap(), SAMPLE);
        assert!(
            !backup.exists(),
            "the backup goes once the file is back to it"
        );
        assert_eq!(uninstall(&config).unwrap(), Outcome::default());
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["config.toml"]);
    }

    #[test]
    fn files_missing_config_is_made_and_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("containerd/config.toml");
        let out = install(&config, &handler(), None).unwrap();
        assert_eq!(out.backup, None, "nothing to back up");
        assert_eq!(fs::read_to_string(&config).unwrap(), MINIMAL);
        uninstall(&config).unwrap();
        assert!(!config.exists());
    }

    #[test]
    fn files_nothing_written_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let v1 = "version = 1\n";
        fs::write(&config, v1).unwrap();
        let kata_config = dir.path().join("kata/configuration.toml");
        let from = dir.path().join("from.toml");
        fs::write(&from, "[hypervisor.qemu]\n").unwrap();
        let h = Handler::new(kata_config.clone(), None).unwrap();
        assert!(install(&config, &h, Some(&from)).is_err());
        assert_eq!(fs::read_to_string(&config).unwrap(), v1);
        assert!(!kata_config.exists());
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["config.toml", "from.toml"]);

        // The same with a good config copies the shim's config once, and only if absent.
        fs::write(&config, DEBIAN).unwrap();
        let out = install(&config, &h, Some(&from)).unwrap();
        assert_eq!(out.config_copied.as_deref(), Some(kata_config.as_path()));
        assert_eq!(
            fs::read_to_string(&kata_config).unwrap(),
            "[hypervisor.qemu]\n"
        );
        fs::write(&from, "changed").unwrap();
        assert_eq!(
            install(&config, &h, Some(&from)).unwrap().config_copied,
            None
        );
        assert_eq!(
            fs::read_to_string(&kata_config).unwrap(),
            "[hypervisor.qemu]\n"
        );
        let e = install(
            &config,
            &Handler::new("/nonexistent/k.toml".into(), None).unwrap(),
            Some(&dir.path().join("nope")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
