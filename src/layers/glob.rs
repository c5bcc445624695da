//! The small glob language of `inputs` and artifacts: `*` matches within one
//! path component, `?` one character, `**` any number of components.

/// Whether `pattern` matches the relative `path` exactly.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = split(pattern);
    let path: Vec<&str> = split(path);
    match_components(&pattern, &path)
}

/// Whether `pattern` matches `path` or one of its parent directories (a
/// pattern naming a directory selects everything below it).
pub fn selects(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = split(pattern);
    let path: Vec<&str> = split(path);
    (1..=path.len()).any(|len| match_components(&pattern, &path[..len]))
}

pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

fn split(text: &str) -> Vec<&str> {
    text.split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect()
}

fn match_components(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((component, path_rest)) => {
                match_component(first.as_bytes(), component.as_bytes())
                    && match_components(rest, path_rest)
            }
            None => false,
        },
    }
}

/// Iterative wildcard matching with backtracking to the last `*`.
fn match_component(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("src/*.c", "src/hello.c"));
        assert!(!matches("src/*.c", "src/a/hello.c"));
        assert!(matches("src/**/*.c", "src/a/b/hello.c"));
        assert!(matches("**/*.c", "hello.c"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("*.c", "hello.h"));
        assert!(selects("src", "src/hello.c"));
        assert!(selects("./src/", "src/x/y"));
        assert!(!selects("src", "srcx/y"));
        assert!(matches("*", "anything"));
    }
}
