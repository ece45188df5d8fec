//! `/etc/kernel/cmdline`, the file kernel-install and proxmox-boot-tool take the kernel
//! command line from. kernel-install reads every line (joined by blanks); proxmox-boot-tool
//! reads only the first, and admins keep other lines below it. Pure text in, text out.

use super::cmdline;

/// Which tool reads the file, and so which part of it is the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// kernel-install: the whole file is the line (its final newline aside).
    KernelInstall,
    /// proxmox-boot-tool: the first line; the rest is kept as it is.
    ProxmoxBootTool,
}

/// The command line the reader takes from `text`, and the rest of the file after it.
pub fn split(text: &str, reader: Reader) -> (&str, &str) {
    match reader {
        Reader::KernelInstall => match text.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (text, ""),
        },
        Reader::ProxmoxBootTool => match text.find('\n') {
            Some(k) => (&text[..k], &text[k..]),
            None => (text, ""),
        },
    }
}

/// The user's own arguments on `line`: those gpt added (`added`) left out.
pub fn user_args(line: &str, added: &[String]) -> Vec<String> {
    cmdline::split(&remove_tokens(line, added))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// `line` without gpt's earlier arguments (`earlier`), with `add` appended, each after a blank.
pub fn with_args(line: &str, earlier: &[String], add: &[String]) -> String {
    let mut new = remove_tokens(line, earlier);
    for a in add {
        if !new.is_empty() && !new.ends_with([' ', '\t']) {
            new.push(' ');
        }
        new.push_str(a);
    }
    new
}

/// The file without the arguments gpt added (`added`) on the line the reader takes; every
/// other byte kept.
pub fn strip_args(text: &str, reader: Reader, added: &[String]) -> String {
    let (line, rest) = split(text, reader);
    format!("{}{rest}", remove_tokens(line, added))
}

/// `line` without each of `tokens` (one occurrence each, from the end, where gpt appends),
/// every other byte kept.
pub fn remove_tokens(line: &str, tokens: &[String]) -> String {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_ascii_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    let mut drop = vec![false; spans.len()];
    for t in tokens {
        if let Some(k) = (0..spans.len())
            .rev()
            .find(|&k| !drop[k] && &line[spans[k].0..spans[k].1] == t)
        {
            drop[k] = true;
        }
    }
    let Some((first, last)) = spans.first().zip(spans.last()) else {
        return line.to_string();
    };
    // The leading and trailing whitespace stay; each kept token keeps the separator it had
    // before it.
    let mut out = line[..first.0].to_string();
    let mut wrote = false;
    for (k, &(s, e)) in spans.iter().enumerate() {
        if drop[k] {
            continue;
        }
        if wrote {
            out.push_str(&line[spans[k - 1].1..s]);
        }
        out.push_str(&line[s..e]);
        wrote = true;
    }
    out.push_str(&line[last.1..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn each_reader_strips_its_own_line_and_keeps_the_rest() {
        let text = "root=/dev/sda1 ro iommu=pt\n# spare: root=/dev/sdb1 iommu=pt\n";
        let added = s(&["iommu=pt"]);
        assert_eq!(
            strip_args(text, Reader::ProxmoxBootTool, &added),
            "root=/dev/sda1 ro\n# spare: root=/dev/sdb1 iommu=pt\n"
        );
        assert_eq!(
            strip_args(
                "root=/dev/sda1 ro iommu=pt\n",
                Reader::KernelInstall,
                &added
            ),
            "root=/dev/sda1 ro\n"
        );
    }

    #[test]
    fn with_args_replaces_gpts_earlier_arguments_and_keeps_the_users() {
        let line = "root=/dev/sda1  ro iommu=pt vfio-pci.ids=1:2";
        let new = with_args(
            line,
            &s(&["iommu=pt", "vfio-pci.ids=1:2"]),
            &s(&["iommu=pt", "vfio-pci.ids=3:4"]),
        );
        assert_eq!(new, "root=/dev/sda1  ro iommu=pt vfio-pci.ids=3:4");
        assert_eq!(
            user_args(line, &s(&["iommu=pt"])),
            s(&["root=/dev/sda1", "ro", "vfio-pci.ids=1:2"])
        );
    }

    #[test]
    fn a_token_the_user_also_has_is_taken_out_once_from_the_end() {
        assert_eq!(remove_tokens("quiet ro quiet", &s(&["quiet"])), "quiet ro");
    }
}
