//! PCI expansion ROMs (a card's video BIOS): the chain of images in a ROM dump, and what is
//! wrong with one. Pure: bytes in, plain data out; no I/O.
//!
//! Layout (PCI Firmware Specification 3.x): a ROM is a chain of images. Each image starts with
//! `0x55 0xAA`; the little-endian word at offset 0x18 points (from the image's start) to its
//! PCI data structure, which starts with `PCIR` and holds the vendor and device id (+4, +6), a
//! pointer to a list of further device ids (+8, revision 3), the class code (+0x0d, three bytes
//! from the programming interface up), the image length in 512-byte units (+0x10), the code
//! type (+0x14: 0 x86 legacy, 1 Open Firmware, 2 HP PA-RISC, 3 EFI) and the indicator (+0x15,
//! bit 7: the last image). The next image starts where this one ends. A legacy (x86) image
//! declares its initialization size at offset 2 (512-byte units) and its bytes over that size
//! sum to 0 mod 256.
//!
//! Flash tools save files with a header of their own before the first image (NVIDIA's do);
//! QEMU's `romfile=` needs the file to start at the image, so [`Chain::header`] says how many
//! bytes come first.

use serde::Serialize;

/// The signature every image starts with.
pub const SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// The unit of image lengths and of a legacy image's initialization size.
pub const BLOCK: usize = 512;
/// Bytes of the PCI data structure gpt reads (up to the indicator byte).
const PCIR_MIN: usize = 0x16;

/// What the code in an image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeType {
    /// x86 legacy BIOS code (a video BIOS run by SeaBIOS or a CSM).
    X86,
    OpenFirmware,
    HpPaRisc,
    /// A UEFI driver (the GOP a UEFI guest with OVMF runs).
    Efi,
    Other(u8),
}

impl CodeType {
    pub fn from_byte(b: u8) -> CodeType {
        match b {
            0 => CodeType::X86,
            1 => CodeType::OpenFirmware,
            2 => CodeType::HpPaRisc,
            3 => CodeType::Efi,
            n => CodeType::Other(n),
        }
    }

    pub fn name(self) -> String {
        match self {
            CodeType::X86 => "x86 legacy".into(),
            CodeType::OpenFirmware => "Open Firmware".into(),
            CodeType::HpPaRisc => "HP PA-RISC".into(),
            CodeType::Efi => "EFI".into(),
            CodeType::Other(n) => format!("type {n}"),
        }
    }
}

/// One image of the chain, as its own header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Where it starts, from the first byte of the data.
    pub offset: usize,
    pub vendor: u16,
    pub device: u16,
    /// Further device ids the image supports (the PCI 3.0 device list), without `device`.
    pub more_devices: Vec<u16>,
    /// Base class, subclass, programming interface (`0x030000`: VGA).
    pub class: u32,
    /// Its length in bytes (512 × the PCIR's length field).
    pub length: usize,
    pub code_type: CodeType,
    /// The indicator's bit 7: no image follows.
    pub last: bool,
    /// For an x86 image: the bytes the checksum covers (its initialization size) and whether
    /// they sum to 0 mod 256. `None` for other code types, which carry no such checksum.
    pub checksum: Option<Checksum>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub covers: usize,
    /// The sum of those bytes mod 256: 0 when valid.
    pub sum: u8,
}

impl Checksum {
    pub fn valid(&self) -> bool {
        self.sum == 0
    }
}

impl Image {
    /// Whether the image says it is for `device` of `vendor`.
    pub fn supports(&self, vendor: u16, device: u16) -> bool {
        self.vendor == vendor && (self.device == device || self.more_devices.contains(&device))
    }

    pub fn end(&self) -> usize {
        self.offset + self.length
    }
}

/// What a ROM dump holds: the bytes before the first image, the images, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Bytes before the first `0x55 0xAA` that starts a valid image (a flash tool's header).
    pub header: usize,
    pub images: Vec<Image>,
    /// Bytes after the end of the last image (padding of the flash chip, usually `0xff`).
    pub trailing: usize,
    /// What is wrong with the chain itself, one sentence each; empty when it is whole.
    pub problems: Vec<String>,
}

impl Chain {
    /// The bytes of the chain: from the first image to the end of the last one.
    pub fn bytes<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let end = self.images.last().map_or(self.header, Image::end);
        &data[self.header.min(data.len())..end.min(data.len())]
    }

    /// The card the ROM is for: the first image's ids.
    pub fn ids(&self) -> Option<(u16, u16)> {
        self.images.first().map(|i| (i.vendor, i.device))
    }

    /// Everything that keeps this ROM from being given to QEMU for a card with `expected`
    /// ids (`None`: any card): the chain's problems, each bad checksum, each image for another
    /// card, and (when `header_ok` is false) a header before the first image.
    pub fn verdict(&self, expected: Option<(u16, u16)>, header_ok: bool) -> Vec<String> {
        let mut out = self.problems.clone();
        if self.header > 0 && !header_ok && !self.images.is_empty() {
            out.push(format!(
                "{} bytes come before the first image (a flash tool's header): QEMU needs the file to start at 0x55 0xAA",
                self.header
            ));
        }
        for (n, img) in self.images.iter().enumerate() {
            if let Some(c) = img.checksum.filter(|c| !c.valid()) {
                out.push(format!(
                    "image {} ({}) has a bad checksum: its first {} bytes sum to 0x{:02x}, not 0 (damaged or modified)",
                    n + 1,
                    img.code_type.name(),
                    c.covers,
                    c.sum
                ));
            }
            if let Some((v, d)) = expected {
                if !img.supports(v, d) {
                    out.push(format!(
                        "image {} ({}) is for {:04x}:{:04x}, not this card's {v:04x}:{d:04x}: the ROM of another card",
                        n + 1,
                        img.code_type.name(),
                        img.vendor,
                        img.device
                    ));
                }
            }
        }
        out
    }
}

fn word(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

/// Parse a ROM dump. Never fails: what cannot be read is in `problems`.
pub fn parse(data: &[u8]) -> Chain {
    let mut chain = Chain {
        header: 0,
        images: Vec::new(),
        trailing: 0,
        problems: Vec::new(),
    };
    if data.is_empty() {
        chain
            .problems
            .push("the ROM is empty (0 bytes): the card gave nothing to read".into());
        return chain;
    }
    let Some(start) = first_image(data) else {
        chain.problems.push(no_image(data));
        return chain;
    };
    chain.header = start;
    let mut at = start;
    loop {
        let n = chain.images.len() + 1;
        let img = match image_at(data, at, n) {
            Ok(img) => img,
            Err(problem) => {
                chain.problems.push(problem);
                break;
            }
        };
        let (end, last) = (img.end(), img.last);
        chain.images.push(img);
        if end > data.len() {
            chain.problems.push(format!(
                "image {n} at 0x{at:x} declares {} bytes but only {} are there: the ROM is truncated",
                end - at,
                data.len() - at
            ));
            break;
        }
        if last {
            chain.trailing = data.len() - end;
            break;
        }
        if data.get(end..end + 2) != Some(&SIGNATURE[..]) {
            chain.problems.push(format!(
                "image {n} is not marked last, but no image follows at 0x{end:x}: the chain is truncated or damaged"
            ));
            break;
        }
        at = end;
    }
    chain
}

/// The offset of the first `0x55 0xAA` whose image header points to a `PCIR` structure.
fn first_image(data: &[u8]) -> Option<usize> {
    (0..data.len().saturating_sub(1)).find(|&at| {
        data[at..].starts_with(&SIGNATURE)
            && word(data, at + 0x18)
                .map(|p| at + p as usize)
                .is_some_and(|p| data.get(p..p + 4) == Some(b"PCIR"))
    })
}

fn no_image(data: &[u8]) -> String {
    if data.iter().all(|&b| b == 0xff) {
        return format!(
            "all {} bytes are 0xff: the card answered nothing (a ROM that is disabled, or a card in a low-power state)",
            data.len()
        );
    }
    if data.starts_with(&SIGNATURE) {
        return "the image at 0 has no PCI data structure (no PCIR where its header points): not a PCI option ROM, or damaged".into();
    }
    format!(
        "no image in {} bytes (no 0x55 0xAA followed by a PCI data structure): not a PCI option ROM",
        data.len()
    )
}

/// The image at `at` (the `n`-th), or why there is none.
fn image_at(data: &[u8], at: usize, n: usize) -> Result<Image, String> {
    if data.get(at..at + 2) != Some(&SIGNATURE[..]) {
        return Err(format!("image {n} at 0x{at:x} has no 0x55 0xAA signature"));
    }
    let pcir = word(data, at + 0x18)
        .map(|p| at + p as usize)
        .filter(|&p| data.get(p..p + 4) == Some(b"PCIR"))
        .ok_or_else(|| {
            format!(
                "image {n} at 0x{at:x} has no PCI data structure (no PCIR where its header points)"
            )
        })?;
    if data.len() < pcir + PCIR_MIN {
        return Err(format!(
            "image {n} at 0x{at:x}: its PCI data structure is cut off: the ROM is truncated"
        ));
    }
    let w = |off: usize| word(data, pcir + off).unwrap_or(0);
    let length = w(0x10) as usize * BLOCK;
    if length == 0 {
        return Err(format!("image {n} at 0x{at:x} declares a length of 0"));
    }
    let class = u32::from(data[pcir + 0x0d])
        | u32::from(data[pcir + 0x0e]) << 8
        | u32::from(data[pcir + 0x0f]) << 16;
    let code_type = CodeType::from_byte(data[pcir + 0x14]);
    let checksum = (code_type == CodeType::X86).then(|| {
        let init = data.get(at + 2).map_or(0, |&b| b as usize * BLOCK);
        let covers = if init == 0 || init > length {
            length
        } else {
            init
        };
        let bytes = &data[at..(at + covers).min(data.len())];
        Checksum {
            covers,
            sum: bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)),
        }
    });
    Ok(Image {
        offset: at,
        vendor: w(0x04),
        device: w(0x06),
        more_devices: device_list(data, pcir, data[pcir + 0x0c], w(0x08)),
        class,
        length,
        code_type,
        last: data[pcir + 0x15] & 0x80 != 0,
        checksum,
    })
}

/// The PCI 3.0 device list: zero-terminated device ids at `pcir + ptr` (revision 3 and up).
fn device_list(data: &[u8], pcir: usize, revision: u8, ptr: u16) -> Vec<u16> {
    if revision < 3 || ptr == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = pcir + ptr as usize;
    while let Some(id) = word(data, at).filter(|&id| id != 0) {
        out.push(id);
        at += 2;
        if out.len() >= 64 {
            break;
        }
    }
    out
}

/// One image as `--json` shows it.
#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub offset: usize,
    pub code_type: String,
    pub vendor_id: String,
    pub device_id: String,
    pub class: String,
    pub length: usize,
    pub last: bool,
    /// `valid`, `invalid`, or `none` (not an x86 image).
    pub checksum: &'static str,
}

impl ImageJson {
    pub fn new(img: &Image) -> ImageJson {
        ImageJson {
            offset: img.offset,
            code_type: img.code_type.name(),
            vendor_id: format!("{:04x}", img.vendor),
            device_id: format!("{:04x}", img.device),
            class: format!("{:06x}", img.class),
            length: img.length,
            last: img.last,
            checksum: match img.checksum {
                Some(c) if c.valid() => "valid",
                Some(_) => "invalid",
                None => "none",
            },
        }
    }
}

/// One line per image: `image 1 at 0x0: x86 legacy, 1234:1111, class 030000, 39936 bytes,
/// last, checksum valid`.
pub fn describe(chain: &Chain) -> String {
    let mut s = String::new();
    for (n, img) in chain.images.iter().enumerate() {
        let checksum = match img.checksum {
            Some(c) if c.valid() => ", checksum valid".to_string(),
            Some(c) => format!(", checksum BAD (sum 0x{:02x})", c.sum),
            None => String::new(),
        };
        s.push_str(&format!(
            "image {} at 0x{:x}: {}, {:04x}:{:04x}, class {:06x}, {} bytes{}{}\n",
            n + 1,
            img.offset,
            img.code_type.name(),
            img.vendor,
            img.device,
            img.class,
            img.length,
            if img.last { ", last" } else { "" },
            checksum
        ));
    }
    s
}

#[cfg(test)]
pub(crate) mod build {
    //! ROM images built for tests.

    /// An image of `blocks` × 512 bytes for `vendor:device`, with `code_type` and the last
    /// bit, its checksum made valid for x86 images.
    pub fn image(vendor: u16, device: u16, code_type: u8, blocks: u16, last: bool) -> Vec<u8> {
        let mut b = vec![0u8; blocks as usize * 512];
        b[0] = 0x55;
        b[1] = 0xaa;
        b[2] = blocks as u8;
        b[0x18..0x1a].copy_from_slice(&0x40u16.to_le_bytes());
        let p = 0x40;
        b[p..p + 4].copy_from_slice(b"PCIR");
        b[p + 4..p + 6].copy_from_slice(&vendor.to_le_bytes());
        b[p + 6..p + 8].copy_from_slice(&device.to_le_bytes());
        b[p + 0x0a..p + 0x0c].copy_from_slice(&0x18u16.to_le_bytes());
        b[p + 0x0f] = 0x03; // class 030000
        b[p + 0x10..p + 0x12].copy_from_slice(&blocks.to_le_bytes());
        b[p + 0x14] = code_type;
        b[p + 0x15] = if last { 0x80 } else { 0 };
        for (i, x) in b.iter_mut().enumerate().skip(0x100) {
            *x = (i * 7 + device as usize) as u8;
        }
        if code_type == 0 {
            fix_checksum(&mut b);
        }
        b
    }

    /// Make the image's bytes sum to 0 (through the last byte).
    pub fn fix_checksum(b: &mut [u8]) {
        let n = b.len();
        b[n - 1] = 0;
        let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        b[n - 1] = sum.wrapping_neg();
    }

    /// A legacy image followed by an EFI one, as on most cards since 2012.
    pub fn legacy_and_efi(vendor: u16, device: u16) -> Vec<u8> {
        let mut rom = image(vendor, device, 0, 4, false);
        rom.extend(image(vendor, device, 3, 2, true));
        rom
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use proptest::prelude::*;

    const NV: (u16, u16) = (0x10de, 0x1f08);

    #[test]
    fn a_legacy_and_efi_chain_is_clean_for_its_card() {
        let rom = legacy_and_efi(NV.0, NV.1);
        let c = parse(&rom);
        assert_eq!(c.header, 0);
        assert_eq!(c.trailing, 0);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.images.len(), 2);
        let (a, b) = (&c.images[0], &c.images[1]);
        assert_eq!(
            (a.offset, a.length, a.code_type, a.last),
            (0, 2048, CodeType::X86, false)
        );
        assert_eq!(
            (b.offset, b.length, b.code_type, b.last),
            (2048, 1024, CodeType::Efi, true)
        );
        assert_eq!(a.class, 0x030000);
        assert!(a.checksum.unwrap().valid());
        assert_eq!(b.checksum, None);
        assert_eq!(c.verdict(Some(NV), false), Vec::<String>::new());
        assert_eq!(c.bytes(&rom), &rom[..]);
        assert_eq!(c.ids(), Some(NV));
        assert_eq!(
            describe(&c),
            "image 1 at 0x0: x86 legacy, 10de:1f08, class 030000, 2048 bytes, checksum valid\n\
             image 2 at 0x800: EFI, 10de:1f08, class 030000, 1024 bytes, last\n"
        );
    }

    #[test]
    fn a_bad_checksum_is_named() {
        let mut rom = legacy_and_efi(NV.0, NV.1);
        rom[0x200] ^= 0x01;
        let c = parse(&rom);
        assert!(c.problems.is_empty());
        let v = c.verdict(Some(NV), false);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].starts_with(
                "image 1 (x86 legacy) has a bad checksum: its first 2048 bytes sum to 0x"
            ),
            "{v:?}"
        );
    }

    #[test]
    fn another_cards_rom_is_refused_for_this_card() {
        let rom = legacy_and_efi(0x10de, 0x2484);
        let v = parse(&rom).verdict(Some(NV), false);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].contains("image 1 (x86 legacy) is for 10de:2484, not this card's 10de:1f08"),
            "{v:?}"
        );
        assert!(parse(&rom).verdict(None, false).is_empty());
    }

    #[test]
    fn the_pci_3_device_list_names_more_cards() {
        let mut rom = image(0x1002, 0x73bf, 0, 2, true);
        rom[0x40 + 0x0c] = 3; // PCIR revision 3
        rom[0x40 + 8..0x40 + 10].copy_from_slice(&0x20u16.to_le_bytes());
        rom[0x60..0x62].copy_from_slice(&0x73afu16.to_le_bytes());
        rom[0x62..0x64].copy_from_slice(&0u16.to_le_bytes());
        fix_checksum(&mut rom);
        let c = parse(&rom);
        assert_eq!(c.images[0].more_devices, vec![0x73af]);
        assert!(c.verdict(Some((0x1002, 0x73af)), false).is_empty());
        assert_eq!(c.verdict(Some((0x1002, 0x7340)), false).len(), 1);
    }

    #[test]
    fn a_flash_tools_header_is_found_and_can_be_stripped() {
        let clean = legacy_and_efi(NV.0, NV.1);
        let mut file = b"NVGI header \x55\xaa not an image".to_vec();
        file.resize(0x400, 0x20);
        let head = file.len();
        file.extend(&clean);
        let c = parse(&file);
        assert_eq!(c.header, head);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.bytes(&file), &clean[..]);
        let v = c.verdict(Some(NV), false);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].starts_with("1024 bytes come before the first image"),
            "{v:?}"
        );
        assert!(c.verdict(Some(NV), true).is_empty());
    }

    #[test]
    fn a_truncated_chain_says_so() {
        let rom = legacy_and_efi(NV.0, NV.1);
        let c = parse(&rom[..2048 + 600]);
        assert_eq!(c.problems.len(), 1);
        assert!(
            c.problems[0].contains("image 2 at 0x800 declares 1024 bytes but only 600 are there"),
            "{:?}",
            c.problems
        );
        let c = parse(&rom[..2048]);
        assert!(
            c.problems[0].contains("image 1 is not marked last, but no image follows at 0x800"),
            "{:?}",
            c.problems
        );
        let c = parse(&rom[..0x50]);
        assert!(
            c.problems[0].contains("its PCI data structure is cut off"),
            "{:?}",
            c.problems
        );
    }

    #[test]
    fn empty_blank_and_foreign_data_are_no_rom() {
        assert!(parse(&[]).problems[0].starts_with("the ROM is empty"));
        assert!(parse(&[0xff; 4096]).problems[0].starts_with("all 4096 bytes are 0xff"));
        assert!(parse(b"\x7fELF and more").problems[0].starts_with("no image in 13 bytes"));
        let mut no_pcir = image(1, 2, 0, 1, true);
        no_pcir[0x40] = b'X';
        assert!(parse(&no_pcir).problems[0].starts_with("the image at 0 has no PCI data structure"));
        for bad in [&[][..], &[0xff; 4096][..], b"\x7fELF"] {
            let c = parse(bad);
            assert!(c.images.is_empty());
            assert!(!c.verdict(None, true).is_empty());
        }
    }

    #[test]
    fn trailing_padding_is_not_part_of_the_chain() {
        let mut rom = image(0x1234, 0x1111, 0, 78, true);
        let chain = rom.clone();
        rom.resize(65536, 0xff);
        let c = parse(&rom);
        assert!(c.problems.is_empty());
        assert_eq!(c.trailing, 65536 - 78 * 512);
        assert_eq!(c.bytes(&rom), &chain[..]);
    }

    #[test]
    fn a_zero_length_image_ends_the_walk() {
        let mut rom = image(1, 2, 0, 1, true);
        rom[0x50..0x52].copy_from_slice(&0u16.to_le_bytes());
        let c = parse(&rom);
        assert!(c.problems[0].contains("declares a length of 0"));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_stays_inside_the_data(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let c = parse(&data);
            let b = c.bytes(&data);
            prop_assert!(b.len() <= data.len());
            if c.problems.is_empty() {
                prop_assert!(!c.images.is_empty());
                prop_assert!(c.images.last().unwrap().last);
                prop_assert_eq!(c.header + b.len() + c.trailing, data.len());
            }
        }

        #[test]
        fn any_byte_flipped_in_a_legacy_image_breaks_its_checksum(at in 0x100usize..2047, bit in 0u8..8) {
            let mut rom = legacy_and_efi(NV.0, NV.1);
            rom[at] ^= 1 << bit;
            prop_assert!(!parse(&rom).verdict(Some(NV), false).is_empty());
        }
    }
}
