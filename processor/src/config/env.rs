//! `${env:NAME}` references in a configuration, as the collector expands them: `${env:NAME:-default}`
//! gives a default, `$$` is a literal `$`, and a value that is one whole reference is read as a
//! YAML scalar so numbers stay numbers. What was substituted is remembered, so error messages can
//! name the reference instead of showing the value (it may be a secret).

use serde_json::Value;

/// A value an `${env:…}` reference put in the configuration: error messages name the reference
/// instead of showing it (an API key of digits once came back as `invalid type: integer
/// 123456789012`).
pub(super) struct Substituted {
    name: String,
    /// How the value may appear in a message: as written, and as the scalar it was read as.
    shown_as: Vec<String>,
}

/// Values shorter than this are not looked for in messages: too likely to match other text, and
/// too short to be a credential.
const MIN_HIDDEN_CHARS: usize = 4;

/// `message` with every substituted value replaced by its reference.
pub(super) fn hide_substituted(message: &str, substituted: &[Substituted]) -> String {
    let mut message = message.to_owned();
    for s in substituted {
        for shown in &s.shown_as {
            if shown.chars().count() >= MIN_HIDDEN_CHARS && message.contains(shown.as_str()) {
                message = message.replace(shown.as_str(), &format!("${{env:{}}}", s.name));
            }
        }
    }
    message
}

/// Expands `${env:NAME}` and `${env:NAME:-default}` in every string of the tree, in place.
pub(super) fn expand(
    value: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Vec<Substituted>,
) -> Result<(), String> {
    match value {
        Value::String(s) if s.contains('$') => {
            let whole = whole_reference(s);
            let before = substituted.len();
            let expanded = expand_str(s, env, substituted)
                .map_err(|e| format!("{}: {e}", display_path(path)))?;
            *value = match whole {
                // A value that is one reference is typed like YAML would type it.
                true => serde_saphyr::from_str::<Value>(&expanded)
                    .ok()
                    .filter(|v| !v.is_object() && !v.is_array() && !v.is_null())
                    .unwrap_or(Value::String(expanded)),
                false => Value::String(expanded),
            };
            // The scalar a whole reference was read as shows differently (`0123` as 123).
            if whole
                && substituted.len() > before
                && let Some(last) = substituted.last_mut()
                && !value.is_string()
            {
                last.shown_as.push(value.to_string());
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand(item, path, env, substituted)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                expand(item, path, env, substituted)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "(top level)" } else { path }
}

fn whole_reference(s: &str) -> bool {
    s.starts_with("${env:") && s.ends_with('}') && s.matches("${").count() == 1
}

fn expand_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    substituted: &mut Vec<Substituted>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${env:") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{env:` in `{s}`"))?;
            let reference = &after[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{env:{reference}}}` does not name a variable"));
            }
            match (env(name), default) {
                (Some(v), _) => {
                    out.push_str(&v);
                    substituted.push(Substituted {
                        name: name.to_owned(),
                        shown_as: vec![v],
                    });
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write `${{env:{name}:-default}}` to give a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
