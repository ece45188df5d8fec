//! Names from the pci.ids database (the file lspci reads). Pure: parses text it is given.
//!
//! The database is large (over a megabyte) and a host needs a few dozen names from it, so the
//! parser keeps only the entries asked for and skips the rest line by line.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead};

/// What to look up: vendors, (vendor, device) pairs and (base class, subclass) pairs.
#[derive(Debug, Default)]
pub struct Wanted {
    pub vendors: HashSet<u16>,
    pub devices: HashSet<(u16, u16)>,
    pub classes: HashSet<(u8, u8)>,
}

#[derive(Debug, Default, Clone)]
pub struct Names {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
    base_classes: HashMap<u8, String>,
    subclasses: HashMap<(u8, u8), String>,
}

/// The state of a pass over pci.ids. It works on bytes: ids are ASCII, and a name is decoded
/// (lossily, as the whole text would be) only when it was asked for.
struct Parser<'w> {
    wanted: &'w Wanted,
    /// `wanted`, sorted, for lookups without hashing on every line.
    vendors: Vec<u16>,
    classes: Vec<(u8, u8)>,
    /// The device ids wanted for the current vendor, sorted.
    devices: Vec<u16>,
    names: Names,
    /// The vendor (or class) whose indented lines follow, when it is one we want.
    vendor: Option<u16>,
    class: Option<u8>,
    in_classes: bool,
}

/// How a line splits into an id and a name, with the rules of `str::split_once` at the first
/// whitespace character and a hex id.
enum Split<'a> {
    /// No whitespace on the line.
    NoSpace,
    /// Whitespace, but what comes before it is not a hex number.
    Bad,
    /// The id's value and the bytes of the name (untrimmed).
    Id(u32, &'a [u8]),
}

fn split_id(line: &[u8]) -> Split<'_> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let Some(ws) = whitespace_len(&line[digits..]) else {
        return if has_whitespace(&line[digits..]) {
            Split::Bad
        } else {
            Split::NoSpace
        };
    };
    if digits == 0 {
        return Split::Bad;
    }
    let mut value: u32 = 0;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16).unwrap_or(0);
        match value.checked_mul(16).and_then(|v| v.checked_add(d)) {
            Some(v) => value = v,
            None => return Split::Bad,
        }
    }
    Split::Id(value, &line[digits + ws..])
}

/// The length in bytes of the whitespace character `bytes` starts with, if it does.
fn whitespace_len(bytes: &[u8]) -> Option<usize> {
    let first = *bytes.first()?;
    if first.is_ascii() {
        return (first as char).is_whitespace().then_some(1);
    }
    let c = bytes.utf8_chunks().next()?.valid().chars().next()?;
    c.is_whitespace().then(|| c.len_utf8())
}

fn has_whitespace(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .any(|b| b.is_ascii() && (*b as char).is_whitespace())
        || (!bytes.is_ascii()
            && bytes
                .utf8_chunks()
                .any(|c| c.valid().chars().any(char::is_whitespace)))
}

/// A name as the text-based parser had it: decoded lossily, trimmed.
fn name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

impl<'w> Parser<'w> {
    fn new(wanted: &'w Wanted) -> Self {
        let mut vendors: Vec<u16> = wanted.vendors.iter().copied().collect();
        vendors.sort_unstable();
        let mut classes: Vec<(u8, u8)> = wanted.classes.iter().copied().collect();
        classes.sort_unstable();
        Parser {
            wanted,
            vendors,
            classes,
            devices: Vec::new(),
            names: Names::default(),
            vendor: None,
            class: None,
            in_classes: false,
        }
    }

    /// One line, without its line ending.
    fn line(&mut self, line: &[u8]) {
        let names = &mut self.names;
        match line {
            // Comments, subsystems and programming interfaces: not needed.
            [] | [b'#', ..] | [b'\t', b'\t', ..] => return,
            [b'\t', rest @ ..] => {
                if self.in_classes {
                    let Some(c) = self.class else { return };
                    if let Split::Id(sub, text) = split_id(rest) {
                        if let Ok(sub) = u8::try_from(sub) {
                            if self.classes.binary_search(&(c, sub)).is_ok() {
                                names.subclasses.insert((c, sub), name(text));
                            }
                        }
                    }
                } else {
                    let Some(v) = self.vendor else { return };
                    if let Split::Id(d, text) = split_id(rest) {
                        if let Ok(d) = u16::try_from(d) {
                            if self.devices.binary_search(&d).is_ok() {
                                names.devices.insert((v, d), name(text));
                            }
                        }
                    }
                }
                return;
            }
            _ => {}
        }
        self.vendor = None;
        self.class = None;
        if let [b'C', b' ', rest @ ..] = line {
            self.in_classes = true;
            if let Split::Id(c, text) = split_id(rest) {
                if let Ok(c) = u8::try_from(c) {
                    if self.classes.iter().any(|(b, _)| *b == c) {
                        names.base_classes.insert(c, name(text));
                        self.class = Some(c);
                    }
                }
            }
            return;
        }
        // Other sections (device types, languages, ...) start with a letter and a space.
        if line.get(1) == Some(&b' ') {
            self.in_classes = false;
            return;
        }
        match split_id(line) {
            Split::NoSpace => {}
            Split::Bad => self.in_classes = false,
            Split::Id(v, text) => {
                self.in_classes = false;
                let Ok(v) = u16::try_from(v) else { return };
                if self.vendors.binary_search(&v).is_ok() {
                    names.vendors.insert(v, name(text));
                    self.vendor = Some(v);
                    self.devices.clear();
                    let wanted = self.wanted.devices.iter().filter(|(wv, _)| *wv == v);
                    self.devices.extend(wanted.map(|(_, d)| *d));
                    self.devices.sort_unstable();
                }
            }
        }
    }
}

impl Names {
    pub fn parse(text: &str, wanted: &Wanted) -> Names {
        let mut parser = Parser::new(wanted);
        for line in text.lines() {
            parser.line(line.as_bytes());
        }
        parser.names
    }

    /// Like [`Names::parse`], reading the database piece by piece: the 1.3 MB text is never
    /// held whole, is not decoded, and only the names asked for are kept. Lines are found with
    /// `memchr` and handed to the parser where they lie in the reader's buffer; only a line cut
    /// by the end of a piece is copied.
    pub fn parse_reader(mut reader: impl BufRead, wanted: &Wanted) -> io::Result<Names> {
        // The same line ends as `str::lines`: `\n`, or `\r\n`.
        fn strip_cr(line: &[u8]) -> &[u8] {
            line.strip_suffix(b"\r").unwrap_or(line)
        }
        let mut parser = Parser::new(wanted);
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let piece = reader.fill_buf()?;
            let len = piece.len();
            if len == 0 {
                // A last line without a line end is taken as it is.
                if !carry.is_empty() {
                    parser.line(&carry);
                }
                return Ok(parser.names);
            }
            let mut rest = piece;
            if !carry.is_empty() {
                let Some(end) = memchr::memchr(b'\n', rest) else {
                    carry.extend_from_slice(rest);
                    reader.consume(len);
                    continue;
                };
                carry.extend_from_slice(&rest[..end]);
                parser.line(strip_cr(&carry));
                carry.clear();
                rest = &rest[end + 1..];
            }
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', rest) {
                parser.line(strip_cr(&rest[start..end]));
                start = end + 1;
            }
            carry.extend_from_slice(&rest[start..]);
            reader.consume(len);
        }
    }

    pub fn vendor(&self, vendor: u16) -> Option<&str> {
        self.vendors.get(&vendor).map(String::as_str)
    }

    pub fn device(&self, vendor: u16, device: u16) -> Option<&str> {
        self.devices.get(&(vendor, device)).map(String::as_str)
    }

    /// The subclass name (`VGA compatible controller`), else the base class name.
    pub fn class(&self, code: u16) -> Option<&str> {
        let (base, sub) = ((code >> 8) as u8, code as u8);
        self.subclasses
            .get(&(base, sub))
            .or_else(|| self.base_classes.get(&base))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "\
# comment
10de  NVIDIA Corporation
\t1f08  TU106 [GeForce RTX 2060 Rev. A]
\t\t1043 86f0  ASUS something
\t10f9  TU106 High Definition Audio Controller
8086  Intel Corporation
\t06ed  Comet Lake USB 3.1 xHCI Host Controller
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
\t02  3D controller
C 06  Bridge
\t04  PCI bridge
C 0c  Serial bus controller
";

    fn wanted() -> Wanted {
        let mut w = Wanted::default();
        w.vendors.extend([0x10de, 0x8086, 0x1234]);
        w.devices
            .extend([(0x10de, 0x1f08), (0x8086, 0x06ed), (0x8086, 0x4c43)]);
        w.classes
            .extend([(0x03, 0x00), (0x03, 0x02), (0x06, 0x04), (0x0c, 0x80)]);
        w
    }

    #[test]
    fn names_that_were_asked_for() {
        let n = Names::parse(IDS, &wanted());
        assert_eq!(n.vendor(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(
            n.device(0x10de, 0x1f08),
            Some("TU106 [GeForce RTX 2060 Rev. A]")
        );
        assert_eq!(
            n.device(0x8086, 0x06ed),
            Some("Comet Lake USB 3.1 xHCI Host Controller")
        );
        assert_eq!(n.class(0x0300), Some("VGA compatible controller"));
        assert_eq!(n.class(0x0302), Some("3D controller"));
        assert_eq!(n.class(0x0604), Some("PCI bridge"));
        // Unknown subclass falls back to the base class.
        assert_eq!(n.class(0x0c80), Some("Serial bus controller"));
    }

    #[test]
    fn names_not_asked_for_or_absent_are_none() {
        let n = Names::parse(IDS, &wanted());
        assert_eq!(n.device(0x10de, 0x10f9), None); // not wanted
        assert_eq!(n.device(0x8086, 0x4c43), None); // not in the database
        assert_eq!(n.vendor(0x1234), None);
        assert_eq!(n.class(0x0108), None);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let n = Names::parse("zz\n\tyy\n\t\t\n10de\n10de  N\n", &wanted());
        assert_eq!(n.vendor(0x10de), Some("N"));
    }

    #[test]
    fn streaming_gives_what_parsing_the_whole_text_gives() {
        let crlf = IDS.replace('\n', "\r\n");
        let mut latin1 = IDS.as_bytes().to_vec();
        latin1.extend_from_slice(b"1234  Caf\xe9 GmbH\n\t0001  Gr\xfcn\n");
        let whole = |bytes: &[u8]| Names::parse(&String::from_utf8_lossy(bytes), &wanted());
        for bytes in [IDS.as_bytes(), crlf.as_bytes(), &latin1] {
            // A tiny buffer puts lines across read boundaries.
            let reader = io::BufReader::with_capacity(7, bytes);
            let streamed = Names::parse_reader(reader, &wanted()).unwrap();
            let expected = whole(bytes);
            assert_eq!(streamed.vendors, expected.vendors);
            assert_eq!(streamed.devices, expected.devices);
            assert_eq!(streamed.base_classes, expected.base_classes);
            assert_eq!(streamed.subclasses, expected.subclasses);
        }
        let n = Names::parse_reader(io::BufReader::new(latin1.as_slice()), &wanted()).unwrap();
        assert_eq!(n.vendor(0x1234), Some("Caf\u{fffd} GmbH"));
    }

    /// The text-based parser gpt had before the byte-based one, kept as the reference.
    fn reference(text: &str, wanted: &Wanted) -> Names {
        fn hex<T: TryFrom<u32>>(s: &str) -> Option<T> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(s, 16).ok()?.try_into().ok()
        }
        fn id_and_name(line: &str) -> Option<(&str, &str)> {
            let (id, name) = line.split_once(char::is_whitespace)?;
            Some((id, name.trim()))
        }
        let mut names = Names::default();
        let mut vendor: Option<u16> = None;
        let mut class: Option<u8> = None;
        let mut in_classes = false;
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                if rest.starts_with('\t') {
                    continue;
                }
                let Some((id, name)) = id_and_name(rest) else {
                    continue;
                };
                if in_classes {
                    if let (Some(c), Some(sub)) = (class, hex::<u8>(id)) {
                        if wanted.classes.contains(&(c, sub)) {
                            names.subclasses.insert((c, sub), name.to_string());
                        }
                    }
                } else if let (Some(v), Some(d)) = (vendor, hex::<u16>(id)) {
                    if wanted.devices.contains(&(v, d)) {
                        names.devices.insert((v, d), name.to_string());
                    }
                }
                continue;
            }
            vendor = None;
            class = None;
            if let Some(rest) = line.strip_prefix("C ") {
                in_classes = true;
                if let Some((id, name)) = id_and_name(rest) {
                    if let Some(c) = hex::<u8>(id) {
                        if wanted.classes.iter().any(|(b, _)| *b == c) {
                            names.base_classes.insert(c, name.to_string());
                            class = Some(c);
                        }
                    }
                }
                continue;
            }
            if line.as_bytes().get(1) == Some(&b' ') {
                in_classes = false;
                continue;
            }
            if let Some((id, name)) = id_and_name(line) {
                in_classes = false;
                if let Some(v) = hex::<u16>(id).filter(|v| wanted.vendors.contains(v)) {
                    names.vendors.insert(v, name.to_string());
                    vendor = Some(v);
                }
            }
        }
        names
    }

    fn same(a: &Names, b: &Names) -> bool {
        a.vendors == b.vendors
            && a.devices == b.devices
            && a.base_classes == b.base_classes
            && a.subclasses == b.subclasses
    }

    #[test]
    fn the_byte_parser_reads_the_real_database_like_the_text_parser() {
        // The fixture, and this machine's full database when it has one.
        let mut w = wanted();
        w.vendors.extend([0x1002, 0x1cc1, 0x144d, 0x10ec]);
        w.devices
            .extend([(0x1002, 0x73bf), (0x1cc1, 0x8201), (0x8086, 0x1521)]);
        w.classes.extend([(0x01, 0x08), (0x02, 0x00), (0x04, 0x03)]);
        let full = std::fs::read("/usr/share/misc/pci.ids").unwrap_or_default();
        for bytes in [IDS.as_bytes(), &full] {
            let text = String::from_utf8_lossy(bytes);
            let streamed = Names::parse_reader(bytes, &w).unwrap();
            assert!(same(&streamed, &reference(&text, &w)));
            assert!(same(&Names::parse(&text, &w), &reference(&text, &w)));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]
        /// Lines made of ids, names, tabs, section markers, Unicode whitespace, CR and invalid
        /// UTF-8: the byte-based parser finds exactly what the text-based one found.
        #[test]
        fn the_byte_parser_agrees_with_the_text_parser(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::sample::select(vec![
                        "10de", "8086", "1234", "1f08", "06ed", "0000010de", "ffffffffff",
                        "00", "02", "03", "0c", "80", "C ", "C", "\t", "\t\t", " ", "  ",
                        "\u{a0}", "\u{3000}", "\u{b}", "\r", "#", "zz", "N", "é", "x y",
                        "\u{FFFD}", "\u{ff}", "\u{c3}",
                    ]),
                    0..6,
                ),
                0..30,
            ),
            crlf in proptest::bool::ANY,
        ) {
            let mut bytes = Vec::new();
            for line in &lines {
                for frag in line {
                    // "\u{ff}" and "\u{c3}" stand for the invalid bytes 0xff and 0xc3.
                    match *frag {
                        "\u{ff}" => bytes.push(0xff),
                        "\u{c3}" => bytes.push(0xc3),
                        f => bytes.extend_from_slice(f.as_bytes()),
                    }
                }
                bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            let text = String::from_utf8_lossy(&bytes);
            let expected = reference(&text, &wanted());
            let streamed = Names::parse_reader(io::BufReader::with_capacity(5, bytes.as_slice()), &wanted()).unwrap();
            proptest::prop_assert!(same(&streamed, &expected), "{text:?}");
            proptest::prop_assert!(same(&Names::parse(&text, &wanted()), &expected), "{text:?}");
        }
    }
}
