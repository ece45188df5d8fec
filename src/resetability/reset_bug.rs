//! AMD cards with the "reset bug" (they do not come back from a bus or PM reset) and the
//! wiring vendor-reset needs for them. Pure.
//!
//! The ids are those of vendor-reset's device table (`src/device-db.h`), written here in
//! lowercase as sysfs prints them.

/// ATI/AMD's PCI vendor id.
pub const AMD: u16 = 0x1002;

/// `(device id, family)` of every card vendor-reset handles: 67 ids.
pub const RESET_BUG_CARDS: [(u16, &str); 67] = [
    (0x67c0, "Polaris 10"),
    (0x67c1, "Polaris 10"),
    (0x67c2, "Polaris 10"),
    (0x67c4, "Polaris 10"),
    (0x67c7, "Polaris 10"),
    (0x67d0, "Polaris 10"),
    (0x67df, "Polaris 10"),
    (0x67c8, "Polaris 10"),
    (0x67c9, "Polaris 10"),
    (0x67ca, "Polaris 10"),
    (0x67cc, "Polaris 10"),
    (0x67cf, "Polaris 10"),
    (0x6fdf, "Polaris 10"),
    (0x67e0, "Polaris 11"),
    (0x67e3, "Polaris 11"),
    (0x67e8, "Polaris 11"),
    (0x67eb, "Polaris 11"),
    (0x67ef, "Polaris 11"),
    (0x67ff, "Polaris 11"),
    (0x67e1, "Polaris 11"),
    (0x67e7, "Polaris 11"),
    (0x67e9, "Polaris 11"),
    (0x6980, "Polaris 12"),
    (0x6981, "Polaris 12"),
    (0x6985, "Polaris 12"),
    (0x6986, "Polaris 12"),
    (0x6987, "Polaris 12"),
    (0x6995, "Polaris 12"),
    (0x6997, "Polaris 12"),
    (0x699f, "Polaris 12"),
    (0x6860, "Vega 10"),
    (0x6861, "Vega 10"),
    (0x6862, "Vega 10"),
    (0x6863, "Vega 10"),
    (0x6864, "Vega 10"),
    (0x6867, "Vega 10"),
    (0x6868, "Vega 10"),
    (0x6869, "Vega 10"),
    (0x686a, "Vega 10"),
    (0x686b, "Vega 10"),
    (0x686c, "Vega 10"),
    (0x686d, "Vega 10"),
    (0x686e, "Vega 10"),
    (0x686f, "Vega 10"),
    (0x687f, "Vega 10"),
    (0x66a0, "Vega 20"),
    (0x66a1, "Vega 20"),
    (0x66a2, "Vega 20"),
    (0x66a3, "Vega 20"),
    (0x66a4, "Vega 20"),
    (0x66a7, "Vega 20"),
    (0x66af, "Vega 20"),
    (0x7310, "Navi 10"),
    (0x7312, "Navi 10"),
    (0x7318, "Navi 10"),
    (0x7319, "Navi 10"),
    (0x731a, "Navi 10"),
    (0x731b, "Navi 10"),
    (0x731e, "Navi 10"),
    (0x731f, "Navi 10"),
    (0x7340, "Navi 14"),
    (0x7341, "Navi 14"),
    (0x7347, "Navi 14"),
    (0x734f, "Navi 14"),
    (0x7360, "Navi 12"),
    (0x7362, "Navi 12"),
    (0x738c, "Arcturus (Instinct MI100)"),
];

/// The family of a card with the reset bug, `None` for any other device.
pub fn family(vendor: u16, device: u16) -> Option<&'static str> {
    if vendor != AMD {
        return None;
    }
    RESET_BUG_CARDS
        .iter()
        .find(|(id, _)| *id == device)
        .map(|(_, f)| *f)
}

/// What the udev rules say for one card: does a rule put `device_specific` into its
/// `reset_method`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The rule in this file matches the card.
    Matches(String),
    /// A rule in this file names the card in another case (`0x67DF`): udev compares
    /// attributes case-sensitively and sysfs prints lowercase, so it never matches.
    WrongCase {
        path: String,
        written: String,
    },
    None,
}

/// Search `rules` (`(path, text)` of each rules file) for a rule that writes
/// `device_specific` to `reset_method` and matches `vendor:device`.
pub fn rule_for(rules: &[(String, String)], vendor: u16, device: u16) -> Rule {
    let (v, d) = (format!("{vendor:#06x}"), format!("{device:#06x}"));
    let mut wrong_case = None;
    for (path, text) in rules {
        for line in text.lines().map(str::trim) {
            if line.starts_with('#')
                || !line.contains("reset_method")
                || !line.contains("device_specific")
            {
                continue;
            }
            let vend = attr_pattern(line, "vendor");
            let dev = attr_pattern(line, "device");
            let exact = |p: Option<&str>, value: &str| p.is_none_or(|p| udev_match(p, value));
            if exact(vend, &v) && exact(dev, &d) {
                return Rule::Matches(path.clone());
            }
            let upper = |p: Option<&str>, value: &str| {
                p.is_none_or(|p| udev_match(&p.to_ascii_lowercase(), value))
            };
            if wrong_case.is_none() && upper(vend, &v) && upper(dev, &d) {
                wrong_case = Some(Rule::WrongCase {
                    path: path.clone(),
                    written: dev.or(vend).unwrap_or_default().to_string(),
                });
            }
        }
    }
    wrong_case.unwrap_or(Rule::None)
}

/// The pattern of `ATTR{name}=="…"` (or `ATTRS{…}`) in a rule line.
fn attr_pattern<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    ["ATTR", "ATTRS"].iter().find_map(|kind| {
        let key = format!("{kind}{{{name}}}==\"");
        let at = line.find(&key)? + key.len();
        line[at..].split('"').next()
    })
}

/// udev's match: `|` separates alternatives, each a glob (`*`, `?`), case-sensitive.
fn udev_match(pattern: &str, value: &str) -> bool {
    pattern
        .split('|')
        .any(|alt| crate::facts::glob_match(alt, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_vendor_resets_67_ids_once_each_in_lowercase() {
        let mut ids: Vec<u16> = RESET_BUG_CARDS.iter().map(|(d, _)| *d).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 67);
        assert_eq!(family(AMD, 0x67df), Some("Polaris 10"));
        assert_eq!(family(AMD, 0x738c), Some("Arcturus (Instinct MI100)"));
        assert_eq!(family(AMD, 0x73bf), None, "Navi 21 resets fine");
        assert_eq!(family(0x10de, 0x67df), None);
    }

    fn rules(text: &str) -> Vec<(String, String)> {
        vec![(
            "/etc/udev/rules.d/99-vendor-reset.rules".into(),
            text.into(),
        )]
    }

    const UPSTREAM: &str = "ACTION==\"add\", SUBSYSTEM==\"pci\", ATTR{vendor}==\"0x1002\", ATTR{device}==\"0x67DF\", RUN+=\"/bin/sh -c '/sbin/modprobe vendor-reset; echo device_specific > /sys$env{DEVPATH}/reset_method'\"\n";

    #[test]
    fn an_uppercase_id_never_matches_and_is_named() {
        assert_eq!(
            rule_for(&rules(UPSTREAM), AMD, 0x67df),
            Rule::WrongCase {
                path: "/etc/udev/rules.d/99-vendor-reset.rules".into(),
                written: "0x67DF".into()
            }
        );
        let fixed = UPSTREAM.replace("0x67DF", "0x67df");
        assert_eq!(
            rule_for(&rules(&fixed), AMD, 0x67df),
            Rule::Matches("/etc/udev/rules.d/99-vendor-reset.rules".into())
        );
        assert_eq!(rule_for(&rules(&fixed), AMD, 0x67ef), Rule::None);
    }

    #[test]
    fn globs_alternatives_comments_and_other_rules() {
        let alt = UPSTREAM.replace("0x67DF", "0x67ef|0x67df");
        assert!(matches!(
            rule_for(&rules(&alt), AMD, 0x67df),
            Rule::Matches(_)
        ));
        let any = UPSTREAM.replace("ATTR{device}==\"0x67DF\", ", "");
        assert!(matches!(
            rule_for(&rules(&any), AMD, 0x6860),
            Rule::Matches(_)
        ));
        let glob = UPSTREAM.replace("0x67DF", "0x67*");
        assert!(matches!(
            rule_for(&rules(&glob), AMD, 0x67c0),
            Rule::Matches(_)
        ));
        let commented = format!("# {}", UPSTREAM.replace("0x67DF", "0x67df"));
        assert_eq!(rule_for(&rules(&commented), AMD, 0x67df), Rule::None);
        let other = "ACTION==\"add\", ATTR{vendor}==\"0x1002\", ATTR{device}==\"0x67df\", RUN+=\"/bin/true\"\n";
        assert_eq!(rule_for(&rules(other), AMD, 0x67df), Rule::None);
        let nvidia = UPSTREAM
            .replace("0x1002", "0x10de")
            .replace("0x67DF", "0x67df");
        assert_eq!(rule_for(&rules(&nvidia), AMD, 0x67df), Rule::None);
    }
}
