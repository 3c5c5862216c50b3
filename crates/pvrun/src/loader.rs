//! Reading, checking and loading the kernel ELF.
//!
//! The image is checked here first, before KVM is touched, so that every
//! bad-input case gets a precise message (which address, which RAM size).
//! Only what the checks need is read — the ELF header, the program headers,
//! the notes — and only from a regular file: a FIFO, a device or a huge
//! sparse file costs nothing. linux-loader's `Elf::load` then copies the
//! loadable segments from the same open file into guest memory; the entry
//! booted is the one checked here.

use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::layout;
use crate::pvh::XEN_ELFNOTE_PHYS32_ENTRY;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// The most bytes of notes pvrun reads from one PT_NOTE segment.
pub const NOTES_MAX: u64 = 1 << 20;

/// Why the kernel could not be used. All of these are bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read kernel {}: {}", path.display(), crate::error::io_message(source))]
    Read {
        /// The kernel path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path is not a regular file (a directory, FIFO, device, socket).
    #[error("kernel {} is not a regular file (it is a {kind})", path.display())]
    NotAFile {
        /// The kernel path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file does not start with the ELF magic.
    #[error("kernel {} is not an ELF file (no ELF magic at offset 0)", path.display())]
    NotElf {
        /// The kernel path.
        path: PathBuf,
    },
    /// The file is an ELF, but not one pvrun can load.
    #[error("kernel {} is not a loadable x86-64 ELF: {reason}", path.display())]
    Unsupported {
        /// The kernel path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The ELF has no PVH entry note.
    #[error(
        "kernel {} has no PVH entry point (no ELF note \"Xen\" of type {XEN_ELFNOTE_PHYS32_ENTRY}, \
         XEN_ELFNOTE_PHYS32_ENTRY); pvrun boots only PVH kernels",
        path.display()
    )]
    NoPvhEntry {
        /// The kernel path.
        path: PathBuf,
    },
    /// A loadable segment does not fit in guest RAM.
    #[error(
        "kernel {} has a segment at guest address {start:#x}..{end:#x} outside guest RAM \
         ({mem_mib} MiB: segments must lie in {}); use a larger --mem or relink the kernel",
        path.display(),
        ram_ranges(*mem_bytes)
    )]
    SegmentOutsideRam {
        /// The kernel path.
        path: PathBuf,
        /// First byte of the segment (its physical address).
        start: u64,
        /// One past its last byte (`p_paddr + p_memsz`, saturating).
        end: u64,
        /// Guest RAM size in MiB.
        mem_mib: u64,
        /// Guest RAM size in bytes.
        mem_bytes: u64,
    },
    /// The ELF has no lguest64 entry note (for `--personality lguest`).
    #[error(
        "kernel {} has no lguest64 entry point (no ELF note \"Lguest\" of type {}); \
         --personality lguest boots only lguest64 kernels (docs/abi/lguest.md)",
        path.display(),
        pvabi::lguest::ELFNOTE_ENTRY
    )]
    NoLguestEntry {
        /// The kernel path.
        path: PathBuf,
    },
    /// The kernel speaks another lguest64 ABI major version.
    #[error(
        "kernel {} speaks lguest64 ABI {major}.{minor}; pvrun serves {}.{}",
        path.display(),
        pvabi::lguest::ABI_MAJOR,
        pvabi::lguest::ABI_MINOR
    )]
    LguestAbi {
        /// The kernel path.
        path: PathBuf,
        /// The major version its note names.
        major: u32,
        /// The minor version its note names.
        minor: u32,
    },
    /// Two entry notes of the kind asked for name different entries: which
    /// one a loader would take is not defined (Xen takes the last), so none.
    #[error(
        "kernel {} has two {what} entry notes that disagree ({first:#x} and {second:#x}); \
         it must name one entry",
        path.display()
    )]
    ConflictingEntries {
        /// The kernel path.
        path: PathBuf,
        /// "PVH" or "lguest64".
        what: &'static str,
        /// The first note's entry.
        first: u64,
        /// The first that differs from it.
        second: u64,
    },
    /// The PVH entry point is not inside guest RAM.
    #[error(
        "kernel {} has its PVH entry point at {entry:#x}, outside guest RAM ({mem_mib} MiB)",
        path.display()
    )]
    EntryOutsideRam {
        /// The kernel path.
        path: PathBuf,
        /// The entry point.
        entry: u64,
        /// Guest RAM size in MiB.
        mem_mib: u64,
    },
    /// linux-loader refused the image.
    #[error("cannot load kernel {}: {source}", path.display())]
    Loader {
        /// The kernel path.
        path: PathBuf,
        /// Why.
        source: linux_loader::loader::Error,
    },
}

/// The RAM ranges where segments may go, for messages.
fn ram_ranges(mem_bytes: u64) -> String {
    layout::ram_regions(mem_bytes)
        .into_iter()
        .map(|(start, len)| format!("{:#x}..{:#x}", start.max(layout::HIMEM_START), start + len))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Whether `[start, end)` lies inside one RAM region at or above 1 MiB.
fn in_loadable_ram(mem_bytes: u64, start: u64, end: u64) -> bool {
    layout::ram_regions(mem_bytes)
        .into_iter()
        .any(|(rs, len)| start >= rs.max(layout::HIMEM_START) && end <= rs + len && start <= end)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Which entry point the kernel is booted at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// The PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`), 32-bit protected mode.
    Pvh,
    /// The lguest64 entry (`"Lguest"` note), 64-bit ring 3.
    Lguest,
}

/// Where the kernel's bytes are: an open regular file, or memory.
#[derive(Debug)]
enum Image {
    File(File),
    Bytes(Vec<u8>),
}

impl Image {
    fn len(&self) -> Result<u64, std::io::Error> {
        match self {
            Image::File(f) => Ok(f.metadata()?.len()),
            Image::Bytes(b) => Ok(b.len() as u64),
        }
    }

    /// `len` bytes at `offset` (the caller checked they are inside).
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, std::io::Error> {
        let mut buf = vec![0u8; len];
        match self {
            Image::File(f) => f.read_exact_at(&mut buf, offset)?,
            Image::Bytes(b) => {
                let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
                let src = b.get(start..start + len).ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(src);
            }
        }
        Ok(buf)
    }
}

/// What a path that is not a regular file is, for the message.
fn file_kind(t: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    Some(match t {
        t if t.is_file() => return None,
        t if t.is_dir() => "directory",
        t if t.is_fifo() => "FIFO",
        t if t.is_char_device() => "character device",
        t if t.is_block_device() => "block device",
        t if t.is_socket() => "socket",
        _ => "special file",
    })
}

/// A kernel image that has been read and checked against the guest's RAM.
#[derive(Debug)]
pub struct KernelImage {
    path: PathBuf,
    image: Image,
    entry: u64,
}

impl KernelImage {
    /// Opens the kernel at `path` and checks it for a guest with
    /// `mem_bytes` of RAM, to be entered at its `kind` entry. Refuses what is
    /// not a regular file without reading it (a FIFO would block, a device
    /// never end); reads only the headers and notes.
    pub fn read(path: &Path, mem_bytes: u64, kind: EntryKind) -> Result<Self, LoadError> {
        let read_error = |source| LoadError::Read { path: path.to_owned(), source };
        // Look before opening: opening a FIFO for reading blocks until a writer comes.
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if let Some(kind) = file_kind(meta.file_type()) {
            return Err(LoadError::NotAFile { path: path.to_owned(), kind });
        }
        let file = File::open(path).map_err(read_error)?;
        // The path may have changed in between: check what was opened.
        let meta = file.metadata().map_err(read_error)?;
        if let Some(kind) = file_kind(meta.file_type()) {
            return Err(LoadError::NotAFile { path: path.to_owned(), kind });
        }
        Self::check(path, Image::File(file), mem_bytes, kind)
    }

    /// Checks an in-memory kernel image (`path` is only used in messages).
    pub fn parse(path: &Path, bytes: Vec<u8>, mem_bytes: u64, kind: EntryKind) -> Result<Self, LoadError> {
        Self::check(path, Image::Bytes(bytes), mem_bytes, kind)
    }

    fn check(path: &Path, image: Image, mem_bytes: u64, kind: EntryKind) -> Result<Self, LoadError> {
        let unsupported = |reason: String| LoadError::Unsupported { path: path.to_owned(), reason };
        let read_error = |source| LoadError::Read { path: path.to_owned(), source };
        let file_len = image.len().map_err(read_error)?;
        let head = image.read_at(0, file_len.min(EHDR_SIZE as u64) as usize).map_err(read_error)?;
        if head.len() < 4 || head[..4] != ELF_MAGIC {
            return Err(LoadError::NotElf { path: path.to_owned() });
        }
        if head.len() < EHDR_SIZE {
            return Err(unsupported(format!("file is {file_len} bytes long, shorter than an ELF64 header")));
        }
        let bytes = &head[..];
        if bytes[4] != ELFCLASS64 {
            return Err(unsupported(format!("ELF class {} (only ELF64 is supported)", bytes[4])));
        }
        if bytes[5] != ELFDATA2LSB {
            return Err(unsupported("big-endian ELF".to_owned()));
        }
        let e_type = u16_at(bytes, 16);
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(unsupported(format!("ELF type {e_type} is not an executable")));
        }
        let e_machine = u16_at(bytes, 18);
        if e_machine != EM_X86_64 {
            return Err(unsupported(format!("ELF machine {e_machine} is not x86-64 ({EM_X86_64})")));
        }
        let phoff = u64_at(bytes, 32);
        let phentsize = usize::from(u16_at(bytes, 54));
        let phnum = usize::from(u16_at(bytes, 56));
        if phentsize != PHDR_SIZE {
            return Err(unsupported(format!("program header entry size {phentsize} (expected {PHDR_SIZE})")));
        }
        phoff
            .checked_add((phnum * PHDR_SIZE) as u64)
            .filter(|&end| phoff >= EHDR_SIZE as u64 && end <= file_len)
            .ok_or_else(|| {
                unsupported(format!(
                    "program header table at offset {phoff:#x} ({phnum} entries) is not inside the file"
                ))
            })?;
        let table = image.read_at(phoff, phnum * PHDR_SIZE).map_err(read_error)?;

        let mut pvh_entry = None;
        let mut lguest = LguestNotes::default();
        let mut loadable = 0;
        // Segments must stay clear of what the personality reserves.
        let reserved = match kind {
            EntryKind::Pvh => 0..0,
            EntryKind::Lguest => {
                let r = crate::lguest::boot::Layout::new(mem_bytes).reserved;
                r..r + crate::lguest::boot::RESERVED_BYTES
            }
        };
        for (i, ph) in table.chunks_exact(PHDR_SIZE).enumerate() {
            let p_type = u32_at(ph, 0);
            let p_offset = u64_at(ph, 8);
            let p_paddr = u64_at(ph, 24);
            let p_filesz = u64_at(ph, 32);
            let p_memsz = u64_at(ph, 40);
            if p_offset.checked_add(p_filesz).is_none_or(|end| end > file_len) {
                return Err(unsupported(format!(
                    "segment {i} (file offset {p_offset:#x}, {p_filesz:#x} bytes) is not inside the file"
                )));
            }
            match p_type {
                // linux-loader skips PT_LOAD segments with no file bytes.
                PT_LOAD if p_filesz > 0 => {
                    loadable += 1;
                    let size = p_memsz.max(p_filesz);
                    let end = p_paddr.saturating_add(size);
                    if !in_loadable_ram(mem_bytes, p_paddr, end)
                        || (p_paddr < reserved.end && end > reserved.start)
                    {
                        return Err(LoadError::SegmentOutsideRam {
                            path: path.to_owned(),
                            start: p_paddr,
                            end,
                            mem_mib: mem_bytes / layout::MIB,
                            mem_bytes,
                        });
                    }
                }
                PT_NOTE => {
                    if p_filesz > NOTES_MAX {
                        return Err(unsupported(format!(
                            "note segment {i} is {p_filesz:#x} bytes, more than {NOTES_MAX:#x}"
                        )));
                    }
                    let notes = &image.read_at(p_offset, p_filesz as usize).map_err(read_error)?;
                    for entry in pvh_entries(notes) {
                        match pvh_entry {
                            None => pvh_entry = Some(entry),
                            Some(first) if first != entry && kind == EntryKind::Pvh => {
                                return Err(LoadError::ConflictingEntries {
                                    path: path.to_owned(),
                                    what: "PVH",
                                    first,
                                    second: entry,
                                });
                            }
                            Some(_) => {}
                        }
                    }
                    if let Some((first, second)) = lguest.scan(notes) {
                        if kind == EntryKind::Lguest {
                            return Err(LoadError::ConflictingEntries {
                                path: path.to_owned(),
                                what: "lguest64",
                                first,
                                second,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        if loadable == 0 {
            return Err(unsupported("no loadable (PT_LOAD) segment".to_owned()));
        }
        let entry = match kind {
            EntryKind::Pvh => pvh_entry.ok_or_else(|| LoadError::NoPvhEntry { path: path.to_owned() })?,
            EntryKind::Lguest => {
                let entry = lguest.entry.ok_or_else(|| LoadError::NoLguestEntry { path: path.to_owned() })?;
                match lguest.abi {
                    Some((major, minor)) if major != pvabi::lguest::ABI_MAJOR => {
                        return Err(LoadError::LguestAbi { path: path.to_owned(), major, minor })
                    }
                    _ => entry,
                }
            }
        };
        if !in_loadable_ram(mem_bytes, entry, entry.saturating_add(1)) || reserved.contains(&entry) {
            return Err(LoadError::EntryOutsideRam {
                path: path.to_owned(),
                entry,
                mem_mib: mem_bytes / layout::MIB,
            });
        }
        Ok(Self { path: path.to_owned(), image, entry })
    }

    /// The entry point found in the ELF notes (for the kind asked for).
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Copies the loadable segments into guest memory at their physical
    /// addresses and returns the entry point checked by [`Self::parse`].
    pub fn load(&mut self, mem: &GuestMemoryMmap) -> Result<GuestAddress, LoadError> {
        fn load_from<R: Read + ReadVolatile + Seek>(
            mem: &GuestMemoryMmap,
            r: &mut R,
        ) -> Result<(), linux_loader::loader::Error> {
            Elf::load(mem, None, r, None).map(|_| ())
        }
        let loaded = match &mut self.image {
            Image::File(f) => load_from(mem, f),
            Image::Bytes(b) => load_from(mem, &mut Cursor::new(&b[..])),
        };
        loaded.map_err(|source| LoadError::Loader { path: self.path.clone(), source })?;
        Ok(GuestAddress(self.entry))
    }
}

/// What the `"Lguest"` notes say: the entry (type 1) and the ABI version
/// (type 2), the first of each.
#[derive(Debug, Default)]
struct LguestNotes {
    entry: Option<u64>,
    abi: Option<(u32, u32)>,
}

impl LguestNotes {
    /// Takes in the notes of one PT_NOTE segment; returns the first entry and
    /// one that differs from it, if the notes name two.
    fn scan(&mut self, notes: &[u8]) -> Option<(u64, u64)> {
        let mut conflict = None;
        for (name, n_type, desc) in notes_in(notes) {
            if name != pvabi::lguest::ELFNOTE_NAME {
                continue;
            }
            match n_type {
                pvabi::lguest::ELFNOTE_ENTRY if desc.len() >= 8 => {
                    let entry = u64_at(desc, 0);
                    match self.entry {
                        None => self.entry = Some(entry),
                        Some(first) if first != entry => conflict = conflict.or(Some((first, entry))),
                        Some(_) => {}
                    }
                }
                pvabi::lguest::ELFNOTE_ABI if desc.len() >= 8 && self.abi.is_none() => {
                    self.abi = Some((u32_at(desc, 0), u32_at(desc, 4)));
                }
                _ => {}
            }
        }
        conflict
    }
}

/// The notes of a PT_NOTE segment as (name with its NUL, type, descriptor);
/// stops at the first malformed one.
fn notes_in(notes: &[u8]) -> impl Iterator<Item = (&[u8], u32, &[u8])> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off.checked_add(12)? > notes.len() {
            return None;
        }
        let namesz = u32_at(notes, off) as usize;
        let descsz = u32_at(notes, off + 4) as usize;
        let n_type = u32_at(notes, off + 8);
        let name_off = off + 12;
        let desc_off = name_off.checked_add(align4(namesz)?)?;
        let next = desc_off.checked_add(align4(descsz)?)?;
        if desc_off.checked_add(descsz)? > notes.len() || name_off + namesz > notes.len() {
            return None;
        }
        off = next;
        Some((&notes[name_off..name_off + namesz], n_type, &notes[desc_off..desc_off + descsz]))
    })
}

/// The entries of every `XEN_ELFNOTE_PHYS32_ENTRY` note (name "Xen") in the
/// bytes of a PT_NOTE segment (the low 32 bits of each descriptor).
fn pvh_entries(notes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    notes_in(notes)
        .filter(|(name, n_type, desc)| {
            *n_type == XEN_ELFNOTE_PHYS32_ENTRY && *name == b"Xen\0" && desc.len() >= 4
        })
        .map(|(_, _, desc)| u64::from(u32_at(desc, 0)))
}

/// The first PVH entry in the bytes of a PT_NOTE segment.
#[cfg(test)]
fn find_pvh_note(notes: &[u8]) -> Option<u64> {
    pvh_entries(notes).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&n_type.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn finds_the_pvh_note_among_others() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7]);
        notes.extend(note(b"Xen\0", 6, b"linux\0"));
        notes.extend(note(b"Xen\0", 18, &0x10_0040u64.to_le_bytes()));
        assert_eq!(find_pvh_note(&notes), Some(0x10_0040));
        assert_eq!(find_pvh_note(&note(b"Xen\0", 18, &[0x10, 0, 0x20, 0])), Some(0x20_0010));
        assert_eq!(find_pvh_note(&note(b"Xen\0", 17, &[0; 4])), None);
        assert_eq!(find_pvh_note(&note(b"Xe\0", 18, &[0; 4])), None);
        assert_eq!(find_pvh_note(&[1, 2, 3]), None);
    }

    #[test]
    fn lguest_notes_that_disagree_are_reported() {
        let entry = |e: u64| note(b"Lguest\0", pvabi::lguest::ELFNOTE_ENTRY, &e.to_le_bytes());
        let mut notes = LguestNotes::default();
        assert_eq!(notes.scan(&[entry(0x10_0000), entry(0x10_0000)].concat()), None);
        assert_eq!(notes.scan(&entry(0x20_0000)), Some((0x10_0000, 0x20_0000)));
        assert_eq!(notes.entry, Some(0x10_0000));
    }

    #[test]
    fn rejects_what_is_not_an_elf() {
        let p = Path::new("k");
        assert!(matches!(
            KernelImage::parse(p, b"hello world".to_vec(), 128 << 20, EntryKind::Pvh),
            Err(LoadError::NotElf { .. })
        ));
        assert!(matches!(
            KernelImage::parse(p, b"\x7fELF".to_vec(), 128 << 20, EntryKind::Pvh),
            Err(LoadError::Unsupported { .. })
        ));
    }

    #[test]
    fn loadable_ram_respects_himem_and_the_gap() {
        let m = 128 << 20;
        assert!(in_loadable_ram(m, 0x10_0000, 0x20_0000));
        assert!(!in_loadable_ram(m, 0x8_0000, 0x9_0000));
        assert!(!in_loadable_ram(m, 0x10_0000, m + 1));
        let big = 8 << 30;
        assert!(!in_loadable_ram(big, 0xfff0_0000, 0x1_0000_1000));
        assert!(in_loadable_ram(big, 0x1_0000_0000, 0x1_0000_1000));
    }
}
