//! Kernel command-line tokens, as found in `GRUB_CMDLINE_LINUX*` values and `/proc/cmdline`.

/// The ASCII-whitespace separated tokens of a command line.
pub fn split(value: &str) -> Vec<&str> {
    value.split_ascii_whitespace().collect()
}

/// The parameter name of a token: the text before the first `=` (the whole token if there
/// is none), with `-` normalized to `_`, because the kernel treats them as the same in
/// parameter names (`vfio-pci.ids` and `vfio_pci.ids` are one key).
pub fn key(token: &str) -> String {
    let name = token.split_once('=').map_or(token, |(k, _)| k);
    name.replace('-', "_")
}

/// The value of a token after the first `=`, if it has one.
pub fn value(token: &str) -> Option<&str> {
    token.split_once('=').map(|(_, v)| v)
}

/// The tokens that switch the IOMMU off, which passthrough cannot work without.
///
/// A foreign `vfio-pci.ids=` is not reported here: whether it is a conflict is the caller's
/// decision.
pub fn iommu_off(value_tokens: &[&str]) -> Vec<String> {
    value_tokens
        .iter()
        .filter(|t| {
            let key = key(t);
            matches!(key.as_str(), "intel_iommu" | "amd_iommu" | "iommu")
                && value(t).is_some_and(|v| v.split(',').any(|o| o == "off"))
        })
        .map(|t| t.to_string())
        .collect()
}

/// The `options` of a Boot Loader Specification entry (several lines are joined).
pub fn entry_options(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            l.strip_prefix("options")
                .filter(|r| r.starts_with([' ', '\t']))
        })
        .flat_map(split)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicting_tokens() {
        let t = [
            "quiet",
            "intel_iommu=off",
            "amd_iommu=off",
            "iommu=off",
            "iommu=pt",
            "intel_iommu=on,igfx_off",
            "intel-iommu=off",
        ];
        assert_eq!(
            iommu_off(&t),
            [
                "intel_iommu=off",
                "amd_iommu=off",
                "iommu=off",
                "intel-iommu=off"
            ]
        );
        assert!(iommu_off(&["vfio-pci.ids=1:2"]).is_empty());
    }

    #[test]
    fn split_on_any_ascii_whitespace() {
        assert_eq!(
            split("  quiet\tsplash \n iommu=pt "),
            ["quiet", "splash", "iommu=pt"]
        );
        assert!(split("").is_empty());
        assert!(split(" \t ").is_empty());
    }

    #[test]
    fn key_normalizes_dashes_in_the_name_only() {
        assert_eq!(key("vfio-pci.ids=10de:1f08"), "vfio_pci.ids");
        assert_eq!(key("vfio_pci.ids=10de:1f08"), "vfio_pci.ids");
        assert_eq!(key("quiet"), "quiet");
        assert_eq!(key("rd.driver.pre=vfio-pci"), "rd.driver.pre");
        assert_eq!(key("a=b=c"), "a");
    }

    #[test]
    fn value_is_after_the_first_equals() {
        assert_eq!(value("video=efifb:off"), Some("efifb:off"));
        assert_eq!(value("a=b=c"), Some("b=c"));
        assert_eq!(value("quiet"), None);
        assert_eq!(value("x="), Some(""));
    }
}
