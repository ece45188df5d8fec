//! `/etc/default/grub` and `/etc/default/grub.d/*.cfg`: shell files that grub-mkconfig sources.
//!
//! gpt only edits plain `VAR=value` lines (optional leading whitespace and `export `; the
//! value double-quoted, single-quoted, a bare word, or empty). Anything else about the
//! variable being read or edited (command substitution, escapes, line continuations, an
//! unterminated quote, several commands on the line, an assignment inside an `if`, …) is an
//! error naming the line: gpt never guesses. Other variables may use any shell syntax.
//!
//! What gpt adds is recorded in a marker comment line placed right above the edited line:
//!
//! ```text
//! # gpt: added to VAR: TOKENS (gpt reset removes them)
//! # gpt: added to VAR and quoted it: TOKENS (gpt reset removes them and the quotes)
//! # gpt: created VAR with: TOKENS (gpt reset removes this line)
//! ```
//!
//! `TOKENS` are separated by one space, in the order gpt appended them. gpt appends each
//! token at the end of the value, after one space (no space when the value was empty), so
//! [`reverse`] can take each one out with the space it brought, even after the user edited
//! other parts of the line or file. "and quoted it" means the value was a bare word (or
//! empty) that gpt had to put in double quotes; "created" means the whole line is gpt's. A
//! created line that was appended to a file without a final newline has no newline either,
//! which tells [`reverse`] to take back the newline gpt put before its marker (a bare `\n`,
//! also in a CRLF file, so that the shell still reads the user's last word as it was).

use std::fmt::Write as _;

use anyhow::{anyhow, bail, Result};

use super::cmdline;
use super::text::{self, Line, OwnedLine};

const NO_GUESS: &str = "gpt will not guess, fix the file or edit it by hand";

const MARK: &str = "# gpt: ";
const ADDED_SUFFIX: &str = " (gpt reset removes them)";
const QUOTED_SUFFIX: &str = " (gpt reset removes them and the quotes)";
const CREATED_SUFFIX: &str = " (gpt reset removes this line)";

/// The logical value (quotes removed) of the effective, i.e. last uncommented, assignment
/// of `var`; `None` when there is none.
pub fn read_var(content: &str, var: &str) -> Result<Option<String>> {
    check_var(var)?;
    let lines = text::split_lines(content);
    let found = analyze(&lines, var)?;
    Ok(found.map(|(i, a)| a.inner(lines[i].body).to_string()))
}

/// Make the effective assignment of `var` carry every token in `tokens`.
///
/// Tokens already there are not added again; the others are appended inside the quotes
/// (a bare value becomes double-quoted). A token gpt added earlier with the same
/// [`cmdline::key`] as a wanted token but another value is taken out (a re-run with
/// another GPU replaces `vfio-pci.ids=`). Without any assignment, `var="tokens"` is
/// appended at the end of the file. Nothing to change returns the input unchanged.
pub fn apply(content: &str, var: &str, tokens: &[String]) -> Result<String> {
    let out = apply_unchecked(content, var, tokens)?;
    if out != content {
        // Never hand back an edit that does not read back or undo cleanly.
        let reads_back = read_var(&out, var).ok().flatten().is_some_and(|v| {
            let have = cmdline::split(&v);
            tokens.iter().all(|t| have.contains(&t.as_str()))
        });
        let undoes = matches!(
            (reverse(&out), reverse(content)),
            (Ok(a), Ok(b)) if a == b
        );
        if !reads_back || !undoes {
            bail!(
                "gpt's edit of {var} failed its own check (reads back: {reads_back}, undoes exactly: {undoes}), so nothing was changed; this is a gpt bug, please report it with the file"
            );
        }
    }
    Ok(out)
}

fn apply_unchecked(content: &str, var: &str, tokens: &[String]) -> Result<String> {
    check_var(var)?;
    let mut want: Vec<&str> = Vec::new();
    for t in tokens {
        check_token(t).map_err(|why| anyhow!("gpt will not add {t:?} to {var}: {why}"))?;
        if !want.contains(&t.as_str()) {
            want.push(t);
        }
    }
    let lines = text::split_lines(content);
    let found = analyze(&lines, var)?;
    let bodies: Vec<&str> = lines.iter().map(|l| l.body).collect();
    let marks = markers(&bodies)?;
    let Some((eff, asg)) = found else {
        if want.is_empty() {
            return Ok(content.to_string());
        }
        if let Some(problem) = end_problem(&lines) {
            bail!("gpt would add {var} at the end of the file, but {problem}; {NO_GUESS}");
        }
        return Ok(create_line(content, var, &want));
    };
    let present = cmdline::split(asg.inner(lines[eff].body));
    let add: Vec<&str> = want
        .iter()
        .copied()
        .filter(|t| !present.contains(t))
        .collect();
    let replaced = |g: &String| {
        !want.contains(&g.as_str()) && want.iter().any(|w| cmdline::key(w) == cmdline::key(g))
    };
    // Every marked line of `var`, with the gpt tokens it loses to a wanted token.
    let groups: Vec<Group> = group_by_target(marks.into_iter().filter(|(_, m, _)| m.var == var));
    let loses =
        |g: &Group| -> Vec<String> { g.tokens().into_iter().filter(|t| replaced(t)).collect() };
    if add.is_empty() && groups.iter().all(|g| loses(g).is_empty()) {
        return Ok(content.to_string());
    }
    let style = text::eol_style(content);
    let mut out = text::owned(&lines);
    let mut own = Group {
        target: eff,
        marks: Vec::new(),
    };
    let mut others = Vec::new();
    for g in groups {
        if g.target == eff {
            own = g;
        } else {
            others.push(g);
        }
    }
    // The effective line is the last `var` line, below every other marked `var` line, so
    // editing it first leaves the indices of the others valid; then bottom-up.
    let rm = loses(&own);
    rewrite(&mut out, var, own, &rm, &add, style)?;
    for g in others.into_iter().rev() {
        let rm = loses(&g);
        if !rm.is_empty() {
            rewrite(&mut out, var, g, &rm, &[], style)?;
        }
    }
    Ok(text::join(&out))
}

/// Take out exactly what gpt's markers say it added (tokens, quotes, lines, the markers),
/// keeping everything else, even if other parts of the file changed since.
/// A file without markers is returned unchanged.
pub fn reverse(content: &str) -> Result<String> {
    let lines = text::split_lines(content);
    let bodies: Vec<&str> = lines.iter().map(|l| l.body).collect();
    let marks = markers(&bodies)?;
    if marks.is_empty() {
        return Ok(content.to_string());
    }
    let style = text::eol_style(content);
    let mut out = text::owned(&lines);
    // Bottom-up: each step only touches its lines (markers, then the assignment under them).
    for g in group_by_target(marks.into_iter()).into_iter().rev() {
        let var = g.marks[0].1.var.clone();
        let remove = g.tokens();
        rewrite(&mut out, &var, g, &remove, &[], style)?;
    }
    Ok(text::join(&out))
}

/// What gpt's markers say it added: `(variable, tokens)` per marker, in file order.
pub fn added_tokens(content: &str) -> Vec<(String, Vec<String>)> {
    text::split_lines(content)
        .iter()
        .filter_map(|l| parse_marker(l.body))
        .map(|m| (m.var, m.tokens))
        .collect()
}

/// Remove the tokens matching `pred` from the effective assignment of `var` (clean-up after
/// the old setup.sh). Returns the new content and the removed tokens, in order.
///
/// The whitespace a removed token leaves is collapsed, so no double space appears where
/// there was none. Tokens that a gpt marker on that line lists are left alone: they are
/// gpt's own, and [`reverse`] takes them out. This edit has no reverse.
pub fn remove_tokens(
    content: &str,
    var: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<(String, Vec<String>)> {
    check_var(var)?;
    let lines = text::split_lines(content);
    let Some((eff, asg)) = analyze(&lines, var)? else {
        return Ok((content.to_string(), Vec::new()));
    };
    let bodies: Vec<&str> = lines.iter().map(|l| l.body).collect();
    let own: Vec<String> = markers_loose(&bodies)
        .into_iter()
        .filter(|(i, m)| m.var == var && target_of(&bodies, *i) == Some(eff))
        .flat_map(|(_, m)| m.tokens)
        .collect();
    let body = lines[eff].body;
    let mut inner = asg.inner(body).to_string();
    let mut removed = Vec::new();
    loop {
        let hit = token_spans(&inner).into_iter().find(|&(s, e)| {
            let t = &inner[s..e];
            pred(t) && !own.iter().any(|o| o == t)
        });
        let Some((s, e)) = hit else { break };
        removed.push(inner[s..e].to_string());
        remove_collapsing(&mut inner, s, e);
    }
    if removed.is_empty() {
        return Ok((content.to_string(), removed));
    }
    let mut out = text::owned(&lines);
    out[eff].body = asg.rebuild(body, &inner, asg.quote);
    Ok((text::join(&out), removed))
}

// ---------------------------------------------------------------------------------------
// Markers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Tokens appended inside the existing quotes.
    Added,
    /// Tokens appended, and the bare value put in double quotes.
    Quoted,
    /// The whole assignment line is gpt's.
    Created,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    var: String,
    kind: Kind,
    tokens: Vec<String>,
}

impl Marker {
    fn render(&self) -> String {
        let toks = self.tokens.join(" ");
        let var = &self.var;
        match self.kind {
            Kind::Added => format!("{MARK}added to {var}: {toks}{ADDED_SUFFIX}"),
            Kind::Quoted => format!("{MARK}added to {var} and quoted it: {toks}{QUOTED_SUFFIX}"),
            Kind::Created => format!("{MARK}created {var} with: {toks}{CREATED_SUFFIX}"),
        }
    }
}

fn parse_marker(body: &str) -> Option<Marker> {
    let rest = body.trim_end().strip_prefix(MARK)?;
    let (kind, var, toks) = if let Some(r) = rest.strip_prefix("created ") {
        let (var, toks) = r.strip_suffix(CREATED_SUFFIX)?.split_once(" with: ")?;
        (Kind::Created, var, toks)
    } else if let Some(r) = rest.strip_prefix("added to ") {
        if let Some(r) = r.strip_suffix(QUOTED_SUFFIX) {
            let (var, toks) = r.split_once(" and quoted it: ")?;
            (Kind::Quoted, var, toks)
        } else {
            let (var, toks) = r.strip_suffix(ADDED_SUFFIX)?.split_once(": ")?;
            (Kind::Added, var, toks)
        }
    } else {
        return None;
    };
    if !valid_var(var) {
        return None;
    }
    let tokens: Vec<String> = toks.split(' ').map(str::to_string).collect();
    if tokens.iter().any(|t| check_token(t).is_err()) {
        return None;
    }
    Some(Marker {
        var: var.to_string(),
        kind,
        tokens,
    })
}

/// Every marker line, without checking what follows it.
fn markers_loose(bodies: &[&str]) -> Vec<(usize, Marker)> {
    bodies
        .iter()
        .enumerate()
        .filter_map(|(i, b)| parse_marker(b).map(|m| (i, m)))
        .collect()
}

/// Every marker line with the line it belongs to; an error if one no longer sits above an
/// editable assignment of its variable (reset could not undo it then).
fn markers(bodies: &[&str]) -> Result<Vec<(usize, Marker, usize)>> {
    let mut out = Vec::new();
    for (i, m) in markers_loose(bodies) {
        let t = check_target(bodies, i, &m)?;
        out.push((i, m, t));
    }
    Ok(out)
}

/// The first line after `idx` that is neither blank nor a comment.
fn target_of(bodies: &[&str], idx: usize) -> Option<usize> {
    (idx + 1..bodies.len()).find(|&j| {
        let t = bodies[j].trim_start();
        !t.is_empty() && !t.starts_with('#')
    })
}

fn check_target(bodies: &[&str], idx: usize, m: &Marker) -> Result<usize> {
    let var = &m.var;
    let n = idx + 1;
    let fix = "put the line back under it, or remove the note and the tokens it lists by hand";
    let Some(t) = target_of(bodies, idx) else {
        bail!("line {n}: gpt's note about {var} is not followed by a {var} line; {fix}");
    };
    let Some(head) = candidate_head(bodies[t], var) else {
        bail!(
            "line {n}: gpt's note about {var} is followed by line {} which does not set {var}; {fix}",
            t + 1
        );
    };
    parse_value(bodies[t], head, var, t + 1)?;
    Ok(t)
}

// ---------------------------------------------------------------------------------------
// Editing one line

/// gpt's markers above one assignment line (normally one), in file order.
struct Group {
    target: usize,
    marks: Vec<(usize, Marker)>,
}

impl Group {
    /// The tokens gpt added to the line, in the order it added them.
    fn tokens(&self) -> Vec<String> {
        self.marks
            .iter()
            .flat_map(|(_, m)| m.tokens.iter().cloned())
            .collect()
    }

    /// What gpt did to the line itself: created it, else quoted it, else neither.
    fn kind(&self) -> Kind {
        let has = |k| self.marks.iter().any(|(_, m)| m.kind == k);
        if has(Kind::Created) {
            Kind::Created
        } else if has(Kind::Quoted) {
            Kind::Quoted
        } else {
            Kind::Added
        }
    }
}

/// Markers (in file order, with their targets) grouped by the line they belong to, in
/// file order.
fn group_by_target(marks: impl Iterator<Item = (usize, Marker, usize)>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, m, t) in marks {
        match groups.iter_mut().find(|g| g.target == t) {
            Some(g) => g.marks.push((i, m)),
            None => groups.push(Group {
                target: t,
                marks: vec![(i, m)],
            }),
        }
    }
    groups.sort_by_key(|g| g.target);
    groups
}

/// Edit one assignment line of `var`: take out `remove` (tokens gpt added), append `add`,
/// then write gpt's one marker for the line, or, when gpt has nothing left on the line,
/// undo what it did to the line itself (quotes, a created line) and drop its markers.
fn rewrite(
    out: &mut Vec<OwnedLine>,
    var: &str,
    group: Group,
    remove: &[String],
    add: &[&str],
    style: &str,
) -> Result<()> {
    let target = group.target;
    let body = out[target].body.clone();
    let n = target + 1;
    let head = candidate_head(&body, var)
        .ok_or_else(|| anyhow!("line {n}: expected a {var} assignment here; {NO_GUESS}"))?;
    let asg = parse_value(&body, head, var, n)?;
    let mut kind = group.kind();
    let mut gtoks = group.tokens();
    let mut inner = asg.inner(&body).to_string();
    for r in remove.iter().rev() {
        remove_appended(&mut inner, r);
        if let Some(p) = gtoks.iter().rposition(|g| g == r) {
            gtoks.remove(p);
        }
    }
    let mut quote = asg.quote;
    if !add.is_empty() && quote == Quote::None {
        // Reset deletes gpt's created line only when nothing but `VAR=` is left of it.
        let reset_deletes = rest_after_reverse(&inner, &gtoks).is_empty()
            && asg.rebuild(&body, "", Quote::None) == format!("{var}=");
        if kind == Kind::Created && !reset_deletes {
            // gpt wrote this line quoted; someone took the quotes off and put words of their
            // own in (or anything after the value). Adding needs the quotes back, and a
            // "created" marker cannot say so: `gpt reset` would leave them, not the line as
            // it is now.
            bail!(
                "line {n}: {var} is the line gpt created, but its value is no longer in double quotes; adding {} would quote it again, and gpt reset could not take those quotes out exactly. Put the value back in double quotes ({var}=\"...\") and run gpt again; {NO_GUESS}",
                add.join(" ")
            );
        }
        quote = Quote::Double;
        if kind == Kind::Added {
            kind = Kind::Quoted;
        }
    }
    for a in add {
        if !inner.is_empty() {
            inner.push(' ');
        }
        inner.push_str(a);
        gtoks.push(a.to_string());
    }
    // Marker lines, bottom-up; all sit above the target.
    let mut mark_lines: Vec<usize> = group.marks.iter().map(|(i, _)| *i).collect();
    mark_lines.reverse();
    if !gtoks.is_empty() {
        out[target].body = asg.rebuild(&body, &inner, quote);
        let m = Marker {
            var: var.to_string(),
            kind,
            tokens: gtoks,
        }
        .render();
        match mark_lines.first() {
            // Keep the nearest marker line, now saying everything; drop the others.
            Some(&keep) => {
                out[keep].body = m;
                for &i in &mark_lines[1..] {
                    out.remove(i);
                }
            }
            None => {
                let eol = if out[target].eol.is_empty() {
                    style.to_string()
                } else {
                    out[target].eol.clone()
                };
                out.insert(target, OwnedLine { body: m, eol });
            }
        }
        return Ok(());
    }
    if kind == Kind::Quoted && quote == Quote::Double && unquoted_problem(&inner).is_none() {
        quote = Quote::None;
    }
    let new_body = asg.rebuild(&body, &inner, quote);
    // gpt's own line with nothing left in it (the user may have dropped its quotes).
    let delete_line = kind == Kind::Created
        && (new_body == format!("{var}=\"\"") || new_body == format!("{var}="));
    let was_last = out[target].eol.is_empty();
    // gpt ended the line above its created line with a bare "\n" (see `create_line`).
    let added_eol = mark_lines.first().map(|_| "\n".to_string());
    if delete_line {
        out.remove(target);
    } else {
        out[target].body = new_body;
    }
    for &i in &mark_lines {
        out.remove(i);
    }
    if delete_line && was_last {
        if let Some(added) = added_eol {
            text::strip_added_eol(out, &added);
        }
    }
    Ok(())
}

/// What is left of a value once [`reverse`] takes out gpt's tokens: not gpt's.
fn rest_after_reverse(inner: &str, gpt_tokens: &[String]) -> String {
    let mut rest = inner.to_string();
    for t in gpt_tokens.iter().rev() {
        remove_appended(&mut rest, t);
    }
    rest
}

fn create_line(content: &str, var: &str, want: &[&str]) -> String {
    let style = text::eol_style(content);
    let marker = Marker {
        var: var.to_string(),
        kind: Kind::Created,
        tokens: want.iter().map(|t| t.to_string()).collect(),
    };
    let no_final_newline = !content.is_empty() && !content.ends_with('\n');
    let mut s = content.to_string();
    if no_final_newline {
        // A bare "\n", whatever the file's style: in a CRLF file the shell reads a "\r" as
        // part of the word before it, so a last line `fi` would become `fi\r`, no keyword.
        s.push('\n');
    }
    let _ = write!(s, "{}{style}{var}=\"{}\"", marker.render(), want.join(" "));
    if !no_final_newline {
        s.push_str(style);
    }
    s
}

/// Byte spans of the whitespace-separated tokens of `s`.
fn token_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        spans.push((start, i));
    }
    spans
}

/// Take out the last occurrence of a token gpt appended, with the one space it brought:
/// the one before it, or, for a token at the very start (the value was empty), the one
/// after it.
fn remove_appended(inner: &mut String, tok: &str) {
    let Some((s, e)) = token_spans(inner)
        .into_iter()
        .rev()
        .find(|&(s, e)| &inner[s..e] == tok)
    else {
        return;
    };
    let b = inner.as_bytes();
    let range = if s > 0 && b[s - 1].is_ascii_whitespace() {
        s - 1..e
    } else if e < b.len() && b[e].is_ascii_whitespace() {
        s..e + 1
    } else {
        s..e
    };
    inner.replace_range(range, "");
}

/// Take out a token and the whitespace run on one side of it, so the tokens around it end
/// up separated the way one of them was before.
fn remove_collapsing(inner: &mut String, s: usize, e: usize) {
    let b = inner.as_bytes();
    let mut before = s;
    while before > 0 && b[before - 1].is_ascii_whitespace() {
        before -= 1;
    }
    let mut after = e;
    while after < b.len() && b[after].is_ascii_whitespace() {
        after += 1;
    }
    let range = if before > 0 {
        before..e
    } else if after < b.len() {
        s..after
    } else {
        before..e
    };
    inner.replace_range(range, "");
}

// ---------------------------------------------------------------------------------------
// Reading the shell file

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Where the parts of an assignment line are, as byte offsets into the line.
#[derive(Debug, Clone)]
struct Assign {
    quote: Quote,
    /// Just after the `=`.
    head_end: usize,
    inner_start: usize,
    inner_end: usize,
    /// Just after the closing quote (`inner_end` for a bare value).
    value_end: usize,
}

impl Assign {
    fn inner<'a>(&self, body: &'a str) -> &'a str {
        &body[self.inner_start..self.inner_end]
    }

    /// The line with another value, in the given quoting; the rest kept byte for byte.
    fn rebuild(&self, body: &str, inner: &str, quote: Quote) -> String {
        let q = match quote {
            Quote::None => "",
            Quote::Double => "\"",
            Quote::Single => "'",
        };
        format!(
            "{}{q}{inner}{q}{}",
            &body[..self.head_end],
            &body[self.value_end..]
        )
    }
}

fn valid_var(var: &str) -> bool {
    let mut chars = var.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn check_var(var: &str) -> Result<()> {
    if valid_var(var) {
        Ok(())
    } else {
        bail!("{var:?} is not a shell variable name")
    }
}

/// Tokens gpt writes must be safe inside single quotes, double quotes and a marker comment.
fn check_token(t: &str) -> std::result::Result<(), &'static str> {
    if t.is_empty() {
        return Err("it is empty");
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it holds whitespace or a non-printable or non-ASCII character");
    }
    if t.contains(['"', '\'', '\\', '`', '$']) {
        return Err("it holds a shell quote or expansion character");
    }
    Ok(())
}

/// If `body` starts a plain assignment of `var` (`[ws][export ws]VAR=`), the offset after `=`.
fn candidate_head(body: &str, var: &str) -> Option<usize> {
    let is_blank = |c: char| c == ' ' || c == '\t';
    let start = body.len() - body.trim_start_matches(is_blank).len();
    let mut at = start;
    if let Some(r) = body[start..].strip_prefix("export") {
        let r2 = r.trim_start_matches(is_blank);
        if r2.len() < r.len() {
            at = body.len() - r2.len();
        }
    }
    let r = body[at..].strip_prefix(var)?.strip_prefix('=')?;
    Some(body.len() - r.len())
}

/// Why a bare (unquoted) shell word is not a plain value, if it is not.
fn unquoted_problem(word: &str) -> Option<&'static str> {
    if word.contains(|c: char| c.is_ascii_whitespace()) {
        Some("whitespace outside quotes")
    } else if word.contains('`') {
        Some("a backtick command substitution")
    } else if word.contains("$(") {
        Some("a $(…) command substitution")
    } else if word.contains('\\') {
        Some("a backslash escape")
    } else if word.contains(['"', '\'']) {
        Some("quoted and unquoted text mixed")
    } else if word.contains([';', '&', '|', '<', '>', '(', ')']) {
        Some("shell syntax (; & | < > ( )) outside quotes")
    } else if word.contains('~') {
        Some("a ~ outside quotes (tilde expansion)")
    } else {
        None
    }
}

/// Parse the value of an assignment line whose `VAR=` ends at `head_end`.
fn parse_value(body: &str, head_end: usize, var: &str, n: usize) -> Result<Assign> {
    let fail = |what: &str| anyhow!("line {n}: {what} in {var}; {NO_GUESS}");
    let rest = &body[head_end..];
    let continued = body.ends_with('\\');
    let asg = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let inner_start = head_end + 1;
            let Some(len) = body[inner_start..].find(q) else {
                if continued {
                    return Err(fail("a backslash line continuation"));
                }
                return Err(fail("an unterminated quote"));
            };
            let inner_end = inner_start + len;
            let inner = &body[inner_start..inner_end];
            if q == '"' {
                if inner.contains('\\') {
                    return Err(fail("a backslash escape (such as an escaped quote)"));
                }
                if inner.contains('`') {
                    return Err(fail("a backtick command substitution"));
                }
                if inner.contains("$(") {
                    return Err(fail("a $(…) command substitution"));
                }
            }
            Assign {
                quote: if q == '"' {
                    Quote::Double
                } else {
                    Quote::Single
                },
                head_end,
                inner_start,
                inner_end,
                value_end: inner_end + 1,
            }
        }
        _ => {
            let len = rest.find([' ', '\t']).unwrap_or(rest.len());
            let word = &rest[..len];
            if continued && len == rest.len() {
                return Err(fail("a backslash line continuation"));
            }
            if let Some(why) = unquoted_problem(word) {
                return Err(fail(why));
            }
            Assign {
                quote: Quote::None,
                head_end,
                inner_start: head_end,
                inner_end: head_end + len,
                value_end: head_end + len,
            }
        }
    };
    let tail = &body[asg.value_end..];
    if tail.starts_with([';', '&', '|']) {
        return Err(fail("more than one command or assignment on the line"));
    }
    if !tail.is_empty() && !tail.starts_with([' ', '\t']) {
        return Err(fail("text right after the closing quote"));
    }
    let tail = tail.trim_start_matches([' ', '\t']);
    if !tail.is_empty() && !tail.starts_with('#') {
        if tail.trim_end().ends_with('\\') {
            return Err(fail("a backslash line continuation"));
        }
        return Err(fail("more than one command or assignment on the line"));
    }
    Ok(asg)
}

/// Where a line starts, in terms of the shell's reading of the lines above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// The line above ended with a backslash continuation.
    Continued,
    /// Inside a quoted string (or backtick substitution) opened on the given 0-based line.
    Quoted(char, usize),
}

struct Scanned {
    start: State,
    /// The line outside quotes and comments, quoted text blanked out.
    code: String,
}

/// A light reading of the shell quoting, enough to tell where each line starts and which
/// text is code (outside quotes and comments).
fn scan(lines: &[Line<'_>]) -> (Vec<Scanned>, State) {
    let mut state = State::Normal;
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let start = state;
        let mut quote = match state {
            State::Quoted(q, at) => Some((q, at)),
            _ => None,
        };
        let mut code = String::with_capacity(l.body.len());
        let mut continued = false;
        let mut prev: Option<char> = None;
        let mut chars = l.body.chars();
        while let Some(c) = chars.next() {
            match quote {
                None => match c {
                    '#' if starts_word(prev) => break,
                    '\'' | '"' | '`' => {
                        quote = Some((c, i));
                        code.push(' ');
                    }
                    '\\' => {
                        code.push(' ');
                        if chars.next().is_some() {
                            code.push(' ');
                        } else {
                            continued = true;
                        }
                    }
                    _ => code.push(c),
                },
                Some((q, _)) => {
                    if c == q {
                        quote = None;
                    } else if c == '\\' && q != '\'' {
                        chars.next();
                    }
                    code.push(' ');
                }
            }
            prev = Some(c);
        }
        state = match quote {
            Some((q, at)) => State::Quoted(q, at),
            None if continued => State::Continued,
            None => State::Normal,
        };
        out.push(Scanned { start, code });
    }
    (out, state)
}

/// Why a line appended at the end of the file would not be a command of its own, if so.
fn end_problem(lines: &[Line<'_>]) -> Option<String> {
    let (scanned, end) = scan(lines);
    let depth: i64 = scanned.iter().map(|s| depth_change(&s.code)).sum();
    match end {
        State::Quoted(_, at) => Some(format!(
            "the file ends inside a quoted string opened on line {}",
            at + 1
        )),
        State::Continued => Some("the file ends with a backslash line continuation".to_string()),
        State::Normal if depth != 0 => {
            Some("the file ends inside an if, case, loop or { } block".to_string())
        }
        State::Normal => None,
    }
}

/// Whether a `#` after `prev` starts a comment (it does at the start of a word).
fn starts_word(prev: Option<char>) -> bool {
    match prev {
        None => true,
        Some(p) => p.is_ascii_whitespace() || ";&|()<>".contains(p),
    }
}

fn is_word_byte(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

/// Whether `code` names `var` other than as an expansion (`$VAR`, `${VAR…}`).
fn mentions_var(code: &str, var: &str) -> bool {
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(p) = code[from..].find(var) {
        let s = from + p;
        let e = s + var.len();
        let before_ok = s == 0 || !(is_word_byte(b[s - 1]) || b"${#!".contains(&b[s - 1]));
        let after_ok = e >= b.len() || !is_word_byte(b[e]);
        if before_ok && after_ok {
            return true;
        }
        from = s + 1;
    }
    false
}

/// `export NAME…` without assignments: harmless.
fn is_plain_export(code: &str) -> bool {
    let mut words = code.split_ascii_whitespace();
    words.next() == Some("export") && words.all(valid_var)
}

/// How `if`/`case`/loop/`{ }` nesting changes over a line of code.
fn depth_change(code: &str) -> i64 {
    code.split(|c: char| c.is_ascii_whitespace() || ";&|()".contains(c))
        .map(|w| match w {
            "if" | "case" | "do" | "{" => 1,
            "fi" | "esac" | "done" | "}" => -1,
            _ => 0,
        })
        .sum()
}

/// Check every line that concerns `var` and find its effective (last) plain assignment.
fn analyze(lines: &[Line<'_>], var: &str) -> Result<Option<(usize, Assign)>> {
    let (scanned, _) = scan(lines);
    let mut depth: i64 = 0;
    let mut found = None;
    for (i, (l, sc)) in lines.iter().zip(&scanned).enumerate() {
        let n = i + 1;
        if let Some(head) = candidate_head(l.body, var) {
            match sc.start {
                State::Normal => {}
                State::Continued => bail!(
                    "line {n}: the line above ends with a backslash continuation, so this {var} line is part of another command; {NO_GUESS}"
                ),
                State::Quoted(_, at) => bail!(
                    "line {n}: this {var} line is inside a quoted string opened on line {}; {NO_GUESS}",
                    at + 1
                ),
            }
            if depth != 0 {
                bail!("line {n}: {var} is set inside an if, case, loop or {{ }} block; {NO_GUESS}");
            }
            found = Some((i, parse_value(l.body, head, var, n)?));
        } else {
            if mentions_var(&sc.code, var) && !is_plain_export(&sc.code) {
                bail!(
                    "line {n}: {var} is set or used in a way gpt cannot edit (only plain {var}=… lines are supported); {NO_GUESS}"
                );
            }
            depth += depth_change(&sc.code);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "GRUB_CMDLINE_LINUX_DEFAULT";

    const DEBIAN12: &str = "\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"
GRUB_CMDLINE_LINUX=\"\"

# If your computer has multiple video cards, check them
#GRUB_GFXMODE=640x480

# Uncomment to disable graphical terminal (grub-pc only)
#GRUB_TERMINAL=console
";

    const UBUNTU2404: &str = "\
# If you change this file or any /etc/default/grub.d/*.cfg file,
# run 'update-grub' afterwards to update /boot/grub/grub.cfg.
# For full documentation of the options in these files, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=`( . /etc/os-release; echo ${NAME:-Ubuntu} ) 2>/dev/null || echo Ubuntu`
GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"
GRUB_CMDLINE_LINUX=\"\"

# If your computer has multiple video cards, check them
#GRUB_BADRAM=\"0x01234567,0xfefefefe,0x89abcdef,0xefefefef\"

# The resolution used on graphical terminal
# you can see them in real GRUB with the command `videoinfo'
#GRUB_GFXMODE=640x480

# Uncomment if you don't want GRUB to pass \"root=UUID=xxx\" parameter to Linux
#GRUB_DISABLE_LINUX_UUID=true
";

    const CLOUD_CFG: &str = "\
# Cloud Image specific Grub settings for Generic Cloud Images
# CLOUD_IMG: This file was created/modified by the Cloud Image build process

# Set the recordfail timeout
GRUB_RECORDFAIL_TIMEOUT=0

# Set the default commandline
GRUB_CMDLINE_LINUX_DEFAULT=\"console=tty1 console=ttyS0\"
";

    fn toks(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn vfio() -> Vec<String> {
        toks(&[
            "iommu=pt",
            "intel_iommu=on",
            "vfio-pci.ids=10de:1f08,10de:10f9",
        ])
    }

    /// apply, then check the laws every edit must keep.
    fn roundtrip(x: &str, var: &str, t: &[String]) -> String {
        let a = apply(x, var, t).unwrap();
        assert_eq!(reverse(&a).unwrap(), x, "reverse(apply(x)) != x for {x:?}");
        assert_eq!(
            apply(&a, var, t).unwrap(),
            a,
            "apply is not idempotent on {x:?}"
        );
        let v = read_var(&a, var).unwrap().unwrap();
        let have = cmdline::split(&v);
        for tok in t {
            assert!(have.contains(&tok.as_str()), "{tok} missing from {v:?}");
        }
        a
    }

    #[test]
    fn debian12_stock_file() {
        assert_eq!(read_var(DEBIAN12, V).unwrap().as_deref(), Some("quiet"));
        assert_eq!(
            read_var(DEBIAN12, "GRUB_CMDLINE_LINUX").unwrap().as_deref(),
            Some("")
        );
        assert_eq!(
            read_var(DEBIAN12, "GRUB_TIMEOUT").unwrap().as_deref(),
            Some("5")
        );
        // The backticks belong to another variable: reading or editing this one is fine,
        // reading that one is refused.
        let err = read_var(DEBIAN12, "GRUB_DISTRIBUTOR")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 8") && err.contains("backtick"), "{err}");
        let a = roundtrip(DEBIAN12, V, &vfio());
        let want = DEBIAN12.replace(
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n",
            "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9 (gpt reset removes them)\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9\"\n",
        );
        assert_eq!(a, want);
        assert_eq!(
            added_tokens(&a),
            vec![(V.to_string(), vfio())],
            "markers tell what gpt added"
        );
        // The empty GRUB_CMDLINE_LINUX gets no leading space.
        let b = roundtrip(DEBIAN12, "GRUB_CMDLINE_LINUX", &toks(&["iommu=pt"]));
        assert!(b.contains("\nGRUB_CMDLINE_LINUX=\"iommu=pt\"\n"), "{b}");
    }

    #[test]
    fn ubuntu_and_cloud_image_files() {
        assert_eq!(
            read_var(UBUNTU2404, V).unwrap().as_deref(),
            Some("quiet splash")
        );
        let a = roundtrip(UBUNTU2404, V, &vfio());
        assert!(a.contains("\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9\"\n"));
        roundtrip(CLOUD_CFG, V, &vfio());
        // A grub.d file without the variable gets gpt's own line.
        let a = roundtrip("# nothing here\n", V, &vfio());
        assert!(a.ends_with("\nGRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9\"\n"));
    }

    #[test]
    fn nothing_to_add_is_byte_identical() {
        let x = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt\"\n";
        assert_eq!(apply(x, V, &toks(&["iommu=pt"])).unwrap(), x);
        assert_eq!(apply(x, V, &[]).unwrap(), x);
        assert_eq!(apply("", V, &[]).unwrap(), "");
        assert_eq!(reverse(x).unwrap(), x);
    }

    #[test]
    fn present_tokens_are_not_duplicated() {
        let x = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet intel_iommu=on\"\n";
        let a = roundtrip(x, V, &toks(&["intel_iommu=on", "iommu=pt", "iommu=pt"]));
        assert_eq!(
            a,
            "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: iommu=pt (gpt reset removes them)\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"quiet intel_iommu=on iommu=pt\"\n"
        );
    }

    #[test]
    fn single_quotes_are_kept() {
        let x = "GRUB_CMDLINE_LINUX_DEFAULT='quiet splash'\n";
        let a = roundtrip(x, V, &vfio());
        assert!(a.ends_with(
            "GRUB_CMDLINE_LINUX_DEFAULT='quiet splash iommu=pt intel_iommu=on vfio-pci.ids=10de:1f08,10de:10f9'\n"
        ));
        // In single quotes `$(` is literal text, not a substitution.
        let y = "GRUB_CMDLINE_LINUX_DEFAULT='a$(b)'\n";
        assert_eq!(read_var(y, V).unwrap().as_deref(), Some("a$(b)"));
    }

    #[test]
    fn unquoted_and_empty_values_get_quotes_that_reset_removes() {
        let x = "GRUB_CMDLINE_LINUX_DEFAULT=quiet\n";
        let a = roundtrip(x, V, &toks(&["iommu=pt"]));
        assert_eq!(
            a,
            "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT and quoted it: iommu=pt (gpt reset removes them and the quotes)\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt\"\n"
        );
        let e = "GRUB_CMDLINE_LINUX_DEFAULT=   # nothing yet\n";
        assert_eq!(read_var(e, V).unwrap().as_deref(), Some(""));
        let a = roundtrip(e, V, &toks(&["iommu=pt"]));
        assert!(a.ends_with("GRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt\"   # nothing yet\n"));
    }

    #[test]
    fn missing_line_is_created_and_removed() {
        for x in [
            "",
            "GRUB_TIMEOUT=5\n",
            "GRUB_TIMEOUT=5",
            "A=1\r\nB=2\r\n",
            "A=1\r\nB=2",
        ] {
            let a = roundtrip(x, V, &vfio());
            assert!(a.contains("# gpt: created GRUB_CMDLINE_LINUX_DEFAULT with: "));
            assert_eq!(
                a.ends_with('\n'),
                x.is_empty() || x.ends_with('\n'),
                "{a:?}"
            );
            if x.contains("\r\n") {
                // CRLF throughout, but for the bare "\n" that ends a last line that had none.
                let bare = usize::from(!x.ends_with('\n'));
                assert_eq!(
                    a.matches('\n').count(),
                    a.matches("\r\n").count() + bare,
                    "{a:?}"
                );
            }
        }
        assert_eq!(
            apply("GRUB_TIMEOUT=5\n", V, &toks(&["iommu=pt"])).unwrap(),
            "GRUB_TIMEOUT=5\n# gpt: created GRUB_CMDLINE_LINUX_DEFAULT with: iommu=pt (gpt reset removes this line)\nGRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt\"\n"
        );
    }

    #[test]
    fn commented_copies_are_ignored_and_the_last_assignment_wins() {
        let x = "#GRUB_CMDLINE_LINUX_DEFAULT=\"old\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"first\"\n  export GRUB_CMDLINE_LINUX_DEFAULT=\"second\" # mine\n# GRUB_CMDLINE_LINUX_DEFAULT=\"later comment\"\n";
        assert_eq!(read_var(x, V).unwrap().as_deref(), Some("second"));
        let a = roundtrip(x, V, &toks(&["iommu=pt"]));
        assert!(a.contains(
            "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: iommu=pt (gpt reset removes them)\n  export GRUB_CMDLINE_LINUX_DEFAULT=\"second iommu=pt\" # mine\n"
        ));
        assert!(a.contains("\nGRUB_CMDLINE_LINUX_DEFAULT=\"first\"\n"));
    }

    #[test]
    fn crlf_tabs_and_no_final_newline_are_kept() {
        let x = "GRUB_TIMEOUT=5\r\n\tGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\tsplash\"\t# x\r\nGRUB_CMDLINE_LINUX=\"\"";
        let a = roundtrip(x, V, &vfio());
        assert!(a.contains(
            "(gpt reset removes them)\r\n\tGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\tsplash iommu=pt"
        ));
        assert!(a.ends_with("GRUB_CMDLINE_LINUX=\"\""));
        let last = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"";
        let a = roundtrip(last, V, &vfio());
        assert!(!a.ends_with('\n'));
    }

    #[test]
    fn a_created_line_stripped_of_its_quotes_and_edited_is_refused_not_misquoted() {
        // Found by the fuzzer: gpt's created line, its quotes taken off and its value
        // replaced; adding would quote it again, which a "created" marker cannot record.
        let x = "# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\r\nGRUB_CMDLINE_LINUX=export ";
        let err = apply(x, "GRUB_CMDLINE_LINUX", &toks(&["iommu=pt"])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("line 2: GRUB_CMDLINE_LINUX is the line gpt created, but its value is no longer in double quotes"),
            "{msg}"
        );
        assert!(!msg.contains("its own check"), "{msg}");
        // Back in quotes, it is edited and undone as usual.
        let quoted = x.replace("=export ", "=\"export\" ");
        let a = apply(&quoted, "GRUB_CMDLINE_LINUX", &toks(&["iommu=pt"])).unwrap();
        assert_eq!(reverse(&a).unwrap(), reverse(&quoted).unwrap());
    }

    #[test]
    fn a_created_line_stripped_of_its_quotes_with_anything_after_the_value_is_refused() {
        // Found by the fuzzer in CI: an empty bare value followed by blanks; reset would keep
        // the line (it is not just `VAR=`) with the quotes gpt put back.
        let m = "# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\n";
        for line in [
            "GRUB_CMDLINE_LINUX=\t \n",
            "GRUB_CMDLINE_LINUX= # mine\n",
            "GRUB_CMDLINE_LINUX=quiet \n",
        ] {
            let x = format!("A=1\n{m}{line}");
            let err = apply(&x, "GRUB_CMDLINE_LINUX", &toks(&["iommu=pt"])).unwrap_err();
            let msg = format!("{err:#}");
            assert!(
                msg.contains("no longer in double quotes"),
                "{line:?}: {msg}"
            );
            assert!(!msg.contains("its own check"), "{line:?}: {msg}");
        }
    }

    #[test]
    fn a_created_line_stripped_of_its_quotes_but_holding_only_gpt_tokens_is_still_edited() {
        // Nothing of the user's is left once gpt's tokens go, so reset deletes the line
        // either way and the quotes gpt puts back do not matter.
        for x in [
            "A=1\n# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\nGRUB_CMDLINE_LINUX=quiet\n",
            "A=1\n# gpt: created GRUB_CMDLINE_LINUX with: quiet (gpt reset removes this line)\nGRUB_CMDLINE_LINUX=\n",
        ] {
            let a = apply(x, "GRUB_CMDLINE_LINUX", &toks(&["iommu=pt"])).unwrap();
            assert!(a.contains("GRUB_CMDLINE_LINUX=\""), "{a}");
            assert_eq!(reverse(&a).unwrap(), "A=1\n");
            assert_eq!(reverse(x).unwrap(), "A=1\n");
        }
    }

    #[test]
    fn a_crlf_file_whose_last_line_has_no_newline_keeps_its_last_word_a_keyword() {
        // Found by the property test's shell check: ending `fi` with "\r\n" made it `fi\r`
        // for the shell, and the file no longer parsed.
        let x = "\t\r\nif [ -e /etc/x ]; then Y=1; fi";
        let a = roundtrip(x, V, &vfio());
        assert!(
            a.starts_with("\t\r\nif [ -e /etc/x ]; then Y=1; fi\n# gpt: created "),
            "{a:?}"
        );
        let b = apply(&a, "GRUB_CMDLINE_LINUX", &toks(&["iommu=pt"])).unwrap();
        assert_eq!(reverse(&b).unwrap(), x);
    }

    #[test]
    fn variable_references_are_opaque_tokens() {
        let x = "GRUB_CMDLINE_LINUX_DEFAULT=\"$GRUB_CMDLINE_LINUX_DEFAULT ${EXTRA} quiet\"\n";
        assert_eq!(
            read_var(x, V).unwrap().as_deref(),
            Some("$GRUB_CMDLINE_LINUX_DEFAULT ${EXTRA} quiet")
        );
        roundtrip(x, V, &vfio());
        let y = "GRUB_CMDLINE_LINUX_DEFAULT=$BASE\n";
        let a = roundtrip(y, V, &toks(&["iommu=pt"]));
        assert!(a.ends_with("GRUB_CMDLINE_LINUX_DEFAULT=\"$BASE iommu=pt\"\n"));
    }

    #[test]
    fn refuses_what_it_cannot_handle() {
        let cases: &[(&str, &str)] = &[
            ("A=1\nB=2\nC=3\nD=4\nE=5\nF=6\nG=7\nH=8\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\n", "line 9: an unterminated quote in GRUB_CMDLINE_LINUX_DEFAULT; gpt will not guess"),
            ("GRUB_CMDLINE_LINUX_DEFAULT='quiet\n", "unterminated quote"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"$(cat /x) quiet\"\n", "$(…) command substitution"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=$(cat /x)\n", "$(…) command substitution"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"`cat /x`\"\n", "backtick"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet \\\n splash\"\n", "line 1: a backslash line continuation"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=quiet\\\n", "backslash line continuation"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"a\" \\\n", "backslash line continuation"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"a \\\"b\\\"\"\n", "backslash escape"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"a\"; GRUB_CMDLINE_LINUX=\"b\"\n", "more than one command"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"a\" GRUB_TIMEOUT=1\n", "more than one command"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=\"a\"'b'\n", "right after the closing quote"),
            ("GRUB_TIMEOUT=1; GRUB_CMDLINE_LINUX_DEFAULT=\"a\"\n", "line 1: GRUB_CMDLINE_LINUX_DEFAULT is set or used"),
            ("X=\"abc\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n", "line 2: this GRUB_CMDLINE_LINUX_DEFAULT line is inside a quoted string opened on line 1"),
            ("X=1 \\\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n", "backslash continuation"),
            ("if true; then\n  GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nfi\n", "line 2: GRUB_CMDLINE_LINUX_DEFAULT is set inside an if"),
            ("unset GRUB_CMDLINE_LINUX_DEFAULT\n", "is set or used"),
            ("GRUB_CMDLINE_LINUX_DEFAULT=~/x\n", "tilde"),
        ];
        for (x, want) in cases {
            let err = read_var(x, V).expect_err(x).to_string();
            assert!(err.contains(want), "{x:?}: {err}");
            assert!(err.contains("fix the file or edit it by hand"), "{err}");
            assert!(apply(x, V, &vfio()).is_err(), "{x:?}");
            assert!(remove_tokens(x, V, |_| true).is_err(), "{x:?}");
        }
    }

    #[test]
    fn no_line_is_appended_where_the_shell_would_not_read_it_as_a_command() {
        for (x, want) in [
            ("X=\"abc\n", "ends inside a quoted string opened on line 1"),
            ("X=abc \\", "backslash line continuation"),
            ("if true; then\n", "inside an if"),
            ("X=`date\n", "quoted string"),
        ] {
            let err = apply(x, V, &vfio()).unwrap_err().to_string();
            assert!(err.contains(want), "{x:?}: {err}");
            assert_eq!(read_var(x, V).unwrap(), None);
        }
    }

    #[test]
    fn other_variables_may_use_any_shell() {
        let x = "X=$(foo)\nif [ -e /x ]; then\n  Y=\"a\"\nfi\nexport GRUB_CMDLINE_LINUX_DEFAULT\nZ=\"${GRUB_CMDLINE_LINUX_DEFAULT#*init=}\"\n# don't panic\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n";
        assert_eq!(read_var(x, V).unwrap().as_deref(), Some("quiet"));
        roundtrip(x, V, &vfio());
    }

    #[test]
    fn rerun_with_another_gpu_replaces_gpts_ids() {
        let x = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n";
        let a = apply(x, V, &vfio()).unwrap();
        let b = apply(
            &a,
            V,
            &toks(&["iommu=pt", "intel_iommu=on", "vfio_pci.ids=1002:73bf"]),
        )
        .unwrap();
        assert_eq!(
            b,
            "# gpt: added to GRUB_CMDLINE_LINUX_DEFAULT: iommu=pt intel_iommu=on vfio_pci.ids=1002:73bf (gpt reset removes them)\n\
             GRUB_CMDLINE_LINUX_DEFAULT=\"quiet iommu=pt intel_iommu=on vfio_pci.ids=1002:73bf\"\n"
        );
        assert_eq!(reverse(&b).unwrap(), x);
        // A user's own ids are not gpt's to replace.
        let y = "GRUB_CMDLINE_LINUX_DEFAULT=\"vfio-pci.ids=1:2\"\n";
        let c = apply(y, V, &toks(&["vfio-pci.ids=3:4"])).unwrap();
        assert!(c.contains("\"vfio-pci.ids=1:2 vfio-pci.ids=3:4\""));
        assert_eq!(reverse(&c).unwrap(), y);
    }

    #[test]
    fn reverse_survives_user_edits() {
        let x = "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n";
        let a = apply(x, V, &vfio()).unwrap();
        let edited = a
            .replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=10")
            .replace("\"quiet ", "\"quiet splash ")
            .replace("10de:10f9\"", "10de:10f9 mitigations=off\"");
        assert_eq!(
            reverse(&edited).unwrap(),
            "GRUB_TIMEOUT=10\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash mitigations=off\"\n"
        );
        // The user removed one of gpt's tokens themselves: the rest still goes.
        let edited = a.replace(" intel_iommu=on", "");
        assert_eq!(reverse(&edited).unwrap(), x);
        // A bare value that grew a second token keeps its quotes (else the shell would
        // run the second word as a command).
        let y = "GRUB_CMDLINE_LINUX_DEFAULT=quiet\n";
        let a = apply(y, V, &toks(&["iommu=pt"])).unwrap();
        let edited = a.replace("iommu=pt\"", "iommu=pt splash\"");
        assert_eq!(
            reverse(&edited).unwrap(),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\n"
        );
        // A created line the user added to stays, without the marker.
        let a = apply("", V, &toks(&["iommu=pt"])).unwrap();
        let edited = a.replace("iommu=pt\"", "iommu=pt quiet\"");
        assert_eq!(
            reverse(&edited).unwrap(),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n"
        );
    }

    #[test]
    fn a_marker_without_its_line_is_an_error_not_a_guess() {
        let a = apply("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nX=1\n", V, &vfio()).unwrap();
        let broken = a.replace("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet", "GRUB_OTHER=\"quiet");
        let err = reverse(&broken).unwrap_err().to_string();
        assert!(err.contains("line 1: gpt's note about"), "{err}");
        assert!(apply(&broken, V, &vfio()).is_err());
        // Blank lines and comments between the marker and its line are fine.
        let spaced = a.replace(
            "(gpt reset removes them)\n",
            "(gpt reset removes them)\n\n# note\n",
        );
        assert_eq!(
            reverse(&spaced).unwrap(),
            "\n# note\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nX=1\n"
        );
    }

    #[test]
    fn several_variables_and_files_of_markers() {
        let mut a = apply(DEBIAN12, V, &vfio()).unwrap();
        a = apply(&a, "GRUB_CMDLINE_LINUX", &toks(&["rd.driver.pre=vfio-pci"])).unwrap();
        a = apply(&a, "GRUB_EXTRA", &toks(&["x=1"])).unwrap();
        assert_eq!(added_tokens(&a).len(), 3);
        assert_eq!(reverse(&a).unwrap(), DEBIAN12);
    }

    #[test]
    fn bad_tokens_and_names_are_refused() {
        for t in ["", "a b", "a\"b", "a'b", "$X", "a\\b", "`x`", "é"] {
            assert!(apply(DEBIAN12, V, &toks(&[t])).is_err(), "{t:?}");
        }
        assert!(read_var(DEBIAN12, "1X").is_err());
        assert!(read_var(DEBIAN12, "A-B").is_err());
    }

    #[test]
    fn remove_tokens_cleans_up_the_old_setup_sh() {
        let legacy = |t: &str| {
            let k = cmdline::key(t);
            k == "vfio_pci.ids"
                || [
                    "amd_iommu=on",
                    "intel_iommu=on",
                    "iommu=pt",
                    "rd.driver.pre=vfio-pci",
                    "video=efifb:off",
                    "kvm.ignore_msrs=1",
                    "kvm.report_ignored_msrs=0",
                    "preempt=voluntary",
                    "i915.enable_gvt=1",
                ]
                .contains(&t)
        };
        let x = "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash amd_iommu=on iommu=pt vfio-pci.ids=10de:1b80,10de:10f0 video=efifb:off\" # tuned\n";
        let (out, removed) = remove_tokens(x, V, legacy).unwrap();
        assert_eq!(out, "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\" # tuned\n");
        assert_eq!(
            removed,
            toks(&[
                "amd_iommu=on",
                "iommu=pt",
                "vfio-pci.ids=10de:1b80,10de:10f0",
                "video=efifb:off"
            ])
        );
        let (out, _) = remove_tokens(
            "GRUB_CMDLINE_LINUX_DEFAULT=\"iommu=pt  quiet\"\n",
            V,
            legacy,
        )
        .unwrap();
        assert_eq!(out, "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n");
        let (out, _) =
            remove_tokens("GRUB_CMDLINE_LINUX_DEFAULT=\"a iommu=pt\tb\"\n", V, legacy).unwrap();
        assert_eq!(out, "GRUB_CMDLINE_LINUX_DEFAULT=\"a\tb\"\n");
        let (out, _) = remove_tokens("GRUB_CMDLINE_LINUX_DEFAULT=iommu=pt\n", V, legacy).unwrap();
        assert_eq!(out, "GRUB_CMDLINE_LINUX_DEFAULT=\n");
        let (out, removed) = remove_tokens(DEBIAN12, V, legacy).unwrap();
        assert_eq!((out.as_str(), removed.len()), (DEBIAN12, 0));
        // gpt's own, marked tokens are left for reset.
        let a = apply(DEBIAN12, V, &vfio()).unwrap();
        let (out, removed) = remove_tokens(&a, V, legacy).unwrap();
        assert_eq!((out.as_str(), removed.len()), (a.as_str(), 0));
    }

    #[test]
    fn scanner_and_helpers() {
        assert_eq!(candidate_head("  export\tV=1", "V"), Some(11));
        assert_eq!(candidate_head("exportV=1", "V"), None);
        assert_eq!(candidate_head("V =1", "V"), None);
        assert_eq!(candidate_head("VV=1", "V"), None);
        assert!(mentions_var("a; V=1", "V"));
        assert!(!mentions_var("echo $V ${V} ${#V}", "V"));
        assert!(!mentions_var("VX=1 XV=2", "V"));
        let mut s = "a b c".to_string();
        remove_appended(&mut s, "b");
        assert_eq!(s, "a c");
        let mut s = "b c".to_string();
        remove_appended(&mut s, "b");
        assert_eq!(s, "c");
    }
}
