//! The ESPs Proxmox VE's proxmox-boot-tool manages (listed in `/etc/kernel/proxmox-boot-uuids`,
//! not kept mounted), read as they are: which loader each boots, and the command lines of its
//! entries.
//!
//! gpt never mounts them in the host's mount namespace. It starts itself again through the
//! runner as `unshare --mount --propagation private -- gpt --root ROOT __read-esps UUID…`
//! (proxmox-boot-tool re-executes itself in a private namespace the same way). That process
//! refuses to mount anything unless its mount namespace is another one than its parent's (it
//! compares `/proc/self/ns/mnt` with `/proc/PPID/ns/mnt` itself: no argument can tell it
//! so), makes every mount in it private, mounts each `/dev/disk/by-uuid/UUID`
//! read-only (vfat; nosuid, nodev, noexec) on a temp folder, reads it, unmounts it, and prints
//! one JSON document ([`parse`] reads it back). The mounts die with the namespace.
//!
//! Under a `--root` other than `/` the device is looked up inside the root
//! (`ROOT/dev/disk/by-uuid/UUID`, symlinks resolved inside it), and a folder there stands for
//! the file system: it is bind-mounted read-only instead. That is how the tests read, with
//! real processes and real mounts, what the fake `proxmox-boot-tool refresh` wrote.
//!
//! Not while a refresh runs: gpt reads only after its own refresh ended (the runner waits for
//! it), under its own lock. proxmox-boot-tool takes no lock gpt could share (none in the
//! proxmox-kernel-helper scripts read for this: they mount, write, unmount), so gpt looks for a
//! running `proxmox-boot-tool` or one of its hook scripts in the host's processes (root's only,
//! a shell running the script: not anything a user names so) and does not read then. While an ESP is mounted read-write elsewhere, the kernel refuses a read-only
//! mount of it (EBUSY), which gpt reports as such.

use crate::host::Host;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The list of managed ESPs.
pub const UUIDS: &str = "/etc/kernel/proxmox-boot-uuids";
/// The hidden subcommand that reads them.
pub const HELPER: &str = "__read-esps";
/// The version of the helper's output.
const FORMAT: u32 = 1;

/// One managed ESP as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Esp {
    pub uuid: String,
    /// Why it could not be read (nothing else is known then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `EFI/proxmox/grubx64.efi` (the machine's GRUB image) exists: proxmox-boot-tool puts
    /// GRUB's configuration on this ESP, not systemd-boot entries.
    #[serde(default)]
    pub grub_efi: bool,
    /// `loader/loader.conf` exists (systemd-boot's; proxmox-boot-tool skips a systemd-boot
    /// ESP without it).
    #[serde(default)]
    pub loader_conf: bool,
    /// `loader/entries/proxmox-*.conf`, in name order.
    #[serde(default)]
    pub entries: Vec<EspEntry>,
    /// `grub/grub.cfg` exists.
    #[serde(default)]
    pub grub_cfg: bool,
    /// The arguments of each `linux` line of `grub/grub.cfg` (kernel path first).
    #[serde(default)]
    pub grub_linux: Vec<String>,
}

/// One systemd-boot entry proxmox-boot-tool wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EspEntry {
    /// `proxmox-6.8.12-4-pve.conf`
    pub name: String,
    /// Its `options` lines, joined by a space.
    pub options: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Doc {
    format: u32,
    esps: Vec<Esp>,
}

impl Esp {
    /// Whether proxmox-boot-tool puts GRUB on this ESP: its GRUB image is there, or the host
    /// did not boot by UEFI (`efi`: `/sys/firmware/efi` exists).
    pub fn boots_grub(&self, efi: bool) -> bool {
        self.grub_efi || !efi
    }

    /// The kernel version of an entry `proxmox-KVER.conf`.
    pub fn entry_of(&self, kver: &str) -> Option<&EspEntry> {
        let name = format!("proxmox-{kver}.conf");
        self.entries.iter().find(|e| e.name == name)
    }
}

/// The GRUB image proxmox-boot-tool looks for in `EFI/proxmox/`, by machine.
fn grub_image() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "grubaa64.efi",
        "loongarch64" => "grubloongarch64.efi",
        "riscv64" => "grubriscv64.efi",
        _ => "grubx64.efi",
    }
}

/// Whether `s` is a VFAT volume id as proxmox-boot-tool lists them (`4A1B-2C3D`).
fn is_vfat_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 9
        && b[4] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_hexdigit())
}

/// The ESPs of the list, in its order: the lines that are a VFAT volume id (proxmox-boot-tool
/// skips the others, its own `#` comment among them).
pub fn uuids(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in list.lines() {
        if is_vfat_uuid(l) && !out.iter().any(|u| u == l) {
            out.push(l.to_string());
        }
    }
    out
}

/// The kernels the user told proxmox-boot-tool to keep on the ESPs: every line of
/// `/etc/kernel/proxmox-boot-manual-kernels`, and the first line of the pin files
/// (`proxmox-boot-pin`, `next-boot-pin`), as the tool reads them.
pub fn chosen_kernels(host: &Host) -> Vec<String> {
    let read = |p: &str| host.read_optional(p).ok().flatten().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let manual = read("/etc/kernel/proxmox-boot-manual-kernels");
    let pins = ["/etc/kernel/proxmox-boot-pin", "/etc/kernel/next-boot-pin"]
        .map(|p| read(p).lines().next().unwrap_or_default().to_string());
    for k in manual.lines().map(str::to_string).chain(pins) {
        let k = k.trim().to_string();
        if !k.is_empty() && !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// Read the helper's output back.
pub fn parse(out: &str) -> Result<Vec<Esp>, String> {
    let doc: Doc = serde_json::from_str(out.trim())
        .map_err(|e| format!("the ESP reader printed something gpt cannot read ({e})"))?;
    if doc.format != FORMAT {
        return Err(format!(
            "the ESP reader printed format {} where gpt reads format {FORMAT}",
            doc.format
        ));
    }
    for e in &doc.esps {
        if !is_vfat_uuid(&e.uuid) {
            return Err(format!(
                "the ESP reader printed an ESP without a valid UUID ({:?})",
                e.uuid
            ));
        }
    }
    Ok(doc.esps)
}

/// A running proxmox-boot-tool (or one of the hook scripts a refresh runs), as `pid command`,
/// from the host's `/proc`. Only root's processes count, and only a shell running the script
/// (`/proc/PID/exe` is the shell, the script is its first argument): any user can start a
/// process whose argv[0] is `proxmox-boot-tool`, and that must not switch gpt's checks off.
fn refresh_running(host: &Host) -> Option<String> {
    let me = std::process::id().to_string();
    for pid in host.list_dir("/proc").ok()? {
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(raw) = host.read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let status = host
            .read_optional(format!("/proc/{pid}/status"))
            .ok()
            .flatten();
        let exe = host.link_target(format!("/proc/{pid}/exe"));
        let exe = exe.as_deref().and_then(Path::to_str);
        if runs_the_tool(status.as_deref(), exe, &argv) {
            return Some(format!("process {pid}: {}", argv.join(" ")));
        }
    }
    None
}

/// Whether a process is root running proxmox-boot-tool or one of its hook scripts: its real and
/// effective uid are 0 (`status`), its executable (`exe`) is a shell, and the script that
/// shell runs (`argv[1]`, as the kernel starts a `#!` script) is the tool's. Pure.
fn runs_the_tool(status: Option<&str>, exe: Option<&str>, argv: &[String]) -> bool {
    const NAMES: [&str; 3] = [
        "proxmox-boot-tool",
        "zz-proxmox-boot",
        "proxmox-auto-removal",
    ];
    const SHELLS: [&str; 6] = [
        "/usr/bin/bash",
        "/usr/bin/dash",
        "/usr/bin/sh",
        "/bin/bash",
        "/bin/dash",
        "/bin/sh",
    ];
    let root = status
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() == 4 && ids[..2] == ["0", "0"]
        });
    let shell = exe.is_some_and(|e| SHELLS.contains(&e));
    let script = argv
        .get(1)
        .and_then(|a| a.rsplit('/').next())
        .is_some_and(|name| NAMES.contains(&name));
    root && shell && script
}

/// The mount namespace of process `pid` (`self` or a number) on this machine, as the device
/// and inode of `/proc/PID/ns/mnt`: two processes share a namespace when these are equal.
fn mount_namespace(pid: &str) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))?;
    Ok((m.dev(), m.ino()))
}

/// The managed ESPs as they are now, each read in a private mount namespace; or why they
/// could not be read (then gpt falls back to what it can tell without them, and says so).
pub fn read(host: &Host) -> Result<Vec<Esp>, String> {
    let list = match host.read_optional(UUIDS) {
        Ok(Some(l)) => l,
        Ok(None) => return Err(format!("there is no {UUIDS}")),
        Err(e) => return Err(format!("{e:#}")),
    };
    let uuids = uuids(&list);
    if uuids.is_empty() {
        return Err(format!("{UUIDS} lists no ESP"));
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("gpt is not running as root, so it cannot mount the ESPs to read them".into());
    }
    if let Some(p) = refresh_running(host) {
        return Err(format!(
            "proxmox-boot-tool is running ({p}): gpt does not read the ESPs while it may be \
             writing them"
        ));
    }
    let runner = crate::runner::Runner::new(host, &crate::progress::Quiet);
    let mut args = vec![HELPER.to_string()];
    args.extend(uuids);
    let c = runner
        .query_gpt_unshared(&args)
        .map_err(|e| format!("cannot read the ESPs: {e:#}"))?;
    if !c.status.success() {
        let err = String::from_utf8_lossy(&c.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect::<Vec<_>>();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "reading the ESPs in a private mount namespace (unshare --mount) failed: {}",
            if tail.is_empty() {
                format!("{}, without a message", c.status)
            } else {
                tail.join(" / ")
            }
        ));
    }
    parse(&c.stdout_str())
}

/// `gpt __read-esps`: in a private mount namespace only, read each ESP and print the JSON
/// document [`parse`] reads.
pub fn helper(host: &Host, uuids: &[String]) -> Result<u8> {
    let here = mount_namespace("self").context("cannot read /proc/self/ns/mnt")?;
    let parent = nix::unistd::getppid().to_string();
    let theirs = mount_namespace(&parent)
        .with_context(|| format!("cannot read /proc/{parent}/ns/mnt, its parent's"))?;
    if here == theirs {
        bail!(
            "{HELPER} mounts the ESPs only in a mount namespace of its own, and this is the one \
             of the process that started it ({parent}); gpt runs it through `unshare --mount \
             --propagation private`"
        );
    }
    // Nothing mounted here may reach another namespace, whatever unshare was told.
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("cannot make the mounts of this namespace private")?;
    let esps = uuids.iter().map(|u| read_one(host, u)).collect();
    let doc = Doc {
        format: FORMAT,
        esps,
    };
    println!("{}", serde_json::to_string(&doc)?);
    Ok(0)
}

/// The file system to mount for ESP `uuid`, and whether it is a folder standing for one
/// (only under a root other than `/`).
fn source(host: &Host, uuid: &str) -> Result<(PathBuf, bool), String> {
    use std::os::unix::fs::FileTypeExt;
    let abs = format!("/dev/disk/by-uuid/{uuid}");
    let path = if host.is_real_root() {
        PathBuf::from(&abs)
    } else {
        host.resolve(&abs).map_err(|e| format!("{e:#}"))?
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{abs} does not exist (proxmox-boot-tool skips it too; `proxmox-boot-tool clean` \
                 takes it off {UUIDS})"
            ))
        }
        Err(e) => return Err(format!("cannot look at {abs}: {e}")),
    };
    if meta.file_type().is_block_device() {
        Ok((path, false))
    } else if meta.is_dir() && !host.is_real_root() {
        Ok((path, true))
    } else {
        Err(format!("{abs} is not a block device"))
    }
}

/// Mount one ESP read-only on a temp folder, read it, unmount it.
fn read_one(host: &Host, uuid: &str) -> Esp {
    let mut esp = Esp {
        uuid: uuid.to_string(),
        ..Esp::default()
    };
    if let Err(why) = mount_and_read(host, &mut esp) {
        esp = Esp {
            uuid: uuid.to_string(),
            error: Some(why),
            ..Esp::default()
        };
    }
    esp
}

fn mount_and_read(host: &Host, esp: &mut Esp) -> Result<(), String> {
    use nix::errno::Errno;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    if !is_vfat_uuid(&esp.uuid) {
        return Err(format!("{:?} is not a VFAT volume id", esp.uuid));
    }
    let (src, folder) = source(host, &esp.uuid)?;
    if !folder {
        // Already mounted (read-write at /boot/efi, say): the kernel refuses a second,
        // read-only mount (EBUSY), so read it where it is.
        if let Some(at) = already_mounted(&src) {
            return read_tree(&at, esp);
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("gpt-esp-")
        .tempdir()
        .map_err(|e| format!("cannot create a folder to mount it on: {e}"))?;
    let safe = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = if folder {
        mount(
            Some(&src),
            dir.path(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .and_then(|()| {
            let r = mount(
                None::<&str>,
                dir.path(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | safe,
                None::<&str>,
            );
            if r.is_err() {
                let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
            }
            r
        })
    } else {
        mount(Some(&src), dir.path(), Some("vfat"), safe, None::<&str>)
    };
    let shown = format!("/dev/disk/by-uuid/{}", esp.uuid);
    match mounted {
        Ok(()) => {}
        Err(Errno::EBUSY) => {
            return Err(format!(
                "cannot mount {shown} read-only: it is mounted read-write elsewhere (a \
                 proxmox-boot-tool refresh running?)"
            ))
        }
        Err(e) => return Err(format!("cannot mount {shown} read-only: {e}")),
    }
    let read = read_tree(dir.path(), esp);
    let unmounted = umount2(dir.path(), MntFlags::MNT_DETACH);
    read?;
    unmounted.map_err(|e| format!("cannot unmount {shown}: {e}"))
}

/// Where the block device `src` is mounted now in this namespace, if it is.
fn already_mounted(src: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(src).ok()?.rdev();
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mount_point_of(&mounts, |source| {
        std::fs::metadata(source).is_ok_and(|m| m.rdev() == rdev)
    })
}

/// The first mount point in a `/proc/self/mounts` text whose source `is_it` (octal escapes
/// such as `\040` for a blank undone).
fn mount_point_of(mounts: &str, is_it: impl Fn(&str) -> bool) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut cols = l.split(' ');
        let (source, target) = (cols.next()?, cols.next()?);
        (source.starts_with('/') && is_it(&unescape(source)))
            .then(|| PathBuf::from(unescape(target)))
    })
}

/// `/proc/mounts` writes a blank, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A regular file's text (`None`: absent or not a regular file).
fn text(path: &Path) -> Result<Option<String>, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => std::fs::read(path)
            .map(|b| Some(String::from_utf8_lossy(&b).into_owned()))
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn is_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// What boots from the ESP mounted at `dir`.
fn read_tree(dir: &Path, esp: &mut Esp) -> Result<(), String> {
    esp.grub_efi = is_file(&dir.join("EFI/proxmox").join(grub_image()));
    esp.loader_conf = is_file(&dir.join("loader/loader.conf"));
    let entries = dir.join("loader/entries");
    let mut names: Vec<String> = match std::fs::read_dir(&entries) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("proxmox-") && n.ends_with(".conf"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot list loader/entries: {e}")),
    };
    names.sort();
    for name in names {
        if let Some(t) = text(&entries.join(&name))? {
            let options = crate::edit::cmdline::entry_options(&t).join(" ");
            esp.entries.push(EspEntry { name, options });
        }
    }
    if let Some(cfg) = text(&dir.join("grub/grub.cfg"))? {
        esp.grub_cfg = true;
        esp.grub_linux = cfg
            .lines()
            .filter_map(|l| {
                let mut words = l.split_ascii_whitespace();
                matches!(words.next(), Some("linux" | "linuxefi" | "linux16"))
                    .then(|| words.collect::<Vec<_>>().join(" "))
            })
            .collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_esp_mounted_already_is_found_where_it_is() {
        let mounts = "rpool/ROOT/pve-1 / zfs rw 0 0\n\
                      /dev/sda2 /boot/efi vfat rw,relatime 0 0\n\
                      /dev/sdb2 /mnt/my\\040esp vfat ro 0 0\n";
        assert_eq!(
            mount_point_of(mounts, |s| s == "/dev/sda2"),
            Some(PathBuf::from("/boot/efi"))
        );
        assert_eq!(
            mount_point_of(mounts, |s| s == "/dev/sdb2"),
            Some(PathBuf::from("/mnt/my esp"))
        );
        assert_eq!(mount_point_of(mounts, |s| s == "/dev/sdc1"), None);
        // A source that is not a path (zfs, tmpfs) is never asked about.
        assert_eq!(mount_point_of(mounts, |s| !s.starts_with('/')), None);
    }

    #[test]
    fn the_list_gives_vfat_ids_in_order_and_skips_the_rest() {
        let list = "# This file is auto-generated by proxmox-boot-tool\n4A1B-2C3D\n\n\
                    b0c1-d2e3\n 4A1B-2C3D\n../../etc\n4A1B-2C3D\n12345-678\n";
        assert_eq!(uuids(list), ["4A1B-2C3D", "b0c1-d2e3"]);
        assert!(uuids("# only a comment\n").is_empty());
    }

    #[test]
    fn the_readers_output_is_read_back() {
        let doc = r#"{"format":1,"esps":[
            {"uuid":"4A1B-2C3D","grub_efi":false,"loader_conf":true,
             "entries":[{"name":"proxmox-6.8.12-4-pve.conf","options":"root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt"}],
             "grub_cfg":false,"grub_linux":[]},
            {"uuid":"B0C1-D2E3","grub_efi":true,"grub_cfg":true,
             "grub_linux":["/vmlinuz-6.8.12-4-pve root=ZFS=rpool/ROOT/pve-1 ro quiet"]},
            {"uuid":"C0FF-EE00","error":"/dev/disk/by-uuid/C0FF-EE00 does not exist"}
        ]}"#;
        let esps = parse(doc).unwrap();
        assert_eq!(esps.len(), 3);
        assert!(!esps[0].boots_grub(true));
        assert!(
            esps[0].boots_grub(false),
            "a BIOS boot is GRUB's on every ESP"
        );
        assert_eq!(
            esps[0].entry_of("6.8.12-4-pve").unwrap().options,
            "root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt"
        );
        assert!(esps[0].entry_of("6.8.12-5-pve").is_none());
        assert!(esps[1].boots_grub(true) && esps[1].entries.is_empty());
        assert!(esps[2].error.as_deref().unwrap().contains("does not exist"));
        // What the helper writes is what the parser reads.
        let again = serde_json::to_string(&Doc {
            format: FORMAT,
            esps: esps.clone(),
        })
        .unwrap();
        assert_eq!(parse(&again).unwrap(), esps);
    }

    #[test]
    fn output_gpt_cannot_trust_is_refused_with_the_reason() {
        for (out, why) in [
            ("", "cannot read"),
            ("mount: permission denied", "cannot read"),
            (r#"{"format":2,"esps":[]}"#, "format 2"),
            (r#"{"esps":[]}"#, "cannot read"),
            (r#"{"format":1,"esps":[{"uuid":"../../x"}]}"#, "valid UUID"),
            (r#"{"format":1,"esps":[{"grub_efi":true}]}"#, "cannot read"),
        ] {
            let e = parse(out).unwrap_err();
            assert!(e.contains(why), "{out:?}: {e}");
        }
    }

    #[test]
    fn manual_and_pinned_kernels_are_the_ones_the_tool_reads() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::new(d.path());
        assert!(chosen_kernels(&host).is_empty());
        let k = d.path().join("etc/kernel");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(
            k.join("proxmox-boot-manual-kernels"),
            "6.5.13-6-pve\n6.8.4-2-pve\n",
        )
        .unwrap();
        std::fs::write(k.join("proxmox-boot-pin"), "6.8.4-2-pve\nignored\n").unwrap();
        std::fs::write(k.join("next-boot-pin"), "6.2.16-20-pve").unwrap();
        assert_eq!(
            chosen_kernels(&host),
            ["6.5.13-6-pve", "6.8.4-2-pve", "6.2.16-20-pve"]
        );
    }

    /// `/proc/PID` of a process: its argv, its `Uid:` line and its executable.
    fn process(root: &Path, pid: u32, argv: &[u8], uids: &str, exe: &str) {
        let dir = root.join(format!("proc/{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), argv).unwrap();
        std::fs::write(dir.join("status"), format!("Name:\tx\nUid:\t{uids}\n")).unwrap();
        std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
    }

    #[test]
    fn a_refresh_is_seen_in_the_hosts_processes() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::new(d.path());
        process(d.path(), 77, b"bash\0-l\0", "0\t0\t0\t0", "/usr/bin/bash");
        process(
            d.path(),
            78,
            b"less\0/usr/sbin/proxmox-boot-tool\0",
            "0\t0\t0\t0",
            "/usr/bin/less",
        );
        std::fs::write(d.path().join("proc/cmdline"), b"root=x\n").unwrap();
        assert_eq!(refresh_running(&host), None);
        process(
            d.path(),
            4242,
            b"/bin/sh\0/usr/sbin/proxmox-boot-tool\0refresh\0",
            "0\t0\t0\t0",
            "/usr/bin/dash",
        );
        let seen = refresh_running(&host).unwrap();
        assert!(seen.contains("4242") && seen.contains("refresh"), "{seen}");
    }

    /// Any user can name a process `proxmox-boot-tool` (argv[0] is the caller's to choose, and
    /// so is a script's name): only root running the script in a shell counts (issue 27,
    /// item 7).
    #[test]
    fn a_process_counts_as_a_refresh_only_as_root_in_a_shell() {
        let argv = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
        let script = argv(&["/bin/sh", "/usr/sbin/proxmox-boot-tool", "refresh"]);
        let root = "Name:\tsh\nUid:\t0\t0\t0\t0\n";
        assert!(runs_the_tool(Some(root), Some("/usr/bin/dash"), &script));
        let hook = argv(&[
            "/bin/sh",
            "/etc/kernel/postinst.d/zz-proxmox-boot",
            "6.8.4-2-pve",
        ]);
        assert!(runs_the_tool(Some(root), Some("/bin/sh"), &hook));
        // A user's process, however it is named.
        let user = "Uid:\t1000\t1000\t1000\t1000\n";
        assert!(!runs_the_tool(Some(user), Some("/usr/bin/dash"), &script));
        // A set-uid program a user started: its real uid is the user's.
        let setuid = "Uid:\t1000\t0\t0\t0\n";
        assert!(!runs_the_tool(Some(setuid), Some("/usr/bin/dash"), &script));
        // Root's process whose argv[0] is the tool's name, but which runs something else.
        let named = argv(&["proxmox-boot-tool", "refresh"]);
        assert!(!runs_the_tool(Some(root), Some("/usr/bin/sleep"), &named));
        assert!(!runs_the_tool(
            Some(root),
            Some("/usr/bin/python3"),
            &script
        ));
        // Unreadable status or executable (a process that ended, no permission): not counted.
        assert!(!runs_the_tool(None, Some("/usr/bin/dash"), &script));
        assert!(!runs_the_tool(Some(root), None, &script));
        assert!(!runs_the_tool(
            Some("Uid:\t0\t0\n"),
            Some("/bin/sh"),
            &script
        ));
    }
}
