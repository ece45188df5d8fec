//! Names from the pci.ids database (the file lspci reads). Pure: parses text it is given.
//!
//! The database is large (over a megabyte) and a host needs a few dozen names from it, so the
//! parser keeps only the entries asked for and skips the rest line by line.

use std::collections::{HashMap, HashSet};

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
        let mut names = Names::default();
        // The vendor (or class) whose indented lines follow, when it is one we want.
        let mut vendor: Option<u16> = None;
        let mut class: Option<u8> = None;
        let mut in_classes = false;
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                if rest.starts_with('\t') {
                    continue; // subsystems and programming interfaces: not needed
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
            // Other sections (device types, languages, ...) start with a letter and a space.
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
}
