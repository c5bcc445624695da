//! Every example in `grammar/kiln.ebnf` parses (or is rejected) as marked,
//! and every kiln code block of `docs/manifest.md` parses, so the grammar,
//! the docs and the parser cannot drift apart.

use std::path::Path;

use kiln_grammar::syntax::parse_str;

/// `(ok|err, text)` for each example comment, in file order.
fn ebnf_examples(ebnf: &str) -> Vec<(bool, String)> {
    let mut examples = Vec::new();
    let mut rest = ebnf;
    while let Some(start) = rest.find("(*") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("*)") else { break };
        let body = after[..end].trim_start();
        if let Some(text) = body.strip_prefix("ok:") {
            examples.push((true, text.trim().to_string()));
        } else if let Some(text) = body.strip_prefix("err:") {
            examples.push((false, text.trim().to_string()));
        }
        rest = &after[end + 2..];
    }
    examples
}

#[test]
fn ebnf_examples_parse_as_marked() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("kiln.ebnf");
    let ebnf = std::fs::read_to_string(&path).expect("grammar/kiln.ebnf exists");
    let examples = ebnf_examples(&ebnf);
    assert!(
        examples.len() > 50,
        "too few examples found: {}",
        examples.len()
    );
    let mut failures = Vec::new();
    for (should_parse, text) in &examples {
        let result = parse_str(Path::new("example.kiln"), text);
        match (should_parse, result) {
            (true, Err(diagnostic)) => {
                failures.push(format!("should parse: {text:?}\n{diagnostic}"))
            }
            (false, Ok(())) => failures.push(format!("should be rejected: {text:?}")),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The body of each fenced block whose info string is `kiln` or `nix`,
/// with the line number of its first line.
fn code_blocks(markdown: &str) -> Vec<(usize, String)> {
    enum State {
        Outside,
        Kiln(usize, String),
        Other,
    }
    let mut blocks = Vec::new();
    let mut state = State::Outside;
    for (number, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        state = match (state, fence) {
            (State::Outside, Some(info)) => match info.split_whitespace().next().unwrap_or("") {
                "kiln" | "nix" => State::Kiln(number + 2, String::new()),
                _ => State::Other,
            },
            (State::Outside, None) => State::Outside,
            (State::Kiln(start, body), Some(_)) => {
                blocks.push((start, body));
                State::Outside
            }
            (State::Kiln(start, mut body), None) => {
                body.push_str(line);
                body.push('\n');
                State::Kiln(start, body)
            }
            (State::Other, Some(_)) => State::Outside,
            (State::Other, None) => State::Other,
        };
    }
    blocks
}

#[test]
fn manifest_docs_code_blocks_parse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/manifest.md");
    let markdown = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let mut failures = Vec::new();
    for (line, block) in code_blocks(&markdown) {
        if let Err(diagnostic) = parse_str(Path::new("docs/manifest.md"), &block) {
            failures.push(format!(
                "docs/manifest.md block at line {line}:\n{diagnostic}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn code_block_extraction_skips_other_languages() {
    let markdown = "```sh\nkiln eval x\n```\n```kiln\n{ a = 1; }\n```\ntext\n```nix\n[ ]\n```\n";
    let blocks = code_blocks(markdown);
    assert_eq!(
        blocks,
        vec![(5, "{ a = 1; }\n".to_string()), (9, "[ ]\n".to_string())]
    );
}
