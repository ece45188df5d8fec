//! gpt's own `/etc/dracut.conf.d/gpt-vfio.conf`: rendered whole, deterministic.
//!
//! dracut reads only `*.conf` files there. `force_drivers+=" … "` puts the modules into the
//! image and loads them early (lists are space-separated, with a space inside each quote, so
//! that `+=` joins cleanly). dracut copies `/etc/modprobe.d` into the image only in host-only
//! mode, so `install_items+=` names gpt's modprobe.d file for generic images too.

use super::modprobe::HEADER_FIRST_LINE;

/// Whether the file was written by gpt (the same first line as gpt's modprobe.d file).
pub fn is_gpt_owned(content: &str) -> bool {
    super::modprobe::is_gpt_owned(content)
}

/// The whole file for `modules` (plain module names, `_` spelling), carrying `items` into the
/// image and adding the dracut modules `dracut_modules` (gpt's early binding step). Neither
/// modules nor dracut modules: no file (`None`).
pub fn render(modules: &[String], items: &[&str], dracut_modules: &[&str]) -> Option<String> {
    if modules.is_empty() && dracut_modules.is_empty() {
        return None;
    }
    let mut s = format!(
        "{HEADER_FIRST_LINE}\n\
         # dracut: vfio-pci must claim the passthrough devices before any GPU driver.\n"
    );
    if !modules.is_empty() {
        s.push_str(&format!("force_drivers+=\" {} \"\n", modules.join(" ")));
    }
    if !items.is_empty() {
        s.push_str(&format!("install_items+=\" {} \"\n", items.join(" ")));
    }
    if !dracut_modules.is_empty() {
        s.push_str(&format!(
            "# gpt's early binding step, a pre-udev hook (its module is in /usr/lib/dracut/modules.d).\n\
             add_dracutmodules+=\" {} \"\n",
            dracut_modules.join(" ")
        ));
    }
    Some(s)
}

/// The modules of the `force_drivers+=` lines of `content`.
pub fn forced(content: &str) -> Vec<String> {
    content
        .lines()
        .filter_map(|l| l.trim().strip_prefix("force_drivers+="))
        .flat_map(|v| v.trim().trim_matches('"').split_whitespace())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_forces_the_modules_with_spaces_inside_the_quotes() {
        let mods = vec![
            "vfio".to_string(),
            "vfio_iommu_type1".into(),
            "vfio_pci".into(),
        ];
        let text = render(&mods, &["/etc/modprobe.d/gpt-vfio.conf"], &[]).unwrap();
        assert!(is_gpt_owned(&text));
        assert!(text.contains("\nforce_drivers+=\" vfio vfio_iommu_type1 vfio_pci \"\n"));
        assert!(text.ends_with("install_items+=\" /etc/modprobe.d/gpt-vfio.conf \"\n"));
        assert_eq!(forced(&text), mods);
        assert!(!text.contains("add_dracutmodules"));
        assert_eq!(render(&[], &["/x"], &[]), None);
        // The early step alone (vfio-pci built into every kernel) still needs the file.
        let early = render(&[], &["/x"], &["gpt-vfio"]).unwrap();
        assert!(!early.contains("force_drivers"), "{early}");
        assert!(early.ends_with("install_items+=\" /x \"\n# gpt's early binding step, a pre-udev hook (its module is in /usr/lib/dracut/modules.d).\nadd_dracutmodules+=\" gpt-vfio \"\n"), "{early}");
        assert!(forced(&early).is_empty());
        let both = render(&mods, &["/x"], &["gpt-vfio"]).unwrap();
        assert_eq!(forced(&both), mods);
    }
}
