use super::{insn::*, *};

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
                // BPF_F_NO_PREALLOC (BPF_F_MMAPABLE is allowed: the hw
                // loader drops it, see rules.rs).
                flags: 1,
                ..array("NO_PREALLOC")
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

/// BPF_F_MMAPABLE is the host's concern (user space writes MAGLEV through
/// a mapping); the hw loader creates bound maps without flags, so it is
/// no offload problem.
#[test]
fn an_mmapable_map_passes() {
    let maps = [MapFacts {
        flags: aya_obj::generated::BPF_F_MMAPABLE,
        ..array("MAGLEV")
    }];
    assert_eq!(rules(&with_lookup(0, &[]), &maps), vec![]);
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
