//! JSON rendering of evaluated values, for `kiln eval`-style output and tests.

use std::path::Path;

use super::paths::relative_to;
use crate::value::{Data, Node};

impl Node {
    /// The value as JSON. Paths are shown relative to `base_dir` (as `./x`,
    /// `../y` or `./.`), so output does not depend on where the checkout
    /// lives; functions are shown as `"<function>"`. Keys are sorted.
    pub fn to_json(&self, base_dir: &Path) -> serde_json::Value {
        let base = super::paths::absolute(base_dir);
        to_json(self, &base)
    }
}

fn to_json(node: &Node, base: &Path) -> serde_json::Value {
    match &node.data {
        Data::Null => serde_json::Value::Null,
        Data::Bool(b) => serde_json::Value::Bool(*b),
        Data::Int(n) => serde_json::Value::from(*n),
        Data::Str(s) => serde_json::Value::String(s.clone()),
        Data::Path(p) => serde_json::Value::String(display_path(p, base)),
        Data::List(items) => {
            serde_json::Value::Array(items.iter().map(|n| to_json(n, base)).collect())
        }
        Data::Attrs(attrs) => serde_json::Value::Object(
            attrs
                .iter()
                .map(|(k, a)| (k.clone(), to_json(&a.value, base)))
                .collect(),
        ),
        Data::Function => serde_json::Value::String("<function>".to_string()),
    }
}

fn display_path(path: &Path, base: &Path) -> String {
    let relative = relative_to(path, base);
    let text = relative.to_string_lossy();
    if text == "." {
        "./.".to_string()
    } else if text.starts_with("..") {
        text.into_owned()
    } else {
        format!("./{text}")
    }
}
