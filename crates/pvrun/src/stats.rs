//! KVM's per-vCPU binary statistics (`KVM_GET_STATS_FD`, Linux
//! `Documentation/virt/kvm/api.rst`, "KVM_GET_STATS_FD").
//!
//! `KVM_GET_STATS_FD` on a vCPU fd (when `KVM_CAP_BINARY_STATS_FD` is
//! present) returns a read-only file laid out as:
//!
//! ```text
//! offset 0            struct kvm_stats_header (24 bytes)
//! id_offset           id string, name_size bytes, NUL-padded
//! desc_offset         num_desc × (struct kvm_stats_desc (16 bytes) + name_size bytes of name)
//! data_offset         data block: each statistic is `size` u64 values at
//!                     data_offset + desc.offset
//! ```
//!
//! The header and descriptors never change for the life of the fd, so they
//! are parsed once ([`KvmStats::from_file`]); each [`KvmStats::snapshot`]
//! is then a single `pread` of the data block.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::raw::c_ulong;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use kvm_bindings::{kvm_stats_desc, kvm_stats_header, KVMIO, KVM_CAP_BINARY_STATS_FD, KVM_STATS_TYPE_MASK};
use kvm_ioctls::Kvm;
use vmm_sys_util::ioctl::{ioctl, ioctl_expr, _IOC_NONE};

use crate::devices::StatsSource;
use crate::error::io_message;

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`. kvm-ioctls 0.25 does not wrap it.
pub const KVM_GET_STATS_FD: c_ulong = ioctl_expr(_IOC_NONE, KVMIO, 0xce, 0);

/// Size of `struct kvm_stats_header`.
pub const HEADER_SIZE: usize = std::mem::size_of::<kvm_stats_header>();
/// Size of `struct kvm_stats_desc` without its trailing name.
pub const DESC_SIZE: usize = std::mem::size_of::<kvm_stats_desc>();

/// Largest `name_size` accepted (KVM uses 48); guards against garbage headers.
const MAX_NAME_SIZE: usize = 4096;
/// Most descriptors accepted (a vCPU has a few dozen).
const MAX_DESCS: usize = 65536;
/// Largest data block accepted.
const MAX_DATA_SIZE: usize = 16 << 20;

/// The counter of all VM exits.
pub const STAT_EXITS: &str = "exits";
/// The counter of instructions run by KVM's instruction emulator.
pub const STAT_INSN_EMULATION: &str = "insn_emulation";
/// The counters printed by `--stats`, in order.
pub const SUMMARY_STATS: [&str; 5] =
    [STAT_EXITS, STAT_INSN_EMULATION, "halt_exits", "io_exits", "mmio_exits"];

/// The binary statistics cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// This KVM does not offer binary statistics.
    #[error("this KVM has no binary statistics (KVM_CAP_BINARY_STATS_FD is absent)")]
    Unsupported,
    /// `KVM_GET_STATS_FD` failed.
    #[error("KVM_GET_STATS_FD failed: {}", io_message(.0))]
    Open(io::Error),
    /// Reading the statistics file failed.
    #[error("cannot read the KVM statistics {what}: {}", io_message(source))]
    Read {
        /// Which part.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The header or a descriptor makes no sense.
    #[error("malformed KVM statistics: {0}")]
    Malformed(String),
}

/// Something the statistics can be read from at an offset: the stats fd,
/// or a byte buffer in tests.
pub trait ReadAt {
    /// Fills `buf` from `offset`, failing on a short read.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// One statistic, from its descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatDesc {
    /// Its name, e.g. `exits`.
    pub name: String,
    /// `flags`: type (`KVM_STATS_TYPE_*`), unit and base.
    pub flags: u32,
    /// Byte offset of its values in the data block.
    pub offset: u32,
    /// Number of u64 values (1 for a counter, more for a histogram).
    pub size: u16,
}

impl StatDesc {
    /// `KVM_STATS_TYPE_*`: cumulative, instant, peak, or a histogram.
    pub fn stat_type(&self) -> u32 {
        self.flags & KVM_STATS_TYPE_MASK
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

/// A NUL-padded name field as text.
fn name_from(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The parsed layout of a statistics file and the file itself.
#[derive(Debug)]
pub struct KvmStats<F: ReadAt + ?Sized = File> {
    id: String,
    descs: Arc<[StatDesc]>,
    data_offset: u64,
    data_size: usize,
    file: F,
}

impl KvmStats<File> {
    /// Opens the binary statistics of the vCPU `vcpu_fd` of a VM made by
    /// `kvm`: [`StatsError::Unsupported`] if this KVM has none.
    pub fn open_vcpu(kvm: &Kvm, vcpu_fd: &impl AsRawFd) -> Result<Self, StatsError> {
        if kvm.check_extension_raw(c_ulong::from(KVM_CAP_BINARY_STATS_FD)) <= 0 {
            return Err(StatsError::Unsupported);
        }
        // SAFETY: KVM_GET_STATS_FD takes no argument and only creates a new
        // fd; `vcpu_fd` is a live vCPU fd (it is borrowed for the call).
        let fd = unsafe { ioctl(vcpu_fd, KVM_GET_STATS_FD) };
        if fd < 0 {
            return Err(StatsError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel and nothing else owns
        // it; the `File` takes ownership and closes it on drop.
        let file = unsafe { File::from_raw_fd(fd) };
        Self::from_file(file)
    }
}

impl<F: ReadAt> KvmStats<F> {
    /// Parses the header and descriptors of a statistics file.
    pub fn from_file(file: F) -> Result<Self, StatsError> {
        let read = |what, len: usize, offset: u64| -> Result<Vec<u8>, StatsError> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(|source| StatsError::Read { what, source })?;
            Ok(buf)
        };
        let malformed = |m: String| Err(StatsError::Malformed(m));

        let h = read("header", HEADER_SIZE, 0)?;
        let name_size = u32_at(&h, 4) as usize;
        let num_desc = u32_at(&h, 8) as usize;
        let (id_offset, desc_offset, data_offset) = (u32_at(&h, 12), u32_at(&h, 16), u32_at(&h, 20));
        if name_size == 0 || name_size > MAX_NAME_SIZE {
            return malformed(format!("name_size {name_size}"));
        }
        if num_desc > MAX_DESCS {
            return malformed(format!("{num_desc} descriptors"));
        }

        let id = name_from(&read("id", name_size, id_offset.into())?);
        let desc_len = DESC_SIZE + name_size;
        let block = read("descriptors", num_desc * desc_len, desc_offset.into())?;
        let mut descs = Vec::with_capacity(num_desc);
        let mut data_size = 0usize;
        for (i, d) in block.chunks_exact(desc_len).enumerate() {
            let desc = StatDesc {
                flags: u32_at(d, 0),
                size: u16_at(d, 6),
                offset: u32_at(d, 8),
                name: name_from(&d[DESC_SIZE..]),
            };
            let end = (desc.offset as usize)
                .checked_add(usize::from(desc.size) * 8)
                .filter(|&end| end <= MAX_DATA_SIZE);
            let Some(end) = end else {
                return malformed(format!(
                    "descriptor {i} ({}) has offset {:#x} and size {}",
                    desc.name, desc.offset, desc.size
                ));
            };
            data_size = data_size.max(end);
            descs.push(desc);
        }
        Ok(KvmStats { id, descs: descs.into(), data_offset: data_offset.into(), data_size, file })
    }

    /// The id string, e.g. `kvm-1234/vcpu-0`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Every statistic's descriptor.
    pub fn descriptors(&self) -> &[StatDesc] {
        &self.descs
    }

    /// Reads the current values (one `pread` of the data block).
    pub fn snapshot(&self) -> Result<StatsSnapshot, StatsError> {
        let mut data = vec![0u8; self.data_size];
        self.file
            .read_exact_at(&mut data, self.data_offset)
            .map_err(|source| StatsError::Read { what: "data block", source })?;
        Ok(StatsSnapshot { descs: self.descs.clone(), data })
    }

    /// The current instruction-emulation and exit counters, if both exist
    /// and can be read.
    pub fn bench_counters(&self) -> Option<(u64, u64)> {
        let snap = self.snapshot().ok()?;
        Some((snap.get(STAT_INSN_EMULATION)?, snap.get(STAT_EXITS)?))
    }
}

/// The bench-marker device reads the counters of the vCPU it belongs to.
impl<F: ReadAt + Send + Sync> StatsSource for Arc<KvmStats<F>> {
    fn counters(&mut self) -> Option<(u64, u64)> {
        self.bench_counters()
    }
}

/// The values of every statistic at one moment.
#[derive(Clone, Debug)]
pub struct StatsSnapshot {
    descs: Arc<[StatDesc]>,
    data: Vec<u8>,
}

impl StatsSnapshot {
    fn value(&self, desc: &StatDesc, i: usize) -> u64 {
        let off = desc.offset as usize + i * 8;
        u64::from_le_bytes(self.data[off..off + 8].try_into().expect("8 bytes"))
    }

    /// The value of the single-valued statistic `name`; `None` if there is
    /// no such statistic or it is a histogram.
    pub fn get(&self, name: &str) -> Option<u64> {
        let desc = self.descs.iter().find(|d| d.name == name)?;
        (desc.size == 1).then(|| self.value(desc, 0))
    }

    /// Every single-valued statistic as `(name, value)`, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.descs.iter().filter(|d| d.size == 1).map(|d| (d.name.as_str(), self.value(d, 0)))
    }
}

/// The `--stats` counters of a run, summed over its vCPUs: each is `None`
/// if this KVM does not have it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSummary {
    /// `(name, total)` for each of [`SUMMARY_STATS`] that exists.
    pub counters: Vec<(&'static str, u64)>,
}

impl StatsSummary {
    /// Sums [`SUMMARY_STATS`] over `snapshots`.
    pub fn from_snapshots(snapshots: &[StatsSnapshot]) -> Self {
        let counters = SUMMARY_STATS
            .iter()
            .filter_map(|&name| {
                let values: Vec<u64> = snapshots.iter().filter_map(|s| s.get(name)).collect();
                (!values.is_empty()).then(|| (name, values.iter().fold(0u64, |a, v| a.wrapping_add(*v))))
            })
            .collect();
        StatsSummary { counters }
    }

    /// The total of `name`, if it was collected.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// `exits=N insn_emulation=N ...`
impl std::fmt::Display for StatsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.counters.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const NAME_SIZE: usize = 48;

    /// A statistics file as KVM lays it out: header, id, descriptors, data.
    /// `stats` are `(name, flags, values)`.
    pub(crate) fn build_stats_file(stats: &[(&str, u32, &[u64])]) -> Vec<u8> {
        let id_offset = HEADER_SIZE;
        let desc_offset = id_offset + NAME_SIZE;
        let data_offset = desc_offset + stats.len() * (DESC_SIZE + NAME_SIZE);
        let mut f = Vec::new();
        for v in [
            0u32, // flags
            NAME_SIZE as u32,
            stats.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let mut id = b"kvm-42/vcpu-0".to_vec();
        id.resize(NAME_SIZE, 0);
        f.extend_from_slice(&id);
        let mut data_off = 0u32;
        for (name, flags, values) in stats {
            f.extend_from_slice(&flags.to_le_bytes());
            f.extend_from_slice(&0i16.to_le_bytes()); // exponent
            f.extend_from_slice(&(values.len() as u16).to_le_bytes());
            f.extend_from_slice(&data_off.to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes()); // bucket_size
            let mut n = name.as_bytes().to_vec();
            n.resize(NAME_SIZE, 0);
            f.extend_from_slice(&n);
            data_off += 8 * values.len() as u32;
        }
        assert_eq!(f.len(), data_offset);
        for (_, _, values) in stats {
            for v in *values {
                f.extend_from_slice(&v.to_le_bytes());
            }
        }
        f
    }

    #[test]
    fn header_and_two_descriptors_are_parsed() {
        let file = build_stats_file(&[("exits", 0, &[0x1_0000_0002]), ("insn_emulation", 0, &[77])]);
        // 24-byte header, 48-byte id, 2 × 64-byte descriptors, 16 bytes of data.
        assert_eq!(file.len(), 24 + 48 + 2 * 64 + 16);
        let stats = KvmStats::from_file(file).unwrap();
        assert_eq!(stats.id(), "kvm-42/vcpu-0");
        assert_eq!(
            stats.descriptors(),
            &[
                StatDesc { name: "exits".into(), flags: 0, offset: 0, size: 1 },
                StatDesc { name: "insn_emulation".into(), flags: 0, offset: 8, size: 1 },
            ]
        );
        let snap = stats.snapshot().unwrap();
        assert_eq!(snap.get("exits"), Some(0x1_0000_0002));
        assert_eq!(snap.get("insn_emulation"), Some(77));
        assert_eq!(snap.get("halt_exits"), None);
        assert_eq!(stats.bench_counters(), Some((77, 0x1_0000_0002)));
        let all: Vec<_> = snap.iter().collect();
        assert_eq!(all, vec![("exits", 0x1_0000_0002), ("insn_emulation", 77)]);
    }

    #[test]
    fn histograms_are_skipped_by_get() {
        let file = build_stats_file(&[("halt_poll_hist", 4, &[1, 2, 3]), ("io_exits", 0, &[5])]);
        let stats = KvmStats::from_file(file).unwrap();
        assert_eq!(stats.descriptors()[0].stat_type(), 4);
        assert_eq!(stats.descriptors()[1].offset, 24);
        let snap = stats.snapshot().unwrap();
        assert_eq!(snap.get("halt_poll_hist"), None);
        assert_eq!(snap.get("io_exits"), Some(5));
        // No insn_emulation: no bench counters.
        assert_eq!(stats.bench_counters(), None);
    }

    #[test]
    fn truncated_or_absurd_files_are_errors() {
        let file = build_stats_file(&[("exits", 0, &[1]), ("insn_emulation", 0, &[2])]);
        let err = KvmStats::from_file(file[..10].to_vec()).unwrap_err();
        assert!(matches!(err, StatsError::Read { what: "header", .. }), "{err}");
        let err = KvmStats::from_file(file[..100].to_vec()).unwrap_err();
        assert!(matches!(err, StatsError::Read { what: "descriptors", .. }), "{err}");
        // The data block is cut short: parsing works, the snapshot fails.
        let stats = KvmStats::from_file(file[..file.len() - 4].to_vec()).unwrap();
        let err = stats.snapshot().unwrap_err();
        assert_eq!(err.to_string(), "cannot read the KVM statistics data block: unexpected end of file");

        let mut bad = file.clone();
        bad[4..8].copy_from_slice(&0u32.to_le_bytes());
        let err = KvmStats::from_file(bad).unwrap_err();
        assert_eq!(err.to_string(), "malformed KVM statistics: name_size 0");
    }

    #[test]
    fn summary_sums_and_prints_the_counters_that_exist() {
        let a = KvmStats::from_file(build_stats_file(&[
            ("exits", 0, &[10]),
            ("insn_emulation", 0, &[100]),
            ("io_exits", 0, &[3]),
        ]))
        .unwrap();
        let b = KvmStats::from_file(build_stats_file(&[("io_exits", 0, &[4]), ("exits", 0, &[1])])).unwrap();
        let sum = StatsSummary::from_snapshots(&[a.snapshot().unwrap(), b.snapshot().unwrap()]);
        assert_eq!(sum.to_string(), "exits=11 insn_emulation=100 io_exits=7");
        assert_eq!(sum.get("io_exits"), Some(7));
        assert_eq!(sum.get("mmio_exits"), None);
        assert_eq!(StatsSummary::from_snapshots(&[]).to_string(), "");
    }

    #[test]
    fn the_ioctl_number_is_kvm_get_stats_fd() {
        assert_eq!(KVM_GET_STATS_FD, 0xae_ce);
    }
}
