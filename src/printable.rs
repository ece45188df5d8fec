//! Text read from the host (os-release's `PRETTY_NAME`, pci.ids names, file names, the diffs
//! of files) is not gpt's to send to a terminal as it is: an escape sequence in it could set
//! the window title, clear the screen, move the cursor over a warning or answer back. Every
//! line gpt prints for a person goes through here; `--json` output is not touched (JSON
//! escapes control characters itself). Pure: no I/O.

use std::borrow::Cow;

/// Control characters a person's output keeps: line breaks and tabs.
fn kept(c: char) -> bool {
    c == '\n' || c == '\t'
}

/// `s` without control characters (C0, DEL and C1), except line breaks and tabs.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && !kept(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().filter(|&c| !c.is_control() || kept(c)).collect())
}

/// [`clean`], keeping the colour sequences gpt's own styling writes (`ESC [ digits;… m`,
/// when colours are on): every other escape sequence loses its ESC and shows as text.
pub fn clean_keep_colours(s: &str) -> Cow<'_, str> {
    if !s.contains('\x1b') {
        return clean(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&clean(&rest[..at]));
        let after = &rest[at + 1..];
        let len = sgr_len(after);
        if len > 0 {
            out.push('\x1b');
            out.push_str(&after[..len]);
        }
        rest = &after[len..];
    }
    out.push_str(&clean(rest));
    Cow::Owned(out)
}

/// The length of a colour sequence's tail (`[1;35m`) at the start of `s`, else 0.
fn sgr_len(s: &str) -> usize {
    let Some(body) = s.strip_prefix('[') else {
        return 0;
    };
    let params = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    if params <= 16 && body[params..].starts_with('m') {
        params + 2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_go_and_text_stays() {
        assert_eq!(clean("Debian GNU/Linux 12"), "Debian GNU/Linux 12");
        assert!(matches!(clean("plain\n\ttext"), Cow::Borrowed(_)));
        assert_eq!(
            clean("Evil\x1b]0;pwned\x07\x1b[2J OS\r\n"),
            "Evil]0;pwned[2J OS\n"
        );
        assert_eq!(clean("a\u{9b}31mb\u{7f}c\0d\x08e"), "a31mbcde");
        assert_eq!(
            clean("GeForce RTX\u{2122} 2060"),
            "GeForce RTX\u{2122} 2060"
        );
    }

    #[test]
    fn gpts_own_colours_stay_and_nothing_else() {
        let styled = "\x1b[1;35m  01:00.0 VGA\x1b[0m \x1b[32mPASS\x1b[0m";
        assert_eq!(clean_keep_colours(styled), styled);
        assert_eq!(
            clean_keep_colours("\x1b[1mok\x1b]0;title\x07\x1b[2J\x1b[H\x1b"),
            "\x1b[1mok]0;title[2J[H"
        );
        assert_eq!(clean_keep_colours("x\x1b[;;m\ry"), "x\x1b[;;my");
        assert_eq!(clean_keep_colours("é\x1b"), "é");
    }
}
