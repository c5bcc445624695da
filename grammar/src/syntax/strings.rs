//! Indented strings (`'' … ''`): indentation stripping, done at parse time.

use super::ast::{ExprId, StrPart};

/// A piece of an indented string before indentation is stripped.
#[derive(Debug)]
pub(super) enum IndentedPart {
    /// Source text, which may contain line breaks and indentation.
    Text(String),
    /// The result of an escape (`''$`, `'''`, `''\n`): content, never
    /// indentation or a line break of the layout.
    Escaped(String),
    Interpolation(ExprId),
}

/// Applies the indented-string rules: the common indentation (in spaces) of
/// the lines that are not blank is removed from every line; a blank first
/// line (with its line break) is dropped; a blank last line is emptied.
/// Escapes and interpolations count as content.
pub(super) fn strip_indentation(parts: Vec<IndentedPart>) -> Vec<StrPart> {
    let lines = split_lines(parts);
    let is_blank = |line: &Vec<IndentedPart>| {
        line.iter().all(|part| match part {
            IndentedPart::Text(text) => text.chars().all(|c| c == ' ' || c == '\t' || c == '\r'),
            _ => false,
        })
    };
    let indentation = |line: &Vec<IndentedPart>| {
        let mut count = 0;
        for part in line {
            match part {
                IndentedPart::Text(text) => {
                    let spaces = text.chars().take_while(|&c| c == ' ').count();
                    count += spaces;
                    if spaces < text.len() {
                        break;
                    }
                }
                _ => break,
            }
        }
        count
    };
    let common = lines
        .iter()
        .filter(|line| !is_blank(line))
        .map(indentation)
        .min()
        .unwrap_or(0);

    let last = lines.len() - 1;
    let mut out = Vec::new();
    let mut literal = String::new();
    for (n, line) in lines.into_iter().enumerate() {
        let blank = is_blank(&line);
        if n == 0 && blank && last > 0 {
            continue;
        }
        if n == last && blank {
            break;
        }
        let mut to_strip = common;
        for part in line {
            match part {
                IndentedPart::Text(text) => {
                    let spaces = text.chars().take_while(|&c| c == ' ').count().min(to_strip);
                    to_strip -= spaces;
                    literal.push_str(&text[spaces..]);
                }
                IndentedPart::Escaped(text) => {
                    to_strip = 0;
                    literal.push_str(&text);
                }
                IndentedPart::Interpolation(id) => {
                    to_strip = 0;
                    if !literal.is_empty() {
                        out.push(StrPart::Literal(std::mem::take(&mut literal).into()));
                    }
                    out.push(StrPart::Interpolation(id));
                }
            }
        }
        if n != last {
            literal.push('\n');
        }
    }
    if !literal.is_empty() || out.is_empty() {
        out.push(StrPart::Literal(literal.into()));
    }
    out
}

fn split_lines(parts: Vec<IndentedPart>) -> Vec<Vec<IndentedPart>> {
    let mut lines = vec![Vec::new()];
    for part in parts {
        match part {
            IndentedPart::Text(text) => {
                let mut pieces = text.split('\n');
                if let Some(first) = pieces.next()
                    && !first.is_empty()
                    && let Some(line) = lines.last_mut()
                {
                    line.push(IndentedPart::Text(first.to_string()));
                }
                for piece in pieces {
                    let mut line = Vec::new();
                    if !piece.is_empty() {
                        line.push(IndentedPart::Text(piece.to_string()));
                    }
                    lines.push(line);
                }
            }
            other => {
                if let Some(line) = lines.last_mut() {
                    line.push(other);
                }
            }
        }
    }
    lines
}
