//! Image names: what `kiln image import NAME` accepts and a manifest names.

use super::HOST_IMAGE;
use super::error::ImageError;

/// Longest accepted name, in bytes.
const MAX_NAME: usize = 255;

/// Checks an image name: ASCII letters and digits plus `/ : . - _`, like
/// Docker references (`golang`, `debian/stable`, `alpine:3.20`,
/// `registry.example/team/tool:1.2`). `host` is reserved, a `blake3:` prefix
/// names a digest, and no `/`-separated part may be empty, `.` or `..`.
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let invalid = |reason: &str| ImageError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(&format!("it is longer than {MAX_NAME} bytes")));
    }
    if name == HOST_IMAGE {
        return Err(invalid("`host` is the built-in host image"));
    }
    if name.starts_with(kiln_store::DIGEST_PREFIX) {
        return Err(invalid(
            "a `blake3:` prefix names a tree digest, not an image name",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | ':' | '.' | '-' | '_')))
    {
        return Err(invalid(&format!(
            "{bad:?} is not allowed (use ASCII letters, digits and / : . - _)"
        )));
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid("a `/`-separated part is empty, `.` or `..`"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("it must start with a letter or a digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_names_are_accepted() {
        for name in [
            "golang",
            "debian/stable",
            "alpine:3.20",
            "registry.example/team/tool:1.2",
            "ubuntu_22.04-dev",
            "0day",
        ] {
            validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("host", "built-in"),
            ("blake3:abcd", "digest"),
            ("a b", "' '"),
            ("café", "'é'"),
            ("a//b", "empty"),
            ("a/../b", "`..`"),
            ("/abs", "empty"),
            ("trailing/", "empty"),
            ("-flag", "start with"),
            (".hidden", "start with"),
            ("x\0y", "'\\0'"),
        ] {
            let err = validate_name(name).unwrap_err().to_string();
            assert!(err.contains(reason), "{name:?}: {err}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }
}
