//! Function-level reset from PCI config space: the fallback for kernels before 5.15, which do
//! not list their reset methods. Pure: the bytes are read by the facts reader, and only when
//! [`may_read_config`] allows it.

/// Config space gpt reads: the standard capabilities all lie in the first 256 bytes.
pub const CONFIG_BYTES: usize = 256;

const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u8 = 0x10;
const CAP_PTR: usize = 0x34;
const CAP_ID_EXP: u8 = 0x10;
/// Device Capabilities (PCIe capability + 4), bit 28: Function Level Reset.
const DEVCAP_FLR: u32 = 1 << 28;

/// Whether the PCIe DevCap of `config` announces FLR; `None` when the bytes hold no PCIe
/// capability (a conventional PCI function, or only the 64 bytes a non-root read gets).
pub fn flr(config: &[u8]) -> Option<bool> {
    if config.get(STATUS)? & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = usize::from(*config.get(CAP_PTR)? & 0xfc);
    // A capability list is at most 48 entries long; a loop in a broken one stops here.
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let id = *config.get(at)?;
        if id == CAP_ID_EXP {
            let devcap = config.get(at + 4..at + 8)?;
            let devcap = u32::from_le_bytes(devcap.try_into().ok()?);
            return Some(devcap & DEVCAP_FLR != 0);
        }
        at = usize::from(*config.get(at + 1)? & 0xfc);
    }
    None
}

/// Whether config space may be read: never for a device in D3cold (any config read wakes a
/// runtime-suspended device), and, on this machine, only as root (past 64 bytes it needs
/// CAP_SYS_ADMIN, and the first 64 bytes do not hold the capability). `Err` says why not.
pub fn may_read_config(
    real_root: bool,
    euid_root: bool,
    power_state: Option<&str>,
    runtime_status: Option<&str>,
) -> Result<(), String> {
    if real_root && !euid_root {
        return Err("config space past 64 bytes needs root".into());
    }
    match (power_state, runtime_status) {
        (Some("D3cold"), _) => {
            Err("it is in D3cold, and reading config space would wake it".into())
        }
        (None, Some("suspended")) => {
            Err("it is runtime-suspended, and the kernel does not say whether in D3cold".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 256 bytes with a PM capability at 0x40 and a PCIe capability at 0x60 with `devcap`.
    pub fn config_with_devcap(devcap: u32) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[STATUS] = STATUS_CAP_LIST;
        c[CAP_PTR] = 0x40;
        c[0x40] = 0x01; // PM
        c[0x41] = 0x60;
        c[0x60] = CAP_ID_EXP;
        c[0x61] = 0x00;
        c[0x64..0x68].copy_from_slice(&devcap.to_le_bytes());
        c
    }

    #[test]
    fn devcap_bit_28_is_flr() {
        assert_eq!(flr(&config_with_devcap(0x1000_8fc0)), Some(true));
        assert_eq!(flr(&config_with_devcap(0x0000_8fc0)), Some(false));
    }

    #[test]
    fn no_capability_list_or_short_reads_say_nothing() {
        let mut c = config_with_devcap(DEVCAP_FLR);
        assert_eq!(flr(&c[..64]), None, "what a non-root read gets");
        assert_eq!(flr(&[]), None);
        c[STATUS] = 0;
        assert_eq!(flr(&c), None);
        // A list that loops on itself ends.
        let mut looped = config_with_devcap(DEVCAP_FLR);
        looped[0x40] = 0x05;
        looped[0x41] = 0x40;
        assert_eq!(flr(&looped), None);
        // A pointer into the header is the end of the list.
        let mut bad = config_with_devcap(DEVCAP_FLR);
        bad[CAP_PTR] = 0x10;
        assert_eq!(flr(&bad), None);
    }

    #[test]
    fn config_is_never_read_in_d3cold_nor_without_root() {
        assert!(may_read_config(true, true, Some("D0"), None).is_ok());
        assert!(may_read_config(false, false, Some("D3hot"), None).is_ok());
        let no_root = may_read_config(true, false, Some("D0"), None).unwrap_err();
        assert!(no_root.contains("root"), "{no_root}");
        assert!(may_read_config(true, true, Some("D3cold"), Some("suspended")).is_err());
        assert!(may_read_config(false, true, Some("D3cold"), None).is_err());
        // Before 5.11 there is no power_state: a suspended device might be in D3cold.
        assert!(may_read_config(true, true, None, Some("suspended")).is_err());
        assert!(may_read_config(true, true, None, Some("active")).is_ok());
    }
}
