//! The NFP's offload rules, checked instruction by instruction and over
//! the interpreter's walk.

use super::{insn::*, interpret::*, map_of, Limits, MapFacts, Report, Rule, Violation};

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
        // BPF_F_MMAPABLE is for the host's copy of a map (user space writes
        // MAGLEV through a mapping); the hw loader creates bound maps
        // without flags (data_plane/offload.rs), so it is no offload
        // problem. Any other flag is.
        if m.flags & !aya_obj::generated::BPF_F_MMAPABLE != 0 {
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

pub(super) fn map_type_name(t: u32) -> &'static str {
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
