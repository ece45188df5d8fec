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

/// The state of a pass over pci.ids.
struct Parser<'w> {
    wanted: &'w Wanted,
    names: Names,
    /// The vendor (or class) whose indented lines follow, when it is one we want.
    vendor: Option<u16>,
    class: Option<u8>,
    in_classes: bool,
}

impl<'w> Parser<'w> {
    fn new(wanted: &'w Wanted) -> Self {
        Parser {
            wanted,
            names: Names::default(),
            vendor: None,
            class: None,
            in_classes: false,
        }
    }

    /// True for a line that cannot add a name in the current state (most of the file:
    /// subsystems, and the devices of vendors nobody asked for). `line` does not change the
    /// state for these, so they can be skipped unread.
    fn skips(&self, line: &[u8]) -> bool {
        match line {
            [] | [b'#', ..] | [b'\t', b'\t', ..] => true,
            [b'\t', ..] => {
                if self.in_classes {
                    self.class.is_none()
                } else {
                    self.vendor.is_none()
                }
            }
            _ => false,
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        let wanted = self.wanted;
        let names = &mut self.names;
        if let Some(rest) = line.strip_prefix('\t') {
            if rest.starts_with('\t') {
                return; // subsystems and programming interfaces: not needed
            }
            if self.in_classes {
                let Some(c) = self.class else { return };
                if let Some((id, name)) = id_and_name(rest) {
                    if let Some(sub) = hex::<u8>(id) {
                        if wanted.classes.contains(&(c, sub)) {
                            names.subclasses.insert((c, sub), name.to_string());
                        }
                    }
                }
            } else {
                let Some(v) = self.vendor else { return };
                if let Some((id, name)) = id_and_name(rest) {
                    if let Some(d) = hex::<u16>(id) {
                        if wanted.devices.contains(&(v, d)) {
                            names.devices.insert((v, d), name.to_string());
                        }
                    }
                }
            }
            return;
        }
        self.vendor = None;
        self.class = None;
        if let Some(rest) = line.strip_prefix("C ") {
            self.in_classes = true;
            if let Some((id, name)) = id_and_name(rest) {
                if let Some(c) = hex::<u8>(id) {
                    if wanted.classes.iter().any(|(b, _)| *b == c) {
                        names.base_classes.insert(c, name.to_string());
                        self.class = Some(c);
                    }
                }
            }
            return;
        }
        // Other sections (device types, languages, ...) start with a letter and a space.
        if line.as_bytes().get(1) == Some(&b' ') {
            self.in_classes = false;
            return;
        }
        if let Some((id, name)) = id_and_name(line) {
            self.in_classes = false;
            if let Some(v) = hex::<u16>(id).filter(|v| wanted.vendors.contains(v)) {
                names.vendors.insert(v, name.to_string());
                self.vendor = Some(v);
            }
        }
    }
}

fn hex<T: TryFrom<u32>>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()?.try_into().ok()
}

/// Split `"10de  NVIDIA Corporation"` into the id and the name.
fn id_and_name(line: &str) -> Option<(&str, &str)> {
    let (id, name) = line.split_once(char::is_whitespace)?;
    Some((id, name.trim()))
}

impl Names {
    pub fn parse(text: &str, wanted: &Wanted) -> Names {
        let mut parser = Parser::new(wanted);
        for line in text.lines() {
            parser.line(line);
        }
        parser.names
    }

    /// Like [`Names::parse`], reading the database line by line: the 1.3 MB text is never held
    /// whole, only the names asked for are kept.
    pub fn parse_reader(mut reader: impl BufRead, wanted: &Wanted) -> io::Result<Names> {
        let mut parser = Parser::new(wanted);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                return Ok(parser.names);
            }
            // The same line ends as `str::lines`: `\n`, or `\r\n`.
            let mut line = buf.as_slice();
            if let Some(l) = line.strip_suffix(b"\n") {
                line = l.strip_suffix(b"\r").unwrap_or(l);
            }
            // Lines nobody asked for are skipped before any UTF-8 check or allocation.
            if parser.skips(line) {
                continue;
            }
            parser.line(&String::from_utf8_lossy(line));
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
}
