//! What one packet costs the data plane in operations that do not depend on
//! the machine: a small eBPF interpreter that runs a program of the shipped
//! object, linked as the kernel sees it (`offload_check::link`), on one
//! frame, against the contents of a loaded data plane's real maps, and
//! counts what it executed: instructions, helper calls, bpf-to-bpf calls,
//! map lookups by kind (a hash lookup is a call into the kernel; the
//! verifier inlines array lookups into a few instructions) and atomic
//! operations.
//!
//! Nanoseconds move with the machine (issue 16: the same object was 1.5x
//! its yardstick on one machine and 2.2x on another, where calls and
//! returns cost more); these counts do not, so bench-xdp prints them
//! beside its timings and `tests/tests/xdp_cost.rs` keeps them from
//! growing.
//!
//! The interpreter reads map values from the kernel and keeps its writes
//! to itself (a run changes no map), answers `get_prandom_u32` with a
//! constant and `redirect_map` with XDP_REDIRECT, and refuses anything it
//! does not know, so a count is never silently wrong.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, bail, Context as _, Result};
use dispatcher::{data_plane, offload_check};

/// What one run executed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// The program's return value (an XDP action).
    pub verdict: u32,
    pub instructions: u64,
    /// Helper calls by name (map lookups included).
    pub helpers: BTreeMap<&'static str, u64>,
    /// bpf-to-bpf calls.
    pub bpf_calls: u64,
    /// Lookups in hash maps: each a call into the kernel.
    pub hash_lookups: u64,
    /// Lookups in arrays (plain and per-CPU), which the verifier inlines.
    pub array_lookups: u64,
    /// Atomic read-modify-write instructions (locked on x86).
    pub atomics: u64,
    /// Instructions by the source file they came from (BTF line info):
    /// where on the path they go.
    pub by_source: BTreeMap<String, u64>,
    /// The same by file and line.
    pub by_line: BTreeMap<String, u64>,
}

impl Cost {
    /// Helper calls the kernel makes as calls: all but array lookups.
    pub fn calls(&self) -> u64 {
        self.helpers.values().sum::<u64>() - self.array_lookups
    }

    /// "1 hash, 6 array; 1 atomic" and the like, for tables.
    pub fn summary(&self) -> String {
        let others: Vec<String> = self
            .helpers
            .iter()
            .filter(|(name, _)| **name != "map_lookup_elem")
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        format!(
            "{} insns; {} hash + {} array lookups; {} atomics; {} bpf calls{}",
            self.instructions,
            self.hash_lookups,
            self.array_lookups,
            self.atomics,
            self.bpf_calls,
            if others.is_empty() {
                String::new()
            } else {
                format!("; {}", others.join(", "))
            }
        )
    }
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// A map of the loaded data plane, as the interpreter reads it.
struct TraceMap {
    name: String,
    map_type: u32,
    key_size: usize,
    value_size: usize,
    fd: i32,
}

/// Where each kind of memory lives in the interpreter's address space.
const STACK_BASE: u64 = 0x1000_0000;
const STACK_SIZE: usize = 512;
const PACKET_BASE: u64 = 0x2000_0000;
const CTX_BASE: u64 = 0x3000_0000;
const VALUE_BASE: u64 = 0x4000_0000;
const VALUE_STRIDE: u64 = 0x10_0000;
const MAP_BASE: u64 = 0x5000_0000;

/// Stops a runaway program (a bug here or there): far above any path.
const MAX_STEPS: u64 = 100_000;

pub struct Tracer {
    /// The program's instructions, linked.
    insns: Vec<aya_obj::generated::bpf_insn>,
    maps: Vec<TraceMap>,
    possible_cpus: usize,
    /// (first instruction, source file, line), sorted: the BTF line info.
    lines: Vec<(usize, String, u32)>,
}

impl Tracer {
    /// Links `program` of the shipped object against the maps of `dp`.
    pub fn new(dp: &data_plane::Loaded, program: &str) -> Result<Tracer> {
        let mut obj = aya_obj::Object::parse(data_plane::object())
            .map_err(|e| anyhow!("cannot parse the object: {e}"))?;
        let mut maps = Vec::new();
        for (name, m) in &obj.maps {
            // Maps outside the map set (aya-log's ring buffer) stay
            // unreadable: a lookup in one is an error.
            let fd = dp
                .maps
                .map_data(name)
                .map_or(-1, |d| d.fd().as_fd().as_raw_fd());
            maps.push(TraceMap {
                name: name.clone(),
                map_type: m.map_type(),
                key_size: m.key_size() as usize,
                value_size: m.value_size() as usize,
                fd,
            });
        }
        offload_check::link(&mut obj, |name| {
            (MAP_BASE as i32) + maps.iter().position(|m| m.name == name).unwrap_or(0) as i32
        })?;
        let p = obj
            .programs
            .get(program)
            .with_context(|| format!("no program {program} in the object"))?;
        let function = obj
            .functions
            .get(&p.function_key())
            .context("the program's code is missing")?;
        let insns = function.instructions.clone();
        let strings = obj.btf.as_ref().map(|b| b.to_bytes()).unwrap_or_default();
        let mut lines: Vec<(usize, String, u32)> = function
            .line_info
            .line_info
            .iter()
            .map(|l| {
                (
                    l.insn_off as usize,
                    btf_string(&strings, l.file_name_off),
                    l.line_col >> 10,
                )
            })
            .collect();
        lines.sort();
        let possible_cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| s.trim().rsplit(['-', ',']).next()?.parse::<usize>().ok())
            .map_or(1, |last| last + 1);
        Ok(Tracer {
            insns,
            maps,
            possible_cpus,
            lines,
        })
    }

    /// The source file instruction `pc` came from.
    fn source_of(&self, pc: usize) -> (&str, u32) {
        let i = self.lines.partition_point(|(off, _, _)| *off <= pc);
        if i == 0 {
            ("?", 0)
        } else {
            (&self.lines[i - 1].1, self.lines[i - 1].2)
        }
    }

    /// Runs the program once on `frame`.
    pub fn run(&self, frame: &[u8]) -> Result<Cost> {
        Run::new(self, frame).go()
    }

    /// One value of map `m` (CPU 0's of a per-CPU map), or None.
    fn lookup(&self, m: &TraceMap, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if m.fd < 0 {
            bail!("map {} is not readable here", m.name);
        }
        let per_cpu = m.map_type == BPF_MAP_TYPE_PERCPU_ARRAY;
        let stride = m.value_size.div_ceil(8) * 8;
        let mut value = vec![
            0u8;
            if per_cpu {
                stride * self.possible_cpus
            } else {
                m.value_size
            }
        ];
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd, pad, key, value, flags.
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let attr = Attr {
            map_fd: m.fd as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the attribute points at buffers of the sizes the map has.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                1, // BPF_MAP_LOOKUP_ELEM
                &attr as *const Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(None);
            }
            return Err(err).with_context(|| format!("lookup in {}", m.name));
        }
        value.truncate(m.value_size);
        Ok(Some(value))
    }
}

/// The string at `offset` of a BTF blob's string section (the file names
/// of its line info), shortened to the crate-relative path.
fn btf_string(btf: &[u8], offset: u32) -> String {
    let word = |at: usize| {
        btf.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    // struct btf_header: magic, version, flags, hdr_len, type_off,
    // type_len, str_off, str_len.
    let start = word(4) + word(16) + offset as usize;
    let Some(tail) = btf.get(start..) else {
        return "?".into();
    };
    let s = String::from_utf8_lossy(tail.split(|b| *b == 0).next().unwrap_or_default());
    // ".../dispatcher-ebpf/src/parse.rs" -> "dispatcher-ebpf/src/parse.rs".
    let parts: Vec<&str> = s.rsplit('/').take(3).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// A memory region of the interpreter.
struct Region {
    base: u64,
    bytes: Vec<u8>,
}

struct Frame {
    return_to: usize,
    saved: [u64; 4],
    stack: usize,
}

struct Run<'t> {
    t: &'t Tracer,
    regs: [u64; 11],
    /// Stack frames, packet, context, then map values as looked up.
    regions: Vec<Region>,
    frames: Vec<Frame>,
    /// Map values looked up so far: each gets an address of its own.
    values: u64,
    cost: Cost,
}

impl<'t> Run<'t> {
    fn new(t: &'t Tracer, frame: &[u8]) -> Run<'t> {
        let data = PACKET_BASE as u32;
        let end = data + frame.len() as u32;
        let mut ctx = vec![0u8; 24];
        ctx[0..4].copy_from_slice(&data.to_le_bytes());
        ctx[4..8].copy_from_slice(&end.to_le_bytes());
        ctx[8..12].copy_from_slice(&data.to_le_bytes()); // data_meta
        let mut regs = [0u64; 11];
        regs[1] = CTX_BASE;
        regs[10] = STACK_BASE + STACK_SIZE as u64;
        Run {
            t,
            regs,
            regions: vec![
                Region {
                    base: STACK_BASE,
                    bytes: vec![0; STACK_SIZE],
                },
                Region {
                    base: PACKET_BASE,
                    bytes: frame.to_vec(),
                },
                Region {
                    base: CTX_BASE,
                    bytes: ctx,
                },
            ],
            frames: Vec::new(),
            values: 0,
            cost: Cost::default(),
        }
    }

    fn bytes(&mut self, addr: u64, len: usize) -> Result<&mut [u8]> {
        for r in &mut self.regions {
            if addr >= r.base && addr + len as u64 <= r.base + r.bytes.len() as u64 {
                let o = (addr - r.base) as usize;
                return Ok(&mut r.bytes[o..o + len]);
            }
        }
        bail!("access of {len} bytes at {addr:#x} outside any region")
    }

    fn load(&mut self, addr: u64, len: usize) -> Result<u64> {
        let b = self.bytes(addr, len)?;
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }

    fn store(&mut self, addr: u64, len: usize, value: u64) -> Result<()> {
        let b = self.bytes(addr, len)?;
        b.copy_from_slice(&value.to_le_bytes()[..len]);
        Ok(())
    }

    fn map(&self, reg: u64) -> Result<&'t TraceMap> {
        let k = reg
            .checked_sub(MAP_BASE)
            .filter(|k| (*k as usize) < self.t.maps.len())
            .ok_or_else(|| anyhow!("{reg:#x} is not a map"))?;
        Ok(&self.t.maps[k as usize])
    }

    fn helper(&mut self, id: i32) -> Result<u64> {
        let name = match id {
            1 => "map_lookup_elem",
            2 => "map_update_elem",
            5 => "ktime_get_ns",
            7 => "get_prandom_u32",
            51 => "redirect_map",
            131 => "ringbuf_reserve",
            132 => "ringbuf_submit",
            133 => "ringbuf_discard",
            other => bail!("helper {other} is not interpreted"),
        };
        *self.cost.helpers.entry(name).or_default() += 1;
        Ok(match id {
            1 => {
                let m = self.map(self.regs[1])?;
                let key = self.bytes(self.regs[2], m.key_size)?.to_vec();
                match m.map_type {
                    BPF_MAP_TYPE_HASH => self.cost.hash_lookups += 1,
                    BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY => self.cost.array_lookups += 1,
                    other => bail!("lookup in map type {other}"),
                }
                match self.t.lookup(m, &key)? {
                    None => 0,
                    Some(value) => {
                        self.values += 1;
                        let base = VALUE_BASE + VALUE_STRIDE * self.values;
                        self.regions.push(Region { base, bytes: value });
                        base
                    }
                }
            }
            // Writes stay here: the interpreter changes no map.
            2 => 0,
            // Early in the clock: any lease set holds.
            5 => 1,
            7 => 0x1234_5678,
            51 => 4, // XDP_REDIRECT
            // `dispatcher trace`'s ring buffer has room (a scratch region
            // the record is written to); the log's has none, so a log line
            // is skipped.
            131 if self.map(self.regs[1])?.name == dispatcher_common::maps::names::TRACE => {
                self.values += 1;
                let base = VALUE_BASE + VALUE_STRIDE * self.values;
                let len = self.regs[2] as usize;
                self.regions.push(Region {
                    base,
                    bytes: vec![0; len],
                });
                base
            }
            131 => 0,
            // Submitted or discarded: nothing is kept.
            132 | 133 => 0,
            _ => unreachable!(),
        })
    }

    fn go(mut self) -> Result<Cost> {
        let mut pc = 0usize;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > MAX_STEPS {
                bail!("more than {MAX_STEPS} instructions: a loop the interpreter cannot end");
            }
            let insn = *self
                .t
                .insns
                .get(pc)
                .ok_or_else(|| anyhow!("jump out of the program to {pc}"))?;
            self.cost.instructions += 1;
            let (file, line) = self.t.source_of(pc);
            *self.cost.by_source.entry(file.to_string()).or_default() += 1;
            *self
                .cost
                .by_line
                .entry(format!("{file}:{line}"))
                .or_default() += 1;
            let (code, dst, src) = (insn.code, insn.dst_reg() as usize, insn.src_reg() as usize);
            let (off, imm) = (insn.off as i64, insn.imm as i64);
            let class = code & 0x07;
            let next = pc + 1;
            pc = next;
            match class {
                // ld_imm64 (map loads carry the map's placeholder).
                0x00 => {
                    let hi = self.t.insns.get(next).map_or(0, |i| i.imm as u32 as u64);
                    let lo = insn.imm as u32 as u64;
                    self.regs[dst] = if insn.src_reg() == 1 {
                        lo
                    } else if insn.src_reg() == 0 {
                        lo | (hi << 32)
                    } else {
                        bail!("ld_imm64 of kind {} at {}", insn.src_reg(), next - 1);
                    };
                    pc = next + 1;
                }
                // ldx, st, stx (and atomics)
                0x01..=0x03 => {
                    let size = [4, 2, 1, 8][((code >> 3) & 0x03) as usize];
                    let mode = code & 0xe0;
                    match (class, mode) {
                        (0x01, 0x60) => {
                            let a = self.regs[src].wrapping_add(off as u64);
                            self.regs[dst] = self.load(a, size)?;
                        }
                        (0x02, 0x60) => {
                            let a = self.regs[dst].wrapping_add(off as u64);
                            self.store(a, size, imm as u64)?;
                        }
                        (0x03, 0x60) => {
                            let a = self.regs[dst].wrapping_add(off as u64);
                            self.store(a, size, self.regs[src])?;
                        }
                        (0x03, 0xc0) => {
                            self.cost.atomics += 1;
                            let a = self.regs[dst].wrapping_add(off as u64);
                            let old = self.load(a, size)?;
                            let operand = self.regs[src];
                            let new = match imm & !0x01 {
                                0x00 => old.wrapping_add(operand),
                                0x40 => old | operand,
                                0x50 => old & operand,
                                0xa0 => old ^ operand,
                                0xe0 => operand, // xchg
                                other => bail!("atomic {other:#x}"),
                            };
                            self.store(a, size, new)?;
                            if imm & 0x01 != 0 {
                                self.regs[src] = old;
                            }
                        }
                        _ => bail!("memory instruction {code:#x}"),
                    }
                }
                0x04 | 0x07 => self.alu(code, dst, src, imm)?,
                0x05 | 0x06 => {
                    let op = code & 0xf0;
                    if class == 0x05 && op == 0x80 {
                        if insn.src_reg() == 1 {
                            self.cost.bpf_calls += 1;
                            let mut saved = [0u64; 4];
                            saved.copy_from_slice(&self.regs[6..10]);
                            let stack = self.regions.len();
                            let base = STACK_BASE + 0x1_0000 * (self.frames.len() as u64 + 1);
                            self.regions.push(Region {
                                base,
                                bytes: vec![0; STACK_SIZE],
                            });
                            self.frames.push(Frame {
                                return_to: next,
                                saved,
                                stack,
                            });
                            self.regs[10] = base + STACK_SIZE as u64;
                            pc = (next as i64 + imm) as usize;
                        } else {
                            self.regs[0] = self.helper(insn.imm)?;
                        }
                        continue;
                    }
                    if class == 0x05 && op == 0x90 {
                        match self.frames.pop() {
                            None => {
                                self.cost.verdict = self.regs[0] as u32;
                                return Ok(self.cost);
                            }
                            Some(f) => {
                                self.regs[6..10].copy_from_slice(&f.saved);
                                // The callee's stack goes; map values it
                                // looked up stay (their addresses are unique).
                                self.regions.remove(f.stack);
                                self.regs[10] = STACK_BASE
                                    + 0x1_0000 * self.frames.len() as u64
                                    + STACK_SIZE as u64;
                                pc = f.return_to;
                                continue;
                            }
                        }
                    }
                    let a = self.regs[dst];
                    let b = if code & 0x08 != 0 {
                        self.regs[src]
                    } else {
                        imm as u64
                    };
                    let (a, b) = if class == 0x06 {
                        (a as u32 as u64, b as u32 as u64)
                    } else {
                        (a, b)
                    };
                    let (sa, sb) = if class == 0x06 {
                        (a as u32 as i32 as i64, b as u32 as i32 as i64)
                    } else {
                        (a as i64, b as i64)
                    };
                    let taken = match op {
                        0x00 => true,
                        0x10 => a == b,
                        0x20 => a > b,
                        0x30 => a >= b,
                        0x40 => a & b != 0,
                        0x50 => a != b,
                        0x60 => sa > sb,
                        0x70 => sa >= sb,
                        0xa0 => a < b,
                        0xb0 => a <= b,
                        0xc0 => sa < sb,
                        0xd0 => sa <= sb,
                        other => bail!("jump {other:#x}"),
                    };
                    if taken {
                        // `gotol` (class JMP32, op JA) keeps its offset in imm.
                        let delta = if class == 0x06 && op == 0x00 {
                            imm
                        } else {
                            off
                        };
                        pc = (next as i64 + delta) as usize;
                    }
                }
                _ => bail!("instruction class {class}"),
            }
        }
    }

    fn alu(&mut self, code: u8, dst: usize, src: usize, imm: i64) -> Result<()> {
        let wide = code & 0x07 == 0x07;
        let op = code & 0xf0;
        let x = code & 0x08 != 0;
        let a = self.regs[dst];
        let b = if x { self.regs[src] } else { imm as u64 };
        let r = if op == 0xd0 {
            // Byte swaps: to little endian is a truncation here.
            let width = imm as u32;
            let v = if x {
                // to big endian
                match width {
                    16 => (a as u16).swap_bytes() as u64,
                    32 => (a as u32).swap_bytes() as u64,
                    64 => a.swap_bytes(),
                    _ => bail!("byte swap of {width} bits"),
                }
            } else {
                match width {
                    16 => a as u16 as u64,
                    32 => a as u32 as u64,
                    64 => a,
                    _ => bail!("byte swap of {width} bits"),
                }
            };
            self.regs[dst] = v;
            return Ok(());
        } else if wide {
            match op {
                0x00 => a.wrapping_add(b),
                0x10 => a.wrapping_sub(b),
                0x20 => a.wrapping_mul(b),
                0x30 => a.checked_div(b).unwrap_or(0),
                0x40 => a | b,
                0x50 => a & b,
                0x60 => a.wrapping_shl(b as u32 & 63),
                0x70 => a.wrapping_shr(b as u32 & 63),
                0x80 => (a as i64).wrapping_neg() as u64,
                0x90 => a.checked_rem(b).unwrap_or(a),
                0xa0 => a ^ b,
                0xb0 => b,
                0xc0 => ((a as i64) >> (b & 63)) as u64,
                other => bail!("alu64 {other:#x}"),
            }
        } else {
            let (a, b) = (a as u32, b as u32);
            (match op {
                0x00 => a.wrapping_add(b),
                0x10 => a.wrapping_sub(b),
                0x20 => a.wrapping_mul(b),
                0x30 => a.checked_div(b).unwrap_or(0),
                0x40 => a | b,
                0x50 => a & b,
                0x60 => a.wrapping_shl(b & 31),
                0x70 => a.wrapping_shr(b & 31),
                0x80 => (a as i32).wrapping_neg() as u32,
                0x90 => a.checked_rem(b).unwrap_or(a),
                0xa0 => a ^ b,
                0xb0 => b,
                0xc0 => ((a as i32) >> (b & 31)) as u32,
                other => bail!("alu32 {other:#x}"),
            }) as u64
        };
        self.regs[dst] = r;
        Ok(())
    }
}
