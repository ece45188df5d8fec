//! Line splitting that keeps every line ending, so edits can rebuild a file byte for byte.

/// One line of a file: its text without the ending, and the ending itself
/// (`"\n"`, `"\r\n"`, or `""` for a last line without a final newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub body: &'a str,
    pub eol: &'a str,
}

/// An owned, editable line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedLine {
    pub body: String,
    pub eol: String,
}

/// Split `s` into lines; concatenating `body + eol` of every line gives `s` back.
pub(crate) fn split_lines(s: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        match rest.find('\n') {
            Some(i) => {
                let (line, tail) = rest.split_at(i + 1);
                let cut = if line.ends_with("\r\n") { 2 } else { 1 };
                let (body, eol) = line.split_at(line.len() - cut);
                out.push(Line { body, eol });
                rest = tail;
            }
            None => {
                out.push(Line {
                    body: rest,
                    eol: "",
                });
                rest = "";
            }
        }
    }
    out
}

pub(crate) fn owned(lines: &[Line<'_>]) -> Vec<OwnedLine> {
    lines
        .iter()
        .map(|l| OwnedLine {
            body: l.body.to_string(),
            eol: l.eol.to_string(),
        })
        .collect()
}

pub(crate) fn join(lines: &[OwnedLine]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.body);
        s.push_str(&l.eol);
    }
    s
}

/// The line ending the file uses: that of its first ended line, `"\n"` if none.
pub(crate) fn eol_style(s: &str) -> &'static str {
    for l in split_lines(s) {
        match l.eol {
            "\r\n" => return "\r\n",
            "\n" => return "\n",
            _ => {}
        }
    }
    "\n"
}

/// After removing a last line that had no ending, take off the ending gpt added to the
/// line that is now last (`added` is what gpt wrote; only that suffix is removed).
pub(crate) fn strip_added_eol(lines: &mut [OwnedLine], added: &str) {
    if let Some(last) = lines.last_mut() {
        if !added.is_empty() && last.eol.ends_with(added) {
            let keep = last.eol.len() - added.len();
            last.eol.truncate(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte() {
        for s in [
            "",
            "a",
            "a\n",
            "a\r\nb",
            "\n\n",
            "a\r\r\n",
            "x\ry\n",
            "\r",
            "a\r\nb\nc\r",
        ] {
            let lines = split_lines(s);
            assert_eq!(join(&owned(&lines)), s);
        }
        assert_eq!(split_lines("a\r\nb")[0].eol, "\r\n");
        assert_eq!(split_lines("a\r\nb")[1].eol, "");
        assert_eq!(eol_style("a\r\nb\n"), "\r\n");
        assert_eq!(eol_style("a"), "\n");
    }
}
