//! `dispatcher offload check [OBJECT]`: a static check of a compiled XDP
//! object against what the Netronome NFP accepts for hardware offload
//! (../shared/design/OFFLOAD.md, from the kernel's nfp driver): helpers,
//! map types, flags and sizes, no direct stores into map values, map value
//! reads at constant offsets only, each map value word either a plain value
//! or an atomic counter (never both), atomics, the instruction set, return
//! codes, stack, the context fields, map keys on the stack, and an
//! instruction count estimate.
//!
//! The object is parsed and linked with aya-obj (bpf-to-bpf calls inlined
//! into one instruction stream, as the kernel sees it; map loads pointed at
//! placeholder descriptors so each can be traced to its map). The program
//! is then walked by a small abstract interpreter that knows, for every
//! register at every instruction, whether it may hold a map value pointer
//! (of which map, at which constant offsets), the context, a stack address
//! or a constant: enough to name each violation with its instruction. A
//! pointer spilled to the stack and reloaded is not followed (the NFP's
//! checks on it then go unchecked here, never falsely reported).

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, Context as _, Result};
use aya_obj::generated::bpf_insn;

/// What the checker needs to know about a map.
#[derive(Clone, Debug, PartialEq)]
pub struct MapFacts {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// Defined with BTF (a `.maps` section) rather than legacy `maps`.
    pub btf: bool,
    /// A global-data map (.rodata, .data, .bss).
    pub global_data: bool,
}

/// Limits that come from the card's firmware; the defaults are the
/// published Agilio figures and the kernel's own stack limit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// eBPF instructions (the firmware counts NFP instructions; about
    /// 2,800 eBPF instructions is the published figure).
    pub max_instructions: usize,
    pub max_stack: i64,
    /// Bytes per map entry: round_up(key, 8) + round_up(value, 8).
    pub max_entry_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_instructions: 2_800,
            max_stack: 512,
            max_entry_bytes: 64,
        }
    }
}

/// One broken rule, at an instruction (or none, for a map).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    /// Index of the instruction in the linked program (ld_imm64 counts two).
    pub insn: Option<usize>,
    pub rule: Rule,
    pub detail: String,
}

/// The rules, one name each (tests check each is caught).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Helper,
    TailCall,
    MapType,
    MapFlags,
    MapEntrySize,
    MapBtf,
    GlobalData,
    MapValueStore,
    MapValueOffset,
    MapValueUse,
    Atomic,
    InstructionSet,
    ReturnCode,
    Stack,
    InstructionCount,
    MapKeyNotOnStack,
    ContextField,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::Helper => "helper",
            Rule::TailCall => "tail call",
            Rule::MapType => "map type",
            Rule::MapFlags => "map flags",
            Rule::MapEntrySize => "map entry size",
            Rule::MapBtf => "BTF map",
            Rule::GlobalData => "global data",
            Rule::MapValueStore => "store into a map value",
            Rule::MapValueOffset => "map value offset",
            Rule::MapValueUse => "map value use",
            Rule::Atomic => "atomic",
            Rule::InstructionSet => "instruction set",
            Rule::ReturnCode => "return code",
            Rule::Stack => "stack",
            Rule::InstructionCount => "instruction count",
            Rule::MapKeyNotOnStack => "map key",
            Rule::ContextField => "context",
        }
    }
}

/// What the check found for one program.
#[derive(Debug)]
pub struct Report {
    pub program: String,
    pub section: String,
    pub instructions: usize,
    pub stack: i64,
    pub maps: Vec<String>,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = format!(
            "program {} (section {}): {} instructions, {} bytes of stack, maps: {}\n",
            self.program,
            self.section,
            self.instructions,
            self.stack,
            if self.maps.is_empty() {
                "none".to_string()
            } else {
                self.maps.join(", ")
            }
        );
        if self.violations.is_empty() {
            out += "ok: within the NFP's offload rules\n";
        }
        for v in &self.violations {
            match v.insn {
                Some(i) => {
                    out += &format!(
                        "  instruction {i} in section {}: {}: {}\n",
                        self.section,
                        v.rule.name(),
                        v.detail
                    )
                }
                None => out += &format!("  {}: {}\n", v.rule.name(), v.detail),
            }
        }
        out
    }
}

/// Placeholder descriptors handed to the relocation: map k gets FD_BASE + k.
const FD_BASE: i32 = 10_000;

/// Checks program `program` of the object in `bytes`.
pub fn check_object(bytes: &[u8], program: &str, limits: Limits) -> Result<Report> {
    let mut obj = aya_obj::Object::parse(bytes)
        .map_err(|e| anyhow!("not an eBPF object aya can read: {e}"))?;
    let mut names: Vec<String> = obj.maps.keys().cloned().collect();
    names.sort();
    let facts: Vec<MapFacts> = names
        .iter()
        .map(|name| {
            let m = &obj.maps[name];
            MapFacts {
                name: name.clone(),
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                flags: m.map_flags(),
                btf: matches!(m, aya_obj::maps::Map::Btf(_)),
                global_data: matches!(
                    m.section_kind(),
                    aya_obj::EbpfSectionKind::Rodata
                        | aya_obj::EbpfSectionKind::Data
                        | aya_obj::EbpfSectionKind::Bss
                ),
            }
        })
        .collect();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps: Vec<(String, i32, aya_obj::maps::Map)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.clone(), FD_BASE + k as i32, obj.maps[n].clone()))
        .collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(|e| anyhow!("cannot relocate the object's maps: {e}"))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| anyhow!("cannot link the object's functions: {e}"))?;
    let mut available: Vec<&String> = obj.programs.keys().collect();
    available.sort();
    let p = obj.programs.get(program).with_context(|| {
        format!(
            "the object has no program `{program}` (it has: {})",
            available
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    // "Xdp { frags: false, .. }" -> "xdp": the section's kind, as ELF names it.
    let section = format!("{:?}", p.section)
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_lowercase();
    let function = obj
        .functions
        .get(&p.function_key())
        .context("the program's code is missing from the object")?;
    let insns: Vec<Insn> = function.instructions.iter().map(Insn::from).collect();
    Ok(check(program, &section, &insns, &facts, limits))
}

/// One instruction, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl From<&bpf_insn> for Insn {
    fn from(i: &bpf_insn) -> Insn {
        Insn {
            code: i.code,
            dst: i.dst_reg(),
            src: i.src_reg(),
            off: i.off,
            imm: i.imm,
        }
    }
}

// Opcode fields (include/uapi/linux/bpf.h and bpf_common.h).
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const CLASS_ALU64: u8 = 0x07;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const MODE_MEMSX: u8 = 0x80;
const MODE_ATOMIC: u8 = 0xc0;
const SRC_X: u8 = 0x08;
const OP_MUL: u8 = 0x20;
const OP_DIV: u8 = 0x30;
const OP_MOD: u8 = 0x90;
const OP_MOV: u8 = 0xb0;
const OP_ADD: u8 = 0x00;
const OP_SUB: u8 = 0x10;
const OP_END: u8 = 0xd0;
const JMP_JA: u8 = 0x00;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;
const SIZE_W: u8 = 0x00;
const SIZE_DW: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
const PSEUDO_MAP_VALUE: u8 = 2;
const PSEUDO_CALL: u8 = 1;
const ATOMIC_ADD: i32 = 0x00;

/// Helpers the NFP JIT accepts (some gated by firmware features).
const HELPERS: [(i32, &str); 7] = [
    (1, "map_lookup_elem"),
    (2, "map_update_elem"),
    (3, "map_delete_elem"),
    (7, "get_prandom_u32"),
    (25, "perf_event_output"),
    (44, "xdp_adjust_head"),
    (65, "xdp_adjust_tail"),
];
const TAIL_CALL: i32 = 12;
const ARRAY: u32 = 2;
const HASH: u32 = 1;

/// What a register may hold, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    Unknown,
    Const(i64),
    /// One of several small constants (bit k: k, for k < 64): what paths
    /// that set a register to different constants join into. The kernel
    /// verifier (and the NFP's) follow each path with its own constant, so
    /// a map value pointer moved by one stays at a known offset.
    Consts(u64),
    Ctx,
    /// The frame pointer plus this offset.
    Stack(i64),
    /// The frame pointer plus one of several constant offsets: what paths
    /// that point a register at different stack slots join into (LLVM
    /// merges map lookups whose keys sit in different slots into one
    /// call). The verifiers follow each path with its own offset.
    Stacks(StackSet),
    /// The frame pointer plus a computed offset.
    StackVariable,
    /// A pointer into a value of map `map` (None: of some map), at one of
    /// the offsets `offsets` (or null, before the check).
    MapValue {
        map: Option<usize>,
        offsets: Offsets,
    },
    /// A map descriptor (the k-th map).
    Map(usize),
}

/// Where a map value pointer may point in the value: a set of constant
/// offsets below 64 (the NFP's largest entry), or somewhere variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offsets {
    /// Bit k: offset k.
    Known(u64),
    Variable,
}

/// A set of stack offsets, each in -STACK_SPAN..=0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StackSet([u64; STACK_WORDS]);

/// Offsets a stack set holds: the kernel's 512-byte stack, with room.
const STACK_SPAN: i64 = 575;
const STACK_WORDS: usize = (STACK_SPAN as usize + 64) / 64;

impl StackSet {
    /// The set of `offsets`, if every one is in range.
    fn of(offsets: impl IntoIterator<Item = i64>) -> Option<StackSet> {
        let mut bits = [0u64; STACK_WORDS];
        for off in offsets {
            if !(-STACK_SPAN..=0).contains(&off) {
                return None;
            }
            let k = (-off) as usize;
            bits[k / 64] |= 1 << (k % 64);
        }
        Some(StackSet(bits))
    }

    fn each(self) -> impl Iterator<Item = i64> {
        (0..=STACK_SPAN)
            .filter(move |&k| self.0[k as usize / 64] & (1 << (k % 64)) != 0)
            .map(|k| -k)
    }
}

impl Offsets {
    fn union(self, other: Offsets) -> Offsets {
        match (self, other) {
            (Offsets::Known(a), Offsets::Known(b)) => Offsets::Known(a | b),
            _ => Offsets::Variable,
        }
    }

    /// Every offset moved by `by`; variable when one leaves 0..64.
    fn shifted(self, by: i64) -> Offsets {
        let Offsets::Known(mask) = self else {
            return Offsets::Variable;
        };
        let mut out = 0u64;
        for k in (0..64).filter(|k| mask & (1 << k) != 0) {
            match u32::try_from(k + by) {
                Ok(n) if n < 64 => out |= 1 << n,
                _ => return Offsets::Variable,
            }
        }
        Offsets::Known(out)
    }

    fn each(self) -> impl Iterator<Item = i64> {
        let mask = match self {
            Offsets::Known(m) => m,
            Offsets::Variable => 0,
        };
        (0..64).filter(move |k| mask & (1 << k) != 0)
    }
}

impl Val {
    fn join(self, other: Val) -> Val {
        match (self, other) {
            (a, b) if a == b => a,
            (a, b) if a.stack_offsets().is_some() && b.stack_offsets().is_some() => {
                let offsets = a
                    .stack_offsets()
                    .into_iter()
                    .flatten()
                    .chain(b.stack_offsets().into_iter().flatten());
                StackSet::of(offsets).map_or(Val::StackVariable, Val::Stacks)
            }
            (a, b) if a.small_constants().is_some() && b.small_constants().is_some() => {
                Val::Consts(a.small_constants().unwrap_or(0) | b.small_constants().unwrap_or(0))
            }
            (
                Val::MapValue {
                    map: m1,
                    offsets: o1,
                },
                Val::MapValue {
                    map: m2,
                    offsets: o2,
                },
            ) => Val::MapValue {
                map: if m1 == m2 { m1 } else { None },
                offsets: o1.union(o2),
            },
            // Conservative for the store rule: "may be a map value".
            (v @ Val::MapValue { .. }, _) | (_, v @ Val::MapValue { .. }) => v,
            _ => Val::Unknown,
        }
    }

    /// The stack offsets this points at, when they are all constant.
    fn stack_offsets(self) -> Option<Vec<i64>> {
        match self {
            Val::Stack(off) => Some(vec![off]),
            Val::Stacks(set) => Some(set.each().collect()),
            _ => None,
        }
    }

    /// A key or value on the stack where the NFP reads one: at constant,
    /// 4-byte aligned offsets (on every path).
    fn on_stack_aligned(self) -> bool {
        self.stack_offsets()
            .is_some_and(|offs| offs.iter().all(|off| off % 4 == 0))
    }

    /// This stack pointer moved by `by`.
    fn stack_moved(self, by: i64) -> Val {
        match self.stack_offsets() {
            Some(offs) if offs.len() == 1 => Val::Stack(offs[0] + by),
            Some(offs) => StackSet::of(offs.into_iter().map(|o| o + by))
                .map_or(Val::StackVariable, Val::Stacks),
            None => Val::StackVariable,
        }
    }

    fn is_map_value(self) -> bool {
        matches!(self, Val::MapValue { .. })
    }

    /// The constants this may be, when all are in 0..64.
    fn small_constants(self) -> Option<u64> {
        match self {
            Val::Const(c) if (0..64).contains(&c) => Some(1 << c),
            Val::Consts(mask) => Some(mask),
            _ => None,
        }
    }
}

/// How a program uses a 4-byte word of a map's values. The NFP keeps each
/// word either as a plain value or as an atomic counter (which it stores
/// big-endian, swapping on host access): a word both read and atomically
/// added is refused ("map value use type conflict").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WordUse {
    Read,
    Atomic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    regs: [Val; 11],
    /// What registers were spilled to the 8-byte stack slots (slot k at
    /// offset -8(k+1)): the verifiers track a spilled pointer and give it
    /// back on the fill, and LLVM spills key pointers under register
    /// pressure.
    spills: [Val; SPILL_SLOTS],
    /// Inside a bpf-to-bpf callee: its exits return to the caller.
    callee: bool,
}

const SPILL_SLOTS: usize = 64;

/// The spill slot of an 8-byte access at stack offset `off`.
fn spill_slot(off: i64) -> Option<usize> {
    (off < 0 && off % 8 == 0)
        .then(|| (-off / 8 - 1) as usize)
        .filter(|&k| k < SPILL_SLOTS)
}

impl State {
    fn new(regs: [Val; 11], callee: bool) -> State {
        State {
            regs,
            spills: [Val::Unknown; SPILL_SLOTS],
            callee,
        }
    }

    fn join(&self, other: &State) -> State {
        let mut regs = self.regs;
        for (r, o) in regs.iter_mut().zip(other.regs) {
            *r = r.join(o);
        }
        let mut spills = self.spills;
        for (r, o) in spills.iter_mut().zip(other.spills) {
            *r = r.join(o);
        }
        State {
            regs,
            spills,
            callee: self.callee || other.callee,
        }
    }

    /// A store of `size` bytes at each of `bases` + `off`: a full-width
    /// store of a register at one known slot records it; anything else
    /// forgets the slots it may touch.
    fn store_to_stack(&mut self, bases: &[i64], off: i64, size: i64, spilled: Option<Val>) {
        if let ([base], Some(v), 8) = (bases, spilled, size) {
            if let Some(k) = spill_slot(base + off) {
                self.spills[k] = v;
                return;
            }
        }
        for base in bases {
            let (lo, hi) = (base + off, base + off + size);
            for (k, slot) in self.spills.iter_mut().enumerate() {
                let start = -8 * (k as i64 + 1);
                if start < hi && lo < start + 8 {
                    *slot = Val::Unknown;
                }
            }
        }
    }
}

/// Checks one linked program.
pub fn check(
    program: &str,
    section: &str,
    insns: &[Insn],
    maps: &[MapFacts],
    limits: Limits,
) -> Report {
    let mut v: Vec<Violation> = Vec::new();
    let mut add = |insn: Option<usize>, rule: Rule, detail: String| {
        let violation = Violation { insn, rule, detail };
        if !v.contains(&violation) {
            v.push(violation);
        }
    };
    if insns.len() > limits.max_instructions {
        add(
            None,
            Rule::InstructionCount,
            format!(
                "{} instructions, more than the {} the NFP's firmware is known to take",
                insns.len(),
                limits.max_instructions
            ),
        );
    }

    // Instruction-level rules, and the maps the program loads.
    let mut used_maps: Vec<usize> = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        let class = insn.code & 0x07;
        let op = insn.code & 0xf0;
        match class {
            CLASS_LD if insn.code == (CLASS_LD | MODE_IMM | SIZE_DW) => match insn.src {
                PSEUDO_MAP_FD => match map_of(insn.imm, maps) {
                    Some(k) if !used_maps.contains(&k) => used_maps.push(k),
                    Some(_) => {}
                    None => add(
                        Some(i),
                        Rule::MapType,
                        format!("loads an unknown map (descriptor {})", insn.imm),
                    ),
                },
                PSEUDO_MAP_VALUE => {
                    let name =
                        map_of(insn.imm, maps).map_or("?".to_string(), |k| maps[k].name.clone());
                    add(Some(i), Rule::GlobalData, format!("reads global data ({name}): the NFP refuses .rodata/.data/.bss maps; use constants or an ARRAY map"))
                }
                _ => {}
            },
            CLASS_ALU | CLASS_ALU64 => {
                let wide = class == CLASS_ALU64;
                let by_reg = insn.code & SRC_X != 0;
                match op {
                    OP_MOD => add(Some(i), Rule::InstructionSet, "modulo (BPF_MOD): the NFP has none; use a mask or multiply-shift".into()),
                    OP_DIV if insn.off != 0 => add(Some(i), Rule::InstructionSet, "signed division (cpu v4 sdiv): not on the NFP".into()),
                    OP_DIV if by_reg => add(Some(i), Rule::InstructionSet, "division by a register: the NFP divides only by a u32 constant".into()),
                    OP_DIV if insn.imm <= 0 => add(Some(i), Rule::InstructionSet, format!("division by {}: the NFP divides only by a positive u32 constant", insn.imm)),
                    OP_MUL if wide && by_reg => add(
                        Some(i),
                        Rule::InstructionSet,
                        "64-bit multiply of two registers: the NFP multiplies only operands that fit in 32 bits (use a 32-bit multiply)".into(),
                    ),
                    OP_MUL if wide && insn.imm < 0 => add(Some(i), Rule::InstructionSet, format!("64-bit multiply by {} (sign-extended past 32 bits)", insn.imm)),
                    OP_MOV if insn.off != 0 => add(Some(i), Rule::InstructionSet, "sign-extending move (cpu v4 movsx): not on the NFP".into()),
                    OP_END if wide => add(Some(i), Rule::InstructionSet, "unconditional byte swap (cpu v4 bswap): not on the NFP".into()),
                    _ => {}
                }
            }
            CLASS_LDX if insn.code & 0xe0 == MODE_MEMSX => add(
                Some(i),
                Rule::InstructionSet,
                "sign-extending load (cpu v4 ldsx): not on the NFP".into(),
            ),
            CLASS_JMP32 if op == JMP_JA => add(
                Some(i),
                Rule::InstructionSet,
                "long jump (cpu v4 gotol): not on the NFP".into(),
            ),
            CLASS_STX if insn.code & 0xe0 == MODE_ATOMIC => {
                let size = insn.code & 0x18;
                if insn.imm != ATOMIC_ADD {
                    add(
                        Some(i),
                        Rule::Atomic,
                        format!("atomic operation {:#x}: the NFP has only a plain atomic add (XADD), no fetch, exchange or compare-exchange", insn.imm),
                    );
                } else if size != SIZE_W && size != SIZE_DW {
                    add(
                        Some(i),
                        Rule::Atomic,
                        "atomic add on a 8- or 16-bit word: the NFP adds 32- and 64-bit words only"
                            .into(),
                    );
                }
            }
            CLASS_JMP if op == JMP_CALL && insn.src != PSEUDO_CALL => {
                if insn.imm == TAIL_CALL {
                    add(
                        Some(i),
                        Rule::TailCall,
                        "bpf_tail_call: the NFP does not run tail calls".into(),
                    );
                } else if !HELPERS.iter().any(|(id, _)| *id == insn.imm) {
                    let allowed: Vec<&str> = HELPERS.iter().map(|(_, n)| *n).collect();
                    add(
                        Some(i),
                        Rule::Helper,
                        format!(
                            "helper {}: the NFP offers only {}",
                            insn.imm,
                            allowed.join(", ")
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    used_maps.sort();
    for &k in &used_maps {
        let m = &maps[k];
        if m.global_data {
            continue; // reported where it is read
        }
        if m.map_type != ARRAY && m.map_type != HASH {
            add(
                None,
                Rule::MapType,
                format!(
                    "map {} is of type {} ({}): the NFP offloads only ARRAY and HASH maps",
                    m.name,
                    m.map_type,
                    map_type_name(m.map_type)
                ),
            );
        }
        if m.flags != 0 {
            add(
                None,
                Rule::MapFlags,
                format!(
                    "map {} has flags {:#x}: offloaded maps take none",
                    m.name, m.flags
                ),
            );
        }
        let entry = m.key_size.next_multiple_of(8) + m.value_size.next_multiple_of(8);
        if entry > limits.max_entry_bytes {
            add(
                None,
                Rule::MapEntrySize,
                format!("map {}: {entry} bytes per entry (key {}, value {}, each rounded up to 8), more than the NFP's {}", m.name, m.key_size, m.value_size, limits.max_entry_bytes),
            );
        }
        if m.btf {
            add(None, Rule::MapBtf, format!("map {} is a BTF map (.maps): offloaded maps cannot carry BTF; define it with aya's legacy #[map]", m.name));
        }
    }

    // The data-flow rules.
    let (stack, uses) = walk(insns, maps, &mut add);
    // Words both read and added to, grouped by the two instructions.
    let mut conflicts: std::collections::BTreeMap<(usize, usize, usize), (i64, i64)> =
        Default::default();
    for (&((map, word), use_), &atomic) in &uses {
        if use_ != WordUse::Atomic {
            continue;
        }
        if let Some(&read) = uses.get(&((map, word), WordUse::Read)) {
            let span = conflicts.entry((atomic, map, read)).or_insert((word, word));
            *span = (span.0.min(word), span.1.max(word));
        }
    }
    for ((atomic, map, read), (first, last)) in conflicts {
        add(
            Some(atomic),
            Rule::MapValueUse,
            format!(
                "adds atomically to bytes {}..{} of map {}'s value, which instruction {read} reads: \
                 the NFP keeps a word either as an atomic counter or as a plain value, not both",
                first * 4,
                last * 4 + 4,
                maps[map].name
            ),
        );
    }
    if -stack > limits.max_stack {
        add(
            None,
            Rule::Stack,
            format!("{} bytes of stack, more than {}", -stack, limits.max_stack),
        );
    }
    v.sort();
    Report {
        program: program.to_string(),
        section: section.to_string(),
        instructions: insns.len(),
        stack: -stack,
        maps: used_maps.iter().map(|k| maps[*k].name.clone()).collect(),
        violations: v,
    }
}

fn map_of(fd: i32, maps: &[MapFacts]) -> Option<usize> {
    let k = fd.checked_sub(FD_BASE)? as usize;
    (k < maps.len()).then_some(k)
}

fn map_type_name(t: u32) -> &'static str {
    match t {
        1 => "hash",
        2 => "array",
        3 => "prog array",
        4 => "perf event array",
        5 => "per-CPU hash",
        6 => "per-CPU array",
        9 => "LRU hash",
        11 => "LPM trie",
        14 => "devmap",
        27 => "ring buffer",
        _ => "other",
    }
}

/// Each (map, value word) and how the program uses it, with the first
/// instruction that does.
type WordUses = HashMap<((usize, i64), WordUse), usize>;

/// Walks every path of the program with abstract register contents until
/// nothing changes; reports stores into map values, map value reads at a
/// variable offset, map keys not on the stack, context reads other than
/// data/data_end, and return codes. Returns the lowest stack offset used
/// (negative) and how each map value word is used.
fn walk(
    insns: &[Insn],
    maps: &[MapFacts],
    add: &mut impl FnMut(Option<usize>, Rule, String),
) -> (i64, WordUses) {
    let mut uses: WordUses = HashMap::new();
    // Marks the words an access of `size` bytes at `offsets` + `off` covers.
    let mut mark =
        |i: usize, map: Option<usize>, offsets: Offsets, off: i64, size: i64, use_: WordUse| {
            let Some(map) = map else { return };
            for start in offsets.each() {
                for word in (start + off).div_euclid(4)..=(start + off + size - 1).div_euclid(4) {
                    uses.entry(((map, word), use_)).or_insert(i);
                }
            }
        };
    let mut states: HashMap<usize, State> = HashMap::new();
    let mut entry = State::new([Val::Unknown; 11], false);
    entry.regs[1] = Val::Ctx;
    entry.regs[10] = Val::Stack(0);
    states.insert(0, entry);
    let mut work = vec![0usize];
    let mut lowest = 0i64;
    let mut reported: HashSet<(usize, Rule)> = HashSet::new();
    let mut report =
        |i: usize, rule: Rule, detail: String, add: &mut dyn FnMut(Option<usize>, Rule, String)| {
            if reported.insert((i, rule)) {
                add(Some(i), rule, detail);
            }
        };
    let mut visits = 0usize;
    while let Some(i) = work.pop() {
        visits += 1;
        if i >= insns.len() || visits > 200_000 {
            continue;
        }
        let mut s = states[&i];
        let insn = insns[i];
        let class = insn.code & 0x07;
        let op = insn.code & 0xf0;
        let (d, r) = (insn.dst as usize % 11, insn.src as usize % 11);
        let mut next: Vec<usize> = vec![i + 1];
        match class {
            CLASS_LD if insn.code == (CLASS_LD | MODE_IMM | SIZE_DW) => {
                s.regs[d] = match insn.src {
                    PSEUDO_MAP_FD => map_of(insn.imm, maps).map_or(Val::Unknown, Val::Map),
                    PSEUDO_MAP_VALUE => Val::MapValue {
                        map: None,
                        offsets: Offsets::Variable,
                    },
                    _ => Val::Const(
                        ((insns.get(i + 1).map_or(0, |n| n.imm) as u32 as i64) << 32)
                            | insn.imm as u32 as i64,
                    ),
                };
                next = vec![i + 2];
            }
            CLASS_LDX => {
                if let Some(bases) = s.regs[r].stack_offsets() {
                    lowest = bases.iter().fold(lowest, |l, b| l.min(b + insn.off as i64));
                }
                if s.regs[r] == Val::StackVariable {
                    report(i, Rule::Stack, VARIABLE_STACK.into(), add);
                }
                if let Val::MapValue { map, offsets } = s.regs[r] {
                    if offsets == Offsets::Variable {
                        report(
                            i,
                            Rule::MapValueOffset,
                            "reads a map value at a variable offset: the NFP reads map values only at offsets known when it verifies (read whole words at constant offsets and pick by value)".into(),
                            add,
                        );
                    }
                    mark(
                        i,
                        map,
                        offsets,
                        insn.off as i64,
                        access_size(insn.code),
                        WordUse::Read,
                    );
                }
                let fill = match (s.regs[r], access_size(insn.code)) {
                    (Val::Stack(base), 8) => {
                        spill_slot(base + insn.off as i64).map(|k| s.spills[k])
                    }
                    _ => None,
                };
                if s.regs[r] == Val::Ctx && insn.off != 0 && insn.off != 4 {
                    report(
                        i,
                        Rule::ContextField,
                        format!("reads the context at offset {}: the NFP exposes only data (0) and data_end (4)", insn.off),
                        add,
                    );
                }
                s.regs[d] = fill.unwrap_or(Val::Unknown);
            }
            CLASS_ST | CLASS_STX => {
                // Spills: a register stored whole at a known slot is
                // remembered; other stores into the stack forget what they
                // may overwrite. (Stores through registers of unknown
                // provenance, packet pointers among them, are taken not to
                // hit the stack: a stack pointer that lost its offset in a
                // join is already reported where it is used.)
                match s.regs[d].stack_offsets() {
                    Some(bases) => {
                        let spilled = (class == CLASS_STX && insn.code & 0xe0 == MODE_MEM)
                            .then_some(s.regs[r]);
                        s.store_to_stack(&bases, insn.off as i64, access_size(insn.code), spilled);
                    }
                    None if s.regs[d] == Val::StackVariable => {
                        s.spills = [Val::Unknown; SPILL_SLOTS]
                    }
                    None => {}
                }
                if let Some(bases) = s.regs[d].stack_offsets() {
                    lowest = bases.iter().fold(lowest, |l, b| l.min(b + insn.off as i64));
                }
                if s.regs[d] == Val::StackVariable {
                    report(i, Rule::Stack, VARIABLE_STACK.into(), add);
                }
                let atomic = insn.code & 0xe0 == MODE_ATOMIC;
                if let (true, Val::MapValue { map, offsets }) = (atomic, s.regs[d]) {
                    mark(
                        i,
                        map,
                        offsets,
                        insn.off as i64,
                        access_size(insn.code),
                        WordUse::Atomic,
                    );
                }
                if s.regs[d].is_map_value() && !atomic && insn.code & 0xe0 == MODE_MEM {
                    report(
                        i,
                        Rule::MapValueStore,
                        "stores into a map value directly: the NFP refuses map writes; use map_update_elem or an atomic add".into(),
                        add,
                    );
                }
            }
            CLASS_ALU | CLASS_ALU64 => {
                let operand = if insn.code & SRC_X != 0 {
                    s.regs[r]
                } else {
                    Val::Const(insn.imm as i64)
                };
                s.regs[d] = match (op, s.regs[d], operand) {
                    (OP_MOV, _, v) if class == CLASS_ALU64 || matches!(v, Val::Const(_)) => v,
                    (OP_ADD, v @ (Val::Stack(_) | Val::Stacks(_)), Val::Const(c)) => {
                        v.stack_moved(c)
                    }
                    (OP_SUB, v @ (Val::Stack(_) | Val::Stacks(_)), Val::Const(c)) => {
                        v.stack_moved(-c)
                    }
                    (OP_ADD | OP_SUB, Val::Stack(_) | Val::Stacks(_) | Val::StackVariable, _) => {
                        Val::StackVariable
                    }
                    (OP_ADD, Val::MapValue { map, offsets }, Val::Const(c))
                        if class == CLASS_ALU64 =>
                    {
                        Val::MapValue {
                            map,
                            offsets: offsets.shifted(c),
                        }
                    }
                    (OP_SUB, Val::MapValue { map, offsets }, Val::Const(c))
                        if class == CLASS_ALU64 =>
                    {
                        Val::MapValue {
                            map,
                            offsets: offsets.shifted(-c),
                        }
                    }
                    (OP_ADD, Val::MapValue { map, offsets }, Val::Consts(mask))
                        if class == CLASS_ALU64 =>
                    {
                        Val::MapValue {
                            map,
                            offsets: (0..64)
                                .filter(|k| mask & (1 << k) != 0)
                                .fold(Offsets::Known(0), |acc, k| acc.union(offsets.shifted(k))),
                        }
                    }
                    (OP_ADD | OP_SUB, Val::MapValue { map, .. }, _) => Val::MapValue {
                        map,
                        offsets: Offsets::Variable,
                    },
                    (OP_ADD, Val::Const(a), Val::Const(b)) => Val::Const(a.wrapping_add(b)),
                    _ => Val::Unknown,
                };
            }
            CLASS_JMP | CLASS_JMP32 => {
                match op {
                    JMP_EXIT => {
                        next.clear();
                        if !s.callee {
                            match s.regs[0] {
                            Val::Const(c) if !(0..=3).contains(&c) => report(
                                i,
                                Rule::ReturnCode,
                                format!("returns {c}{}: the NFP takes ABORTED, DROP, PASS and TX only", if c == 4 { " (XDP_REDIRECT)" } else { "" }),
                                add,
                            ),
                            _ => {}
                        }
                        }
                    }
                    JMP_CALL if insn.src == PSEUDO_CALL => {
                        // Into the callee with the caller's arguments; back
                        // here with its result unknown.
                        let target = (i as i64 + insn.imm as i64 + 1) as usize;
                        let callee = State::new(s.regs, true);
                        // What the callee writes through pointers into this
                        // frame is not followed: forget the spills.
                        s.spills = [Val::Unknown; SPILL_SLOTS];
                        merge(&mut states, &mut work, target, callee);
                        s.regs[0] = Val::Unknown;
                        for reg in &mut s.regs[1..=5] {
                            *reg = Val::Unknown;
                        }
                    }
                    JMP_CALL => {
                        if matches!(insn.imm, 1..=3) && !s.regs[2].on_stack_aligned() {
                            report(
                                i,
                                Rule::MapKeyNotOnStack,
                                "the map key is not on the stack at a constant, 4-byte aligned offset (the NFP reads keys only there)".into(),
                                add,
                            );
                        }
                        if insn.imm == 2 && !s.regs[3].on_stack_aligned() {
                            report(
                            i,
                            Rule::MapKeyNotOnStack,
                            "the value map_update_elem writes is not on the stack at a constant, 4-byte aligned offset (the NFP reads it only there)".into(),
                            add,
                        );
                        }
                        s.regs[0] = match (insn.imm, s.regs[1]) {
                            (1, Val::Map(k)) => Val::MapValue {
                                map: Some(k),
                                offsets: Offsets::Known(1),
                            },
                            (1, _) => Val::MapValue {
                                map: None,
                                offsets: Offsets::Known(1),
                            },
                            _ => Val::Unknown,
                        };
                        for reg in &mut s.regs[1..=5] {
                            *reg = Val::Unknown;
                        }
                    }
                    JMP_JA if class == CLASS_JMP => {
                        next = vec![(i as i64 + insn.off as i64 + 1) as usize]
                    }
                    _ => next.push((i as i64 + insn.off as i64 + 1) as usize),
                }
            }
            _ => {}
        }
        for n in next {
            merge(&mut states, &mut work, n, s);
        }
    }
    (lowest, uses)
}

const VARIABLE_STACK: &str =
    "reaches the stack at a computed offset: the NFP accesses the stack only at constant offsets";

/// Bytes a load or store of `code` moves.
fn access_size(code: u8) -> i64 {
    match code & 0x18 {
        SIZE_W => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

fn merge(states: &mut HashMap<usize, State>, work: &mut Vec<usize>, at: usize, s: State) {
    match states.get(&at) {
        Some(old) => {
            let joined = old.join(&s);
            if joined != *old {
                states.insert(at, joined);
                work.push(at);
            }
        }
        None => {
            states.insert(at, s);
            work.push(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A tiny assembler for the deliberately bad programs.
    fn i(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }
    fn mov_k(dst: u8, imm: i32) -> Insn {
        i(CLASS_ALU64 | OP_MOV, dst, 0, 0, imm)
    }
    fn mov_x(dst: u8, src: u8) -> Insn {
        i(CLASS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0)
    }
    fn add_k(dst: u8, imm: i32) -> Insn {
        i(CLASS_ALU64 | OP_ADD, dst, 0, 0, imm)
    }
    fn ld_map(dst: u8, k: i32) -> [Insn; 2] {
        [
            i(
                CLASS_LD | MODE_IMM | SIZE_DW,
                dst,
                PSEUDO_MAP_FD,
                0,
                FD_BASE + k,
            ),
            i(0, 0, 0, 0, 0),
        ]
    }
    fn call(helper: i32) -> Insn {
        i(CLASS_JMP | JMP_CALL, 0, 0, 0, helper)
    }
    fn exit() -> Insn {
        i(CLASS_JMP | JMP_EXIT, 0, 0, 0, 0)
    }
    fn array(name: &str) -> MapFacts {
        MapFacts {
            name: name.into(),
            map_type: ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 4,
            flags: 0,
            btf: false,
            global_data: false,
        }
    }

    /// `r2 = fp - 8; *(u32 *)(fp - 8) = 0; r1 = map k; call lookup;
    /// if r0 == 0 goto out`, then `body`, then `out: r0 = 2 (PASS); exit`.
    fn with_lookup(k: i32, body: &[Insn]) -> Vec<Insn> {
        let mut p = vec![
            i(CLASS_ST | MODE_MEM | SIZE_W, 10, 0, -8, 0),
            mov_x(2, 10),
            add_k(2, -8),
        ];
        p.extend(ld_map(1, k));
        p.push(call(1));
        p.push(i(CLASS_JMP | 0x10, 0, 0, body.len() as i16, 0)); // if r0 == 0 goto out
        p.extend_from_slice(body);
        p.extend([mov_k(0, 2), exit()]);
        p
    }

    fn rules(insns: &[Insn], maps: &[MapFacts]) -> Vec<Rule> {
        let report = check("p", "xdp", insns, maps, Limits::default());
        let mut r: Vec<Rule> = report.violations.iter().map(|v| v.rule).collect();
        r.dedup();
        r
    }

    #[test]
    fn a_program_within_the_rules_passes() {
        // Look up, then add to the value atomically: what dispatch_hw does.
        let p = with_lookup(
            0,
            &[
                mov_k(1, 1),
                i(CLASS_STX | MODE_ATOMIC | SIZE_DW, 0, 1, 0, ATOMIC_ADD),
            ],
        );
        assert_eq!(rules(&p, &[array("COUNTERS")]), vec![]);
    }

    #[test]
    fn each_rule_is_caught() {
        let ok_map = [array("A")];
        let cases: Vec<(Rule, Vec<Insn>, Vec<MapFacts>)> = vec![
            (Rule::Helper, vec![call(51), mov_k(0, 2), exit()], vec![]), // bpf_redirect_map
            (
                Rule::TailCall,
                vec![call(TAIL_CALL), mov_k(0, 2), exit()],
                vec![],
            ),
            (
                Rule::MapType,
                with_lookup(0, &[]),
                vec![MapFacts {
                    map_type: 6,
                    ..array("PERCPU")
                }],
            ),
            (
                Rule::MapFlags,
                with_lookup(0, &[]),
                vec![MapFacts {
                    flags: 1 << 10,
                    ..array("MMAPABLE")
                }],
            ),
            (
                Rule::MapEntrySize,
                with_lookup(0, &[]),
                vec![MapFacts {
                    value_size: 64,
                    ..array("BIG")
                }],
            ),
            (
                Rule::MapBtf,
                with_lookup(0, &[]),
                vec![MapFacts {
                    btf: true,
                    ..array("BTF")
                }],
            ),
            (
                Rule::GlobalData,
                vec![
                    i(
                        CLASS_LD | MODE_IMM | SIZE_DW,
                        1,
                        PSEUDO_MAP_VALUE,
                        0,
                        FD_BASE,
                    ),
                    i(0, 0, 0, 0, 0),
                    mov_k(0, 2),
                    exit(),
                ],
                vec![MapFacts {
                    global_data: true,
                    ..array(".rodata")
                }],
            ),
            (
                Rule::MapValueStore,
                with_lookup(0, &[i(CLASS_ST | MODE_MEM | SIZE_DW, 0, 0, 0, 7)]),
                ok_map.to_vec(),
            ),
            (
                Rule::MapValueStore,
                with_lookup(
                    0,
                    &[
                        mov_x(3, 0),
                        add_k(3, 8),
                        i(CLASS_STX | MODE_MEM | SIZE_W, 3, 1, 0, 0),
                    ],
                ),
                ok_map.to_vec(),
            ),
            // r3 = r0 + r6 (unknown); r4 = *(u8 *)(r3 + 0)
            (
                Rule::MapValueOffset,
                with_lookup(
                    0,
                    &[
                        mov_x(3, 0),
                        i(CLASS_ALU64 | OP_ADD | SRC_X, 3, 6, 0, 0),
                        i(CLASS_LDX | MODE_MEM | 0x10, 4, 3, 0, 0),
                    ],
                ),
                ok_map.to_vec(),
            ),
            // r1 = *(u32 *)(r0 + 4); lock *(u64 *)(r0 + 0) += r1
            (
                Rule::MapValueUse,
                with_lookup(
                    0,
                    &[
                        i(CLASS_LDX | MODE_MEM | SIZE_W, 1, 0, 4, 0),
                        i(CLASS_STX | MODE_ATOMIC | SIZE_DW, 0, 1, 0, ATOMIC_ADD),
                    ],
                ),
                ok_map.to_vec(),
            ),
            (
                Rule::Atomic,
                with_lookup(
                    0,
                    &[
                        mov_k(1, 1),
                        i(
                            CLASS_STX | MODE_ATOMIC | SIZE_DW,
                            0,
                            1,
                            0,
                            ATOMIC_ADD | 0x01,
                        ),
                    ],
                ),
                ok_map.to_vec(),
            ),
            (
                Rule::Atomic,
                with_lookup(
                    0,
                    &[
                        mov_k(1, 1),
                        i(CLASS_STX | MODE_ATOMIC | 0x10, 0, 1, 0, ATOMIC_ADD),
                    ],
                ),
                ok_map.to_vec(),
            ),
            (
                Rule::InstructionSet,
                vec![mov_k(0, 7), i(CLASS_ALU64 | OP_MOD, 0, 0, 0, 3), exit()],
                vec![],
            ),
            (
                Rule::InstructionSet,
                vec![
                    mov_k(0, 7),
                    mov_k(1, 2),
                    i(CLASS_ALU64 | OP_DIV | SRC_X, 0, 1, 0, 0),
                    exit(),
                ],
                vec![],
            ),
            (
                Rule::InstructionSet,
                vec![mov_k(0, 7), i(CLASS_ALU64 | OP_DIV, 0, 0, 1, 3), exit()],
                vec![],
            ), // sdiv
            (
                Rule::InstructionSet,
                vec![
                    mov_k(1, 2),
                    i(CLASS_ALU64 | OP_MOV | SRC_X, 0, 1, 8, 0),
                    exit(),
                ],
                vec![],
            ), // movsx
            (
                Rule::InstructionSet,
                vec![
                    i(CLASS_LDX | MODE_MEMSX | SIZE_W, 0, 1, 0, 0),
                    mov_k(0, 2),
                    exit(),
                ],
                vec![],
            ), // ldsx
            (
                Rule::InstructionSet,
                vec![mov_k(0, 2), i(CLASS_ALU64 | OP_END, 0, 0, 0, 64), exit()],
                vec![],
            ), // bswap64
            (
                Rule::InstructionSet,
                vec![mov_k(0, 2), i(CLASS_JMP32 | JMP_JA, 0, 0, 0, 0), exit()],
                vec![],
            ), // gotol
            (
                Rule::InstructionSet,
                vec![
                    mov_k(0, 2),
                    mov_k(1, 3),
                    i(CLASS_ALU64 | OP_MUL | SRC_X, 0, 1, 0, 0),
                    exit(),
                ],
                vec![],
            ),
            (Rule::ReturnCode, vec![mov_k(0, 4), exit()], vec![]), // XDP_REDIRECT
            (
                Rule::Stack,
                vec![
                    i(CLASS_ST | MODE_MEM | SIZE_DW, 10, 0, -520, 0),
                    mov_k(0, 2),
                    exit(),
                ],
                vec![],
            ),
            // r3 = fp + r6 (unknown); *(u8 *)(r3 - 8) = 0
            (
                Rule::Stack,
                vec![
                    mov_x(3, 10),
                    i(CLASS_ALU64 | OP_ADD | SRC_X, 3, 6, 0, 0),
                    i(CLASS_ST | MODE_MEM | 0x10, 3, 0, -8, 0),
                    mov_k(0, 2),
                    exit(),
                ],
                vec![],
            ),
            // map_update_elem(map, fp - 8, r0 = 7 (not a stack address), 0)
            (
                Rule::MapKeyNotOnStack,
                [
                    vec![
                        i(CLASS_ST | MODE_MEM | SIZE_W, 10, 0, -8, 0),
                        mov_x(2, 10),
                        add_k(2, -8),
                        mov_k(3, 7),
                        mov_k(4, 0),
                    ],
                    ld_map(1, 0).to_vec(),
                    vec![call(2), mov_k(0, 2), exit()],
                ]
                .concat(),
                ok_map.to_vec(),
            ),
            (
                Rule::InstructionCount,
                std::iter::repeat_n(mov_k(0, 2), 3000)
                    .chain([exit()])
                    .collect(),
                vec![],
            ),
            (
                Rule::MapKeyNotOnStack,
                [
                    vec![mov_x(2, 1)],
                    ld_map(1, 0).to_vec(),
                    vec![call(1), mov_k(0, 2), exit()],
                ]
                .concat(),
                ok_map.to_vec(),
            ),
            (
                Rule::ContextField,
                vec![
                    i(CLASS_LDX | MODE_MEM | SIZE_W, 2, 1, 12, 0),
                    mov_k(0, 2),
                    exit(),
                ],
                vec![],
            ), // rx_queue_index
        ];
        for (rule, program, maps) in cases {
            let found = rules(&program, &maps);
            assert_eq!(found, vec![rule], "expected only {rule:?} for {program:?}");
        }
    }

    /// Constant offsets stay constant through pointer arithmetic, and a
    /// word read beside a word added to is no conflict.
    /// LLVM spills key pointers under register pressure and merges lookups
    /// whose keys sit in different slots; the verifiers follow both (a
    /// spilled stack pointer comes back from its slot, each path keeps its
    /// own offset). A slot overwritten with data gives back no pointer.
    #[test]
    fn spilled_and_joined_key_pointers_are_followed() {
        let lookup = |prefix: &[Insn]| {
            let mut p = vec![
                i(CLASS_ST | MODE_MEM | SIZE_W, 10, 0, -8, 0),
                i(CLASS_ST | MODE_MEM | SIZE_W, 10, 0, -12, 0),
            ];
            p.extend_from_slice(prefix);
            p.extend(ld_map(1, 0));
            p.extend([call(1), mov_k(0, 2), exit()]);
            p
        };
        // r3 = fp - 8; *(u64 *)(fp - 32) = r3; r2 = *(u64 *)(fp - 32).
        let spill = [
            mov_x(3, 10),
            add_k(3, -8),
            i(CLASS_STX | MODE_MEM | SIZE_DW, 10, 3, -32, 0),
            i(CLASS_LDX | MODE_MEM | SIZE_DW, 2, 10, -32, 0),
        ];
        assert_eq!(rules(&lookup(&spill), &[array("A")]), vec![]);
        // The same, with the slot overwritten by a 4-byte store in between.
        let clobbered = [
            spill[0],
            spill[1],
            spill[2],
            i(CLASS_ST | MODE_MEM | SIZE_W, 10, 0, -28, 7),
            spill[3],
        ];
        assert_eq!(
            rules(&lookup(&clobbered), &[array("A")]),
            vec![Rule::MapKeyNotOnStack]
        );
        // r2 = fp - 8 on one path, fp - 12 on the other, then one lookup.
        let joined = [
            mov_x(2, 10),
            i(CLASS_JMP | 0x10, 6, 0, 2, 0), // if r6 == 0 goto +2
            add_k(2, -8),
            i(CLASS_JMP | JMP_JA, 0, 0, 1, 0),
            add_k(2, -12),
        ];
        assert_eq!(rules(&lookup(&joined), &[array("A")]), vec![]);
        // One of the joined offsets unaligned: refused.
        let unaligned = [joined[0], joined[1], joined[2], joined[3], add_k(2, -10)];
        assert_eq!(
            rules(&lookup(&unaligned), &[array("A")]),
            vec![Rule::MapKeyNotOnStack]
        );
    }

    #[test]
    fn constant_offsets_and_separate_words_pass() {
        // r3 = r0 + 8; r4 = *(u32 *)(r3 + 4) (bytes 12..16); r1 = 1;
        // lock *(u64 *)(r0 + 0) += r1 (bytes 0..8)
        let p = with_lookup(
            0,
            &[
                mov_x(3, 0),
                add_k(3, 8),
                i(CLASS_LDX | MODE_MEM | SIZE_W, 4, 3, 4, 0),
                mov_k(1, 1),
                i(CLASS_STX | MODE_ATOMIC | SIZE_DW, 0, 1, 0, ATOMIC_ADD),
            ],
        );
        let mut map = array("A");
        map.value_size = 16;
        assert_eq!(rules(&p, &[map]), vec![]);
        // r4 = 1 on one path, 13 on the other; then r3 = r0 + r4 and a
        // byte read: a constant offset on each path (as LLVM merges the
        // tails of two branches), not a variable one.
        let p = with_lookup(
            0,
            &[
                i(CLASS_JMP | 0x10, 6, 0, 2, 0), // if r6 == 0 goto +2
                mov_k(4, 1),
                i(CLASS_JMP | JMP_JA, 0, 0, 1, 0),
                mov_k(4, 13),
                mov_x(3, 0),
                i(CLASS_ALU64 | OP_ADD | SRC_X, 3, 4, 0, 0),
                i(CLASS_LDX | MODE_MEM | 0x10, 5, 3, 0, 0),
            ],
        );
        let mut map = array("A");
        map.value_size = 16;
        assert_eq!(rules(&p, &[map]), vec![]);
        // The conflict names the map, the bytes and both instructions.
        let p = with_lookup(
            0,
            &[
                i(CLASS_LDX | MODE_MEM | SIZE_DW, 1, 0, 0, 0),
                i(CLASS_STX | MODE_ATOMIC | SIZE_DW, 0, 1, 0, ATOMIC_ADD),
            ],
        );
        let report = check("p", "xdp", &p, &[array("CURSORS")], Limits::default());
        assert_eq!(report.violations.len(), 1, "{}", report.text());
        let v = &report.violations[0];
        assert_eq!(v.insn, Some(p.len() - 3));
        assert!(
            v.detail
                .contains("bytes 0..8 of map CURSORS's value, which instruction 7 reads"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn a_map_value_passed_to_a_function_is_still_a_map_value() {
        // main: lookup; if null out; r1 = r0; call sub; out: r0 = 2; exit
        // sub: *(u64 *)(r1 + 0) = 1; exit
        let mut p = with_lookup(
            0,
            &[mov_x(1, 0), i(CLASS_JMP | JMP_CALL, 0, PSEUDO_CALL, 0, 2)],
        );
        p.extend([i(CLASS_ST | MODE_MEM | SIZE_DW, 1, 0, 0, 1), exit()]);
        let report = check("p", "xdp", &p, &[array("A")], Limits::default());
        let stores: Vec<&Violation> = report
            .violations
            .iter()
            .filter(|v| v.rule == Rule::MapValueStore)
            .collect();
        assert_eq!(stores.len(), 1, "{report:?}");
        assert_eq!(stores[0].insn, Some(p.len() - 2));
        // The callee's exit is a return, not the program's verdict.
        assert!(
            !report.violations.iter().any(|v| v.rule == Rule::ReturnCode),
            "{report:?}"
        );
    }

    #[test]
    fn the_shipped_offload_variant_passes_and_the_host_variant_does_not() {
        let object = crate::data_plane::object();
        let hw = check_object(object, crate::data_plane::HW_PROGRAM, Limits::default()).unwrap();
        assert!(hw.violations.is_empty(), "{}", hw.text());
        assert!(
            hw.maps.contains(&"STATS_HW".to_string()) && !hw.maps.contains(&"STATS".to_string()),
            "{}",
            hw.text()
        );
        let host = check_object(object, crate::data_plane::PROGRAM, Limits::default()).unwrap();
        let found: HashSet<Rule> = host.violations.iter().map(|v| v.rule).collect();
        // Per-CPU counters, the devmap and aya-log's ring buffer; redirect.
        for rule in [Rule::MapType, Rule::Helper] {
            assert!(
                found.contains(&rule),
                "{rule:?} not found:\n{}",
                host.text()
            );
        }
        assert!(format!(
            "{:#}",
            check_object(object, "nope", Limits::default()).unwrap_err()
        )
        .contains("dispatch_hw"));
    }
}
