//! One eBPF instruction, decoded, and the opcode fields the rules read
//! (include/uapi/linux/bpf.h and bpf_common.h).

use aya_obj::generated::bpf_insn;

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

pub(super) const CLASS_LD: u8 = 0x00;
pub(super) const CLASS_LDX: u8 = 0x01;
pub(super) const CLASS_ST: u8 = 0x02;
pub(super) const CLASS_STX: u8 = 0x03;
pub(super) const CLASS_ALU: u8 = 0x04;
pub(super) const CLASS_JMP: u8 = 0x05;
pub(super) const CLASS_JMP32: u8 = 0x06;
pub(super) const CLASS_ALU64: u8 = 0x07;
pub(super) const MODE_IMM: u8 = 0x00;
pub(super) const MODE_MEM: u8 = 0x60;
pub(super) const MODE_MEMSX: u8 = 0x80;
pub(super) const MODE_ATOMIC: u8 = 0xc0;
pub(super) const SRC_X: u8 = 0x08;
pub(super) const OP_MUL: u8 = 0x20;
pub(super) const OP_DIV: u8 = 0x30;
pub(super) const OP_MOD: u8 = 0x90;
pub(super) const OP_MOV: u8 = 0xb0;
pub(super) const OP_ADD: u8 = 0x00;
pub(super) const OP_SUB: u8 = 0x10;
pub(super) const OP_END: u8 = 0xd0;
pub(super) const JMP_JA: u8 = 0x00;
pub(super) const JMP_CALL: u8 = 0x80;
pub(super) const JMP_EXIT: u8 = 0x90;
pub(super) const SIZE_W: u8 = 0x00;
pub(super) const SIZE_DW: u8 = 0x18;
pub(super) const PSEUDO_MAP_FD: u8 = 1;
pub(super) const PSEUDO_MAP_VALUE: u8 = 2;
pub(super) const PSEUDO_CALL: u8 = 1;
pub(super) const ATOMIC_ADD: i32 = 0x00;

/// Helpers the NFP JIT accepts (some gated by firmware features).
pub(super) const HELPERS: [(i32, &str); 7] = [
    (1, "map_lookup_elem"),
    (2, "map_update_elem"),
    (3, "map_delete_elem"),
    (7, "get_prandom_u32"),
    (25, "perf_event_output"),
    (44, "xdp_adjust_head"),
    (65, "xdp_adjust_tail"),
];
pub(super) const TAIL_CALL: i32 = 12;
pub(super) const ARRAY: u32 = 2;
pub(super) const HASH: u32 = 1;
