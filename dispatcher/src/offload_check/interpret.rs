//! The abstract interpreter: what each register and stack slot may hold
//! at each instruction (map value pointers with their offsets, the
//! context, stack addresses, constants), walked over every path until
//! nothing changes.

use std::collections::{HashMap, HashSet};

use super::{insn::*, map_of, MapFacts, Rule};

/// What a register may hold, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Val {
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
pub(super) enum Offsets {
    /// Bit k: offset k.
    Known(u64),
    Variable,
}

/// A set of stack offsets, each in -STACK_SPAN..=0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StackSet([u64; STACK_WORDS]);

/// Offsets a stack set holds: the kernel's 512-byte stack, with room.
pub(super) const STACK_SPAN: i64 = 575;
pub(super) const STACK_WORDS: usize = (STACK_SPAN as usize + 64) / 64;

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
pub(super) enum WordUse {
    Read,
    Atomic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct State {
    regs: [Val; 11],
    /// What registers were spilled to the 8-byte stack slots (slot k at
    /// offset -8(k+1)): the verifiers track a spilled pointer and give it
    /// back on the fill, and LLVM spills key pointers under register
    /// pressure.
    spills: [Val; SPILL_SLOTS],
    /// Inside a bpf-to-bpf callee: its exits return to the caller.
    callee: bool,
}

pub(super) const SPILL_SLOTS: usize = 64;

/// The spill slot of an 8-byte access at stack offset `off`.
pub(super) fn spill_slot(off: i64) -> Option<usize> {
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

/// Each (map, value word) and how the program uses it, with the first
/// instruction that does.
pub(super) type WordUses = HashMap<((usize, i64), WordUse), usize>;

/// Walks every path of the program with abstract register contents until
/// nothing changes; reports stores into map values, map value reads at a
/// variable offset, map keys not on the stack, context reads other than
/// data/data_end, and return codes. Returns the lowest stack offset used
/// (negative) and how each map value word is used.
pub(super) fn walk(
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

pub(super) const VARIABLE_STACK: &str =
    "reaches the stack at a computed offset: the NFP accesses the stack only at constant offsets";

/// Bytes a load or store of `code` moves.
pub(super) fn access_size(code: u8) -> i64 {
    match code & 0x18 {
        SIZE_W => 4,
        0x08 => 2,
        0x10 => 1,
        _ => 8,
    }
}

pub(super) fn merge(
    states: &mut HashMap<usize, State>,
    work: &mut Vec<usize>,
    at: usize,
    s: State,
) {
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
