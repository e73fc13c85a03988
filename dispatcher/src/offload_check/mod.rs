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
//! or a constant: enough to name each violation with its instruction.
//! Pointers spilled to the stack are followed through their slots.
//!
//! `mod.rs` reads the object and reports; `insn.rs` decodes instructions;
//! `interpret.rs` is the abstract interpreter; `rules.rs` holds the rules.

use std::collections::HashSet;

use anyhow::{anyhow, Context as _, Result};

mod insn;
mod interpret;
mod rules;
#[cfg(test)]
mod tests;

pub use insn::Insn;
pub use rules::check;

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

/// The map a placeholder descriptor stands for.
fn map_of(fd: i32, maps: &[MapFacts]) -> Option<usize> {
    let k = fd.checked_sub(FD_BASE)? as usize;
    (k < maps.len()).then_some(k)
}

/// Links a parsed object as the kernel would see it: each map load
/// pointed at the descriptor `fd_of` gives its map, bpf-to-bpf calls
/// inlined into one instruction stream per program.
pub fn link(obj: &mut aya_obj::Object, fd_of: impl Fn(&str) -> i32) -> Result<()> {
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps: Vec<(String, i32, aya_obj::maps::Map)> = obj
        .maps
        .iter()
        .map(|(name, m)| (name.clone(), fd_of(name), m.clone()))
        .collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(|e| anyhow!("cannot relocate the object's maps: {e}"))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| anyhow!("cannot link the object's functions: {e}"))
}

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
    link(&mut obj, |name| {
        FD_BASE + names.iter().position(|n| n == name).unwrap_or(0) as i32
    })?;
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
